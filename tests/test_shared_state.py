"""Runs at the same time on one machine share the pacing clock and the job journal safely.

Measured before the fix: two async runs on one HOME, one SIGKILLed after 30 submitted jobs,
left 19 of them in the journal (lost read-modify-write updates); two sync runs of one
account started together got 429s, since neither waited for the other's calls. Every kill
here comes on an observed event (a count in the emulator, a line printed), never a timer.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MAPPING, RUN_TIMEOUT, Run, contact, record, run_target, schema, state

from target_dengage.accountstate import FileCallClock, FileJobLog, account_digest, lock_path
from target_dengage.emulator import DengageEmulator
from target_dengage.pacing import Pacer, account_key

TOKEN_A = "static-token-account-a-0123456789"
TOKEN_B = "static-token-account-b-9876543210"
ROOT = Path(__file__).resolve().parent.parent


def _messages(prefix: str, n: int) -> list[dict[str, Any]]:
    """Contacts <prefix>1..<prefix>n, one STATE at the end."""
    return [
        schema(),
        *(record(**contact(i, prefix=prefix)) for i in range(1, n + 1)),
        state({"position": n}),
    ]


def _journal(cache: Path, account: str) -> dict[str, dict[str, Any]]:
    """The account's journal entries by job id, read through the code's own reader, from
    every journal file of the state folder (the shared default ``jobs.json`` or the
    account's ``jobs-<digest>.json``, whichever the target was told to use)."""
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted((cache / "target-dengage").glob("jobs*.json")):
        for entry in FileJobLog(path, account).entries():
            entries[entry["job_id"]] = entry
    return entries


def _jobs_of(emulator: DengageEmulator, prefix: str) -> list[dict[str, Any]]:
    """The emulator's jobs carrying the contacts of one run (its keys start with prefix)."""
    return [
        job
        for job in emulator.jobs()
        if all(str(key).startswith(prefix) for key in job["contact_keys"])  # type: ignore[attr-defined]
    ]


@pytest.fixture
def two_accounts() -> Iterator[DengageEmulator]:
    """One emulator serving two accounts (two pre-issued tokens); jobs never wait for a slot."""
    emu = DengageEmulator(
        static_tokens=[TOKEN_A, TOKEN_B], sync_interval_seconds=0, max_running_jobs=1000
    )
    with emu:
        yield emu


def test_a_run_killed_beside_another_leaves_every_unconfirmed_job_in_the_journal(
    two_accounts: DengageEmulator, tmp_path: Path
) -> None:
    emulator = two_accounts
    cache = tmp_path / "cache"
    env = {"XDG_CACHE_HOME": str(cache)}  # one HOME for both runs: default journal paths
    common = {
        "api_url": emulator.url,
        "mode": "async",
        "column_mapping": MAPPING,
        "batch_size_rows": 10,
        "max_jobs_in_flight": 100,
        "poll_interval_seconds": 0,
        "request_interval_seconds": 0,
    }
    config_a = {**common, "access_token": TOKEN_A, "run_summary_path": str(tmp_path / "a.json")}
    config_b = {**common, "access_token": TOKEN_B, "run_summary_path": str(tmp_path / "b.json")}
    account_a = account_key(emulator.url, None, TOKEN_A)
    # Jobs stay running for a while, so both runs keep adding to the journal while the other
    # removes; the killed run's jobs are still running when it dies.
    emulator.set_options(async_job_seconds=3)

    survivor: list[Run] = []
    runner = threading.Thread(
        target=lambda: survivor.append(run_target(config_b, _messages("b", 600), tmp_path, env=env))
    )
    runner.start()
    try:
        crashed = run_target(
            config_a,
            _messages("a", 1000),
            tmp_path,
            env=env,
            kill_when=lambda: len(_jobs_of(emulator, "a")) >= 30,
        )
    finally:
        runner.join()

    assert crashed.returncode == -signal.SIGKILL
    assert crashed.stdout == ""
    answered = set(re.findall(r"Submitted job (\S+):", crashed.stderr))
    confirmed = set(re.findall(r"Job (\S+) confirmed", crashed.stderr))
    accepted = {str(job["id"]) for job in _jobs_of(emulator, "a")}
    journal = _journal(cache, account_a)
    # Jobs are submitted one at a time: the 30th was accepted after the 29th was journaled.
    assert len(answered) >= 29
    assert answered - confirmed <= set(journal), "journal entries were lost"
    assert set(journal) <= accepted
    # At most the one submit the run never saw answered can be missing.
    assert len(accepted - confirmed - set(journal)) <= 1
    for entry in journal.values():
        assert all(key.startswith("a") for key in entry["keys"])

    (other,) = survivor
    assert other.returncode == 0, other.stderr
    assert other.states == [{"position": 600}]

    emulator.set_options(async_job_seconds=0)  # healthy again, for the rerun's own jobs
    first_new = len(emulator.jobs())
    rerun = run_target(config_a, _messages("a", 1000), tmp_path, env=env)

    assert rerun.returncode == 0, rerun.stderr
    assert f"journal holds {len(journal)} unconfirmed job(s) from an earlier run" in rerun.stderr
    jobs = emulator.jobs()
    new = [job for job in jobs[first_new:] if str(job["contact_keys"][0]).startswith("a")]  # type: ignore[index]
    old = [job for job in jobs if job["id"] in journal]
    assert all(job["finished"] <= new[0]["submitted"] for job in old)  # type: ignore[operator]
    assert all(f"Submitted job {job['id']}" not in rerun.stderr for job in old)
    stored = emulator.contacts()
    assert {f"a{i}" for i in range(1, 1001)} <= set(stored)
    assert {f"b{i}" for i in range(1, 601)} <= set(stored)
    assert rerun.states == [{"position": 1000}]
    assert _journal(cache, account_a) == {}


def test_two_sync_runs_of_one_account_started_together_take_turns(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.set_options(sync_interval_seconds=1)  # a call inside the interval, or in parallel: 429
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "request_interval_seconds": 1,
        "batch_size_rows": 100,
    }
    config.pop("run_summary_path")
    env = {"XDG_CACHE_HOME": str(tmp_path / "shared-cache")}  # the default pacing file, shared
    runs: dict[str, Run] = {}
    ready = threading.Barrier(2)

    def load(prefix: str) -> None:
        ready.wait()
        runs[prefix] = run_target(config, _messages(prefix, 300), tmp_path, env=env)

    threads = [threading.Thread(target=load, args=(prefix,)) for prefix in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for run in runs.values():
        assert run.returncode == 0, run.stderr
        assert run.states == [{"position": 300}]
    assert [entry["status"] for entry in emulator.request_log() if entry["status"] == 429] == []
    calls = sorted(emulator.bulk_calls(), key=lambda call: call["started"])  # type: ignore[arg-type, return-value]
    assert [call["status"] for call in calls] == [200] * 6
    for before, after in itertools.pairwise(calls):
        assert before["replied"] <= after["started"], "two BulkUpsert calls overlapped"  # type: ignore[operator]
    stored = set(emulator.contacts())
    assert stored == {f"{p}{i}" for p in ("a", "b") for i in range(1, 301)}


# The file store itself ----------------------------------------------------------------------

_ADD_MANY = """
import sys
from pathlib import Path
from target_dengage.accountstate import FileJobLog

path, account, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
log = FileJobLog(path, account)
print("ready", flush=True)
sys.stdin.readline()  # both start adding on one signal
for i in range(50):
    log.add(f"{name}-{i}", [f"{name}-key-{i}"])
"""


def _start_together_and_finish(procs: list[subprocess.Popen[str]]) -> None:
    """Each process prints "ready" and waits for "go": all are told at once, once all are
    ready, so their work overlaps; each must then end cleanly."""
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.wait(timeout=RUN_TIMEOUT) == 0
        proc.communicate()


@pytest.mark.parametrize("accounts", [("one", "one"), ("one", "two")])
def test_two_processes_adding_to_one_journal_lose_no_entry(
    tmp_path: Path, accounts: tuple[str, str]
) -> None:
    path = tmp_path / "jobs.json"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _ADD_MANY, str(path), account, f"p{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for n, account in enumerate(accounts)
    ]
    _start_together_and_finish(procs)

    listed = [e["job_id"] for account in set(accounts) for e in FileJobLog(path, account).entries()]
    assert sorted(listed) == sorted(f"p{n}-{i}" for n in (0, 1) for i in range(50))
    log = FileJobLog(path, accounts[0])
    log.remove([e["job_id"] for e in log.entries()])
    assert log.entries() == []


_HOLD_TURN = """
import logging, sys
from pathlib import Path
from target_dengage.accountstate import FileCallClock

clock = FileCallClock(Path(sys.argv[1]), sys.argv[2], logging.getLogger("holder"))
with clock.turn():
    print(repr(clock.started()), flush=True)
    sys.stdin.readline()  # holds the turn until killed
"""


def test_a_turn_held_by_a_killed_process_is_released(tmp_path: Path) -> None:
    path = tmp_path / "pacing.json"
    account = "https://api.example|user:u"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_TURN, str(path), account],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None
        recorded = float(holder.stdout.readline())
        turn_lock = tmp_path / f"pacing.json.turn-{account_digest(account)}.lock"
        with turn_lock.open("rb") as probe, pytest.raises(BlockingIOError):
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the holder
    finally:
        holder.kill()
        holder.wait()
        holder.communicate()

    clock = FileCallClock(path, account, logging.getLogger("test"))
    got: list[float | None] = []
    waiter = threading.Thread(target=lambda: got.extend(_take_turn(clock)))
    waiter.start()
    waiter.join(timeout=RUN_TIMEOUT)  # a safety net only: a lock never released hangs here
    assert got == [recorded]


def _take_turn(clock: FileCallClock) -> list[float | None]:
    with clock.turn() as last:
        return [None if last is None else last.at]


_TURNS = """
import logging, os, sys
from pathlib import Path
from target_dengage.accountstate import FileCallClock

clock = FileCallClock(Path(sys.argv[1]), sys.argv[2], logging.getLogger("turns"))
trace = os.open(sys.argv[3], os.O_WRONLY | os.O_APPEND)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(30):
    with clock.turn():
        os.write(trace, f"in {os.getpid()}\\n".encode())
        clock.started()
        os.write(trace, f"out {os.getpid()}\\n".encode())
"""


def test_turns_of_one_account_never_overlap_across_processes(tmp_path: Path) -> None:
    trace = tmp_path / "trace.log"
    trace.touch()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TURNS, str(tmp_path / "pacing.json"), "acct", str(trace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    _start_together_and_finish(procs)

    lines = trace.read_text().splitlines()
    assert len(lines) == 3 * 30 * 2
    for entered, left in zip(lines[::2], lines[1::2], strict=True):
        assert entered.startswith("in ")
        assert left == "out " + entered.removeprefix("in ")


def test_an_unlockable_and_unwritable_pacing_file_warns_once_and_calls_anyway(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    logger = logging.getLogger("test-pacing")
    clock = FileCallClock(blocker / "pacing.json", "acct", logger)
    pacer = Pacer(0.05, logger, clock)  # a short interval: the calls are what matters
    with caplog.at_level(logging.WARNING, logger="test-pacing"):
        results = [pacer.run(lambda n=n: n) for n in range(3)]

    assert results == [0, 1, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert any(w.startswith("Cannot lock the pacing state file") for w in warnings)
    assert any(w.startswith("Cannot write the pacing state file") for w in warnings)


def test_interval_zero_touches_no_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    logger = logging.getLogger("test-pacing")
    pacer = Pacer(0, logger, FileCallClock(state_dir / "pacing.json", "acct", logger))
    assert [pacer.run(lambda n=n: n) for n in range(3)] == [0, 1, 2]
    assert pacer.last_start is not None
    assert not state_dir.exists()


def test_the_journal_of_an_older_version_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash under a version with one shared jobs.json, then an upgrade: the rerun still
    finds the account's jobs (moved to its own file), and other accounts' stay put."""
    from target_dengage.jobs import JobJournal, default_journal_path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shared = default_journal_path()
    shared.parent.mkdir(parents=True)
    old = {"job_id": "j1", "submitted_at": 1.0, "keys": ["k1"]}
    other = {"job_id": "x1", "submitted_at": 1.0, "keys": ["k9"]}
    shared.write_text(json.dumps({"mine": [old], "theirs": [other]}))

    journal = JobJournal(default_journal_path("mine"), "mine")
    assert journal.path != shared
    assert journal.entries() == [old]
    assert json.loads(shared.read_text()) == {"theirs": [other]}
    journal.add("j2", ["k2"])
    assert [e["job_id"] for e in JobJournal(default_journal_path("mine"), "mine").entries()] == [
        "j1",
        "j2",
    ]
    assert lock_path(journal.path).exists()
