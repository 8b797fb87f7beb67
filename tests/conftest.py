"""Shared fixtures: a real emulator on loopback and the real ``target-dengage`` CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from pgserver import Server, find_bin, postgres_server

from target_dengage.emulator import DengageEmulator

# In CI the property tests are reproducible (same examples every run); locally they explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

USERKEY = "test-user"
PASSWORD = "s3cret-Pa55word!"
STATIC_TOKEN = "pre-issued-token-0123456789abcdef"

NETWORK_GUARD = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost,::1",
}

#: Every test run is bounded: a target that hangs fails the test instead of the suite.
RUN_TIMEOUT = 120


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("target-dengage")
    if script.exists():
        return [str(script)]
    found = shutil.which("target-dengage")
    return [found] if found else [sys.executable, "-m", "target_dengage.target"]


@dataclass
class Run:
    """What a user sees of one run: exit code, stdout lines (with arrival times), stderr."""

    returncode: int
    stdout: str
    stderr: str
    stdout_times: list[float] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def states(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def unavailable(what: str) -> None:
    """Locally a missing tool skips its tests; in CI (where .ci/run installs it) it fails."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed; .ci/run (scripts/test.sh) installs it")
    pytest.skip(f"{what} is not installed; run the tests with bash scripts/test.sh")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Server]:
    """One throwaway PostgreSQL server for the session (loopback only)."""
    if find_bin("initdb") is None:
        unavailable("PostgreSQL")
    with postgres_server() as server:
        yield server


@pytest.fixture
def emulator() -> Iterator[DengageEmulator]:
    emu = DengageEmulator(
        userkey=USERKEY,
        password=PASSWORD,
        static_tokens=[STATIC_TOKEN],
        sync_interval_seconds=0,
        custom_columns=["loyalty_tier", "city"],
    )
    with emu:
        yield emu


@pytest.fixture
def base_config(emulator: DengageEmulator, tmp_path: Path) -> dict[str, Any]:
    return {
        "api_url": emulator.url,
        "userkey": USERKEY,
        "password": PASSWORD,
        "request_interval_seconds": 0,
        "max_retries": 3,
        "rejected_records_path": str(tmp_path / "rejected.jsonl"),
        "run_summary_path": str(tmp_path / "summary.json"),
    }


_UNMASKED_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def assert_clean_log(stderr: str, config: dict[str, Any]) -> None:
    """Every run of the suite is checked: no secret and no unmasked email in the log."""
    for name in ("password", "access_token"):
        secret = config.get(name)
        if secret:
            assert secret not in stderr, f"the {name} leaked into the log"
    leaked = _UNMASKED_EMAIL.findall(stderr)
    assert not leaked, f"unmasked email addresses in the log: {leaked[:3]}"


def run_target(
    config: dict[str, Any],
    messages: Sequence[dict[str, Any] | str],
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    kill_when: Callable[[], bool] | None = None,
) -> Run:
    """Run the installed CLI as a user would: config file, messages on stdin.

    ``kill_when`` sends SIGKILL, as a crash would, as soon as the condition holds (checked
    every 10 ms): tests kill on what they observe, never on a timer.
    """
    config_path = tmp_path / f"config-{time.monotonic_ns()}.json"
    config_path.write_text(json.dumps(config))
    text = "".join((m if isinstance(m, str) else json.dumps(m)) + "\n" for m in messages)
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("TARGET_DENGAGE_")}
    process_env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    # A safety net: anything but loopback would go to a dead proxy on loopback, never out.
    process_env.update(NETWORK_GUARD)
    process_env.update(env or {})
    with subprocess.Popen(
        [*cli_command(), "--config", str(config_path), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=process_env,
        cwd=tmp_path,
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        lines: list[str] = []
        times: list[float] = []
        errors: list[str] = []

        def read_stdout() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                times.append(time.time())
                lines.append(line)

        def read_stderr() -> None:
            assert proc.stderr is not None
            errors.append(proc.stderr.read())

        readers = [threading.Thread(target=read_stdout), threading.Thread(target=read_stderr)]
        for reader in readers:
            reader.start()
        watcher = None
        if kill_when is not None:
            condition = kill_when

            def watch() -> None:
                deadline = time.monotonic() + RUN_TIMEOUT
                while proc.poll() is None and time.monotonic() < deadline:
                    if condition():
                        proc.kill()
                        return
                    time.sleep(0.01)

            watcher = threading.Thread(target=watch)
            watcher.start()
        try:
            proc.stdin.write(text)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=RUN_TIMEOUT)
        finally:
            proc.kill()
            if watcher is not None:
                watcher.join()
            for reader in readers:
                reader.join()
    summary_path = Path(config.get("run_summary_path") or tmp_path / "no-summary.json")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if summary_path.is_file():
        summary_path.unlink()  # the next run writes its own
    run = Run(proc.returncode, "".join(lines), "".join(errors), times, summary)
    assert_clean_log(run.stderr, config)
    return run


def schema(
    stream: str = "contacts",
    properties: Sequence[str] = ("id", "email", "phone", "first_name", "dob"),
    key_properties: Sequence[str] = ("id",),
) -> dict[str, Any]:
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {
            "type": "object",
            "properties": {name: {"type": ["string", "null"]} for name in properties},
        },
        "key_properties": list(key_properties),
    }


def record(stream: str = "contacts", **values: Any) -> dict[str, Any]:
    return {"type": "RECORD", "stream": stream, "record": values}


def state(value: Any) -> dict[str, Any]:
    return {"type": "STATE", "value": value}


def contact(i: int, *, prefix: str = "c", with_gsm: bool = True) -> dict[str, Any]:
    """A warehouse-looking contact: mixed-case email, formatted phone, date-time birthday."""
    values: dict[str, Any] = {
        "id": f"{prefix}{i}",
        "email": f"  User.{prefix}{i}@Example.COM ",
        "first_name": f"Name{i}",
        "dob": f"19{i % 90 + 10:02d}-0{i % 9 + 1}-1{i % 9}T08:30:00Z",
    }
    if with_gsm:
        values["phone"] = f"+90 (535) {i:07d}"
    return values


MAPPING = {"id": "contact_key", "phone": "gsm", "first_name": "name", "dob": "birth_date"}


def _confirmed_at(emulator: DengageEmulator) -> dict[str, float]:
    """When each contact was first confirmed: the end of the first 200 call carrying it."""
    seen: dict[str, float] = {}
    for call in emulator.bulk_calls():
        if call["status"] == 200:
            for key in call["contact_keys"] or []:  # type: ignore[attr-defined]
                seen.setdefault(key, call["finished"])  # type: ignore[arg-type]
    return seen


def assert_states_follow_confirmations(run: Run, emulator: DengageEmulator) -> None:
    """Each STATE {"position": n} came out only after contacts c1..cn were confirmed."""
    confirmed = _confirmed_at(emulator)
    for printed, at in zip(run.states, run.stdout_times, strict=True):
        for i in range(1, printed["position"] + 1):
            assert confirmed[f"c{i}"] <= at, f"STATE {printed} printed before c{i} was confirmed"
