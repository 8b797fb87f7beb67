"""End to end: bad input, API refusals, auth, retries and secrets, through the real CLI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    MAPPING,
    PASSWORD,
    STATIC_TOKEN,
    contact,
    record,
    run_target,
    schema,
    state,
)

from target_dengage.emulator import DengageEmulator

BAD = {
    "bad-email": ("c3", {"email": "not-an-email"}, "email"),
    "long-gsm": ("c5", {"phone": "9" * 21}, "gsm"),
    "no-key": (None, {"id": None}, "contact_key"),
}


def _messages_with_bad_records() -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        schema(properties=(*schema()["schema"]["properties"], "favourite_colour"))
    ]
    for i in range(1, 11):
        values = contact(i)
        values["favourite_colour"] = "blue"  # not a master_contact column: dropped, not fatal
        if i == 3:
            values.update(BAD["bad-email"][1])
        if i == 5:
            values.update(BAD["long-gsm"][1])
        if i == 7:
            values.update(BAD["no-key"][1])
        messages.append(record(**values))
    messages.append(state({"position": 10}))
    return messages


def _rejected(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bad_records_set_aside_with_stop_on_error_false(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "column_mapping": MAPPING, "stop_on_error": False}
    run = run_target(config, _messages_with_bad_records(), tmp_path)

    assert run.returncode == 0, run.stderr
    assert sorted(emulator.contacts()) == sorted(f"c{i}" for i in (1, 2, 4, 6, 8, 9, 10))
    assert run.states == [{"position": 10}]
    assert "not sent: favourite_colour" in run.stderr
    rejected = _rejected(Path(config["rejected_records_path"]))
    assert [(r["record_number"], r["contact_key"], r["field"]) for r in rejected] == [
        (3, "c3", "email"),
        (5, "c5", "gsm"),
        (7, None, "contact_key"),
    ]
    assert all(r["stream"] == "contacts" and r["source"] == "validation" for r in rejected)
    assert "not an email address" in rejected[0]["reason"]
    assert "21 digits; the limit is 20" in rejected[1]["reason"]
    assert "is missing" in rejected[2]["reason"]
    assert rejected[0]["record"]["email"] == "not-an-email"  # the whole record, to replay it
    assert run.summary["contacts"]["rejected_locally"] == 3
    assert "not-an-email" not in run.stderr  # logs show a masked value only


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_record_stops_the_run_with_stop_on_error_true(
    case: str, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    _, values, field = BAD[case]
    bad = contact(2)
    bad.update(values)
    messages = [
        schema(),
        record(**contact(1)),
        record(**bad),
        record(**contact(3)),
        state({"p": 3}),
    ]
    run = run_target({**base_config, "column_mapping": MAPPING}, messages, tmp_path)

    assert run.returncode == 1
    assert run.stdout == ""
    assert emulator.bulk_calls() == []  # nothing of the batch was sent
    message = next(line for line in run.stderr.splitlines() if "Invalid record" in line)
    assert "stream 'contacts', record 2" in message
    assert ("no contact_key" if case == "no-key" else "contact_key 'c2'") in message
    assert f"field '{field}'" in message
    assert "Traceback" not in run.stderr


def test_rejections_without_a_rejected_file_hold_state_and_fail_at_the_end(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "column_mapping": MAPPING, "stop_on_error": False}
    del config["rejected_records_path"]
    run = run_target(config, _messages_with_bad_records(), tmp_path)

    assert run.returncode == 1
    assert run.stdout == ""
    assert len(emulator.contacts()) == 7  # everything valid still arrived
    assert "3 record(s) were rejected and no rejected_records_path is set" in run.stderr


def test_api_errors_go_to_the_rejected_file(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    """A custom column the account does not accept: D·engage's own per-record errors."""
    emulator.inject_fault(
        "/rest/bulk/contacts",
        status=200,
        body={
            "code": 0,
            "message": "Success",
            "data": {
                "inserted": ["c1"],
                "updated": [],
                "errors": [{"contact_key": "c2", "message": "Blocked by brand rules"}],
                "warnings": [],
            },
        },
    )
    config = {**base_config, "column_mapping": MAPPING, "stop_on_error": False}
    run = run_target(
        config, [schema(), *[record(**contact(i)) for i in (1, 2)], state({"p": 2})], tmp_path
    )

    assert run.returncode == 0, run.stderr
    rejected = _rejected(Path(config["rejected_records_path"]))
    assert [(r["contact_key"], r["source"], r["reason"]) for r in rejected] == [
        ("c2", "api", "Blocked by brand rules")
    ]
    assert rejected[0]["record_number"] == 2
    assert run.states == [{"p": 2}]
    assert run.summary["contacts"]["rejected_by_api"] == 1


def test_relogin_after_401_mid_run(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault("/rest/bulk/contacts", count=1)
    emulator.inject_fault("/rest/bulk/contacts", status=401, count=1)
    config = {**base_config, "column_mapping": MAPPING, "batch_size_rows": 2}
    run = run_target(
        config, [schema(), *[record(**contact(i)) for i in range(1, 6)], state({"p": 5})], tmp_path
    )

    assert run.returncode == 0, run.stderr
    assert emulator.login_count() == 2
    assert len(emulator.contacts()) == 5
    assert run.states == [{"p": 5}]


def test_token_expired_mid_run_is_renewed(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    def expire_after_first_call() -> None:
        deadline = time.monotonic() + 30
        while not emulator.bulk_calls() and time.monotonic() < deadline:
            time.sleep(0.01)
        emulator.expire_tokens()

    expirer = threading.Thread(target=expire_after_first_call)
    expirer.start()
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "batch_size_rows": 1,
        "request_interval_seconds": 1,
    }
    run = run_target(config, [schema(), *[record(**contact(i)) for i in range(1, 3)]], tmp_path)
    expirer.join()

    assert run.returncode == 0, run.stderr
    assert [c["status"] for c in emulator.bulk_calls()] == [200, 401, 200]
    assert emulator.login_count() == 2
    assert len(emulator.contacts()) == 2


def test_pre_issued_token_that_is_refused_fails_clearly(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {"api_url": emulator.url, "access_token": STATIC_TOKEN, "request_interval_seconds": 0}
    ok = run_target(config, [schema(), record(**contact(1))], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert emulator.login_count() == 0

    emulator.expire_tokens()
    run = run_target(config, [schema(), record(**contact(2)), state({"p": 1})], tmp_path)
    assert run.returncode == 1
    assert run.stdout == ""
    assert "access_token is expired or invalid" in run.stderr


@pytest.mark.parametrize("where", ["login", "bulk"])
def test_403_names_allowlist_credentials_and_role(
    where: str, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "column_mapping": MAPPING}
    if where == "login":
        config["password"] = "wrong-password"
    else:
        emulator.inject_fault(
            "/rest/bulk/contacts", status=403, body={"code": 10, "message": "Forbidden"}
        )
    run = run_target(config, [schema(), record(**contact(1)), state({"p": 1})], tmp_path)

    assert run.returncode == 1
    assert run.stdout == ""
    assert "allowlist" in run.stderr
    assert "credentials" in run.stderr or "password" in run.stderr
    assert ("DataSpace.Manage" in run.stderr) == (where == "bulk")
    assert "Traceback" not in run.stderr


def test_400_fails_with_the_api_message(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault(
        "/rest/bulk/contacts",
        status=400,
        body={
            "code": 11,
            "message": "ValidationFails",
            "data": {
                "errors": [{"contact_key": "c1", "field": "name", "message": "Name is blocked"}]
            },
        },
    )
    run = run_target(
        {**base_config, "column_mapping": MAPPING},
        [schema(), record(**contact(1)), state({"p": 1})],
        tmp_path,
    )

    assert run.returncode == 1
    assert run.stdout == ""
    assert "HTTP 400 (code 11): ValidationFails" in run.stderr
    assert (
        "stream 'contacts', record 1, contact_key 'c1', field 'name': Name is blocked" in run.stderr
    )


def test_two_500s_then_success_delivers_each_contact_once(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault("/rest/bulk/contacts", status=500, count=2)
    config = {**base_config, "column_mapping": MAPPING}
    run = run_target(
        config, [schema(), *[record(**contact(i)) for i in range(1, 4)], state({"p": 3})], tmp_path
    )

    assert run.returncode == 0, run.stderr
    assert [c["status"] for c in emulator.bulk_calls()] == [500, 500, 200]
    assert len(emulator.contacts()) == 3
    assert run.states == [{"p": 3}]
    assert run.summary["retries"] == 2


def test_429_is_retried(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault("/rest/bulk/contacts", status=429, count=1)
    run = run_target(
        {**base_config, "column_mapping": MAPPING}, [schema(), record(**contact(1))], tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert [c["status"] for c in emulator.bulk_calls()] == [429, 200]


@pytest.mark.parametrize("credentials", ["password", "token"])
def test_secrets_never_reach_the_logs(
    credentials: str, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "column_mapping": MAPPING}
    if credentials == "token":
        del config["userkey"], config["password"]
        config["access_token"] = STATIC_TOKEN
    emulator.inject_fault("/rest/bulk/contacts", status=500, count=1)
    run = run_target(
        config,
        [schema(), *[record(**contact(i)) for i in range(1, 4)], state({"p": 3})],
        tmp_path,
        env={"TARGET_DENGAGE_LOGLEVEL": "DEBUG", "LOGLEVEL": "DEBUG"},
    )
    assert run.returncode == 0, run.stderr
    assert "DEBUG" in run.stderr
    assert PASSWORD not in run.stderr
    assert STATIC_TOKEN not in run.stderr
    assert "Bearer" not in run.stderr
    assert "user.c1@example.com" not in run.stderr.lower()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"password": None}, "Not set: password"),
        ({"userkey": None, "password": None}, "Not set: userkey, password"),
        ({"access_token": "x"}, "not both"),
        ({"mode": "turbo"}, "turbo"),
        ({"api_url": "http://api.example.com"}, "api_url must use https"),
        ({"batch_size_rows": 1001}, "batch_size_rows"),
        ({"column_mapping": {"x": "email_status_reason"}}, "maintained by D·engage"),
        ({"column_mapping": {"x": "shoe_size"}}, "neither a master_contact column"),
    ],
)
def test_config_errors_name_what_is_wrong(
    change: dict[str, Any], expected: str, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {k: v for k, v in {**base_config, **change}.items() if v is not None}
    run = run_target(config, [], tmp_path)
    assert run.returncode == 1
    assert expected in run.stderr


def test_stream_without_contact_key_is_refused_at_schema(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    messages = [schema(properties=("email", "name"), key_properties=()), record(email="a@b.co")]
    run = run_target(base_config, messages, tmp_path)
    assert run.returncode == 1
    assert "Stream 'contacts' has no contact_key" in run.stderr
    assert 'column_mapping: {"customer_id": "contact_key"}' in run.stderr
    assert emulator.request_log() == []


def test_malformed_input_fails_clearly(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    secret_line = (
        '{"type": "RECORD", "stream": "contacts", "record": {"email": "private@example.com"'
    )
    run = run_target(base_config, [schema(), secret_line], tmp_path)
    assert run.returncode == 1
    assert "Input line 2 is not valid JSON" in run.stderr
    assert "private@example.com" not in run.stderr

    run = run_target(base_config, [record(id="1")], tmp_path)
    assert run.returncode == 1
    assert "before a corresponding schema" in run.stderr
