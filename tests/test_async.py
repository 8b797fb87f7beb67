"""mode: async through the real CLI: pipelined jobs, STATE after confirmation, recovery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import MAPPING, Run, contact, record, run_target, schema, state

from target_dengage.emulator import DengageEmulator


@pytest.fixture
def async_config(base_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {
        **base_config,
        "mode": "async",
        "column_mapping": MAPPING,
        "poll_interval_seconds": 0,
        "job_journal_path": str(tmp_path / "jobs.json"),
    }


def _messages(n: int, *, every: int = 1000) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [schema()]
    for i in range(1, n + 1):
        messages.append(record(**contact(i)))
        if i % every == 0 or i == n:
            messages.append(state({"position": i}))
    return messages


def _max_overlap(jobs: list[dict[str, Any]]) -> int:
    events = sorted(
        [(j["submitted"], 1) for j in jobs] + [(j["finished"], -1) for j in jobs],
        key=lambda e: (e[0], e[1]),
    )
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def _assert_states_follow_jobs(run: Run, emulator: DengageEmulator) -> None:
    """Every printed STATE {"position": n}: the jobs carrying c1..cn had finished before."""
    finished: dict[str, float] = {}
    for job in emulator.jobs():
        if job["status"] == "Completed":
            for key in job["contact_keys"]:  # type: ignore[attr-defined]
                finished.setdefault(key, job["finished"])  # type: ignore[arg-type]
    for printed, at in zip(run.states, run.stdout_times, strict=True):
        for i in range(1, printed["position"] + 1):
            assert finished[f"c{i}"] <= at, f"STATE {printed} came before c{i}'s job finished"


def test_jobs_overlap_and_all_contacts_arrive(
    emulator: DengageEmulator, async_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.set_options(async_job_seconds=1, max_running_jobs=4)
    run = run_target(async_config, _messages(10_000), tmp_path)

    assert run.returncode == 0, run.stderr
    assert len(emulator.contacts()) == 10_000
    jobs = emulator.jobs()
    assert len(jobs) == 10
    assert _max_overlap(jobs) == 4  # jobs overlap, and never more than 4 at once
    assert emulator.bulk_calls() == []  # no sync call
    assert run.states[-1] == {"position": 10_000}
    _assert_states_follow_jobs(run, emulator)
    assert run.summary["jobs"]["submitted"] == run.summary["jobs"]["confirmed"] == 10
    assert run.summary["jobs"]["failed"] == 0
    assert "confirmed after 1." in run.stderr


def test_states_wait_for_jobs_that_finish_out_of_order(
    emulator: DengageEmulator, async_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.set_next_job_durations([1.5, 0.2, 1.0, 0.1, 0.6, 0.3])
    run = run_target(async_config, _messages(6000), tmp_path)

    assert run.returncode == 0, run.stderr
    jobs = emulator.jobs()
    order = sorted(range(len(jobs)), key=lambda i: jobs[i]["finished"])  # type: ignore[arg-type, return-value]
    assert order != sorted(order)  # they did finish out of order
    _assert_states_follow_jobs(run, emulator)
    assert run.states[-1] == {"position": 6000}


def test_a_failed_job_stops_state_and_fails_the_run_after_the_others_resolve(
    emulator: DengageEmulator, async_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.set_next_job_durations([0.1, 0.2, 1.0, 1.0, 1.0, 1.0])
    emulator.fail_next_jobs(1, "Database unavailable", after=1)
    run = run_target(async_config, _messages(6000), tmp_path)

    assert run.returncode == 1
    assert run.states == [{"position": 1000}]  # only the first job's records were confirmed
    jobs = emulator.jobs()
    statuses = [j["status"] for j in jobs]
    assert statuses[:2] == ["Completed", "Failed"]
    assert set(statuses[2:]) == {"Completed"}  # in-flight jobs were still resolved
    assert len(jobs) <= 5  # the slot of the failed job is never used again
    assert f"job {jobs[1]['id']} failed ('Failed'): Database unavailable" in run.stderr
    for job in jobs[2:]:
        assert f"Job {job['id']} confirmed" in run.stderr
    assert run.summary["status"] == "failed"
    assert run.summary["jobs"]["submitted"] == len(jobs)
    assert run.summary["jobs"]["confirmed"] == len(jobs) - 1
    assert run.summary["jobs"]["failed"] == 1


def test_a_job_that_never_finishes_times_out_naming_it(
    emulator: DengageEmulator, async_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.hang_next_jobs(1)
    run = run_target({**async_config, "job_timeout_seconds": 2}, _messages(500), tmp_path)

    assert run.returncode == 1
    assert run.stdout == ""
    job_id = emulator.jobs()[0]["id"]
    assert f"job {job_id} did not finish within job_timeout_seconds (2 s" in run.stderr


def test_running_job_limit_429s_are_absorbed(
    emulator: DengageEmulator, async_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.set_options(async_job_seconds=0.5, max_running_jobs=2)
    run = run_target({**async_config, "max_jobs_in_flight": 4}, _messages(5000), tmp_path)

    assert run.returncode == 0, run.stderr
    assert len(emulator.contacts()) == 5000
    submits = [c for c in emulator.request_log() if c["path"] == "/rest/bulk/async/contacts"]
    assert any(c["status"] == 429 for c in submits)
    assert sum(c["status"] == 202 for c in submits) == 5
    assert "was rate-limited (429" in run.stderr
    assert run.states[-1] == {"position": 5000}


def test_sigkill_with_jobs_in_flight_then_rerun_polls_the_journal_first(
    emulator: DengageEmulator, async_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.set_options(async_job_seconds=5)
    journal_path = Path(async_config["job_journal_path"])

    def three_jobs_journaled() -> bool:
        try:
            return [len(v) for v in json.loads(journal_path.read_text()).values()] == [3]
        except (OSError, ValueError):
            return False

    crashed = run_target(async_config, _messages(3000), tmp_path, kill_when=three_jobs_journaled)
    assert crashed.returncode == -9
    assert crashed.stdout == ""
    assert [j["status"] for j in emulator.jobs()] == ["Processing"] * 3
    journal = json.loads(journal_path.read_text())
    (entries,) = journal.values()
    assert len(entries) == 3

    emulator.set_options(async_job_seconds=0.2)  # for the rerun's own jobs
    rerun = run_target(async_config, _messages(3000), tmp_path)

    assert rerun.returncode == 0, rerun.stderr
    assert "journal holds 3 unconfirmed job(s) from an earlier run" in rerun.stderr
    assert "3 completed (recovered" in rerun.stderr
    statuses = [j["status"] for j in emulator.jobs()]
    assert statuses == ["Completed"] * 6
    first_new = emulator.jobs()[3]["submitted"]
    assert all(j["finished"] <= first_new for j in emulator.jobs()[:3])  # polled first
    assert len(emulator.contacts()) == 3000
    assert rerun.states[-1] == {"position": 3000}
    assert json.loads(Path(async_config["job_journal_path"]).read_text()) == {}


def test_per_record_errors_inside_a_job_go_to_the_rejected_file(
    emulator: DengageEmulator, async_config: dict[str, Any], tmp_path: Path
) -> None:
    setup = run_target(
        {**async_config, "mode": "sync"},
        [schema(), *(record(id=k, email=f"{k}@example.com") for k in ("a1", "a2", "a3"))],
        tmp_path,
    )
    assert setup.returncode == 0, setup.stderr
    config = {
        **async_config,
        "stop_on_error": False,
        "insert_if_not_exists": False,
        "column_mapping": {**MAPPING, "renamed": "new_contact_key"},
    }
    messages = [
        schema(properties=("id", "renamed")),
        record(id="a1", renamed="b1"),  # fine
        record(id="a2", renamed="a3"),  # a3 is taken
        record(id="zz", renamed="q1"),  # no such contact
        state({"position": 3}),
    ]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert "b1" in emulator.contacts()
    assert "a1" not in emulator.contacts()
    rejected = [
        json.loads(line) for line in Path(config["rejected_records_path"]).read_text().splitlines()
    ]
    assert sorted((r["contact_key"], r["source"]) for r in rejected) == [
        ("a2", "api"),
        ("zz", "api"),
    ]
    assert run.states == [{"position": 3}]
