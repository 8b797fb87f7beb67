"""Source deletes (``_sdc_deleted_at``, as taps in LOG_BASED mode send them): a contact
deleted in the source is never sent as data, so never re-created or re-filled; with
``delete_behavior: passivate`` it is passivated, in requests that cannot create a contact."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MAPPING, contact, record, run_target, schema, state

from target_dengage.emulator import DengageEmulator

PROPS = ("id", "email", "phone", "first_name", "dob", "_sdc_deleted_at", "_sdc_lsn")
DELETED = "2026-11-24 18:26:59.123+00"  # PostgreSQL's text form, as tap-postgres sends it


def _deleted(i: int, *, whole_row: bool = True) -> dict[str, Any]:
    """A delete as tap-postgres sends it: REPLICA IDENTITY FULL (the old row) or DEFAULT
    (the key alone, the rest null)."""
    values = contact(i) if whole_row else {"id": f"c{i}"}
    values = {**values, "first_name": f"Old{i}"} if whole_row else values
    return record(**values, _sdc_deleted_at=DELETED, _sdc_lsn=1000 + i)


def _upsert(i: int, **changes: Any) -> dict[str, Any]:
    return record(**{**contact(i), **changes}, _sdc_deleted_at=None, _sdc_lsn=i)


def _config(base: dict[str, Any], tmp_path: Path, behavior: str, mode: str, ledger: bool):
    config = {
        **base,
        "column_mapping": MAPPING,
        "delete_behavior": behavior,
        "mode": mode,
        "poll_interval_seconds": 0,
        "job_journal_path": str(tmp_path / "jobs.json"),
    }
    if ledger:
        config.update(change_detection=True, ledger_url=f"sqlite:///{tmp_path / 'l.sqlite'}")
    return config


def _load(emulator: DengageEmulator, config: dict[str, Any], tmp_path: Path, *keys: int) -> None:
    first = run_target(
        {**config, "delete_behavior": "ignore"},
        [schema(properties=PROPS), *(_upsert(i) for i in keys), state({"lsn": 1})],
        tmp_path,
    )
    assert first.returncode == 0, first.stderr


@pytest.mark.parametrize("ledger", [False, True], ids=["plain", "change-detection"])
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("whole_row", [True, False], ids=["identity-full", "identity-default"])
def test_passivate_marks_deleted_contacts_passive_and_creates_none(
    whole_row: bool,
    mode: str,
    ledger: bool,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config = _config(base_config, tmp_path, "passivate", mode, ledger)
    _load(emulator, config, tmp_path, 1, 2, 3)
    before = emulator.contacts()
    messages = [
        schema(properties=PROPS),
        _upsert(1, first_name="Changed"),
        _deleted(2, whole_row=whole_row),
        _deleted(9, whole_row=whole_row),  # a key D·engage never had
        _upsert(4),
        state({"lsn": 2}),
    ]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert run.states == [{"lsn": 2}]
    stored = emulator.contacts()
    assert stored["c2"]["contact_status"] == "P"
    assert {k: v for k, v in stored["c2"].items() if k != "contact_status"} == {
        k: v for k, v in before["c2"].items() if k != "contact_status"
    }  # passivated, not re-filled with the old row
    assert "c9" not in stored  # nothing created
    assert stored["c1"]["name"] == "Changed"
    assert "c4" in stored
    deletes = run.summary["deletes"]
    assert deletes == {
        "ignored": 0,
        "to_passivate": 2,
        "passivated": 1,
        "not_found": 1,
        "reactivated": 0,
    }
    passivations = [
        body for body in _bodies(emulator) if body["columns"] == ["contact_key", "contact_status"]
    ]
    assert [sorted(r["contact_key"] for r in b["contactDatas"]) for b in passivations] == [
        ["c2", "c9"]
    ]
    assert "2 deleted record(s) sent as passivations" in run.stderr


def _bodies(emulator: DengageEmulator) -> list[dict[str, Any]]:
    return [
        {"columns": call["columns"], "contactDatas": [{"contact_key": k} for k in keys]}
        for call in emulator.request_log()
        if call["method"] == "POST"
        and str(call["path"]).startswith("/rest/bulk")
        and (keys := call["contact_keys"])
    ]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_ignore_sends_nothing_for_a_delete(
    mode: str, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(base_config, tmp_path, "ignore", mode, ledger=False)
    _load(emulator, config, tmp_path, 1, 2)
    before = emulator.contacts()
    messages = [schema(properties=PROPS), _deleted(2), _deleted(9), _upsert(3), state({"l": 2})]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert run.states == [{"l": 2}]
    stored = emulator.contacts()
    assert stored["c2"] == before["c2"]  # not re-filled with the deleted row
    assert "c9" not in stored  # not re-created
    assert "c3" in stored
    assert run.summary["deletes"]["ignored"] == 2
    assert "2 deleted record(s) were not sent (delete_behavior: ignore)" in run.stderr
    assert "delete_behavior: passivate would passivate" in run.stderr


@pytest.mark.parametrize("behavior", ["ignore", "passivate"])
def test_the_later_event_wins_within_one_run(
    behavior: str, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(base_config, tmp_path, behavior, "sync", ledger=False)
    messages = [
        schema(properties=PROPS),
        _upsert(7),
        _deleted(7),  # inserted then deleted in the source: must not exist
        _deleted(8),
        _upsert(8, first_name="Back"),  # deleted then inserted again: active
        state({"l": 1}),
    ]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    stored = emulator.contacts()
    assert "c7" not in stored
    assert stored["c8"]["name"] == "Back"
    assert stored["c8"].get("contact_status", "A") == "A"


@pytest.mark.parametrize("stop_on_error", [True, False])
def test_a_delete_marker_that_is_not_a_date_time_is_an_invalid_record(
    stop_on_error: bool, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **_config(base_config, tmp_path, "passivate", "sync", ledger=False),
        "stop_on_error": stop_on_error,
    }
    bad = record(**contact(2), _sdc_deleted_at="yesterday", _sdc_lsn=2)
    messages = [schema(properties=PROPS), _upsert(1), bad, _upsert(3), state({"l": 1})]
    run = run_target(config, messages, tmp_path)

    assert "Traceback" not in run.stderr
    assert "field '_sdc_deleted_at' is not a date-time" in run.stderr
    assert "record 2" in run.stderr
    if stop_on_error:
        assert run.returncode == 1
        assert run.states == []
    else:
        assert run.returncode == 0, run.stderr
        assert {"c1", "c3"} <= set(emulator.contacts())
        assert "c2" not in emulator.contacts()
        rejected = Path(config["rejected_records_path"]).read_text().splitlines()
        assert json.loads(rejected[0])["field"] == "_sdc_deleted_at"


def test_dry_run_plans_passivations(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **_config(base_config, tmp_path, "passivate", "sync", ledger=False),
        "dry_run": True,
        "dry_run_output_path": str(tmp_path / "bodies.jsonl"),
    }
    messages = [schema(properties=PROPS), _upsert(1), _deleted(2), state({"l": 1})]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert "to passivate ......... 1" in run.stderr
    bodies = [json.loads(b) for b in (tmp_path / "bodies.jsonl").read_text().splitlines()]
    passivation = next(b for b in bodies if b["columns"] == ["contact_key", "contact_status"])
    assert passivation["insertIfNotExists"] is False
    assert passivation["contactDatas"] == [{"contact_key": "c2", "contact_status": "P"}]
    assert emulator.request_log() == []


def test_sigkill_during_passivations_then_rerun_lands_every_one(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **_config(base_config, tmp_path, "passivate", "sync", ledger=False),
        "batch_size_rows": 5,
    }
    _load(emulator, config, tmp_path, *range(1, 21))
    loads = len(emulator.bulk_calls())
    messages = [schema(properties=PROPS), *(_deleted(i) for i in range(1, 21)), state({"l": 9})]
    emulator.inject_fault("/rest/bulk/contacts", hang_seconds=2, count=1)  # slow, then applied

    def in_flight() -> bool:
        calls = emulator.bulk_calls()[loads:]
        return bool(calls) and calls[0]["replied"] is None

    crashed = run_target(config, messages, tmp_path, kill_when=in_flight)
    assert crashed.returncode != 0
    assert crashed.states == []  # killed in the middle of the first passivation request
    while emulator.bulk_calls()[loads]["replied"] is None:  # let D·engage finish it
        time.sleep(0.01)

    rerun = run_target(config, messages, tmp_path)  # the orchestrator resends from its STATE
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.states == [{"l": 9}]
    assert {k: c.get("contact_status") for k, c in emulator.contacts().items()} == {
        f"c{i}": "P" for i in range(1, 21)
    }
