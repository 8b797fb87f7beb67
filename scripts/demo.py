"""Demo pipeline: examples/contacts.csv → target-dengage → a local D·engage emulator.

A few lines of tap (CSV rows as Singer messages), the real ``target-dengage`` CLI, and the
emulator on loopback; then a plain account of what arrived, what was rejected and why, and
the STATE the target confirmed. No credentials and no network beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from target_dengage.emulator import DengageEmulator

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "contacts.csv"
#: The sample warehouse columns → master_contact columns (shared with the demo, the
#: benchmark and the Meltano tests).
COLUMN_MAPPING = json.loads((ROOT / "examples" / "warehouse-column-mapping.json").read_text())


def singer_messages(path: Path) -> list[str]:
    """What a file tap would print: SCHEMA, one RECORD per row, a final STATE bookmark."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    properties = {name: {"type": ["string", "null"]} for name in rows[0]}
    messages: list[dict[str, Any]] = [
        {
            "type": "SCHEMA",
            "stream": "warehouse_contacts",
            "schema": {"type": "object", "properties": properties},
            "key_properties": ["customer_id"],
        }
    ]
    messages += [{"type": "RECORD", "stream": "warehouse_contacts", "record": row} for row in rows]
    bookmark = max(row["updated_at"] for row in rows)
    messages.append(
        {
            "type": "STATE",
            "value": {"bookmarks": {"warehouse_contacts": {"replication_key_value": bookmark}}},
        }
    )
    return [json.dumps(m, ensure_ascii=False) for m in messages]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--interval",
        type=int,
        default=3,
        help="seconds between BulkUpsert calls (D·engage's real limit is 60; default 3)",
    )
    args = parser.parse_args()
    lines = singer_messages(SAMPLE)
    with (
        tempfile.TemporaryDirectory() as scratch,
        DengageEmulator(
            userkey="demo",
            password="demo-password",
            sync_interval_seconds=args.interval,
            custom_columns=["city"],
        ) as emulator,
    ):
        rejected_path = Path(scratch) / "rejected.jsonl"
        config = {
            "api_url": emulator.url,
            "userkey": "demo",
            "password": "demo-password",
            "request_interval_seconds": args.interval,
            "column_mapping": COLUMN_MAPPING,
            "custom_columns": ["city"],
            "stop_on_error": False,
            "rejected_records_path": str(rejected_path),
        }
        config_path = Path(scratch) / "config.json"
        config_path.write_text(json.dumps(config))
        print(f"D·engage emulator listening on {emulator.url}")
        print(
            f"Piping {len(lines) - 2} rows of {SAMPLE.relative_to(ROOT)} into target-dengage "
            f"(1000 contacts a call, one call every {args.interval} s). Its log follows.\n",
            flush=True,
        )
        target = Path(sys.executable).with_name("target-dengage")
        result = subprocess.run(
            [str(target), "--config", str(config_path)],
            input="\n".join(lines) + "\n",
            capture_output=False,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        report(emulator, result, rejected_path)
        return result.returncode


def report(
    emulator: DengageEmulator,
    result: subprocess.CompletedProcess[str],
    rejected_path: Path,
) -> None:
    calls = emulator.bulk_calls()
    stored = emulator.contacts()
    print("\n──── What happened ────")
    print(f"target-dengage exit code: {result.returncode}")
    print(f"BulkUpsert calls: {len(calls)}")
    for n, call in enumerate(calls, 1):
        columns = ", ".join(call["columns"] or [])  # type: ignore[arg-type]
        print(f"  {n}. HTTP {call['status']}, {call['count']} contacts, columns: {columns}")
    print(f"Contacts stored in the emulator: {len(stored)}")
    sample = stored.get("CUST-00003")
    if sample:
        print(f"  e.g. CUST-00003 → {json.dumps(sample, ensure_ascii=False)}")
    rejected = (
        [json.loads(line) for line in rejected_path.read_text().splitlines()]
        if rejected_path.exists()
        else []
    )
    print(f"Rejected (kept in the rejected-records file): {len(rejected)}")
    for entry in rejected:
        print(f"  record {entry['record_number']} ({entry['contact_key']}): {entry['reason']}")
    reasons = Counter(entry["field"] for entry in rejected)
    if reasons:
        print(f"  by field: {dict(reasons)}")
    print(f"STATE confirmed by the target (stdout): {result.stdout.strip() or '(none)'}")


if __name__ == "__main__":
    raise SystemExit(main())
