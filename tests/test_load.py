"""End to end: the real CLI loads contacts into the emulator over loopback HTTP."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from conftest import MAPPING, contact, record, run_target, schema, state

from target_dengage.emulator import DengageEmulator


def _contacts(n: int, **kwargs: Any) -> list[dict[str, Any]]:
    return [record(**contact(i, **kwargs)) for i in range(1, n + 1)]


def test_2500_contacts_arrive_in_three_full_requests(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "column_mapping": MAPPING}
    final = {"bookmarks": {"contacts": {"replication_key_value": "2500"}}}
    run = run_target(config, [schema(), *_contacts(2500), state(final)], tmp_path)

    assert run.returncode == 0, run.stderr
    assert [c["count"] for c in emulator.bulk_calls()] == [1000, 1000, 500]
    stored = emulator.contacts()
    assert len(stored) == 2500
    row = stored["c7"]
    assert row["email"] == "user.c7@example.com"
    assert row["gsm"] == "905350000007"
    assert row["birth_date"] == "1917-08-17"
    assert row["name"] == "Name7"
    assert run.states == [final]
    assert run.summary["records_read"] == 2500
    assert run.summary["contacts"]["confirmed"] == 2500
    assert run.summary["requests"] == 3
    assert run.summary["status"] == "succeeded"
    assert run.summary["last_state_printed"] == final


def test_state_is_printed_only_after_its_records_are_confirmed(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    messages: list[dict[str, Any]] = [schema()]
    for i in range(1, 2501):
        messages.append(record(**contact(i)))
        if i % 500 == 0:
            messages.append(state({"bookmarks": {"contacts": {"position": i}}}))
    run = run_target({**base_config, "column_mapping": MAPPING}, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    # A STATE is printed as soon as the request carrying its last record is confirmed.
    assert [s["bookmarks"]["contacts"]["position"] for s in run.states] == [
        500,
        1000,
        1500,
        2000,
        2500,
    ]
    finished = [c["finished"] for c in emulator.bulk_calls()]
    printed = dict(zip([500, 1000, 1500, 2000, 2500], run.stdout_times, strict=True))
    assert printed[500] >= finished[0]
    assert printed[1500] >= finished[1]
    assert printed[2500] >= finished[2]


def test_no_state_and_nonzero_exit_when_the_last_batch_fails(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    messages: list[dict[str, Any]] = [schema()]
    for i in range(1, 2501):
        messages.append(record(**contact(i)))
        if i % 1000 == 0:
            messages.append(state({"position": i}))
    messages.append(state({"position": 2500}))
    config = {**base_config, "column_mapping": MAPPING, "max_retries": 1}
    # Calls 1 and 2 go through; the last batch gets 500 on its try and its one retry.
    emulator.inject_fault("/rest/bulk/contacts", count=2)
    emulator.inject_fault("/rest/bulk/contacts", status=500, count=2)
    run = run_target(config, messages, tmp_path)

    assert run.returncode != 0
    assert [s["position"] for s in run.states] == [1000, 2000]
    assert "did not accept POST /rest/bulk/contacts after 2 tries" in run.stderr
    assert len(emulator.contacts()) == 2000


def test_only_the_final_state_and_it_is_withheld_on_failure(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault("/rest/bulk/contacts", status=503, count=10)
    messages = [schema(), *_contacts(10), state({"position": 10})]
    run = run_target(
        {**base_config, "column_mapping": MAPPING, "max_retries": 1}, messages, tmp_path
    )
    assert run.returncode == 1
    assert run.stdout == ""


def test_two_streams_share_the_pacing(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.set_options(sync_interval_seconds=1)
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "request_interval_seconds": 1,
        "batch_size_rows": 5,
    }
    messages = [
        schema("customers"),
        schema("leads", properties=("id", "email")),
        *[
            message
            for i in range(1, 11)
            for message in (
                record("customers", **contact(i)),
                record("leads", id=f"l{i}", email=f"lead{i}@example.com"),
            )
        ],
        state({"done": True}),
    ]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    calls = emulator.bulk_calls()
    assert len(calls) == 4
    assert all(c["status"] == 200 for c in calls)
    for before, after in itertools.pairwise(calls):
        assert after["started"] - before["started"] >= 1.0
        assert after["started"] >= before["finished"]
    assert "Waiting" in run.stderr
    assert len(emulator.contacts()) == 20


def test_records_with_and_without_gsm_go_in_separate_full_requests(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "column_mapping": MAPPING}
    first = run_target(config, [schema(), *_contacts(3000)], tmp_path)
    assert first.returncode == 0, first.stderr
    earlier = len(emulator.bulk_calls())

    # Second run: every other contact has no phone (null) and a new name.
    messages: list[dict[str, Any]] = [schema()]
    for i in range(1, 3001):
        values = contact(i, with_gsm=i % 2 == 0)
        values["first_name"] = f"Renamed{i}"
        if i % 2:
            values["phone"] = None
        messages.append(record(**values))
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    calls = emulator.bulk_calls()[earlier:]
    assert sorted(c["count"] for c in calls) == [500, 500, 1000, 1000]
    for call in calls:
        columns = call["columns"]
        assert isinstance(columns, list)
        assert columns[0] == "contact_key"
    with_gsm = [c for c in calls if "gsm" in c["columns"]]
    without = [c for c in calls if "gsm" not in c["columns"]]
    assert sum(c["count"] for c in with_gsm) == sum(c["count"] for c in without) == 1500
    stored = emulator.contacts()
    assert stored["c1"]["gsm"] == "905350000001"  # not cleared by the null
    assert stored["c1"]["name"] == "Renamed1"


def test_duplicates_are_merged_last_wins(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    messages = [
        schema(),
        record(id="d1", email="first@example.com", first_name="First"),
        record(id="d2", email="other@example.com"),
        record(id="d1", email="second@example.com"),
        record(id="d1", phone="905351111111"),
    ]
    run = run_target({**base_config, "column_mapping": MAPPING}, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    stored = emulator.contacts()
    assert stored["d1"]["email"] == "second@example.com"
    assert stored["d1"]["name"] == "First"
    assert stored["d1"]["gsm"] == "905351111111"
    assert sum(c["count"] for c in emulator.bulk_calls()) == 2
    assert "2 duplicates merged" in run.stderr  # the request's log line
    assert run.summary["contacts"]["duplicates_merged"] == 2


def test_contact_key_from_the_single_key_property_and_custom_columns(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **base_config,
        "column_mapping": {"tier": "loyalty_tier"},
        "custom_columns": ["loyalty_tier", "city"],
    }
    messages = [
        schema(
            properties=("customer_id", "email", "tier", "city", "internal_score"),
            key_properties=("customer_id",),
        ),
        record(customer_id=42, email="a@example.com", tier="gold", city="İzmir", internal_score=7),
    ]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert emulator.contacts()["42"]["loyalty_tier"] == "gold"
    assert emulator.contacts()["42"]["city"] == "İzmir"
    assert "using its key property 'customer_id' as contact_key" in run.stderr
    assert "not sent: internal_score" in run.stderr
    assert emulator.bulk_calls()[0]["columns"] == ["contact_key", "city", "email", "loyalty_tier"]


def test_update_only_mode_does_not_create_contacts(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "column_mapping": MAPPING}
    assert run_target(config, [schema(), *_contacts(2)], tmp_path).returncode == 0
    run = run_target(
        {**config, "insert_if_not_exists": False},
        [schema(), *_contacts(4), state({"ok": 1})],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(emulator.contacts()) == ["c1", "c2"]
    assert "2 warnings" in run.stderr
    assert run.states == [{"ok": 1}]


def test_stream_maps_rename_before_mapping(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    """The README's stream-map example: rename and compute columns without column_mapping."""
    config = {
        **base_config,
        "stream_maps": {
            "public-customers": {
                "contact_key": "customer_id",
                "email": "email_address.lower()",
                "name": "first_name",
                "customer_id": "__NULL__",
                "__key_properties__": ["contact_key"],
            }
        },
    }
    messages = [
        schema(
            "public-customers",
            properties=("customer_id", "email_address", "first_name"),
            key_properties=("customer_id",),
        ),
        record("public-customers", customer_id="k1", email_address="A@B.CO", first_name="Ada"),
        state({"done": 1}),
    ]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert emulator.contacts()["k1"]["email"] == "a@b.co"
    assert emulator.contacts()["k1"]["name"] == "Ada"
    assert run.states == [{"done": 1}]


def test_a_new_schema_mid_stream_is_followed_by_the_records_after_it(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    """Records are read straight into the properties their stream's mapping reads; a new
    SCHEMA that adds a property must bring that property along from the next record on."""
    before = schema(properties=("id", "email"))
    after = schema(properties=("id", "email", "first_name"))
    messages = [
        before,
        *(record(id=f"c{i}", email=f"c{i}@example.com") for i in range(1, 4)),
        after,
        *(record(id=f"c{i}", email=f"c{i}@example.com", first_name=f"N{i}") for i in range(4, 7)),
        schema("leads", properties=("id", "email")),
        record("leads", id="l1", email="l1@example.com"),
        record(id="c7", email="c7@example.com", first_name="N7"),
        record("leads", id="l2", email="l2@example.com"),
    ]
    run = run_target({**base_config, "column_mapping": MAPPING}, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    stored = emulator.contacts()
    assert "name" not in stored["c3"]
    assert [stored[f"c{i}"]["name"] for i in range(4, 8)] == ["N4", "N5", "N6", "N7"]
    assert {"l1", "l2"} <= set(stored)
