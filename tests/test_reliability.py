"""Fault injection through the real CLI: flaky API, rate-limit storms, hangs, crashes."""

from __future__ import annotations

import itertools
import json
import random
import re
import time
from pathlib import Path
from typing import Any

from conftest import (
    MAPPING,
    assert_states_follow_confirmations,
    contact,
    record,
    run_target,
    schema,
    state,
)

from target_dengage.emulator import DengageEmulator

BULK = "/rest/bulk/contacts"


def _messages(first: int, last: int, *, every: int) -> list[dict[str, Any]]:
    """Contacts first..last with a STATE {"position": n} after every ``every`` records."""
    messages: list[dict[str, Any]] = [schema()]
    for i in range(first, last + 1):
        messages.append(record(**contact(i)))
        if i % every == 0 or i == last:
            messages.append(state({"position": i}))
    return messages


def test_500_on_every_third_call_of_a_10000_contact_run(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    for _ in range(10):
        emulator.inject_fault(BULK, count=2)
        emulator.inject_fault(BULK, status=500, count=1)
    run = run_target(
        {**base_config, "column_mapping": MAPPING}, _messages(1, 10_000, every=1000), tmp_path
    )

    assert run.returncode == 0, run.stderr
    statuses = [c["status"] for c in emulator.bulk_calls()]
    assert statuses.count(500) >= 4
    assert statuses.count(200) == 10
    assert set(emulator.contacts()) == {f"c{i}" for i in range(1, 10_001)}
    assert run.states[-1] == {"position": 10_000}
    assert_states_follow_confirmations(run, emulator)


def test_429_storm_waits_and_finishes(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.set_options(sync_interval_seconds=1)
    emulator.inject_fault(BULK, status=429, count=20, body={"code": 429, "message": "Slow down"})
    config = {**base_config, "column_mapping": MAPPING, "request_interval_seconds": 1}
    run = run_target(config, _messages(1, 1500, every=1500), tmp_path)

    assert run.returncode == 0, run.stderr
    calls = emulator.bulk_calls()
    assert [c["status"] for c in calls] == [429] * 20 + [200, 200]
    for before, after in itertools.pairwise(calls):
        assert after["started"] - before["started"] >= 1.0  # type: ignore[operator]
    assert "was rate-limited (429, 20 in a row)" in run.stderr
    waited = re.search(r"Rate-limited by D·engage for ([0-9.]+) s", run.stderr)
    assert waited is not None
    assert float(waited.group(1)) >= 19
    assert run.summary["rate_limited"]["count"] == 20
    assert run.summary["rate_limited"]["seconds"] >= 19
    assert run.states == [{"position": 1500}]


def test_retry_after_is_honoured(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault("/rest/login", status=429, headers={"Retry-After": "2"})
    run = run_target({**base_config, "column_mapping": MAPPING}, _messages(1, 3, every=3), tmp_path)

    assert run.returncode == 0, run.stderr
    logins = [c for c in emulator.request_log() if c["path"] == "/rest/login"]
    assert [c["status"] for c in logins] == [429, 200]
    assert logins[1]["started"] - logins[0]["finished"] >= 2.0  # type: ignore[operator]
    assert "(Retry-After)" in run.stderr


def test_hanging_request_times_out_and_is_retried(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault(BULK, status=500, hang_seconds=60)  # answers only after a minute
    config = {**base_config, "column_mapping": MAPPING, "request_timeout_seconds": 1}
    run = run_target(config, _messages(1, 5, every=5), tmp_path)

    assert run.returncode == 0, run.stderr
    assert "no answer within request_timeout_seconds (1 s)" in run.stderr
    assert len(emulator.contacts()) == 5
    assert run.states == [{"position": 5}]


def test_login_is_retried_on_5xx_but_not_on_403(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault("/rest/login", status=503)
    ok = run_target({**base_config, "column_mapping": MAPPING}, _messages(1, 2, every=2), tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert emulator.login_count() == 1

    emulator.reset()
    refused = run_target(
        {**base_config, "column_mapping": MAPPING, "password": "not-the-password"},
        _messages(1, 2, every=2),
        tmp_path,
    )
    assert refused.returncode == 1
    assert [c["status"] for c in emulator.request_log()] == [403]


def test_second_401_after_a_fresh_login_is_fatal(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault(BULK, status=401, count=2)
    run = run_target({**base_config, "column_mapping": MAPPING}, _messages(1, 2, every=2), tmp_path)
    assert run.returncode == 1
    assert run.stdout == ""
    assert "401 Not Authenticated to POST /rest/bulk/contacts again right after a fresh login" in (
        run.stderr
    )
    assert emulator.login_count() == 2


def test_sigkill_at_random_points_then_resume_from_the_last_state(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    """Ten crashes, each at a random point of a 5-batch load: while call k is in flight, or
    right after its answer was written (observed in the emulator, not on a timer). The
    rerun resumes from the last STATE printed, as an orchestrator would. Nothing is lost, no
    STATE comes early."""
    total, batch = 500, 100
    config = {**base_config, "column_mapping": MAPPING, "batch_size_rows": batch}
    rng = random.Random(20261123)
    killed_mid_load = 0
    for _ in range(10):
        emulator.reset()
        emulator.inject_fault(BULK, hang_seconds=0.2, count=10_000)  # each call takes a while
        in_flight = rng.random() < 0.5
        calls = rng.randint(1, total // batch if in_flight else total // batch - 1)

        def reached(calls: int = calls, in_flight: bool = in_flight) -> bool:
            seen = emulator.bulk_calls()
            if in_flight:
                return len(seen) >= calls
            return len(seen) >= calls and seen[calls - 1]["replied"] is not None

        crashed = run_target(config, _messages(1, total, every=25), tmp_path, kill_when=reached)
        assert_states_follow_confirmations(crashed, emulator)
        if crashed.returncode == 0:
            continue  # finished before the kill came
        killed_mid_load += 1
        # The killed call may still be in the emulator: let it end, as D·engage's would.
        while any(call["replied"] is None for call in emulator.bulk_calls()):
            time.sleep(0.01)
        position = crashed.states[-1]["position"] if crashed.states else 0
        if position < total:
            resumed = run_target(config, _messages(position + 1, total, every=25), tmp_path)
            assert resumed.returncode == 0, resumed.stderr
            assert_states_follow_confirmations(resumed, emulator)
            assert resumed.states[-1] == {"position": total}
        assert set(emulator.contacts()) == {f"c{i}" for i in range(1, total + 1)}
    assert killed_mid_load >= 7


def test_back_to_back_runs_keep_the_interval(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.set_options(sync_interval_seconds=2)
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "request_interval_seconds": 2,
        "pacing_state_path": str(tmp_path / "pacing.json"),
    }
    first = run_target(config, _messages(1, 1500, every=1500), tmp_path)
    second = run_target(config, _messages(1501, 1600, every=100), tmp_path)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    calls = emulator.bulk_calls()
    assert [c["status"] for c in calls] == [200, 200, 200]
    assert calls[2]["started"] - calls[1]["started"] >= 2.0  # type: ignore[operator]
    assert "an earlier run" in second.stderr
    remembered = json.loads((tmp_path / "pacing.json").read_text())
    assert list(remembered) == [f"{emulator.url}|user:test-user"]


def test_a_batch_refused_whole_is_split_until_the_bad_record_is_isolated(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.refuse_batches_containing(["c500"])
    config = {**base_config, "column_mapping": MAPPING, "stop_on_error": False}
    run = run_target(config, _messages(1, 1000, every=1000), tmp_path)

    assert run.returncode == 0, run.stderr
    assert set(emulator.contacts()) == {f"c{i}" for i in range(1, 1001)} - {"c500"}
    rejected = [
        json.loads(line) for line in Path(config["rejected_records_path"]).read_text().splitlines()
    ]
    assert [(r["contact_key"], r["source"], r["record_number"]) for r in rejected] == [
        ("c500", "api", 500)
    ]
    assert "FieldError" in rejected[0]["reason"]
    calls = emulator.bulk_calls()
    assert 2 < len(calls) <= 1 + 22  # the split budget for 1000 records
    assert "splitting it in two" in run.stderr
    assert run.states == [{"position": 1000}]


def test_a_refusal_that_splitting_cannot_isolate_fails_the_run(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.refuse_batches_containing([f"c{i}" for i in range(1, 65)])
    config = {**base_config, "column_mapping": MAPPING, "stop_on_error": False}
    run = run_target(config, _messages(1, 64, every=64), tmp_path)

    assert run.returncode == 1
    assert run.stdout == ""
    assert "probably not about single records" in run.stderr
    assert len(emulator.bulk_calls()) <= 1 + 14


def test_http_to_a_remote_host_is_refused_before_any_connection(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "api_url": "http://192.0.2.1:9"}  # TEST-NET: never reached
    run = run_target(config, _messages(1, 1, every=1), tmp_path)
    assert run.returncode == 1
    assert "api_url must use https" in run.stderr
    assert "Logged in" not in run.stderr
