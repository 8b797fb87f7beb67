"""change_detection: only contacts that changed since D·engage confirmed them are sent."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import MAPPING, contact, record, run_target, schema, state
from pgserver import Server

from target_dengage.emulator import DengageEmulator

BULK = "/rest/bulk/contacts"


def _messages(n: int, *, changed_every: int = 0, first: int = 1) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [schema()]
    for i in range(first, n + 1):
        values = contact(i)
        if changed_every and i % changed_every == 0:
            values["first_name"] = f"Changed{i}"
        messages.append(record(**values))
    messages.append(state({"position": n}))
    return messages


def _ledger_keys(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("select contact_key from dengage_contact_ledger")}


@pytest.fixture
def sqlite_config(base_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {
        **base_config,
        "column_mapping": MAPPING,
        "change_detection": True,
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
    }


def _three_runs(
    emulator: DengageEmulator, config: dict[str, Any], tmp_path: Path, cwd: list[Path]
) -> None:
    """20,000 new; the same again (nothing sent); 1 % changed in one column (those sent)."""
    first = run_target(config, _messages(20_000), cwd[0])
    assert first.returncode == 0, first.stderr
    assert first.summary["contacts"]["sent"] == 20_000
    assert len(emulator.bulk_calls()) == 20

    second = run_target(config, _messages(20_000), cwd[1 % len(cwd)])
    assert second.returncode == 0, second.stderr
    assert len(emulator.bulk_calls()) == 20  # no bulk request at all
    assert second.states == [{"position": 20_000}]
    assert second.summary["contacts"]["unchanged"] == 20_000
    assert "unchanged (ledger) .. 20000" in second.stderr

    third = run_target(config, _messages(20_000, changed_every=100), cwd[0])
    assert third.returncode == 0, third.stderr
    calls = emulator.bulk_calls()[20:]
    assert len(calls) == 1
    assert sorted(calls[0]["contact_keys"]) == sorted(f"c{i}" for i in range(100, 20_001, 100))
    assert emulator.contacts()["c300"]["name"] == "Changed300"
    assert third.summary["contacts"]["unchanged"] == 19_800


def test_only_changed_contacts_are_sent(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    _three_runs(emulator, sqlite_config, tmp_path, [tmp_path])


def test_a_shared_postgresql_ledger_serves_runs_from_different_directories(
    emulator: DengageEmulator, postgres: Server, base_config: dict[str, Any], tmp_path: Path
) -> None:
    postgres.sql("DROP TABLE IF EXISTS dengage_contact_ledger;")
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "change_detection": True,
        "ledger_url": f"postgresql+psycopg2://{postgres.user}@{postgres.host}:{postgres.port}/"
        f"{postgres.database}",
    }
    machines = [tmp_path / "worker-a", tmp_path / "worker-b"]
    for directory in machines:
        directory.mkdir()
    _three_runs(emulator, config, tmp_path, machines)
    assert postgres.sql("SELECT count(*) FROM dengage_contact_ledger;").strip() == "20000"


def test_a_crash_before_confirmation_leaves_those_contacts_out_of_the_ledger(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault(BULK, count=1)
    emulator.inject_fault(BULK, status=500, hang_seconds=60)  # the second request never returns
    # Killed once the second request is in D·engage's hands (it never returns): the first
    # one's answer was booked before the second was sent.
    crashed = run_target(
        sqlite_config,
        _messages(2000),
        tmp_path,
        kill_when=lambda: len(emulator.bulk_calls()) >= 2,
    )

    assert crashed.returncode == -9
    ledger = tmp_path / "ledger.sqlite"
    assert _ledger_keys(ledger) == {f"c{i}" for i in range(1, 1001)}  # only the first request

    rerun = run_target(sqlite_config, _messages(2000), tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.summary["contacts"]["unchanged"] == 1000
    assert rerun.summary["contacts"]["sent"] == 1000
    assert len(emulator.contacts()) == 2000
    assert len(_ledger_keys(ledger)) == 2000


def test_rejected_contacts_are_not_recorded_and_go_again(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    refused = [f"c{i}" for i in range(1, 11)]
    emulator.inject_fault(
        BULK,
        status=200,
        body={
            "code": 0,
            "message": "Success",
            "data": {
                "inserted": [f"c{i}" for i in range(11, 1001)],
                "updated": [],
                "errors": [
                    {"contact_key": k, "message": "Refused by brand rules"} for k in refused
                ],
                "warnings": [],
            },
        },
    )
    config = {**sqlite_config, "stop_on_error": False}
    first = run_target(config, _messages(1000), tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.summary["contacts"]["rejected_by_api"] == 10
    assert _ledger_keys(tmp_path / "ledger.sqlite").isdisjoint(refused)

    again = run_target(config, _messages(1000), tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(emulator.bulk_calls()[-1]["contact_keys"]) == sorted(refused)
    assert again.summary["contacts"]["unchanged"] == 990


def test_ledger_max_age_zero_sends_everything_again(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    assert run_target(sqlite_config, _messages(1500), tmp_path).returncode == 0
    run = run_target({**sqlite_config, "ledger_max_age_days": 0}, _messages(1500), tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.summary["contacts"]["sent"] == 1500
    assert run.summary["contacts"]["unchanged"] == 0


def test_a_later_version_is_never_skipped_behind_an_earlier_one(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    """The ledger holds v1; the input says v2 then v1 again. Skipping v1 as "unchanged"
    would leave v2 in D·engage, though the source's last word is v1."""
    assert (
        run_target(sqlite_config, [schema(), record(id="k", first_name="v1")], tmp_path).returncode
        == 0
    )
    run = run_target(
        sqlite_config,
        [schema(), record(id="k", first_name="v2"), record(id="k", first_name="v1")],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert emulator.contacts()["k"]["name"] == "v1"


def test_dry_run_counts_unchanged_contacts(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    assert run_target(sqlite_config, _messages(3000), tmp_path).returncode == 0
    calls = len(emulator.request_log())
    run = run_target(
        {**sqlite_config, "dry_run": True}, _messages(3000, changed_every=10), tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "unchanged (ledger) ... 2700" in run.stderr
    assert "requests needed ...... 1 sync BulkUpsert calls" in run.stderr
    assert len(emulator.request_log()) == calls  # a dry run calls nothing


def test_the_ledger_command_shows_and_resets_an_account(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    assert run_target(sqlite_config, _messages(50), tmp_path).returncode == 0
    command = [str(Path(sys.executable).with_name("target-dengage-ledger"))]
    url = ["--ledger-url", sqlite_config["ledger_url"]]
    info = subprocess.run([*command, *url, "info"], capture_output=True, text=True, check=True)
    account = f"{emulator.url}|user:test-user"
    assert f"{account}: 50 contacts" in info.stdout

    subprocess.run(
        [*command, *url, "reset", "--account", account], capture_output=True, text=True, check=True
    )
    run = run_target(sqlite_config, _messages(50), tmp_path)
    assert run.summary["contacts"]["sent"] == 50


def _ledger_rows(path: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(path) as db:
        query = "select contact_key, payload_hash, source_hash from dengage_contact_ledger"
        return {key: (payload, source) for key, payload, source in db.execute(query)}


def test_new_text_for_an_unchanged_contact_is_learned_not_sent(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    """A column that is not sent (updated_at) changes in every row: the records' text is
    new, their payload is not. Nothing is sent, and the ledger learns the new text, so the
    next run knows those records without mapping them."""
    properties = ("id", "email", "phone", "first_name", "dob", "updated_at")

    def messages(stamp: str) -> list[dict[str, Any]]:
        rows = (record(**contact(i), updated_at=stamp) for i in range(1, 1001))
        return [schema(properties=properties), *rows, state({"at": stamp})]

    ledger = tmp_path / "ledger.sqlite"
    assert run_target(sqlite_config, messages("2026-11-01"), tmp_path).returncode == 0
    before = _ledger_rows(ledger)
    assert len(before) == 1000
    assert all(source for _, source in before.values())

    second = run_target(sqlite_config, messages("2026-11-02"), tmp_path)
    assert second.returncode == 0, second.stderr
    assert len(emulator.bulk_calls()) == 1
    assert second.summary["contacts"]["unchanged"] == 1000
    assert second.states == [{"at": "2026-11-02"}]
    after = _ledger_rows(ledger)
    assert {k: p for k, (p, _) in after.items()} == {k: p for k, (p, _) in before.items()}
    assert all(after[k][1] != before[k][1] for k in before)  # the new text, learned

    third = run_target(sqlite_config, messages("2026-11-02"), tmp_path)
    assert third.returncode == 0, third.stderr
    assert third.summary["contacts"]["unchanged"] == 1000
    assert _ledger_rows(ledger) == after


def test_a_ledger_from_before_source_hashes_is_upgraded_in_place(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.sqlite"
    assert run_target(sqlite_config, _messages(500), tmp_path).returncode == 0
    with sqlite3.connect(ledger) as db:  # the table as target-dengage 0.1 made it
        db.execute("ALTER TABLE dengage_contact_ledger DROP COLUMN source_hash")

    run = run_target(sqlite_config, _messages(500), tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(emulator.bulk_calls()) == 1  # compared by payload: nothing sent
    assert run.summary["contacts"]["unchanged"] == 500
    assert all(source for _, source in _ledger_rows(ledger).values())


def test_a_changed_mapping_is_compared_by_payload_again(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    """Text hashes are tied to the stream's mapping: with another mapping the same text may
    make another row, so it is compared by payload; the same payload is still not sent."""
    properties = ("id", "email", "phone", "first_name", "dob", "tier")
    messages = [schema(properties=properties), *(record(**contact(i)) for i in range(1, 301))]
    assert run_target(sqlite_config, messages, tmp_path).returncode == 0
    sources = {k: s for k, (_, s) in _ledger_rows(tmp_path / "ledger.sqlite").items()}

    remapped = {**sqlite_config, "custom_columns": ["tier"]}  # tier is null in every record
    run = run_target(remapped, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.summary["contacts"]["unchanged"] == 300
    assert len(emulator.bulk_calls()) == 1
    after = {k: s for k, (_, s) in _ledger_rows(tmp_path / "ledger.sqlite").items()}
    assert all(after[k] != sources[k] for k in sources)


def test_keys_that_need_trimming_are_still_recognised(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path
) -> None:
    messages = [schema(), *(record(**{**contact(i), "id": f"  c{i} "}) for i in range(1, 51))]
    assert run_target(sqlite_config, messages, tmp_path).returncode == 0
    run = run_target(sqlite_config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.summary["contacts"]["unchanged"] == 50
    assert "c7" in emulator.contacts()


@pytest.mark.parametrize("stop_on_error", [True, False])
def test_an_invalid_record_among_known_ones_is_named_and_set_aside(
    emulator: DengageEmulator, sqlite_config: dict[str, Any], tmp_path: Path, stop_on_error: bool
) -> None:
    assert run_target(sqlite_config, _messages(100), tmp_path).returncode == 0
    messages = _messages(100)
    messages[42]["record"]["phone"] = "call me maybe"  # record 42, contact c42
    config = {**sqlite_config, "stop_on_error": stop_on_error}
    run = run_target(config, messages, tmp_path)

    named = "stream 'contacts', record 42, contact_key 'c42'"
    assert named in run.stderr
    assert "field 'gsm' (from property 'phone')" in run.stderr
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [(r["contact_key"], r["field"], r["record"]["phone"]) for r in rejected] == [
        ("c42", "gsm", "call me maybe")
    ]
    if stop_on_error:
        assert run.returncode == 1
        assert run.states == []
    else:
        assert run.returncode == 0, run.stderr
        assert run.summary["contacts"]["unchanged"] == 99
        assert run.states == [{"position": 100}]


def test_a_ledger_that_cannot_be_opened_is_one_clear_error_at_start(
    base_config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "change_detection": True,
        "ledger_url": f"postgresql+psycopg2://someone:ledger-pw-123@127.0.0.1:{port}/crm",
    }
    run = run_target(config, _messages(3), tmp_path)

    assert run.returncode == 1
    assert (
        f"The change-detection ledger cannot be opened (PostgreSQL database 'crm' on "
        f"127.0.0.1:{port})" in run.stderr
    )
    assert "ledger-pw-123" not in run.stderr
    assert "Traceback" not in run.stderr
    assert emulator.request_log() == []
