"""Benchmark: target-dengage against a stock SDK target and the parse floor, in one run.

    python bench/run.py               # N = 100,000
    python bench/run.py --million     # also N = 1,000,000 (several minutes)
    python bench/run.py --repeat 1    # each program once (quicker, noisier)

For each N it generates warehouse-like contacts as Singer messages and measures, per
process, wall time, CPU time (user + system) and peak RSS of the following, each run
``--repeat`` times in turns with its fastest run kept (a shared VM's slow moments then
weigh on no program more than another):

1. target-dengage, sync, pacing 0, into the emulator, all contacts new;
2. the same in async mode;
3. the same input again with change detection on: everything unchanged;
4. meltanolabs-target-csv 0.5.0 with default settings (the stock SDK reference), installed
   into a virtualenv of its own (bench/.venv-target-csv) on first use;
5. a bare read-and-parse of the input (the floor).

The emulator runs in a process of its own. Its cost is kept out of the target's figures:
the time the emulator spent answering (from its request log) is taken off the target's wall
time, and reported in a column of its own.

It then checks the sync endpoint's API efficiency: one column set, a short pacing interval:
the load must make ceil(N / 1000) calls and take within 5 % of (calls - 1) x interval.

Last, the cost of ``state_url`` per sync call: taking the account's lock and reading and
recording the clock in a PostgreSQL database on loopback (a throwaway server, as the tests
start one), which must stay within 20 ms a call. Skipped without PostgreSQL's binaries.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import venv
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CSV_VENV = HERE / ".venv-target-csv"
#: The sample warehouse columns → master_contact columns (shared with the demo, the
#: benchmark and the Meltano tests).
MAPPING = json.loads((HERE.parent / "examples" / "warehouse-column-mapping.json").read_text())
#: The network guard of the test suite: nothing but loopback is reachable.
NO_NETWORK = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
}


@dataclass
class Measure:
    name: str
    wall: float
    cpu: float
    rss_mb: float
    emulator: float = 0.0

    @property
    def own_wall(self) -> float:
        return max(self.wall - self.emulator, 1e-9)


def generate(path: Path, n: int, *, uniform: bool = False) -> None:
    """Warehouse-like contacts: mixed-case emails, formatted phones, date-times, some nulls.
    ``uniform`` gives every record the same columns (for the API-efficiency check)."""
    rnd = random.Random(n)
    properties = {
        "customer_id": {"type": "integer"},
        "email_address": {"type": ["string", "null"]},
        "first_name": {"type": ["string", "null"]},
        "last_name": {"type": ["string", "null"]},
        "phone": {"type": ["string", "null"]},
        "dob": {"type": ["string", "null"], "format": "date"},
        "opted_in_email": {"type": ["boolean", "null"]},
        "city": {"type": ["string", "null"]},
        "updated_at": {"type": "string", "format": "date-time"},
    }
    cities = ["İstanbul", "Ankara", "İzmir", "London", "Berlin"]
    with path.open("w", encoding="utf-8") as out:
        schema = {
            "type": "SCHEMA",
            "stream": "public-customers",
            "key_properties": ["customer_id"],
            "schema": {"type": "object", "properties": properties},
        }
        out.write(json.dumps(schema) + "\n")
        for i in range(1, n + 1):
            gap = not uniform and rnd.random() < 0.12
            record = {
                "customer_id": i,
                "email_address": f"  Customer.{i}@Example.COM ",
                "first_name": f"First{i}",
                "last_name": f"Last{i % 997}",
                "phone": None if gap else f"+90 (535) {i % 10_000_000:07d}",
                "dob": f"{1950 + i % 50}-{1 + i % 12:02d}-{1 + i % 28:02d}",
                "opted_in_email": i % 3 != 0,
                "city": None if not uniform and i % 9 == 0 else cities[i % len(cities)],
                "updated_at": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            }
            out.write(
                json.dumps(
                    {"type": "RECORD", "stream": "public-customers", "record": record},
                    ensure_ascii=False,
                )
                + "\n"
            )
            if i % 10_000 == 0 or i == n:
                state = {"bookmarks": {"public-customers": {"replication_key_value": i}}}
                out.write(json.dumps({"type": "STATE", "value": state}) + "\n")


def run(name: str, command: list[str], stdin: Path, env: dict[str, str] | None = None) -> Measure:
    """Run one process on the input; wall, CPU and peak RSS of that process alone.

    Peak RSS is read from /proc (VmHWM) while it runs: the rusage figure would also count
    the memory of this script at the moment it forked the process.
    """
    started = time.perf_counter()
    with stdin.open("rb") as source:
        process = subprocess.Popen(
            command,
            stdin=source,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_child_env(env),
        )
        peak = _PeakWatcher(process.pid)
        assert process.stderr is not None
        errors = process.stderr.read()
        peak.stop()
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write(errors.decode(errors="replace")[-3000:])
        raise SystemExit(f"{name} failed")
    return Measure(name, wall, usage.ru_utime + usage.ru_stime, peak.kilobytes / 1024)


class _PeakWatcher:
    """Samples a process's high-water RSS (VmHWM, which only grows) until it ends."""

    def __init__(self, pid: int) -> None:
        self.kilobytes = 0
        self._status = Path(f"/proc/{pid}/status")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                for line in self._status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.kilobytes = max(self.kilobytes, int(line.split()[1]))
            except (OSError, ValueError, IndexError):
                return
            if self._done.wait(0.01):
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The processes measured run as installed software does: with their bytecode cached
    (some sandboxes set PYTHONDONTWRITEBYTECODE, which would make every start compile)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **NO_NETWORK, **(extra or {})}


def warm_up(scratch: Path) -> None:
    """One tiny run of each program first, so no measured run pays for first-time caching."""
    data = scratch / "warm-up.jsonl"
    generate(data, 10)
    emulator = Emulator(scratch)
    try:
        cfg = config(scratch / "config.json", emulator, scratch)
        run("warm-up", [str(BIN / "target-dengage"), "--config", str(cfg)], data)
    finally:
        emulator.stop()
    (scratch / "csv.json").write_text(json.dumps({"output_path": str(scratch)}))
    run("warm-up", [str(target_csv()), "--config", str(scratch / "csv.json")], data)


class Emulator:
    """The emulator as a process of its own, so its CPU never counts as the target's."""

    def __init__(self, scratch: Path, *, interval: float = 0) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [
                str(BIN / "dengage-emulator"),
                "--port",
                str(self.port),
                "--sync-interval",
                str(interval),
                "--custom-column",
                "city",
                "--max-running-jobs",
                "8",
            ],
            stderr=subprocess.DEVNULL,
            env=_child_env(),
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self._get("health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.scratch = scratch

    def _get(self, name: str) -> object:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.url}/_emulator/{name}", timeout=600) as answer:
            return json.load(answer)

    def _post(self, name: str) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"{self.url}/_emulator/{name}"  # always loopback http
        request = urllib.request.Request(url, data=b"{}", method="POST")  # noqa: S310
        with opener.open(request, timeout=600):
            pass

    def busy_seconds(self) -> float:
        """Time the emulator spent on bulk calls, from each request line to its written
        reply (what the target waited for)."""
        log = self._get("requests")
        assert isinstance(log, list)
        calls = [e for e in log if e["path"].startswith("/rest/bulk")]
        return sum((e["replied"] or e["finished"]) - e["started"] for e in calls)

    def calls(self) -> list[dict[str, object]]:
        log = self._get("requests")
        assert isinstance(log, list)
        return [e for e in log if e["path"] == "/rest/bulk/contacts"]

    def reset(self) -> None:
        self._post("reset")

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def target_csv() -> Path:
    """meltanolabs-target-csv 0.5.0 in a virtualenv of its own (its SDK version is its own)."""
    executable = CSV_VENV / "bin" / "target-csv"
    if not executable.exists():
        print("installing meltanolabs-target-csv 0.5.0 into bench/.venv-target-csv ...")
        venv.create(CSV_VENV, with_pip=True)
        subprocess.run(
            [str(CSV_VENV / "bin" / "pip"), "install", "-q", "meltanolabs-target-csv==0.5.0"],
            check=True,
        )
    return executable


def config(path: Path, emulator: Emulator, scratch: Path, **extra: object) -> Path:
    path.write_text(
        json.dumps(
            {
                "api_url": emulator.url,
                "userkey": "demo",
                "password": "demo-password",
                "request_interval_seconds": 0,
                "progress_interval_seconds": 0,
                "poll_interval_seconds": 0,
                "column_mapping": MAPPING,
                "custom_columns": ["city"],
                "pacing_state_path": str(scratch / "pacing.json"),
                "job_journal_path": str(scratch / "jobs.json"),
                **extra,
            }
        )
    )
    return path


def bench(n: int, scratch: Path, repeat: int) -> list[Measure]:
    """Runs (1) to (5) ``repeat`` times each, in turns, and keeps each one's fastest run
    (by own time): a shared machine's slow moments then weigh on no run more than on
    another."""
    data = scratch / f"contacts-{n}.jsonl"
    generate(data, n)
    target = str(BIN / "target-dengage")
    ledger = f"sqlite:///{scratch / f'ledger-{n}.sqlite'}"
    out = scratch / "csv-out"
    (scratch / "csv.json").write_text(json.dumps({"output_path": str(out)}))
    floor = "import json,sys\nfor line in sys.stdin.buffer: json.loads(line)\n"
    best: dict[str, Measure] = {}

    def keep(measure: Measure) -> None:
        if measure.name not in best or measure.own_wall < best[measure.name].own_wall:
            best[measure.name] = measure

    emulator = Emulator(scratch)
    try:
        cfg = config(
            scratch / "config.json", emulator, scratch, change_detection=True, ledger_url=ledger
        )
        first = run("  (first run, ledger filling)", [target, "--config", str(cfg)], data)
        first.emulator = emulator.busy_seconds()
        for _ in range(repeat):
            for name, extra in (
                ("1 target-dengage sync", {}),
                ("2 target-dengage async", {"mode": "async"}),
                ("3 change detection, unchanged", {"change_detection": True, "ledger_url": ledger}),
            ):
                emulator.reset()
                cfg = config(scratch / "config.json", emulator, scratch, **extra)
                measure = run(name, [target, "--config", str(cfg)], data)
                measure.emulator = emulator.busy_seconds()
                keep(measure)
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            keep(
                run(
                    "4 meltanolabs-target-csv",
                    [str(target_csv()), "--config", str(scratch / "csv.json")],
                    data,
                )
            )
            keep(run("5 bare read + json.loads", [sys.executable, "-c", floor], data))
    finally:
        emulator.stop()
    return [best[name] for name in sorted(best)[:2]] + [first] + [best[n] for n in sorted(best)[2:]]


def table(n: int, results: list[Measure]) -> None:
    stock = next(m for m in results if m.name.startswith("4"))
    floor = next(m for m in results if m.name.startswith("5"))
    print(f"\nN = {n:,}")
    head = (
        f"{'run':34} {'wall s':>8} {'emul. s':>8} {'own s':>7} {'cpu s':>7} {'RSS MB':>7} "
        f"{'contacts/s':>11} {'x stock':>8} {'x floor':>8}"
    )
    print(head)
    print("-" * len(head))
    for m in results:
        rate = n / m.own_wall
        print(
            f"{m.name:34} {m.wall:8.2f} {m.emulator:8.2f} {m.own_wall:7.2f} {m.cpu:7.2f} "
            f"{m.rss_mb:7.0f} {rate:11,.0f} {stock.own_wall / m.own_wall:8.2f} "
            f"{floor.own_wall / m.own_wall:8.2f}"
        )


def sync_efficiency(scratch: Path, n: int = 5000, interval: int = 5) -> bool:
    """ceil(N/1000) calls, and wall time within 5 % of (calls - 1) x interval."""
    data = scratch / "uniform.jsonl"
    generate(data, n, uniform=True)
    emulator = Emulator(scratch, interval=interval)
    try:
        cfg = config(
            scratch / "config.json",
            emulator,
            scratch,
            request_interval_seconds=interval,
            pacing_state_path=str(scratch / "pacing-efficiency.json"),
        )
        measure = run("sync efficiency", [str(BIN / "target-dengage"), "--config", str(cfg)], data)
        calls = emulator.calls()
    finally:
        emulator.stop()
    expected_calls = math.ceil(n / 1000)
    span = float(calls[-1]["started"]) - float(calls[0]["started"])  # type: ignore[arg-type]
    ideal = (expected_calls - 1) * interval
    ok_calls = len(calls) == expected_calls and all(c["status"] == 200 for c in calls)
    ok_time = span <= ideal * 1.05
    print(
        f"\nSync efficiency: {n:,} contacts of one column set, request_interval_seconds "
        f"{interval}: {len(calls)} calls (expected {expected_calls}); first to last call "
        f"{span:.2f} s against (calls - 1) x interval = {ideal:.2f} s "
        f"({(span / ideal - 1) * 100:+.1f} %); whole process {measure.wall:.2f} s. "
        f"{'PASS' if ok_calls and ok_time else 'FAIL'}"
    )
    return ok_calls and ok_time


def shared_clock_cost(turns: int = 200, limit_ms: float = 20.0) -> bool:
    """Milliseconds a sync call spends on the shared clock (lock, read, record, unlock)."""
    import logging
    import statistics

    sys.path.insert(0, str(HERE.parent / "tests"))
    from pgserver import find_bin, postgres_server

    from target_dengage.sharedstate import SharedState

    if find_bin("initdb") is None:
        print("\nShared state (state_url) cost per call: skipped (no PostgreSQL binaries)")
        return True
    with postgres_server() as server:
        url = f"postgresql+psycopg2://{server.user}@{server.host}:{server.port}/{server.database}"
        store = SharedState(url, "bench|user:bench", logging.getLogger("bench"), 3)
        clock = store.clock(interval=60, call_timeout=300)
        costs = []
        for i in range(turns + 10):
            started = time.perf_counter()
            with clock.turn():
                clock.started()
            if i >= 10:  # the first turns open the connection
                costs.append((time.perf_counter() - started) * 1000)
    mean, p99 = statistics.fmean(costs), statistics.quantiles(costs, n=100)[98]
    ok = p99 <= limit_ms
    print(
        f"\nShared state (state_url) cost per call: lock + clock on loopback PostgreSQL, "
        f"{turns} turns: {mean:.2f} ms mean, {p99:.2f} ms p99 (limit {limit_ms:g} ms). "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--million", action="store_true", help="also run N = 1,000,000")
    parser.add_argument("--n", type=int, default=100_000, help="the main N (default 100,000)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each program per N, fastest kept (default 3; 1 for N = 1,000,000)",
    )
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{os.uname().sysname} {os.uname().machine}"
    )
    sizes = [args.n, *([1_000_000] if args.million else [])]
    peaks: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="target-dengage-bench-") as tmp:
        scratch = Path(tmp)
        warm_up(scratch)
        for n in sizes:
            results = bench(n, scratch, args.repeat if n == args.n else 1)
            table(n, results)
            peaks[n] = results[0].rss_mb
        if args.million:
            ratio = peaks[1_000_000] / peaks[args.n]
            print(
                f"\nPeak RSS of (1): {peaks[args.n]:.0f} MB at N={args.n:,}, "
                f"{peaks[1_000_000]:.0f} MB at N=1,000,000 ({ratio:.2f}x; target <= 1.2x)"
            )
        ok = sync_efficiency(scratch)
    ok = shared_clock_cost() and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
