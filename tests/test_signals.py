"""A run stopped by SIGTERM/SIGINT never prints a STATE for unconfirmed records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    MAPPING,
    NETWORK_GUARD,
    assert_clean_log,
    cli_command,
    contact,
    record,
    schema,
    state,
)

from target_dengage.emulator import DengageEmulator


def _start(config: dict[str, Any], tmp_path: Path) -> subprocess.Popen[str]:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    return subprocess.Popen(
        [*cli_command(), "--config", str(config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **NETWORK_GUARD, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )


@pytest.mark.parametrize(
    ("signum", "where"),
    [(signal.SIGTERM, "pacing"), (signal.SIGINT, "pacing"), (signal.SIGTERM, "request")],
)
def test_signal_stops_without_acknowledging_unconfirmed_records(
    signum: signal.Signals,
    where: str,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config = {**base_config, "column_mapping": MAPPING, "batch_size_rows": 1}
    if where == "pacing":
        config["request_interval_seconds"] = 60
    else:
        emulator.inject_fault("/rest/bulk/contacts", count=1)
        emulator.inject_fault("/rest/bulk/contacts", hang_seconds=30, count=1)
    messages = [
        schema(),
        record(**contact(1)),
        state({"position": 1}),
        record(**contact(2)),
        state({"position": 2}),
    ]
    proc = _start(config, tmp_path)
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages))
    proc.stdin.flush()
    first = proc.stdout.readline()  # printed once record 1 is confirmed
    assert json.loads(first) == {"position": 1}
    deadline = time.monotonic() + 20
    while where == "request" and len(emulator.bulk_calls()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signum)
    try:
        rest, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum
    assert rest == ""  # no STATE for record 2
    assert f"Received signal {int(signum)}; stopping" in stderr
    assert_clean_log(stderr, config)
