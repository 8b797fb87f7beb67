"""Runs of one account on several machines share one database (``state_url``): one call at a
time and one per interval account-wide, and the async job journal.

Each run here has a HOME of its own (``XDG_CACHE_HOME``): three machines that share nothing
but the database. Measured before the setting existed: three runs started at once on three
machines against one account got 429s, each costing a whole interval, and a rerun on another
machine could not see the jobs a killed run left in flight. Every kill here comes on an
observed event (a count in the emulator), never a timer.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import MAPPING, RUN_TIMEOUT, Run, contact, record, run_target, schema, state
from pgserver import Server

from target_dengage.contract import ASYNC_PATH, BULK_PATH
from target_dengage.emulator import DengageEmulator
from target_dengage.sharedstate import SCHEMA_VERSION, SharedState, SharedStateError, SqlCallClock

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "static-token-several-machines-0123"
INTERVAL = 1


@dataclasses.dataclass(frozen=True)
class Database:
    """A fresh database of the session's server, for one test."""

    server: Server

    @property
    def url(self) -> str:
        s = self.server
        return f"postgresql+psycopg2://{s.user}@{s.host}:{s.port}/{s.database}"

    def sql(self, statements: str) -> str:
        return self.server.sql(statements)


@pytest.fixture
def database(postgres: Server) -> Database:
    name = f"state_{uuid.uuid4().hex[:12]}"
    postgres.sql(f"CREATE DATABASE {name};")
    return Database(dataclasses.replace(postgres, database=name))


def _messages(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        schema(),
        *(record(**contact(i, prefix=prefix)) for i in range(1, n + 1)),
        state({"position": n}),
    ]


def _three_machines_at_once(
    config: dict[str, Any], tmp_path: Path, contacts: int
) -> dict[str, Run]:
    """Runs a, b and c of one account, started together, each with a HOME of its own."""
    runs: dict[str, Run] = {}
    ready = threading.Barrier(3)

    def load(prefix: str) -> None:
        mine = {**config, "run_summary_path": str(tmp_path / f"summary-{prefix}.json")}
        home = {"XDG_CACHE_HOME": str(tmp_path / f"machine-{prefix}")}
        ready.wait()
        runs[prefix] = run_target(mine, _messages(prefix, contacts), tmp_path, env=home)

    threads = [threading.Thread(target=load, args=(prefix,)) for prefix in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return runs


@pytest.fixture
def sync_config(emulator: DengageEmulator, base_config: dict[str, Any]) -> dict[str, Any]:
    """Strict pacing at the emulator (a call inside the interval, or beside another: 429),
    four calls per run."""
    emulator.set_options(sync_interval_seconds=INTERVAL)
    return {
        **base_config,
        "column_mapping": MAPPING,
        "request_interval_seconds": INTERVAL,
        "batch_size_rows": 100,
    }


@pytest.mark.parametrize("store", ["postgresql", "sqlite"])
def test_three_machines_sharing_state_url_keep_one_call_per_interval(
    emulator: DengageEmulator,
    sync_config: dict[str, Any],
    tmp_path: Path,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    # SQLite serves the processes of one machine (the three HOMEs here); PostgreSQL, any.
    url = (
        request.getfixturevalue("database").url
        if store == "postgresql"
        else f"sqlite:///{tmp_path / 'shared' / 'state.sqlite'}"
    )
    runs = _three_machines_at_once({**sync_config, "state_url": url}, tmp_path, 400)

    for prefix, run in runs.items():
        assert run.returncode == 0, run.stderr
        assert run.states == [{"position": 400}], prefix
        # Waiting for the other runs' calls is pacing, as waiting for one's own is.
        assert run.summary["pacing_wait_seconds"] > 0
        assert not (tmp_path / f"machine-{prefix}" / "target-dengage").exists()
    assert [e for e in emulator.request_log() if e["status"] == 429] == []
    calls = sorted(emulator.bulk_calls(), key=lambda call: call["started"])  # type: ignore[arg-type, return-value]
    assert [call["status"] for call in calls] == [200] * 12
    for before, after in itertools.pairwise(calls):
        assert before["replied"] <= after["started"], "two BulkUpsert calls overlapped"  # type: ignore[operator]
        assert after["started"] - before["started"] >= INTERVAL  # type: ignore[operator]
    assert set(emulator.contacts()) == {f"{p}{i}" for p in "abc" for i in range(1, 401)}


def test_three_machines_without_state_url_are_rate_limited(
    emulator: DengageEmulator, sync_config: dict[str, Any], tmp_path: Path
) -> None:
    """Why the setting exists: each machine paces only its own calls (a pacing file in its
    own HOME). Three runs whose calls overlap in time, each spacing its own four calls by
    the interval and a margin, cannot all fall a whole interval apart: D·engage refuses."""
    runs = _three_machines_at_once(sync_config, tmp_path, 400)

    for run in runs.values():
        assert run.returncode == 0, run.stderr  # the 429s are waited out and retried
        assert run.states == [{"position": 400}]
    assert [e for e in emulator.request_log() if e["status"] == 429] != []


def test_a_rerun_on_another_machine_polls_the_killed_runs_jobs_before_submitting(
    database: Database, tmp_path: Path
) -> None:
    emulator = DengageEmulator(
        static_tokens=[TOKEN], sync_interval_seconds=0, max_running_jobs=1000
    )
    config = {
        "access_token": TOKEN,
        "mode": "async",
        "column_mapping": MAPPING,
        "batch_size_rows": 10,
        "max_jobs_in_flight": 100,
        "poll_interval_seconds": 0,
        "request_interval_seconds": 0,
        "state_url": database.url,
    }
    with emulator:
        config["api_url"] = emulator.url
        emulator.set_options(async_job_seconds=3)  # jobs still in flight when the run dies
        crashed = run_target(
            config,
            _messages("a", 1000),
            tmp_path,
            env={"XDG_CACHE_HOME": str(tmp_path / "machine-1")},
            kill_when=lambda: len(emulator.jobs()) >= 30,
        )
        assert crashed.returncode == -signal.SIGKILL
        answered = set(re.findall(r"Submitted job (\S+):", crashed.stderr))
        confirmed = set(re.findall(r"Job (\S+) confirmed", crashed.stderr))
        journal = set(database.sql("SELECT job_id FROM dengage_async_jobs;").split())
        assert len(answered) >= 29  # submitted one at a time: the 29th before the 30th
        assert answered - confirmed <= journal
        assert journal <= {str(job["id"]) for job in emulator.jobs()}

        emulator.set_options(async_job_seconds=0)
        first_new = len(emulator.request_log())
        rerun = run_target(
            config,
            _messages("a", 1000),
            tmp_path,
            env={"XDG_CACHE_HOME": str(tmp_path / "machine-2")},
        )

        assert rerun.returncode == 0, rerun.stderr
        assert f"journal holds {len(journal)} unconfirmed job(s) from an earlier run" in (
            rerun.stderr
        )
        log = emulator.request_log()[first_new:]
        first_submit = next(
            i for i, e in enumerate(log) if e["method"] == "POST" and e["path"] == ASYNC_PATH
        )
        polled = {
            str(e["path"]).removeprefix(f"{ASYNC_PATH}/")
            for e in log[:first_submit]
            if e["method"] == "GET"
        }
        assert journal <= polled, "a job of the killed run was not polled before the first submit"
        assert set(emulator.contacts()) >= {f"a{i}" for i in range(1, 1001)}
        assert rerun.states == [{"position": 1000}]
        assert database.sql("SELECT count(*) FROM dengage_async_jobs;").strip() == "0"
        assert not (tmp_path / "machine-2" / "target-dengage").exists()


def test_a_run_killed_while_holding_the_turn_does_not_hold_up_the_next(
    emulator: DengageEmulator, sync_config: dict[str, Any], database: Database, tmp_path: Path
) -> None:
    interval = 2
    emulator.set_options(sync_interval_seconds=interval)
    config = {**sync_config, "request_interval_seconds": interval, "state_url": database.url}
    # The first call hangs at the gateway (answered before the emulator's pacing, so it
    # does not count as a call there): the run holds the turn while it waits for the answer.
    emulator.inject_fault(BULK_PATH, status=503, hang_seconds=RUN_TIMEOUT)
    killed: list[float] = []

    def calling() -> bool:
        if emulator.bulk_calls():
            killed.append(time.time())
            return True
        return False

    crashed = run_target(
        config,
        _messages("a", 100),
        tmp_path,
        env={"XDG_CACHE_HOME": str(tmp_path / "machine-1")},
        kill_when=calling,
    )
    assert crashed.returncode == -signal.SIGKILL
    (hung,) = emulator.bulk_calls()

    rerun = run_target(
        config, _messages("b", 100), tmp_path, env={"XDG_CACHE_HOME": str(tmp_path / "machine-2")}
    )

    assert rerun.returncode == 0, rerun.stderr
    assert rerun.states == [{"position": 100}]
    _, call = emulator.bulk_calls()
    assert call["status"] == 200
    # The rerun kept the interval after the killed run's call, and waited no longer than
    # that plus its own start-up: the lock went with the killed run's connection.
    assert call["started"] - hung["started"] >= interval  # type: ignore[operator]
    assert call["started"] - killed[0] <= interval + 10  # type: ignore[operator]


def test_the_ledger_goes_to_state_url_unless_ledger_url_is_set(
    emulator: DengageEmulator, base_config: dict[str, Any], database: Database, tmp_path: Path
) -> None:
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "change_detection": True,
        "state_url": database.url,
    }
    # Two machines: each its own HOME for the cache and for the default ledger.
    first, again = (
        run_target(
            config,
            _messages("a", 50),
            tmp_path,
            env={
                "XDG_CACHE_HOME": str(tmp_path / f"machine-{n}" / "cache"),
                "XDG_DATA_HOME": str(tmp_path / f"machine-{n}" / "data"),
            },
        )
        for n in (1, 2)
    )

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert database.sql("SELECT count(*) FROM dengage_contact_ledger;").strip() == "50"
    assert again.summary["contacts"]["unchanged"] == 50
    assert len(emulator.bulk_calls()) == 1
    assert not list(tmp_path.glob("machine-*/*/target-dengage"))


def test_a_connection_dropped_mid_run_is_opened_again(
    emulator: DengageEmulator, sync_config: dict[str, Any], database: Database, tmp_path: Path
) -> None:
    config = {**sync_config, "state_url": database.url}
    ended: list[str] = []

    def end_the_runs_sessions() -> None:
        """After the first call, as a database restart or a proxy's idle cut would."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while not emulator.bulk_calls() and time.monotonic() < deadline:
            time.sleep(0.01)
        ended.append(
            database.sql(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'target-dengage') AS ended;"
            ).strip()
        )

    cutter = threading.Thread(target=end_the_runs_sessions)
    cutter.start()
    run = run_target(config, _messages("a", 300), tmp_path)
    cutter.join()

    assert ended == ["1"]  # the lock's session
    assert run.returncode == 0, run.stderr
    assert run.states == [{"position": 300}]
    assert [call["status"] for call in emulator.bulk_calls()] == [200] * 3, run.stderr
    assert set(emulator.contacts()) == {f"a{i}" for i in range(1, 301)}


_HOLD_TURN = """
import logging, sys
from target_dengage.sharedstate import SharedState

store = SharedState(sys.argv[1], sys.argv[2], logging.getLogger("holder"), 0)
with store.clock(interval=1, call_timeout=1).turn():
    print("holding", flush=True)
    sys.stdin.readline()  # holds the turn until told or killed
"""


def test_a_turn_held_longer_than_any_call_is_reported_with_the_holders_age(
    database: Database,
) -> None:
    account = "https://api.example|user:u"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_TURN, database.url, account],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        store = SharedState(database.url, account, logging.getLogger("test"), 0)
        clock = SqlCallClock(store, max_hold=0.5)  # a turn may last half a second here
        with pytest.raises(SharedStateError) as raised, clock.turn():
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.communicate()
    message = str(raised.value)
    age = float(re.search(r"held its turn to call BulkUpsert for (\d+) s", message)[1])  # type: ignore[index]
    assert age >= 0
    assert f"'{database.server.database}' on 127.0.0.1:{database.server.port}" in message


def test_an_unreachable_state_url_fails_at_start_naming_host_and_database(
    emulator: DengageEmulator, sync_config: dict[str, Any], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret = "Db-pa55word-never-logged"
    config = {
        **sync_config,
        "state_url": f"postgresql+psycopg2://loader:{secret}@127.0.0.1:{port}/dengage_state",
    }
    run = run_target(config, _messages("a", 10), tmp_path)

    assert run.returncode == 1
    assert f"PostgreSQL database 'dengage_state' on 127.0.0.1:{port}" in run.stderr
    assert "Connection refused" in run.stderr
    assert secret not in run.stderr
    assert "Traceback" not in run.stderr
    assert emulator.request_log() == []


def test_the_schema_is_created_on_first_use_as_the_readme_documents(database: Database) -> None:
    SharedState(database.url, "acct", logging.getLogger("test"), 0)
    SharedState(database.url, "acct", logging.getLogger("test"), 0)  # already current

    assert database.sql("SELECT version FROM dengage_state_schema;").split() == [
        str(SCHEMA_VERSION)
    ]
    columns = database.sql(
        "SELECT table_name || '.' || column_name FROM information_schema.columns "
        "WHERE table_name LIKE 'dengage_%' ORDER BY 1;"
    ).split()
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The shared state database", 1)[1].split("\n## ", 1)[0]
    documented = sorted(
        f"{table}.{column}"
        for table, column in re.findall(r"^\| `(dengage_\w+)` \| `(\w+)` \|", section, re.M)
    )
    assert columns == documented


def test_a_state_url_in_memory_is_refused() -> None:
    with pytest.raises(SharedStateError, match="must be a file"):
        SharedState("sqlite://", "acct", logging.getLogger("test"), 0)
