"""Tests for the local D·engage emulator that every other test of the target relies on."""

from __future__ import annotations

import http.client
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from target_dengage.emulator import DengageEmulator, main

CUSTOM = "loyalty_tier"
STATIC = "static-token"
PASSWORD = "demo-password"  # the emulator's default demo credential
VALID = {
    "contact_key": "good",
    "gsm": "905351234567",
    "email": "first.last+tag@mail.example.co.uk",
    "email_permission": False,
    "contact_status": "P",
    "name": "Ünal",
    "birth_date": "2024-02-29",
    "subscription_date": "2024-02-29",
    CUSTOM: "gold",
}


@pytest.fixture
def emulator() -> Iterator[DengageEmulator]:
    with DengageEmulator(
        sync_interval_seconds=0, custom_columns=[CUSTOM], static_tokens=[STATIC]
    ) as emu:
        yield emu


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


@pytest.fixture
def api(emulator: DengageEmulator, session: requests.Session) -> Api:
    return Api(emulator, session)


class Api:
    """A tiny client so each test reads as the request it makes."""

    def __init__(self, emulator: DengageEmulator, session: requests.Session) -> None:
        self.emulator = emulator
        self.session = session
        self.token = self.login().json()["access_token"]

    def login(self) -> requests.Response:
        body = {"userkey": "demo", "password": PASSWORD}
        return self.session.post(f"{self.emulator.url}/rest/login", json=body, timeout=5)

    def call(
        self, method: str, path: str, token: str | None = "", **kwargs: Any
    ) -> requests.Response:
        token = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.session.request(
            method, f"{self.emulator.url}{path}", headers=headers, timeout=5, **kwargs
        )

    def upsert(
        self, rows: list[dict[str, Any]], path: str = "/rest/bulk/contacts", **flags: Any
    ) -> requests.Response:
        body = {"columns": list(rows[0]), "contactDatas": rows, **flags}
        return self.call("POST", path, json=body)


def test_login_issues_tokens_and_forbids_bad_credentials(api: Api) -> None:
    response = api.login()
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["expires_in"] == 3600
    assert response.json()["access_token"] != api.token
    for body in ({"userkey": "demo", "password": "wrong"}, {"userkey": "demo"}):
        forbidden = api.session.post(f"{api.emulator.url}/rest/login", json=body, timeout=5)
        assert forbidden.status_code == 403
        assert forbidden.json() == {"code": 10, "message": "Forbidden"}
    for content_type, reason in (("application/json", "Malformed"), ("text/plain", "Content-Type")):
        malformed = api.session.post(
            f"{api.emulator.url}/rest/login",
            data=b'{"userkey": "demo", "password": "demo-password"',
            headers={"Content-Type": content_type},
            timeout=5,
        )
        assert (malformed.status_code, malformed.json()["code"]) == (400, 1)
        assert malformed.json()["message"].startswith(reason)
    assert api.emulator.login_count() == 2


def test_calls_need_a_live_token(api: Api) -> None:
    rows = [{"contact_key": "c1"}]
    assert api.call("POST", "/rest/bulk/contacts", token=None, json={}).status_code == 401
    assert api.call("POST", "/rest/bulk/contacts", token="bogus", json={}).status_code == 401
    assert api.upsert(rows).status_code == 200
    assert api.call("GET", "/rest/bulk/async/contacts/x", token=STATIC).status_code == 404

    api.emulator.expire_tokens()
    expired = api.upsert(rows)
    assert expired.status_code == 401
    assert expired.json() == {"code": 401, "message": "Not authenticated. Please re-login."}
    assert api.call("GET", "/rest/bulk/async/contacts/x", token=STATIC).status_code == 401
    api.token = api.login().json()["access_token"]
    assert api.upsert(rows).status_code == 200
    assert api.call("GET", "/rest/bulk/async/contacts/x", token=STATIC).status_code == 401

    log = api.emulator.request_log()
    assert [entry["authorization"] for entry in log[1:3]] == [False, True]
    assert api.token not in repr(log)
    assert "demo-password" not in repr(log)


def test_upsert_inserts_with_api_defaults_then_updates(api: Api) -> None:
    row = {"contact_key": "c1", "email": "Ada@Example.COM", "gsm": "905351234567", "name": "Ada"}
    response = api.upsert([row], insertIfNotExists=True)
    assert response.status_code == 200
    assert response.json() == {
        "code": 0,
        "message": "Success",
        "data": {"inserted": ["c1"], "updated": [], "errors": [], "warnings": []},
    }
    assert api.emulator.contacts()["c1"] == {
        "contact_key": "c1",
        "email": "ada@example.com",
        "gsm": "905351234567",
        "name": "Ada",
        "contact_status": "A",
        "email_status": "A",
        "gsm_status": "A",
        "email_permission": True,
        "gsm_permission": True,
    }

    passive = {"contact_key": "c1", "email": "ada@example.com", "email_status": "P"}
    assert api.upsert([passive]).json()["data"]["updated"] == ["c1"]
    assert api.emulator.contacts()["c1"]["email_status"] == "P"
    assert api.upsert([{"contact_key": "c1", "email": "ADA@example.com"}]).status_code == 200
    assert api.emulator.contacts()["c1"]["email_status"] == "P"  # same address: unchanged
    assert api.upsert([{"contact_key": "c1", "email": "new@example.com"}]).status_code == 200
    assert api.emulator.contacts()["c1"]["email_status"] == "A"
    assert api.emulator.contacts()["c1"]["name"] == "Ada"  # columns not sent stay as they were

    call = api.emulator.bulk_calls()[0]
    assert call["columns"] == list(row)
    assert (call["count"], call["contact_keys"], call["status"]) == (1, ["c1"], 200)


def test_unknown_keys_are_not_created_by_default(api: Api) -> None:
    data = api.upsert([{"contact_key": "ghost", "name": "Casper"}]).json()["data"]
    assert data["inserted"] == data["updated"] == []
    assert data["warnings"] == [
        {
            "contact_key": "ghost",
            "message": "Contact not found; not inserted (insertIfNotExists is false)",
        }
    ]
    assert api.emulator.contacts() == {}


@pytest.mark.parametrize(
    ("row", "named"),
    [
        ({"contact_key": "c2"}, "missing: name"),
        ({"contact_key": "c2", "name": "x", "gsm": "1"}, "extra: gsm"),
    ],
)
def test_every_record_must_carry_exactly_the_columns(
    api: Api, row: dict[str, Any], named: str
) -> None:
    body = {
        "columns": ["contact_key", "name"],
        "contactDatas": [{"contact_key": "c1", "name": "a"}, row],
    }
    response = api.call("POST", "/rest/bulk/contacts", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == 1
    assert "contactDatas[1]" in response.json()["message"]
    assert named in response.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"columns": ["name"], "contactDatas": [{"name": "x"}]},
        {
            "columns": ["contact_key", "favourite_colour"],
            "contactDatas": [{"contact_key": "c", "favourite_colour": "x"}],
        },
        {
            "columns": ["contact_key", "is_email_active"],
            "contactDatas": [{"contact_key": "c", "is_email_active": True}],
        },
        {"columns": ["contact_key", "contact_key"], "contactDatas": [{"contact_key": "c"}]},
        {"columns": ["contact_key"], "contactDatas": []},
        {"columns": ["contact_key"], "contactDatas": [{"contact_key": "c"}] * 1001},
        {
            "columns": ["contact_key"],
            "contactDatas": [{"contact_key": "c"}],
            "stopOnError": "false",
        },
        {"columns": ["contact_key"], "contactDatas": [{"contact_key": "c"}], "upsert": True},
        {
            "columns": ["contact_key", "new_contact_key"],
            "contactDatas": [{"contact_key": "c", "new_contact_key": "d"}],
            "insertIfNotExists": True,
        },
    ],
)
def test_structural_problems_are_field_errors(api: Api, body: Any) -> None:
    response = api.call("POST", "/rest/bulk/contacts", json=body)
    assert (response.status_code, response.json()["code"]) == (400, 1)


def test_bulk_bodies_must_be_declared_json(api: Api) -> None:
    body = b'{"columns": ["contact_key"], "contactDatas": [{"contact_key": "c"}]}'
    response = api.call("POST", "/rest/bulk/contacts", data=body)
    assert (response.status_code, response.json()["code"]) == (400, 1)
    assert "Content-Type" in response.json()["message"]


def test_custom_columns_must_be_configured(api: Api) -> None:
    row = {"contact_key": "c1", CUSTOM: "gold"}
    assert api.upsert([row], insertIfNotExists=True).status_code == 200
    assert api.emulator.contacts()["c1"][CUSTOM] == "gold"
    api.emulator.set_options(custom_columns=(name for name in ["city"]))
    assert api.upsert([row]).status_code == 400
    assert api.upsert([{"contact_key": "c1", "city": "Izmir"}]).status_code == 200


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("gsm", "1" * 21),
        ("gsm", "+905351234567"),
        ("gsm", 905351234567),
        ("email", "no-at-sign"),
        ("email", "a@localhost"),
        ("email", "a b@example.com"),
        ("email", "x" * 250 + "@example.com"),
        ("email_permission", "true"),
        ("contact_status", "a"),
        ("name", None),
        ("name", "x" * 101),
        ("birth_date", "2023-02-30"),
        ("birth_date", "2023-2-03"),
        ("subscription_date", "2024-01-01T00:00:00"),
        ("contact_key", ""),
        ("contact_key", "k" * 256),
        (CUSTOM, 3),
    ],
)
def test_invalid_values_fail_the_whole_request(api: Api, column: str, value: Any) -> None:
    good = {"contact_key": "good", column: VALID[column]}
    bad = {**good, "contact_key": "bad", column: value}
    response = api.upsert([good, bad], insertIfNotExists=True)
    assert response.status_code == 400, response.json()
    body = response.json()
    assert body["code"] == 11
    assert body["message"].startswith("ValidationFails: contactDatas[1]")
    assert [(e["index"], e["field"]) for e in body["data"]["errors"]] == [(1, column)]
    assert api.emulator.contacts() == {}


def test_stop_on_error_false_applies_the_valid_records(api: Api) -> None:
    rows = [{"contact_key": "c1", "gsm": "905351234567"}, {"contact_key": "c2", "gsm": "1" * 21}]
    response = api.upsert(rows, insertIfNotExists=True, stopOnError=False)
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["inserted"] == ["c1"]
    [error] = data["errors"]
    assert (error["contact_key"], error["index"], error["field"]) == ("c2", 1, "gsm")
    assert set(api.emulator.contacts()) == {"c1"}


def test_duplicate_keys_only_the_last_is_processed(api: Api) -> None:
    rows = [{"contact_key": "c1", "name": "first"}, {"contact_key": "c1", "name": "last"}]
    data = api.upsert(rows, insertIfNotExists=True).json()["data"]
    assert data["inserted"] == ["c1"]
    assert api.emulator.contacts()["c1"]["name"] == "last"


def test_new_contact_key_renames_an_existing_contact(api: Api) -> None:
    api.upsert([{"contact_key": "old", "name": "N"}], insertIfNotExists=True)
    rows = [{"contact_key": "old", "new_contact_key": "new"}]
    assert api.upsert(rows).json()["data"]["updated"] == ["old"]
    assert api.emulator.contacts() == {
        "new": {
            "contact_key": "new",
            "name": "N",
            "contact_status": "A",
            "email_permission": True,
            "gsm_permission": True,
        }
    }
    missing = api.upsert(rows)
    assert (missing.status_code, missing.json()["code"]) == (400, 11)
    errors = api.upsert(rows, stopOnError=False).json()["data"]["errors"]
    assert [error["field"] for error in errors] == ["new_contact_key"]


def test_sync_calls_are_paced_and_never_parallel(api: Api) -> None:
    api.emulator.set_options(sync_interval_seconds=0.5)
    rows = [{"contact_key": "c1"}]
    assert api.call("POST", "/rest/bulk/contacts", json={"columns": []}).status_code == 400
    too_soon = api.upsert(rows)  # the invalid call above was admitted, so it moved the window
    assert too_soon.status_code == 429
    assert too_soon.json() == {"code": 429, "message": "Too many requests: call once a minute"}
    time.sleep(0.5)  # 429s do not move the window
    assert api.upsert(rows).status_code == 200

    api.emulator.reset()
    api.emulator.inject_fault("/rest/bulk/contacts", hang_seconds=0.4)
    results: list[int] = []
    with requests.Session() as other:
        slow = threading.Thread(
            target=lambda: results.append(Api(api.emulator, other).upsert(rows).status_code)
        )
        slow.start()
        while not api.emulator.bulk_calls():
            time.sleep(0.01)
        time.sleep(0.05)
        parallel = api.upsert(rows)
        slow.join()
    assert results == [200]
    assert parallel.status_code == 429
    assert parallel.json()["message"] == "Too many requests: concurrent request"
    first, second = api.emulator.bulk_calls()
    assert second["started"] < first["finished"]


def test_injected_faults_answer_without_applying(api: Api) -> None:
    rows = [{"contact_key": "c1"}]
    api.emulator.inject_fault("/rest/bulk/contacts", status=500, count=2)
    api.emulator.inject_fault("/rest/bulk", status=503, body={"oops": True})
    for _ in range(2):
        failed = api.upsert(rows, insertIfNotExists=True)
        assert (failed.status_code, failed.json()) == (
            500,
            {"code": 999, "message": "Injected fault"},
        )
    assert api.upsert(rows, insertIfNotExists=True).json() == {"oops": True}
    assert api.emulator.contacts() == {}
    assert api.upsert(rows, insertIfNotExists=True).status_code == 200
    assert [call["status"] for call in api.emulator.bulk_calls()] == [500, 500, 503, 200]


def connect(emulator: DengageEmulator) -> http.client.HTTPConnection:
    """A bare connection, for tests that watch what exactly comes over the wire."""
    url = urlsplit(emulator.url)
    assert url.hostname is not None
    assert url.port is not None
    return http.client.HTTPConnection(url.hostname, url.port, timeout=30)


LOGIN = b'{"userkey": "demo", "password": "demo-password"}'
JSON = {"Content-Type": "application/json"}


def test_faults_send_raw_bodies_under_any_content_type(api: Api) -> None:
    path = "/rest/bulk/contacts"
    html = "<html><body>502 Bad Gateway: Übergangsfehler</body></html>"
    api.emulator.inject_fault(
        path, status=502, raw_body=html, headers={"content-type": "text/html"}
    )
    api.emulator.inject_fault(path, status=500, raw_body="oops")
    api.emulator.inject_fault(path, status=503, raw_body="")
    gateway = api.upsert([{"contact_key": "c1"}])
    assert (gateway.status_code, gateway.content) == (502, html.encode())
    assert gateway.headers["Content-Type"] == "text/html"  # replaced, not sent twice
    assert gateway.headers["Content-Length"] == str(len(html.encode()))
    plain = api.upsert([{"contact_key": "c1"}])
    assert (plain.status_code, plain.content) == (500, b"oops")
    assert plain.headers["Content-Type"] == "text/plain; charset=utf-8"
    empty = api.upsert([{"contact_key": "c1"}])
    assert (empty.status_code, empty.content, empty.headers["Content-Length"]) == (503, b"", "0")
    assert api.upsert([{"contact_key": "c1"}]).status_code == 200  # the connection is intact
    assert [call["status"] for call in api.emulator.bulk_calls()] == [502, 500, 503, 200]


@pytest.mark.parametrize("body", [[], [1, "two", None], "text", 3.5, 0, False, {}])
def test_fault_bodies_may_be_any_json_value(api: Api, body: Any) -> None:
    api.emulator.inject_fault("/rest/bulk/contacts", status=200, body=body)
    response = api.upsert([{"contact_key": "c1"}], insertIfNotExists=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == body
    assert api.emulator.contacts() == {}


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_keep_the_connection_aligned(
    emulator: DengageEmulator, session: requests.Session, status: int
) -> None:
    emulator.inject_fault("/rest/login", status=status, body={"sent": "never"}, count=2)
    connection = connect(emulator)
    try:
        connection.request("POST", "/rest/login", body=LOGIN, headers=JSON)
        first = connection.getresponse()
        assert (first.status, first.read(), first.getheader("Content-Length")) == (
            status,
            b"",
            None,
        )
        wire = connection.sock
        connection.request("POST", "/rest/login", body=LOGIN, headers=JSON)
        second = connection.getresponse()
        assert (second.status, second.read()) == (status, b"")
        connection.request("POST", "/rest/login", body=LOGIN, headers=JSON)
        third = connection.getresponse()
        assert third.status == 200
        assert b"access_token" in third.read()
        assert connection.sock is wire  # one connection all along: no stray body bytes
    finally:
        connection.close()

    emulator.inject_fault("/rest/login", status=status)
    url, body = f"{emulator.url}/rest/login", {"userkey": "demo", "password": PASSWORD}
    bodiless = session.post(url, json=body, timeout=5)
    assert (bodiless.status_code, bodiless.content) == (status, b"")
    assert session.post(url, json=body, timeout=5).json()["access_token"]


def test_faults_can_redirect(api: Api) -> None:
    location = "http://example.invalid/elsewhere"
    for status in (302, 307):
        api.emulator.inject_fault(
            "/rest/bulk/contacts", status=status, headers={"Location": location}
        )
        body = {
            "columns": ["contact_key"],
            "contactDatas": [{"contact_key": "c1"}],
            "insertIfNotExists": True,
        }
        response = api.call("POST", "/rest/bulk/contacts", json=body, allow_redirects=False)
        assert (response.status_code, response.headers["Location"]) == (status, location)
        assert response.is_redirect
    assert api.emulator.contacts() == {}


def test_a_body_labelled_gzip_that_is_not_fails_to_decode(api: Api) -> None:
    api.emulator.inject_fault(
        "/rest/bulk/contacts", status=200, headers={"Content-Encoding": "gzip"}
    )
    with pytest.raises(requests.exceptions.ContentDecodingError):
        api.upsert([{"contact_key": "c1"}])


def test_drip_delivers_the_whole_body(emulator: DengageEmulator) -> None:
    emulator.inject_fault("/rest/login", status=503, raw_body="hello", drip_seconds=0.001)
    emulator.inject_fault("/rest/login", drip_seconds=0.001)  # the real answer, dripped
    connection = connect(emulator)
    try:
        connection.request("POST", "/rest/login", body=LOGIN, headers=JSON)
        faulty = connection.getresponse()
        assert faulty.getheader("Content-Length") == "5"
        assert [faulty.read(1) for _ in range(6)] == [b"h", b"e", b"l", b"l", b"o", b""]
        connection.request("POST", "/rest/login", body=LOGIN, headers=JSON)
        real = connection.getresponse()
        assert real.status == 200
        assert b"access_token" in real.read()
    finally:
        connection.close()
    assert emulator.login_count() == 1


def test_drip_sends_a_byte_at_a_time_and_gives_up_on_stop() -> None:
    emulator = DengageEmulator().start()
    url = urlsplit(emulator.url)
    assert url.hostname is not None
    assert url.port is not None
    # The pause far outlasts the test, so no second byte can come before stop().
    emulator.inject_fault("/rest/login", status=503, raw_body="hello", drip_seconds=600)
    with socket.create_connection((url.hostname, url.port), timeout=30) as client:
        client.sendall(b"POST /rest/login HTTP/1.1\r\nHost: emulator\r\nContent-Length: 0\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = client.recv(4096)
            assert chunk
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"\r\nContent-Length: 5\r\n" in head
        if not body:
            body = client.recv(4096)
        assert body == b"h"

        stopper = threading.Thread(target=emulator.stop)
        stopper.start()
        stopper.join(timeout=60)  # a safety net: a drip that ignored stop() would take 40 min
        assert not stopper.is_alive()
        assert client.recv(4096) == b""  # hung up, the body still incomplete


def test_a_client_leaving_mid_drip_ends_the_answer_quietly(
    emulator: DengageEmulator, session: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="target_dengage.emulator")
    emulator.inject_fault("/rest/login", status=503, raw_body="x" * 500, drip_seconds=0.001)
    connection = connect(emulator)
    connection.request("POST", "/rest/login", body=LOGIN, headers=JSON)
    response = connection.getresponse()
    assert response.read(1) == b"x"
    connection.close()
    body = {"userkey": "demo", "password": PASSWORD}
    assert session.post(f"{emulator.url}/rest/login", json=body, timeout=5).status_code == 200
    emulator.stop()
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []


def test_cut_off_answers_end_before_their_content_length(api: Api) -> None:
    path = "/rest/bulk/contacts"
    api.emulator.inject_fault(path, status=500, cut_off=True)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        api.upsert([{"contact_key": "c1"}], insertIfNotExists=True)
    assert api.emulator.contacts() == {}

    api.emulator.inject_fault(path, cut_off=True)  # the real answer: applied, then lost
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        api.upsert([{"contact_key": "c1"}], insertIfNotExists=True)
    assert set(api.emulator.contacts()) == {"c1"}
    assert [call["status"] for call in api.emulator.bulk_calls()] == [500, 200]
    assert api.upsert([{"contact_key": "c1"}]).status_code == 200


def test_cut_off_sends_the_first_half_then_hangs_up(emulator: DengageEmulator) -> None:
    emulator.inject_fault("/rest/login", status=500, raw_body="0123456789", cut_off=True)
    connection = connect(emulator)
    try:
        connection.request("POST", "/rest/login", body=LOGIN, headers=JSON)
        response = connection.getresponse()
        assert response.getheader("Content-Length") == "10"
        assert response.getheader("Connection") is None  # nothing warned of the hang-up
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
        assert cut.value.partial == b"01234"
    finally:
        connection.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": True},
        {"status": 600},
        {"count": 0},
        {"hang_seconds": -1},
        {"drip_seconds": -0.5},
        {"drip_seconds": "1"},
        {"cut_off": 1},
        {"status": 500, "body": {1, 2}},
        {"status": 500, "body": float("nan")},
        {"raw_body": "no status"},
        {"status": 500, "raw_body": b"bytes"},
        {"status": 500, "raw_body": "x", "body": {"both": True}},
        {"status": 500, "raw_body": "\ud800"},
        {"status": 500, "headers": {"X-Bad": "split\r\nInjected: yes"}},
        {"status": 500, "headers": {"Bad Name": "x"}},
        {"status": 500, "headers": {"content-length": "3"}},
        {"status": 500, "headers": {"Transfer-Encoding": "chunked"}},
        {"status": 500, "headers": {"X-Number": 3}},
        {"status": 204, "cut_off": True},
        {"status": 500, "raw_body": "x", "cut_off": True},
    ],
)
def test_inject_fault_refuses_bad_arguments(emulator: DengageEmulator, kwargs: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        emulator.inject_fault("/rest/login", **kwargs)


def test_the_admin_endpoint_takes_the_new_fault_arguments(api: Api) -> None:
    url, http = api.emulator.url, api.session
    fault = {
        "path": "/rest/bulk",
        "status": 502,
        "raw_body": "<h1>Bad Gateway</h1>",
        "headers": {"Content-Type": "text/html"},
        "drip_seconds": 0.001,
    }
    assert http.post(f"{url}/_emulator/faults", json=fault, timeout=5).json() == {"ok": True}
    assert (
        http.post(f"{url}/_emulator/faults", json={**fault, "cut_off": "yes"}, timeout=5).json()[
            "code"
        ]
        == 1
    )
    response = api.upsert([{"contact_key": "c1"}])
    assert (response.status_code, response.text) == (502, "<h1>Bad Gateway</h1>")
    assert response.headers["Content-Type"] == "text/html"
    array = {"path": "/rest/bulk", "status": 200, "body": ["a"]}
    assert http.post(f"{url}/_emulator/faults", json=array, timeout=5).status_code == 200
    assert api.upsert([{"contact_key": "c1"}]).json() == ["a"]


def job_status(api: Api, job_id: str) -> dict[str, Any]:
    response = api.call("GET", f"/rest/bulk/async/contacts/{job_id}")
    assert response.status_code == 200
    return response.json()["data"]


def test_async_job_processes_then_applies_once(api: Api) -> None:
    api.emulator.set_options(async_job_seconds=0.2)
    rows = [{"contact_key": "c1", "name": "async"}, {"contact_key": "c2", "name": "x" * 101}]
    response = api.upsert(
        rows, path="/rest/bulk/async/contacts", insertIfNotExists=True, stopOnError=False
    )
    assert response.status_code == 202
    assert response.json()["code"] == 0
    job_id = response.json()["transactionId"]
    assert job_status(api, job_id)["status"] == "Processing"
    assert api.emulator.contacts() == {}
    time.sleep(0.25)
    done = job_status(api, job_id)
    assert (done["status"], done["transactionId"], done["inserted"]) == (
        "Completed",
        job_id,
        ["c1"],
    )
    assert [error["contact_key"] for error in done["errors"]] == ["c2"]
    api.upsert([{"contact_key": "c1", "name": "sync"}])
    assert job_status(api, job_id)["status"] == "Completed"
    assert api.emulator.contacts()["c1"]["name"] == "sync"  # the job did not apply twice


def test_async_validation_failures_answer_immediately(api: Api) -> None:
    path = "/rest/bulk/async/contacts"
    structural = api.call("POST", path, json={"columns": ["name"], "contactDatas": [{"name": "x"}]})
    assert (structural.status_code, structural.json()["code"]) == (400, 1)
    invalid = api.upsert([{"contact_key": "c1", "gsm": "12a"}], path=path)
    assert (invalid.status_code, invalid.json()["code"]) == (400, 11)
    unknown = api.call("GET", f"{path}/no-such-job")
    assert (unknown.status_code, unknown.json()) == (404, {"code": 1, "message": "Job not found"})


def test_failed_and_hung_jobs(api: Api) -> None:
    path = "/rest/bulk/async/contacts"
    rows = [{"contact_key": "c1"}]
    api.emulator.fail_next_jobs(message="boom")
    api.emulator.hang_next_jobs()
    hung = api.upsert(rows, path=path, insertIfNotExists=True).json()["transactionId"]
    failed = api.upsert(rows, path=path, insertIfNotExists=True).json()["transactionId"]
    assert job_status(api, hung)["status"] == "Processing"
    assert (job_status(api, failed)["status"], job_status(api, failed)["message"]) == (
        "Failed",
        "boom",
    )
    assert api.emulator.contacts() == {}


def test_repeated_job_ids(api: Api) -> None:
    path = "/rest/bulk/async/contacts"
    first = api.upsert([{"contact_key": "c0"}], path=path, insertIfNotExists=True)
    api.emulator.repeat_job_ids()
    second = api.upsert([{"contact_key": "c1"}], path=path, insertIfNotExists=True)
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["transactionId"] == second.json()["transactionId"]
    third = api.upsert([{"contact_key": "c2"}], path=path, insertIfNotExists=True)
    assert third.json()["transactionId"] != first.json()["transactionId"]
    assert set(api.emulator.contacts()) == {"c0", "c1", "c2"}  # every job ran
    jobs = api.emulator.jobs()
    assert len({job["id"] for job in jobs}) == 3
    assert [job["contact_keys"] for job in jobs] == [["c0"], ["c1"], ["c2"]]

    repeat = f"{api.emulator.url}/_emulator/repeat-job-ids"
    assert api.session.post(repeat, json={"count": 2}, timeout=5).json() == {"ok": True}
    assert api.session.post(repeat, json={"count": 0}, timeout=5).status_code == 400
    answers = [
        api.upsert([{"contact_key": f"d{n}"}], path=path, insertIfNotExists=True).json()
        for n in range(2)
    ]
    assert {answer["transactionId"] for answer in answers} == {third.json()["transactionId"]}
    assert {"d0", "d1"} <= set(api.emulator.contacts())

    api.emulator.reset()
    api.emulator.repeat_job_ids()
    alone = api.upsert([{"contact_key": "e"}], path=path, insertIfNotExists=True).json()
    assert [job["id"] for job in api.emulator.jobs()] == [alone["transactionId"]]


def test_repeat_job_ids_needs_a_positive_count(emulator: DengageEmulator) -> None:
    for count in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="count"):
            emulator.repeat_job_ids(count)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/rest/bulk/contacts", "/rest/bulk/async/contacts"])
def test_throw_exception_if_invalid_record_is_another_name_for_stop_on_error(
    api: Api, path: str
) -> None:
    rows = [{"contact_key": "c1", "gsm": "905351234567"}, {"contact_key": "c2", "gsm": "12a"}]
    stopped = api.upsert(
        rows, path=path, insertIfNotExists=True, throwExceptionIfInvalidRecord=True
    )
    assert (stopped.status_code, stopped.json()["code"]) == (400, 11)
    assert api.emulator.contacts() == {}
    carried_on = api.upsert(
        rows, path=path, insertIfNotExists=True, throwExceptionIfInvalidRecord=False
    )
    assert carried_on.status_code in (200, 202)
    assert set(api.emulator.contacts()) == {"c1"}
    agreed = api.upsert(rows, path=path, stopOnError=False, throwExceptionIfInvalidRecord=False)
    assert agreed.status_code in (200, 202)
    for flags in (
        {"stopOnError": True, "throwExceptionIfInvalidRecord": False},
        {"stopOnError": False, "throwExceptionIfInvalidRecord": True},
    ):
        refused = api.upsert(rows, path=path, **flags)
        assert (refused.status_code, refused.json()) == (
            400,
            {"code": 1, "message": "stopOnError and throwExceptionIfInvalidRecord disagree"},
        )
    wrong = api.upsert(rows, path=path, throwExceptionIfInvalidRecord="false")
    assert (wrong.status_code, wrong.json()["code"]) == (400, 1)
    assert "throwExceptionIfInvalidRecord" in wrong.json()["message"]


def test_async_concurrency_is_limited(api: Api) -> None:
    api.emulator.set_options(max_running_jobs=1, async_job_seconds=30)
    path = "/rest/bulk/async/contacts"
    rows = [{"contact_key": "c1"}]
    assert api.upsert(rows, path=path).status_code == 202
    limited = api.upsert(rows, path=path)
    assert limited.status_code == 429
    assert limited.json() == {"code": 429, "message": "Too many concurrent requests"}


def test_admin_endpoints(api: Api) -> None:
    url, http = api.emulator.url, api.session
    assert http.get(f"{url}/_emulator/health", timeout=5).json() == {"ok": True}
    fault = {"path": "/rest/bulk", "status": 500}
    assert http.post(f"{url}/_emulator/faults", json=fault, timeout=5).json() == {"ok": True}
    assert api.upsert([{"contact_key": "c1"}]).status_code == 500
    options = {"custom_columns": ["tier"], "sync_interval_seconds": 0}
    assert http.post(f"{url}/_emulator/options", json=options, timeout=5).status_code == 200
    assert (
        api.upsert([{"contact_key": "c1", "tier": "x"}], insertIfNotExists=True).status_code == 200
    )
    assert http.get(f"{url}/_emulator/contacts", timeout=5).json()["c1"]["tier"] == "x"
    assert [e["status"] for e in http.get(f"{url}/_emulator/requests", timeout=5).json()][-2:] == [
        500,
        200,
    ]
    bad = http.post(f"{url}/_emulator/options", json={"colour": "red"}, timeout=5)
    assert (bad.status_code, bad.json()["code"]) == (400, 1)
    assert http.post(f"{url}/_emulator/expire-tokens", timeout=5).status_code == 200
    assert api.upsert([{"contact_key": "c1"}]).status_code == 401
    assert http.post(f"{url}/_emulator/reset", timeout=5).status_code == 200
    assert api.emulator.contacts() == {}
    assert api.emulator.request_log() == []


def test_unknown_paths_and_methods_answer_json(api: Api) -> None:
    missing = api.call("GET", "/rest/nothing-here")
    assert (missing.status_code, missing.headers["Content-Type"]) == (404, "application/json")
    wrong = api.call("GET", "/rest/login")
    assert (wrong.status_code, wrong.headers["Allow"], wrong.json()["code"]) == (405, "POST", 405)


def test_stop_closes_idle_keep_alive_connections() -> None:
    emulator = DengageEmulator().start()
    with requests.Session() as http:
        assert http.get(f"{emulator.url}/_emulator/health", timeout=5).ok
        began = time.monotonic()
        emulator.stop()
        emulator.stop()
        assert time.monotonic() - began < 2


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])  # noqa: S104
def test_cli_refuses_non_loopback_hosts(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--host", host, "--port", "0"]) != 0
    assert "non-loopback" in capsys.readouterr().err


def test_cli_serves_until_sigterm() -> None:
    script = Path(__file__).resolve().parents[1] / "target_dengage" / "emulator.py"
    command = [
        sys.executable,
        str(script),
        "--port",
        "0",
        "--password",
        "s3cret",
        "--sync-interval",
        "0",
    ]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+) \(userkey=demo\)", line)
        assert match, line
        with requests.Session() as http:
            assert http.get(f"{match.group(1)}/_emulator/health", timeout=5).json() == {"ok": True}
        process.terminate()
        assert process.wait(timeout=10) == 0
        assert "s3cret" not in line + process.stderr.read()
