"""Full-table mirrors (ACTIVATE_VERSION): the contacts a stream's complete version no longer
has are passivated (``delete_behavior: passivate``) or counted (``ignore``), never past the
safety limit, and a passivated contact that comes back is made active again."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import MAPPING, Run, contact, record, run_target, schema, state

from target_dengage.emulator import DengageEmulator

VERSION_1 = 1795544893
VERSION_2 = 1795631293


def _activate(version: int, stream: str = "contacts") -> dict[str, Any]:
    return {"type": "ACTIVATE_VERSION", "stream": stream, "version": version}


def _versioned(i: int, version: int | None, **changes: Any) -> dict[str, Any]:
    message = record(**{**contact(i), **changes})
    if version is not None:
        message["version"] = version
    return message


def _sdk_style(version: int, keys: range | list[int], **extra: Any) -> list[dict[str, Any]]:
    """What an SDK tap sends with emit_activate_version_messages: ACTIVATE_VERSION right
    after SCHEMA, then every record with the version."""
    return [
        schema(),
        _activate(version),
        *(_versioned(i, version) for i in keys),
        state({"bookmarks": {"contacts": {}}, **extra}),
    ]


def _after_style(version: int, keys: range | list[int]) -> list[dict[str, Any]]:
    """What pipelinewise taps send on a later full sync: the records, then ACTIVATE_VERSION."""
    return [
        schema(),
        *(_versioned(i, version) for i in keys),
        _activate(version),
        state({"bookmarks": {"contacts": {"version": version}}}),
    ]


@pytest.fixture
def config(base_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {
        **base_config,
        "column_mapping": MAPPING,
        "delete_behavior": "passivate",
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
    }


def _statuses(emulator: DengageEmulator) -> dict[str, Any]:
    return {key: c.get("contact_status") for key, c in emulator.contacts().items()}


def _ledger(config: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    path = config["ledger_url"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT contact_key, stream, version, passivated FROM dengage_contact_ledger"
        )
        return {row[0]: tuple(row[1:]) for row in rows}


def _ok(run: Run) -> Run:
    assert run.returncode == 0, run.stderr
    return run


@pytest.mark.parametrize("style", [_sdk_style, _after_style], ids=["sdk", "after-records"])
def test_rows_removed_from_the_table_are_passivated_on_the_next_version(
    style: Any, config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    _ok(run_target(config, style(VERSION_1, range(1, 21)), tmp_path))
    assert _ledger(config)["c3"] == ("contacts", VERSION_1, 0)
    before = emulator.contacts()

    run = _ok(run_target(config, style(VERSION_2, [i for i in range(1, 21) if i != 3]), tmp_path))

    stored = emulator.contacts()
    assert stored["c3"]["contact_status"] == "P"
    assert {k: v for k, v in stored["c3"].items() if k != "contact_status"} == {
        k: v for k, v in before["c3"].items() if k != "contact_status"
    }  # only passivated: its other columns kept
    assert all(stored[f"c{i}"].get("contact_status") != "P" for i in range(1, 21) if i != 3)
    assert run.states  # STATE printed once the passivation was confirmed
    assert run.summary["full_table_versions"] == {
        "absent": 1,
        "to_passivate": 1,
        "streams_over_limit": [],
    }
    assert run.summary["deletes"]["passivated"] == 1
    assert run.summary["contacts"]["confirmed"] == 19  # records: the passivation is none
    assert _ledger(config)["c3"] == ("contacts", VERSION_2, 1)
    last = emulator.bulk_calls()[-1]  # passivations go in requests of their own
    assert (last["columns"], last["contact_keys"]) == (["contact_key", "contact_status"], ["c3"])
    assert "passivating 1 contact(s) the source no longer has" in run.stderr

    again = _ok(
        run_target(
            {**config, "max_passivate_percent": 20}, style(VERSION_2 + 1, range(4, 21)), tmp_path
        )
    )
    assert again.summary["full_table_versions"]["absent"] == 2  # c3 is passive already


def test_a_mass_removal_past_the_limit_passivates_nothing_and_fails_the_run(
    config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    _ok(run_target(config, _sdk_style(VERSION_1, range(1, 21)), tmp_path))
    calls = len(emulator.bulk_calls())

    run = run_target(config, _sdk_style(VERSION_2, [1, 2]), tmp_path)

    assert run.returncode != 0
    assert run.states  # the upserts were delivered and STATE printed
    assert len(emulator.bulk_calls()) == calls + 1  # the two upserts; no passivation
    assert all(status != "P" for status in _statuses(emulator).values())
    message = (
        "Stream 'contacts': version 1795631293 lacks 18 of the 20 contact(s) the ledger held "
        "for it (90.0 %), more than max_passivate_percent (10 %); none was passivated."
    )
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert run.summary["status"] == "failed"
    assert run.summary["full_table_versions"]["streams_over_limit"] == ["contacts"]

    lifted = _ok(
        run_target(
            {**config, "max_passivate_percent": 100}, _sdk_style(VERSION_2, [1, 2]), tmp_path
        )
    )
    assert lifted.summary["full_table_versions"]["to_passivate"] == 18
    assert sorted(k for k, s in _statuses(emulator).items() if s == "P") == sorted(
        f"c{i}" for i in range(3, 21)
    )


def test_a_row_that_comes_back_is_active_again(
    config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    _ok(run_target(config, _sdk_style(VERSION_1, range(1, 11)), tmp_path))
    _ok(run_target(config, _sdk_style(VERSION_2, range(2, 11)), tmp_path))
    assert _statuses(emulator)["c1"] == "P"

    back = _ok(run_target(config, _sdk_style(VERSION_2 + 1, range(1, 11)), tmp_path))

    assert _statuses(emulator)["c1"] == "A"
    assert back.summary["deletes"]["reactivated"] == 1
    assert _ledger(config)["c1"][2] == 0  # the ledger forgot the passivation
    sent = [c for c in emulator.bulk_calls() if "c1" in c["contact_keys"]]  # type: ignore[operator]
    assert "contact_status" in sent[-1]["columns"]  # type: ignore[operator]
    again = _ok(run_target(config, _sdk_style(VERSION_2 + 2, range(1, 11)), tmp_path))
    assert again.summary["deletes"]["reactivated"] == 0


def test_ignore_counts_absent_contacts_and_sends_nothing_for_them(
    config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    config = {**config, "delete_behavior": "ignore"}
    _ok(run_target(config, _sdk_style(VERSION_1, range(1, 11)), tmp_path))
    calls = len(emulator.bulk_calls())

    run = _ok(run_target(config, _sdk_style(VERSION_2, range(1, 9)), tmp_path))

    assert len(emulator.bulk_calls()) == calls + 1
    assert all(status != "P" for status in _statuses(emulator).values())
    assert run.summary["full_table_versions"]["absent"] == 2
    assert run.summary["full_table_versions"]["to_passivate"] == 0
    assert "not passivated (delete_behavior: ignore)" in run.stderr


def test_mirrors_work_without_change_detection_and_with_it(
    config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    """The ledger records even without change detection; with it, unchanged contacts are
    skipped and still count as present in the version."""
    plain = {**config, "delete_behavior": "ignore"}  # no ledger until the first version
    _ok(run_target(plain, _sdk_style(VERSION_1, range(1, 11)), tmp_path))
    assert set(_ledger(config)) == {f"c{i}" for i in range(1, 11)}

    detecting = {**config, "change_detection": True}
    run = _ok(run_target(detecting, _sdk_style(VERSION_2, range(1, 10)), tmp_path))

    assert run.summary["contacts"]["unchanged"] == 9
    assert _statuses(emulator)["c10"] == "P"
    assert [k for k, s in _statuses(emulator).items() if s == "P"] == ["c10"]


def test_dry_run_plans_the_passivations_and_sends_nothing(
    config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    _ok(run_target(config, _sdk_style(VERSION_1, range(1, 21)), tmp_path))
    calls = len(emulator.bulk_calls())

    run = _ok(
        run_target({**config, "dry_run": True}, _sdk_style(VERSION_2, range(1, 20)), tmp_path)
    )

    assert len(emulator.bulk_calls()) == calls
    assert "absent from versions . 1" in run.stderr
    assert "of them to passivate . 1" in run.stderr


def test_an_older_version_never_passivates_what_a_newer_one_has(
    config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    """Two full syncs in one input: the first version lacks c5, the second has it again."""
    _ok(run_target(config, _sdk_style(VERSION_1, range(1, 11)), tmp_path))
    messages = [
        schema(),
        _activate(VERSION_2),
        *(_versioned(i, VERSION_2) for i in range(1, 11) if i != 5),
        _activate(VERSION_2 + 1),
        *(_versioned(i, VERSION_2 + 1) for i in range(1, 11)),
        state({"done": True}),
    ]
    run = _ok(run_target(config, messages, tmp_path))
    # The first version completes when the second is activated, before its records came;
    # the second's record of c5 comes later and wins over the passivation, as in the source.
    assert _statuses(emulator)["c5"] != "P"
    assert run.summary["full_table_versions"]["absent"] == 1
    assert run.summary["deletes"]["passivated"] == 0


def test_a_version_with_an_unreadable_contact_key_passivates_nothing(
    config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    config = {**config, "stop_on_error": False}
    _ok(run_target(config, _sdk_style(VERSION_1, range(1, 11)), tmp_path))
    messages = _sdk_style(VERSION_2, range(1, 10))
    messages.insert(3, {**_versioned(99, VERSION_2), "record": {"email": "x@example.com"}})

    run = _ok(run_target(config, messages, tmp_path))

    assert all(status != "P" for status in _statuses(emulator).values())
    assert "had no readable contact_key" in run.stderr


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ({"type": "ACTIVATE_VERSION", "stream": "contacts"}, "needs an integer 'version'"),
        (
            {"type": "ACTIVATE_VERSION", "stream": "contacts", "version": "7"},
            "needs an integer 'version', not '7'",
        ),
        (
            {"type": "ACTIVATE_VERSION", "stream": "contacts", "version": True},
            "needs an integer 'version', not True",
        ),
        (
            {"type": "ACTIVATE_VERSION", "stream": "nowhere", "version": 1},
            "stream 'nowhere', which no SCHEMA message has declared",
        ),
        ({"type": "ACTIVATE_VERSION", "version": 1}, "needs a 'stream'"),
        ({**_versioned(1, None), "version": "v1"}, "'version' must be an integer"),
    ],
    ids=["no-version", "text-version", "bool-version", "unknown-stream", "no-stream", "record"],
)
def test_a_malformed_version_is_one_clear_error_naming_the_line(
    message: dict[str, Any],
    said: str,
    config: dict[str, Any],
    emulator: DengageEmulator,
    tmp_path: Path,
) -> None:
    run = run_target(config, [schema(), _versioned(2, None), message, state({"x": 1})], tmp_path)

    assert run.returncode != 0
    assert "Input line 3" in run.stderr
    assert said in run.stderr
    assert "Traceback" not in run.stderr
    assert run.states == []


def test_sigkill_during_a_mirror_passivation_then_rerun_lands_every_one(
    config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    config = {**config, "batch_size_rows": 5, "max_passivate_percent": 100}
    _ok(run_target(config, _sdk_style(VERSION_1, range(1, 31)), tmp_path))
    messages = _sdk_style(VERSION_2, range(1, 11))  # c11..c30 are gone: four passivations
    loads = len(emulator.bulk_calls())
    # Two upsert requests, then the first passivation request: each slow, then applied.
    emulator.inject_fault("/rest/bulk/contacts", hang_seconds=1, count=3)

    def passivating() -> bool:
        calls = emulator.bulk_calls()[loads:]
        return any(
            call["columns"] == ["contact_key", "contact_status"] and call["replied"] is None
            for call in calls
        )

    crashed = run_target(config, messages, tmp_path, kill_when=passivating)
    assert crashed.returncode != 0
    assert crashed.states == []  # STATE waits for every passivation

    rerun = _ok(run_target(config, messages, tmp_path))
    assert rerun.states
    assert sorted(k for k, s in _statuses(emulator).items() if s == "P") == sorted(
        f"c{i}" for i in range(11, 31)
    )


def test_a_contact_deleted_in_the_source_and_inserted_again_is_active_again(
    config: dict[str, Any], emulator: DengageEmulator, tmp_path: Path
) -> None:
    props = ("id", "email", "phone", "first_name", "dob", "_sdc_deleted_at")

    def change(i: int, deleted: str | None) -> dict[str, Any]:
        return record(**contact(i), _sdc_deleted_at=deleted)

    _ok(run_target(config, [schema(properties=props), change(1, None), change(2, None)], tmp_path))
    deleted = "2026-11-24T18:26:59Z"
    _ok(run_target(config, [schema(properties=props), change(2, deleted)], tmp_path))
    assert _statuses(emulator)["c2"] == "P"

    back = _ok(run_target(config, [schema(properties=props), change(2, None)], tmp_path))

    assert _statuses(emulator)["c2"] == "A"
    assert back.summary["deletes"]["reactivated"] == 1
    assert _ledger(config)["c2"][2] == 0
