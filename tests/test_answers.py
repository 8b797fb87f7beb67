"""Whatever D·engage (or something in front of it) answers, no STATE passes what it did not
confirm, credentials go to api_url alone, and what reaches the log is masked and bounded.

Each bad answer is injected into the real emulator and the real CLI runs against it; then a
second run against a healthy emulator must store everything (nothing was skipped as
"unchanged" by a ledger that believed a bad answer).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    MAPPING,
    PASSWORD,
    STATIC_TOKEN,
    USERKEY,
    Run,
    contact,
    record,
    run_target,
    schema,
    state,
)

from target_dengage.emulator import DengageEmulator

BULK = "/rest/bulk/contacts"
SUBMIT = "/rest/bulk/async/contacts"
POLL = "/rest/bulk/async/contacts/"
LOGIN = "/rest/login"
N = 6
KEYS = {f"c{i}" for i in range(1, N + 1)}

#: A bad answer: the fault's arguments, and a word the run's error must contain.
Fault = tuple[dict[str, Any], str]

#: Answers that are not a confirmation, for the endpoint that takes the contacts.
NOT_CONFIRMATIONS: dict[str, Fault] = {
    "code-999": (
        {"status": 200, "body": {"code": 999, "message": "UnexpectedError", "data": None}},
        "code 999",
    ),
    "unknown-code": ({"status": 200, "body": {"code": 42, "message": "Odd"}}, "code 42"),
    "html-page": (
        {
            "status": 200,
            "raw_body": "<html><body><h1>Down for maintenance</h1></body></html>",
            "headers": {"Content-Type": "text/html"},
        },
        "without a JSON object",
    ),
    "plain-ok": ({"status": 200, "raw_body": "OK"}, "without a JSON object"),
    "empty-body": ({"status": 200, "raw_body": ""}, "an empty body"),
    "json-array": ({"status": 200, "body": []}, "without a JSON object"),
    "no-content": ({"status": 204, "raw_body": ""}, "HTTP 204"),
    "cut-off": (
        {"status": 200, "body": {"code": 0, "message": "Success", "data": {}}, "cut_off": True},
        "cut off",
    ),
    "bogus-gzip": (
        {
            "status": 200,
            "body": {"code": 0, "message": "Success"},
            "headers": {"Content-Encoding": "gzip"},
        },
        "could not be decoded",
    ),
    "huge": ({"status": 200, "raw_body": "x" * (21 * 1024 * 1024)}, "too large"),
}
#: The same, but the status is right for one endpoint only.
WRONG_STATUS: dict[str, Fault] = {
    "sync-202": ({"status": 202, "body": {"code": 0, "message": "Accepted"}}, "HTTP 202"),
    "async-200": (
        {"status": 200, "body": {"transactionId": "t-1", "code": 0, "message": "OK"}},
        "HTTP 200",
    ),
}
#: Refusals of the data inside a 2xx: handled like a 400.
REFUSALS: dict[str, Fault] = {
    "code-11": (
        {"status": 200, "body": {"code": 11, "message": "ValidationFails", "data": None}},
        "code 11",
    ),
    "has-error": (
        {"status": 200, "body": {"code": 0, "message": "Failed", "data": {"HasError": True}}},
        "HasError",
    ),
}
REDIRECTS: dict[str, Fault] = {
    "302": ({"status": 302, "headers": {"Location": "http://elsewhere.invalid/x"}}, "elsewhere"),
    "307": ({"status": 307, "headers": {"Location": "http://elsewhere.invalid/x"}}, "elsewhere"),
}


def _messages() -> list[dict[str, Any]]:
    return [schema(), *(record(**contact(i)) for i in range(1, N + 1)), state({"position": N})]


def _config(base: dict[str, Any], tmp_path: Path, mode: str, ledger: bool) -> dict[str, Any]:
    config = {
        **base,
        "column_mapping": MAPPING,
        "mode": mode,
        "max_retries": 1,
        "request_timeout_seconds": 1,
        "poll_interval_seconds": 0,
        "job_journal_path": str(tmp_path / "jobs.json"),
    }
    if ledger:
        config["change_detection"] = True
        config["ledger_url"] = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return config


def _ledger_keys(config: dict[str, Any]) -> set[str]:
    url = config.get("ledger_url")
    path = Path(url.removeprefix("sqlite:///")) if url else None
    if path is None or not path.exists():
        return set()
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT contact_key FROM dengage_contact_ledger")}


def _assert_not_confirmed(run: Run, emulator: DengageEmulator, word: str) -> None:
    """The user's view of a call that was never confirmed: a failed run that says why."""
    assert run.returncode != 0
    assert run.states == []
    assert "Traceback" not in run.stderr
    assert word in run.stderr, run.stderr[-2000:]
    assert not KEYS & set(emulator.contacts())


def _assert_healthy_rerun_stores_all(
    emulator: DengageEmulator, config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.reset()
    healed = run_target(config, _messages(), tmp_path)
    assert healed.returncode == 0, healed.stderr
    assert healed.states == [{"position": N}]
    assert set(emulator.contacts()) >= KEYS
    assert _ledger_keys(config) <= set(emulator.contacts())


def _run_with_fault(
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
    fault: dict[str, Any],
    *,
    mode: str,
    ledger: bool,
) -> tuple[dict[str, Any], Run]:
    """One run whose bulk requests (sync calls, or async submits) all get ``fault``."""
    config = _config(base_config, tmp_path, mode, ledger)
    emulator.inject_fault(BULK if mode == "sync" else SUBMIT, count=10, **fault)
    return config, run_target(config, _messages(), tmp_path)


def _cases(*tables: dict[str, Fault]) -> list[Any]:
    return [pytest.param(*fault, id=name) for table in tables for name, fault in table.items()]


@pytest.mark.parametrize("ledger", [False, True], ids=["plain", "change-detection"])
@pytest.mark.parametrize(
    ("fault", "word"), _cases(NOT_CONFIRMATIONS, {"sync-202": WRONG_STATUS["sync-202"]})
)
def test_sync_answer_that_is_not_a_confirmation_is_retried_then_fails(
    fault: dict[str, Any],
    word: str,
    ledger: bool,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config, run = _run_with_fault(
        emulator, base_config, tmp_path, fault, mode="sync", ledger=ledger
    )

    _assert_not_confirmed(run, emulator, word)
    assert "did not accept POST /rest/bulk/contacts after 2 tries" in run.stderr
    assert len(emulator.bulk_calls()) == 2  # one try and one retry (max_retries: 1)
    assert _ledger_keys(config) == set()
    _assert_healthy_rerun_stores_all(emulator, config, tmp_path)


@pytest.mark.parametrize("ledger", [False, True], ids=["plain", "change-detection"])
@pytest.mark.parametrize(
    ("fault", "word"), _cases(NOT_CONFIRMATIONS, {"async-200": WRONG_STATUS["async-200"]})
)
def test_async_submit_answer_that_is_not_a_confirmation_is_retried_then_fails(
    fault: dict[str, Any],
    word: str,
    ledger: bool,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config, run = _run_with_fault(
        emulator, base_config, tmp_path, fault, mode="async", ledger=ledger
    )

    _assert_not_confirmed(run, emulator, word)
    assert "did not accept POST /rest/bulk/async/contacts after 2 tries" in run.stderr
    assert _ledger_keys(config) == set()
    _assert_healthy_rerun_stores_all(emulator, config, tmp_path)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("fault", "word"), _cases(REFUSALS))
def test_refusal_inside_a_2xx_is_a_refusal_of_the_data(
    fault: dict[str, Any],
    word: str,
    mode: str,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config, run = _run_with_fault(emulator, base_config, tmp_path, fault, mode=mode, ledger=True)

    _assert_not_confirmed(run, emulator, word)
    assert "D·engage refused POST" in run.stderr
    _assert_healthy_rerun_stores_all(emulator, config, tmp_path)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("fault", "word"), _cases(REDIRECTS))
def test_redirect_is_never_followed(
    fault: dict[str, Any],
    word: str,
    mode: str,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config, run = _run_with_fault(emulator, base_config, tmp_path, fault, mode=mode, ledger=True)

    _assert_not_confirmed(run, emulator, word)
    assert "never follows redirects" in run.stderr
    assert len([c for c in emulator.request_log() if c["path"] != LOGIN]) == 1  # no retry
    _assert_healthy_rerun_stores_all(emulator, config, tmp_path)


@pytest.mark.parametrize(("fault", "word"), _cases(NOT_CONFIRMATIONS))
def test_one_bad_answer_is_retried_and_the_load_completes(
    fault: dict[str, Any],
    word: str,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config = _config(base_config, tmp_path, "sync", ledger=True)
    emulator.inject_fault(BULK, count=1, **fault)
    run = run_target(config, _messages(), tmp_path)

    assert run.returncode == 0, run.stderr
    assert run.states == [{"position": N}]
    assert word in run.stderr
    assert "retry 1 of 1" in run.stderr
    assert set(emulator.contacts()) >= KEYS
    assert _ledger_keys(config) == KEYS


def test_job_status_with_a_non_zero_code_is_not_done(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(base_config, tmp_path, "async", ledger=True)
    body = {"code": 999, "message": "UnexpectedError", "data": {"status": "Completed"}}
    emulator.inject_fault(POLL, status=200, count=10, body=body)
    run = run_target(config, _messages(), tmp_path)

    assert run.returncode != 0
    assert run.states == []
    assert "code 999" in run.stderr
    assert "Traceback" not in run.stderr
    assert _ledger_keys(config) == set()
    _assert_healthy_rerun_stores_all(emulator, config, tmp_path)


def test_async_submit_without_a_job_id_fails_the_submit(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(base_config, tmp_path, "async", ledger=False)
    emulator.inject_fault(SUBMIT, status=202, body={"code": 0, "message": "Accepted"})
    run = run_target(config, _messages(), tmp_path)

    assert run.returncode != 0
    assert run.states == []
    assert "no readable job id" in run.stderr
    assert "Traceback" not in run.stderr
    _assert_healthy_rerun_stores_all(emulator, config, tmp_path)


@pytest.mark.parametrize("ledger", [False, True], ids=["plain", "change-detection"])
def test_two_submits_answered_with_one_job_id(
    ledger: bool, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    """The first job fails; the second submit is answered with the first one's id. Nothing
    of either may be covered by a STATE."""
    config = {**_config(base_config, tmp_path, "async", ledger), "batch_size_rows": 3}
    emulator.fail_next_jobs(1)
    emulator.repeat_job_ids(2)  # the first submit has no earlier id to repeat
    emulator.set_next_job_durations([3600])  # the first job is still running when the id repeats
    messages = [schema(), *(record(**contact(i)) for i in range(1, N + 1))]
    messages[4:4] = [state({"position": 3})]
    run = run_target(config, [*messages, state({"position": N})], tmp_path)

    assert run.returncode != 0
    assert run.states == []
    assert "already given to an earlier job of this run" in run.stderr
    assert "Traceback" not in run.stderr
    assert _ledger_keys(config) == set()
    Path(config["job_journal_path"]).unlink()  # the hung job is D·engage's, not the rerun's
    _assert_healthy_rerun_stores_all(emulator, config, tmp_path)


def test_answer_naming_contacts_it_was_not_sent_is_bounded(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    """50,003 errors for a 6-contact request, none of them about its contacts: the six are
    counted once each, reported as not named by the answer, and left out of the ledger."""
    config = _config(base_config, tmp_path, "sync", ledger=True)
    errors = [{"contact_key": f"x{i}", "message": "bad"} for i in range(50_003)]
    body = {"code": 0, "message": "Success", "data": {"inserted": [], "errors": errors}}
    emulator.inject_fault(BULK, status=200, body=body)
    run = run_target(config, _messages(), tmp_path)

    assert run.returncode == 0, run.stderr
    contacts = run.summary["contacts"]
    assert contacts["confirmed"] == N
    assert contacts["rejected_by_api"] == 0
    assert contacts["unaccounted_by_api"] == N
    assert f"does not name {N} of them" in run.stderr
    assert "50003 contact key(s) that the request did not carry" in run.stderr
    assert _ledger_keys(config) == set()

    second = run_target(config, _messages(), tmp_path)  # the ledger skips none of them
    assert second.returncode == 0, second.stderr
    assert set(emulator.contacts()) >= KEYS
    assert _ledger_keys(config) == KEYS


def test_drip_fed_answer_ends_within_the_timeout(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    """An answer that would take ten minutes to arrive byte by byte counts as none."""
    config = _config(base_config, tmp_path, "sync", ledger=False)
    body = {"code": 0, "message": "Success " + "." * 1200}
    emulator.inject_fault(BULK, status=200, count=10, body=body, drip_seconds=0.5)
    run = run_target(config, _messages(), tmp_path)

    _assert_not_confirmed(run, emulator, "no answer within request_timeout_seconds (1 s)")
    _assert_healthy_rerun_stores_all(emulator, config, tmp_path)


def test_login_redirect_sends_no_credentials_elsewhere(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    with DengageEmulator(userkey=USERKEY, password=PASSWORD) as elsewhere:
        emulator.inject_fault(LOGIN, status=307, headers={"Location": elsewhere.url + LOGIN})
        run = run_target({**base_config, "column_mapping": MAPPING}, _messages(), tmp_path)
        assert elsewhere.request_log() == []
    assert run.returncode != 0
    assert run.states == []
    assert "never follows redirects" in run.stderr
    assert "127.0.0.1" in run.stderr


def test_netrc_never_replaces_our_credentials(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone-else password their-secret\n")
    netrc.chmod(0o600)
    for config in (
        {**base_config, "column_mapping": MAPPING},
        {
            **{k: v for k, v in base_config.items() if k not in ("userkey", "password")},
            "access_token": STATIC_TOKEN,
            "column_mapping": MAPPING,
        },
    ):
        emulator.reset()
        run = run_target(config, _messages(), tmp_path, env={"NETRC": str(netrc)})
        assert run.returncode == 0, run.stderr  # a Basic header would have been a 401
        assert run.states == [{"position": N}]
        logins = [c for c in emulator.request_log() if c["path"] == LOGIN]
        assert all(c["authorization"] is False for c in logins)


def test_api_url_with_credentials_is_refused(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    url = emulator.url.replace("http://", "http://someone:url-secret@")
    config = {**base_config, "api_url": url, "column_mapping": MAPPING}
    run = run_target(config, _messages(), tmp_path)

    assert run.returncode != 0
    assert "must not hold a user name or password" in run.stderr
    assert "url-secret" not in run.stderr
    assert emulator.request_log() == []
    cache = tmp_path / "cache"
    assert not any("url-secret" in p.read_text() for p in cache.rglob("*") if p.is_file())


def test_answer_text_is_masked_bounded_and_never_quotes_the_password(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    echo = f"echo of the request: password={PASSWORD} for Jane.Doe@Example.com, 905351234567"
    emulator.inject_fault(BULK, status=503, body={"code": 999, "message": echo})
    emulator.inject_fault(BULK, status=400, body={"code": 1, "message": echo + " x" * 50_000})
    config = {**base_config, "column_mapping": MAPPING}
    run = run_target(config, _messages(), tmp_path)  # run_target checks secrets and emails

    assert run.returncode != 0
    assert "[redacted]" in run.stderr
    assert "J***@Example.com" in run.stderr
    assert "905351234567" not in run.stderr
    assert max(len(line) for line in run.stderr.splitlines()) < 3000


def test_login_answer_that_echoes_the_password_is_not_quoted(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    body = {"code": 1, "message": json.dumps({"userkey": USERKEY, "password": PASSWORD})}
    emulator.inject_fault(LOGIN, status=400, body=body)
    run = run_target({**base_config, "column_mapping": MAPPING}, _messages(), tmp_path)
    assert run.returncode != 0
    assert "refused the login with HTTP 400" in run.stderr
    assert "[redacted]" in run.stderr


@pytest.mark.parametrize("value", ["inf", "-5", "soon", "nan", "1e400"])
def test_unusable_retry_after_falls_back_to_backoff(
    value: str, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault(BULK, status=503, headers={"Retry-After": value})
    run = run_target({**base_config, "column_mapping": MAPPING}, _messages(), tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Ignoring the unusable Retry-After" in run.stderr
    assert run.states == [{"position": N}]


@pytest.mark.parametrize("lifetime", ['"NaN"', "-1", "0", '"soon"', "null", "1e400", "true"])
def test_odd_token_lifetime_falls_back_to_the_default(
    lifetime: str, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    body = f'{{"access_token": "{STATIC_TOKEN}", "expires_in": {lifetime}}}'
    emulator.inject_fault(LOGIN, status=200, raw_body=body)
    run = run_target({**base_config, "column_mapping": MAPPING}, _messages(), tmp_path)
    assert run.returncode == 0, run.stderr
    assert "not a positive number of seconds; assuming 3600 s" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.states == [{"position": N}]


def test_bodies_carry_both_stop_on_error_flags(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    for stop in (True, False):
        config = {
            **base_config,
            "column_mapping": MAPPING,
            "stop_on_error": stop,
            "dry_run": True,
            "dry_run_output_path": str(tmp_path / "bodies.jsonl"),
        }
        run = run_target(config, _messages(), tmp_path)
        assert run.returncode == 0, run.stderr
        body = json.loads((tmp_path / "bodies.jsonl").read_text().splitlines()[0])
        assert body["stopOnError"] is stop
        assert body["throwExceptionIfInvalidRecord"] is stop
