"""Real Meltano, real taps from PyPI, real PostgreSQL: `meltano run` into the emulator.

The repository is the Meltano project (its meltano.yml). Plugins are installed once per
session; every test gets its own Meltano system database, so state never leaks between tests.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import NETWORK_GUARD, PASSWORD, USERKEY, assert_clean_log, unavailable
from pgserver import Server

from target_dengage.emulator import DengageEmulator

ROOT = Path(__file__).resolve().parent.parent
#: The sample warehouse columns → master_contact columns (shared with the demo, the
#: benchmark and the Meltano tests).
WAREHOUSE_MAPPING = json.loads((ROOT / "examples" / "warehouse-column-mapping.json").read_text())

pytestmark = pytest.mark.meltano


def _meltano_bin() -> str | None:
    candidates = [
        os.environ.get("MELTANO_BIN"),
        str(ROOT / ".venv-meltano" / "bin" / "meltano"),
        shutil.which("meltano"),
    ]
    return next((c for c in candidates if c and Path(c).exists()), None)


@pytest.fixture(scope="session")
def meltano() -> str:
    found = _meltano_bin()
    if found is None:
        unavailable("Meltano")
    assert found is not None
    env = {**os.environ, "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false"}
    subprocess.run(
        [found, "install"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=1800
    )
    return found


def _meltano(
    meltano: str, args: list[str], env: dict[str, str], *, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [meltano, *args],
        cwd=ROOT,
        env={**os.environ, **NETWORK_GUARD, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert_clean_log(result.stderr, {"password": PASSWORD})
    return result


def _target_env(emulator: DengageEmulator, tmp_path: Path) -> dict[str, str]:
    return {
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'meltano.db'}",
        "MELTANO_ENVIRONMENT": "dev",
        "TARGET_DENGAGE_API_URL": emulator.url,
        "TARGET_DENGAGE_USERKEY": USERKEY,
        "TARGET_DENGAGE_PASSWORD": PASSWORD,
        "TARGET_DENGAGE_REQUEST_INTERVAL_SECONDS": "0",
        "TARGET_DENGAGE_PROGRESS_INTERVAL_SECONDS": "0",
        "TARGET_DENGAGE_STOP_ON_ERROR": "false",
        "TARGET_DENGAGE_REJECTED_RECORDS_PATH": str(tmp_path / "rejected.jsonl"),
        "TARGET_DENGAGE_PACING_STATE_PATH": str(tmp_path / "pacing.json"),
        "TARGET_DENGAGE_COLUMN_MAPPING": json.dumps(WAREHOUSE_MAPPING),
        "TARGET_DENGAGE_CUSTOM_COLUMNS": json.dumps(["city"]),
    }


def _tap_postgres_env(postgres: Server) -> dict[str, str]:
    """tap-postgres reading the public schema of the server's database (trust auth)."""
    return {
        "TAP_POSTGRES_HOST": postgres.host,
        "TAP_POSTGRES_PORT": str(postgres.port),
        "TAP_POSTGRES_USER": postgres.user,
        "TAP_POSTGRES_PASSWORD": "unused-trust-auth",
        "TAP_POSTGRES_DATABASE": postgres.database,
        "TAP_POSTGRES_FILTER_SCHEMAS": json.dumps(["public"]),
    }


def _write_contacts_csv(path: Path, count: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*WAREHOUSE_MAPPING, "city"])
        for i in range(1, count + 1):
            writer.writerow(
                [
                    f"CUST-{i:05d}",
                    f" Person.{i}@Example.COM",
                    f"First{i}",
                    f"Last{i}",
                    "" if i % 5 == 0 else f"+90 535 {i:07d}",
                    f"19{50 + i % 50}-0{1 + i % 9}-1{i % 9}",
                    "yes" if i % 2 else "no",
                    "İzmir" if i % 3 else "",
                ]
            )


def _state(meltano: str, env: dict[str, str], state_id: str) -> Any:
    result = _meltano(meltano, ["state", "get", state_id], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_csv_through_meltano_run_then_an_incremental_rerun_sends_nothing(
    meltano: str, emulator: DengageEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "contacts.csv"
    _write_contacts_csv(source, 300)
    env = {
        **_target_env(emulator, tmp_path),
        "TAP_SPREADSHEETS_FILES": json.dumps(
            [
                {
                    "path": str(source),
                    "format": "csv",
                    "table_name": "contacts",
                    "primary_keys": ["customer_id"],
                }
            ]
        ),
    }
    first = _meltano(meltano, ["run", "tap-spreadsheets", "target-dengage"], env)
    assert first.returncode == 0, first.stderr

    stored = emulator.contacts()
    assert len(stored) == 300
    assert stored["CUST-00007"]["email"] == "person.7@example.com"
    assert stored["CUST-00007"]["gsm"] == "905350000007"
    assert stored["CUST-00007"]["email_permission"] is True
    assert stored["CUST-00008"]["email_permission"] is False
    assert stored["CUST-00007"]["city"] == "İzmir"
    assert "gsm" not in stored["CUST-00010"]  # a blank cell sends nothing

    # Meltano stored exactly the bookmark the tap itself ends with.
    tap_out = _meltano(meltano, ["invoke", "tap-spreadsheets"], env)
    assert tap_out.returncode == 0, tap_out.stderr
    tap_states = [
        json.loads(line)["value"]
        for line in tap_out.stdout.splitlines()
        if line.startswith("{") and json.loads(line).get("type") == "STATE"
    ]
    stored_state = _state(meltano, env, "dev:tap-spreadsheets-to-target-dengage")
    assert stored_state["singer_state"] == tap_states[-1]

    calls = len(emulator.bulk_calls())
    second = _meltano(meltano, ["run", "tap-spreadsheets", "target-dengage"], env)
    assert second.returncode == 0, second.stderr
    assert len(emulator.bulk_calls()) == calls  # nothing new was sent


def test_postgres_table_through_tap_postgres(
    meltano: str, emulator: DengageEmulator, postgres: Server, tmp_path: Path
) -> None:
    rows = ",\n".join(
        f"('C{i}', '  Buyer{i}@Shop.Example ', 'First{i}', 'Last{i}', "
        + ("NULL" if i % 4 == 0 else f"'+44 7700 {i:06d}'")
        + f", DATE '1980-01-01' + {i}, {'true' if i % 3 else 'false'}, now())"
        for i in range(1, 251)
    )
    # A database of its own: the session's server also holds other tests' tables (such as a
    # change-detection ledger), and tap-postgres extracts every table of the schema.
    postgres.sql("DROP DATABASE IF EXISTS warehouse;\nCREATE DATABASE warehouse;")
    postgres = dataclasses.replace(postgres, database="warehouse")
    postgres.sql(
        "DROP TABLE IF EXISTS customers;"
        "CREATE TABLE customers (customer_id text PRIMARY KEY, email_address text, "
        "first_name text, last_name text, phone text, dob date, opted_in_email boolean, "
        f"updated_at timestamptz);\nINSERT INTO customers VALUES {rows};"
    )
    env = {**_target_env(emulator, tmp_path), **_tap_postgres_env(postgres)}
    result = _meltano(meltano, ["run", "tap-postgres", "target-dengage"], env)
    assert result.returncode == 0, result.stderr

    stored = emulator.contacts()
    assert len(stored) == 250
    assert stored["C2"] == {
        **stored["C2"],
        "email": "buyer2@shop.example",
        "name": "First2",
        "surname": "Last2",
        "gsm": "447700000002",
        "birth_date": "1980-01-03",
        "email_permission": True,
    }
    assert stored["C3"]["email_permission"] is False
    assert "gsm" not in stored["C4"]  # NULL in the warehouse: nothing sent, nothing cleared
    assert [c["count"] for c in emulator.bulk_calls()] in ([188, 62], [62, 188])
    assert "updated_at" in result.stderr  # named among the properties not sent


def test_full_table_mirror_through_tap_postgres_activate_version(
    meltano: str, emulator: DengageEmulator, postgres: Server, tmp_path: Path
) -> None:
    """FULL_TABLE with emit_activate_version_messages: a row removed from the table is
    passivated on the next run, a mass removal past max_passivate_percent passivates nothing
    and fails the run, and a row that comes back is active again."""
    postgres.sql("DROP DATABASE IF EXISTS mirror;\nCREATE DATABASE mirror;")
    postgres = dataclasses.replace(postgres, database="mirror")
    rows = ",\n".join(f"('M{i}', 'm{i}@shop.example', 'First{i}', 'Last{i}')" for i in range(1, 21))
    postgres.sql(
        "CREATE TABLE customers (customer_id text PRIMARY KEY, email_address text, "
        f"first_name text, last_name text);\nINSERT INTO customers VALUES {rows};"
    )
    env = {
        **_target_env(emulator, tmp_path),
        "TARGET_DENGAGE_DELETE_BEHAVIOR": "passivate",
        "TARGET_DENGAGE_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        **_tap_postgres_env(postgres),
        "TAP_POSTGRES_EMIT_ACTIVATE_VERSION_MESSAGES": "true",
    }

    def run() -> subprocess.CompletedProcess[str]:
        return _meltano(meltano, ["run", "tap-postgres", "target-dengage"], env)

    def passive() -> list[str]:
        stored = emulator.contacts()
        return sorted(k for k, c in stored.items() if c.get("contact_status") == "P")

    first = run()
    assert first.returncode == 0, first.stderr
    assert len(emulator.contacts()) == 20

    postgres.sql("DELETE FROM customers WHERE customer_id = 'M1';")
    second = run()
    assert second.returncode == 0, second.stderr
    assert passive() == ["M1"]
    assert emulator.contacts()["M1"]["email"] == "m1@shop.example"  # only passivated

    postgres.sql("DELETE FROM customers WHERE customer_id <> 'M2';")  # an empty-ish table
    third = run()
    assert third.returncode != 0
    assert "lacks 18 of the 19 contact(s)" in third.stderr
    assert "max_passivate_percent (10 %)" in third.stderr
    assert passive() == ["M1"]  # nothing more passivated

    postgres.sql(f"DELETE FROM customers;\nINSERT INTO customers VALUES {rows};")  # noqa: S608
    fourth = run()
    assert fourth.returncode == 0, fourth.stderr
    assert passive() == []
    assert emulator.contacts()["M1"]["contact_status"] == "A"
    assert_clean_log(fourth.stderr, {"password": PASSWORD})
