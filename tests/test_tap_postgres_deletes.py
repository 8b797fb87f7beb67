"""Source deletes from the real meltanolabs-tap-postgres in LOG_BASED mode (wal2json), piped
into the real target CLI: a contact deleted in the source is never re-created or re-filled,
whether the delete carries the whole old row (``REPLICA IDENTITY FULL``) or only the key
(``DEFAULT``); with ``delete_behavior: passivate`` it is passivated and keeps its columns.

The tap is the one Meltano installed for the project (meltano.yml), run as its executable
with a config, a catalog and the STATE the target printed, as an orchestrator runs it.
It reads a throwaway PostgreSQL server of this module's own, started with
``wal_level=logical``; every case gets its own database and replication slot.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    NETWORK_GUARD,
    PASSWORD,
    RUN_TIMEOUT,
    USERKEY,
    Run,
    assert_clean_log,
    cli_command,
    unavailable,
)
from pgserver import Server, find_bin, postgres_server
from test_meltano import ROOT, WAREHOUSE_MAPPING, meltano  # noqa: F401 - the fixture

from target_dengage.emulator import DengageEmulator

pytestmark = pytest.mark.meltano

TAP = ROOT / ".meltano" / "extractors" / "tap-postgres" / "venv" / "bin" / "tap-postgres"
LOGICAL = {"wal_level": "logical", "max_replication_slots": "16", "max_wal_senders": "16"}
ROWS = 10
#: A row the target rejects (its email is not one), so D·engage never has its contact.
REJECTED = ROWS + 1
UPDATED, DELETED, INSERTED = 5, (7, 8), REJECTED + 1


def _bodies(emulator: DengageEmulator, start: int) -> list[dict[str, Any]]:
    """The sync BulkUpsert requests D·engage applied since the ``start``-th one: their
    columns, contact keys and insertIfNotExists (every row carries exactly the columns)."""
    return [
        {
            "columns": call["columns"],
            "keys": call["contact_keys"],
            "insertIfNotExists": call["insert_if_not_exists"],
        }
        for call in emulator.bulk_calls()[start:]
        if call["status"] == 200
    ]


@pytest.fixture(scope="module")
def logical_postgres() -> Iterator[Server]:
    """A server of this module's own: logical replication needs ``wal_level=logical``, which
    only a restart changes, and the session's server serves other tests."""
    if find_bin("initdb") is None:
        unavailable("PostgreSQL")
    with postgres_server(LOGICAL) as server:
        try:
            server.sql("LOAD 'wal2json';")
        except subprocess.CalledProcessError as error:
            if "could not access file" in error.stderr:
                unavailable("wal2json (postgresql-<major>-wal2json)")
            raise
        yield server


@pytest.fixture(scope="module")
def tap_postgres(meltano: str) -> str:  # noqa: F811 - the fixture imported above
    """The tap-postgres executable `meltano install` put in the project."""
    assert TAP.exists(), f"meltano install did not install tap-postgres at {TAP}"
    return str(TAP)


@dataclasses.dataclass(frozen=True)
class Source:
    """One case's database, slot and tap files."""

    db: Server
    tap: str
    config: Path
    catalog: Path


def _insert_rows(db: Server) -> None:
    db.sql(
        "INSERT INTO customers (email, first_name, last_name, phone) "  # noqa: S608 - constants
        f"SELECT 'User.' || i || '@Example.com', 'F' || i, 'L' || i, '+90 535 000 00 ' || "
        f"lpad(i::text, 2, '0') FROM generate_series(1, {ROWS}) AS i;\n"
        "INSERT INTO customers (email, first_name, last_name, phone) "
        "VALUES ('not-an-email', 'Bad', 'Row', NULL);"
    )


def _source(server: Server, tap: str, name: str, identity: str, reader: str, tmp: Path) -> Source:
    """Step 1: the table with its rows, its replica identity and the tap's slot.

    ``reader`` is how the tap does its first sync. ``wal``, its default, reads the WAL from
    the slot's start only (it never selects the table), so the slot is created before the
    rows are inserted; ``bootstrap`` (``log_based_single_connection`` with
    ``auto_bootstrap_log_based``) selects the whole table, then reads the WAL from there."""
    server.sql(f"DROP DATABASE IF EXISTS {name};\nCREATE DATABASE {name};")
    db = dataclasses.replace(server, database=name)
    db.sql(
        "CREATE TABLE customers (id serial PRIMARY KEY, email text, first_name text, "
        "last_name text, phone text, updated_at timestamptz NOT NULL DEFAULT now());\n"
        f"ALTER TABLE customers REPLICA IDENTITY {identity};"
    )
    slot = f"SELECT 1 FROM pg_create_logical_replication_slot('{name}', 'wal2json');"  # noqa: S608
    if reader == "wal":
        db.sql(slot)
        _insert_rows(db)
    else:
        _insert_rows(db)
        db.sql(slot)
    config = {
        "host": db.host,
        "port": db.port,
        "user": db.user,
        "password": "unused-trust-auth",
        "database": name,
        "filter_schemas": ["public"],
        "replication_slot_name": name,
        "replication_idle_exit_seconds": 2,  # the tap stops once the slot has nothing more
        "replication_max_run_seconds": 90,
        "log_based_single_connection": reader == "bootstrap",
        "auto_bootstrap_log_based": reader == "bootstrap",
    }
    config_path = tmp / "tap-config.json"
    config_path.write_text(json.dumps(config))
    discovered = subprocess.run(
        [tap, "--config", str(config_path), "--discover"],
        capture_output=True,
        text=True,
        check=True,
        timeout=RUN_TIMEOUT,
    )
    catalog = json.loads(discovered.stdout)
    (stream,) = [s for s in catalog["streams"] if s["tap_stream_id"] == "public-customers"]
    stream.update(replication_method="LOG_BASED", replication_key="_sdc_lsn")
    for entry in stream["metadata"]:
        if entry["breadcrumb"] == []:
            entry["metadata"].update(
                {"selected": True, "replication-method": "LOG_BASED", "replication-key": "_sdc_lsn"}
            )
    catalog_path = tmp / "catalog.json"
    catalog_path.write_text(json.dumps({"streams": [stream]}))
    return Source(db, tap, config_path, catalog_path)


def _sync(source: Source, config: dict[str, Any], state: Any, tmp: Path, name: str) -> Run:
    """tap-postgres | target-dengage, with ``state`` (the target's last STATE) as the tap's."""
    args = [source.tap, "--config", str(source.config), "--catalog", str(source.catalog)]
    if state is not None:
        state_path = tmp / f"state-{name}.json"
        state_path.write_text(json.dumps(state))
        args += ["--state", str(state_path)]
    config_path = tmp / f"target-{name}.json"
    config_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TARGET_DENGAGE_", "TAP_"))}
    env.update(XDG_CACHE_HOME=str(tmp / "cache"), **NETWORK_GUARD)
    tap_log = tmp / f"tap-{name}.log"
    with (
        tap_log.open("w") as tap_stderr,
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=tap_stderr, env=env) as tap,
        subprocess.Popen(
            [*cli_command(), "--config", str(config_path)],
            stdin=tap.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp,
        ) as target,
    ):
        assert tap.stdout is not None
        tap.stdout.close()  # the target holds the only reader of the pipe
        try:
            stdout, stderr = target.communicate(timeout=RUN_TIMEOUT)
            tap_code = tap.wait(timeout=RUN_TIMEOUT)
        finally:
            tap.kill()
            target.kill()
    assert tap_code == 0, f"tap: {tap_log.read_text()[-3000:]}\ntarget: {stderr[-3000:]}"
    summary_path = Path(config["run_summary_path"])
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary_path.unlink(missing_ok=True)
    assert_clean_log(stderr, config)
    return Run(target.returncode, stdout, stderr, summary=summary)


def _deletes(summary: dict[str, Any]) -> dict[str, int]:
    """The run summary's delete counts this test knows of."""
    counts = summary["deletes"]
    return {k: counts[k] for k in ("ignored", "to_passivate", "passivated", "not_found")}


def _without_status(contact: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in contact.items() if k != "contact_status"}


@pytest.mark.parametrize("reader", ["wal", "bootstrap"])
@pytest.mark.parametrize("behavior", ["ignore", "passivate"])
@pytest.mark.parametrize("identity", ["FULL", "DEFAULT"])
def test_deleted_rows_are_never_re_created_or_re_filled(
    identity: str,
    behavior: str,
    reader: str,
    emulator: DengageEmulator,
    logical_postgres: Server,
    tap_postgres: str,
    tmp_path: Path,
) -> None:
    name = f"deletes_{identity}_{behavior}_{reader}".lower()
    source = _source(logical_postgres, tap_postgres, name, identity, reader, tmp_path)
    config = {
        "api_url": emulator.url,
        "userkey": USERKEY,
        "password": PASSWORD,
        "request_interval_seconds": 0,
        "progress_interval_seconds": 0,
        "max_retries": 3,
        "stop_on_error": False,
        "column_mapping": WAREHOUSE_MAPPING,  # id, the table's key, is the contact_key
        "delete_behavior": behavior,
        "rejected_records_path": str(tmp_path / "rejected.jsonl"),
        "run_summary_path": str(tmp_path / "summary.json"),
    }

    # Step 2: the first sync loads every row; the bad one is rejected, so never in D·engage.
    first = _sync(source, config, None, tmp_path, "first")
    assert first.returncode == 0, first.stderr
    assert first.summary["records_read"] == ROWS + 1
    assert first.summary["contacts"]["confirmed"] == ROWS
    assert first.summary["contacts"]["rejected_locally"] == 1
    before = emulator.contacts()
    assert set(before) == {str(i) for i in range(1, ROWS + 1)}
    assert before["7"] == {
        **before["7"],
        "email": "user.7@example.com",
        "name": "F7",
        "surname": "L7",
        "gsm": "905350000007",
    }
    bookmark = first.states[-1]
    assert bookmark["bookmarks"]["public-customers"]["replication_key"] == "_sdc_lsn"

    # Step 3: an update, deletes (one of a contact D·engage never had), an insert.
    source.db.sql(
        f"UPDATE customers SET first_name = 'Changed' WHERE id = {UPDATED};\n"  # noqa: S608
        f"DELETE FROM customers WHERE id IN ({DELETED[0]}, {DELETED[1]}, {REJECTED});\n"
        "INSERT INTO customers (email, first_name, last_name, phone) "
        "VALUES ('New.One@Example.com', 'New', 'One', '+90 535 000 00 99');"
    )
    sent_before = len(emulator.bulk_calls())
    second = _sync(source, config, bookmark, tmp_path, "second")
    assert second.returncode == 0, second.stderr
    assert second.summary["records_read"] == 5  # what the WAL holds: 1 + 3 + 1 changes
    assert second.states[-1] != bookmark  # the bookmark moved past the changes

    # Step 4: nothing deleted came back, nothing deleted was re-filled.
    stored = emulator.contacts()
    assert set(stored) == {str(i) for i in [*range(1, ROWS + 1), INSERTED]}
    assert str(REJECTED) not in stored  # a delete of a key D·engage never had creates nothing
    assert stored[str(UPDATED)]["name"] == "Changed"
    assert stored[str(INSERTED)] == {
        **stored[str(INSERTED)],
        "email": "new.one@example.com",
        "name": "New",
        "surname": "One",
    }
    bodies = _bodies(emulator, sent_before)
    data = [b for b in bodies if b["columns"] != ["contact_key", "contact_status"]]
    assert sorted(key for b in data for key in b["keys"]) == sorted(
        [str(INSERTED), str(UPDATED)]
    )  # no delete was sent as data
    deleted = [str(i) for i in DELETED]
    if behavior == "ignore":
        for key in deleted:
            assert stored[key] == before[key]  # untouched, not re-filled with nulls
        assert len(data) == len(bodies)  # no passivation either
        assert _deletes(second.summary) == {
            "ignored": 3,
            "to_passivate": 0,
            "passivated": 0,
            "not_found": 0,
        }
    else:
        for key in deleted:
            assert stored[key]["contact_status"] == "P"
            assert _without_status(stored[key]) == _without_status(before[key])  # kept
        passivations = [b for b in bodies if b not in data]
        assert passivations, "no passivation request was sent"
        for body in passivations:
            assert body["insertIfNotExists"] is False
        assert sorted(key for b in passivations for key in b["keys"]) == sorted(
            [*deleted, str(REJECTED)]
        )
        assert _deletes(second.summary) == {
            "ignored": 0,
            "to_passivate": 3,
            "passivated": 2,
            "not_found": 1,
        }
    assert all(stored[k].get("contact_status", "A") == "A" for k in stored if k not in deleted)
