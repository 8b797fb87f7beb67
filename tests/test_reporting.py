"""What the user is told: dry-run plans, progress lines, the run summary, rejection limits."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import requests
from conftest import MAPPING, PASSWORD, USERKEY, contact, record, run_target, schema, state

from target_dengage.emulator import DengageEmulator


def _messages(n: int, *, bad_every: int = 0) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [schema()]
    for i in range(1, n + 1):
        values = contact(i)
        if bad_every and i % bad_every == 0:
            values["email"] = "broken-address"
        messages.append(record(**values))
    messages.append(state({"position": n}))
    return messages


def test_dry_run_plans_without_calling_the_api(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    output = tmp_path / "bodies.jsonl"
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "request_interval_seconds": 60,
        "dry_run": True,
        "dry_run_output_path": str(output),
    }
    run = run_target(config, _messages(5500), tmp_path)

    assert run.returncode == 0, run.stderr
    assert run.stdout == ""  # a dry run prints no STATE
    assert emulator.request_log() == []  # not even a login
    assert "requests needed ...... 6 sync BulkUpsert calls" in run.stderr
    assert "least time ........... 5.0 min (one call every 60 s)" in run.stderr
    assert run.summary["dry_run"] is True
    assert run.summary["requests"] == 6

    bodies = output.read_text().splitlines()
    assert len(bodies) == 6
    with requests.Session() as http:
        token = http.post(
            f"{emulator.url}/rest/login", json={"userkey": USERKEY, "password": PASSWORD}
        ).json()["access_token"]
        for body in bodies:
            answer = http.post(
                f"{emulator.url}/rest/bulk/contacts",
                data=body.encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            assert answer.status_code == 200, answer.text
    assert len(emulator.contacts()) == 5500


def test_dry_run_counts_invalid_records_and_duplicates(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "column_mapping": MAPPING, "dry_run": True, "stop_on_error": False}
    messages = [*_messages(100, bad_every=10), record(**contact(1))]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert "invalid .............. 10" in run.stderr
    assert "duplicates merged .... 1" in run.stderr
    assert "to send .............. 90" in run.stderr
    assert len(Path(config["rejected_records_path"]).read_text().splitlines()) == 10


def test_progress_lines_rise_and_the_summary_matches_the_emulator(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.set_options(sync_interval_seconds=1)
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "request_interval_seconds": 1,
        "progress_interval_seconds": 1,
        "stop_on_error": False,
    }
    run = run_target(config, _messages(4000, bad_every=100), tmp_path)

    assert run.returncode == 0, run.stderr
    confirmed = [
        int(m.group(1))
        for m in re.finditer(r"Progress: \d+ read, \d+ sent, (\d+) confirmed", run.stderr)
    ]
    assert len(confirmed) >= 2
    assert confirmed == sorted(confirmed)
    assert confirmed[-1] > confirmed[0]
    assert "contacts/min" in run.stderr

    summary = run.summary
    rejected = Path(config["rejected_records_path"]).read_text().splitlines()
    assert summary["status"] == "succeeded"
    assert summary["contacts"]["confirmed"] == len(emulator.contacts()) == 3960
    assert summary["contacts"]["rejected"] == len(rejected) == 40
    assert summary["requests"] == len(emulator.bulk_calls()) == 4
    assert summary["last_state_printed"] == {"position": 4000}
    assert summary["pacing_wait_seconds"] >= 2.5


def test_max_rejected_percent_fails_the_run_after_delivering_the_rest(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "stop_on_error": False,
        "max_rejected_percent": 1,
    }
    run = run_target(config, _messages(1000, bad_every=20), tmp_path)

    assert run.returncode == 1
    assert len(emulator.contacts()) == 950  # every valid contact arrived
    assert "50 of 1000 records (5.0 %) were rejected, more than max_rejected_percent (1 %)" in (
        run.stderr
    )
    assert run.summary["status"] == "failed"
    assert "max_rejected_percent" in run.summary["error"]
    assert run.summary["contacts"]["rejected"] == 50


def test_summary_of_a_failed_run_says_why(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    emulator.inject_fault(
        "/rest/bulk/contacts", status=403, body={"code": 10, "message": "Forbidden"}
    )
    run = run_target({**base_config, "column_mapping": MAPPING}, _messages(5), tmp_path)

    assert run.returncode == 1
    assert run.summary["status"] == "failed"
    assert "allowlist" in run.summary["error"]
    assert run.summary["contacts"]["confirmed"] == 0
    assert run.summary["last_state_printed"] is None
    assert json.dumps(run.summary)  # plain JSON all the way down
