"""The change-detection ledger: what D·engage confirmed for each contact, and when.

A nightly full-table sync re-reads every row, and most have not changed; with one sync call a
minute, re-sending them costs hours. The ledger keeps, per account and contact key, a stable
hash of the mapped, normalized payload that D·engage confirmed (``payload_hash``) and, when the
contact came from one record read straight from the input, a hash of that record's JSON text
(``source_hash``: an unchanged row is then recognised without mapping it again). It is written
only for confirmed contacts, one transaction per confirmed request, so a crash never marks an
unconfirmed contact as sent.

The same rows serve full-table mirrors and deletes: each remembers the stream (and the stream's
ACTIVATE_VERSION, when it had one) its contact was last confirmed from, and whether the target
passivated it. A stream's complete version tells which of its contacts the source no longer
has; a passivated contact that comes back is made active again.

The default ledger is a SQLite file, spoken to with the standard library's ``sqlite3``: a
nightly run that finds nothing changed should not spend a third of a second importing
SQLAlchemy. Any other database a team shares between machines (``ledger_url``, e.g.
``postgresql+psycopg2://...``) goes through SQLAlchemy, over the same table.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import msgspec

if TYPE_CHECKING:
    import sqlalchemy as sa

TABLE = "dengage_contact_ledger"
#: Keys per lookup query: below every database's limit on bound parameters.
LOOKUP_CHUNK = 1000


class LedgerEntry(NamedTuple):
    """A ledger row as a lookup returns it."""

    contact_key: str
    payload_hash: str
    source_hash: str | None  # hash of the record's JSON text, when one record made the row
    confirmed_at: float  # epoch seconds


#: What a confirmed request records about one contact, in the table's column order (a plain
#: tuple: one is made per confirmed contact): payload_hash, source_hash (the record's text,
#: when one record made the contact), stream (the one it was last confirmed from), version
#: (that stream's ACTIVATE_VERSION then, if any), passivated (the target passivated it).
Recorded = tuple[str, "str | None", "str | None", "int | None", bool]
RECORDED_COLUMNS = ("payload_hash", "source_hash", "stream", "version", "passivated")


#: What a confirmed request records, by contact key.
Confirmed = Mapping[str, Recorded]

#: A lookup's answer as SQLite gives it in JSON.
_ENTRIES = msgspec.json.Decoder(list[LedgerEntry])
_SQLITE_TABLE = """CREATE TABLE IF NOT EXISTS dengage_contact_ledger (
    account VARCHAR(512) NOT NULL,
    contact_key VARCHAR(255) NOT NULL,
    payload_hash VARCHAR(32) NOT NULL,
    confirmed_at FLOAT NOT NULL,
    source_hash VARCHAR(32),
    stream VARCHAR(255),
    version BIGINT,
    passivated BOOLEAN NOT NULL DEFAULT 0,
    PRIMARY KEY (account, contact_key)
)"""
_SQLITE_PUT = (
    "INSERT OR REPLACE INTO dengage_contact_ledger (account, contact_key, payload_hash, "
    "source_hash, stream, version, passivated, confirmed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQLITE_STREAM = (
    "SELECT contact_key FROM dengage_contact_ledger WHERE account = ? AND stream = ? "
    "AND NOT passivated"
)
_SQLITE_PASSIVE = "SELECT contact_key FROM dengage_contact_ledger WHERE account = ? AND passivated"
_SQLITE_ADOPT = (
    "UPDATE dengage_contact_ledger SET source_hash = ? WHERE account = ? AND contact_key = ? "
    "AND payload_hash = ?"
)
_SQLITE_FORGET = "DELETE FROM dengage_contact_ledger WHERE account = ? AND contact_key = ?"
#: Columns added to ledgers made by earlier versions, in the order they came: source hashes
#: (old rows keep NULL and are compared by payload hash until next confirmed), then the
#: stream, version and passivation of mirrors (old rows belong to no stream until next
#: confirmed, so no mirror passivates them before that).
_ADDED_COLUMNS = {
    "source_hash": "VARCHAR(32)",
    "stream": "VARCHAR(255)",
    "version": "BIGINT",
    "passivated": "BOOLEAN NOT NULL DEFAULT {false}",
}
#: Every run with a ledger reads the passivated contacts: few, so a partial index (a run
#: that finds none reads nothing, and only passivations pay for its upkeep). A mirror reads
#: a stream's contacts once per version, through the primary key's account prefix: an index
#: on the stream would cost every write of every run.
_INDEXES = (f"CREATE INDEX IF NOT EXISTS {TABLE}_passive ON {TABLE} (account) WHERE passivated",)


def _add_column(name: str, *, if_not_exists: bool, false: str) -> str:
    clause = " IF NOT EXISTS" if if_not_exists else ""
    kind = _ADDED_COLUMNS[name].format(false=false)
    return f"ALTER TABLE {TABLE} ADD COLUMN{clause} {name} {kind}"


def default_ledger_url(account: str) -> str:
    """A SQLite file per account (API URL + user) under the user's data directory."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    name = hashlib.sha256(account.encode()).hexdigest()[:16]
    return f"sqlite:///{Path(data) / 'target-dengage' / f'ledger-{name}.sqlite'}"


def open_ledger(url: str, account: str) -> Ledger:
    """The standard library for a plain SQLite file URL, SQLAlchemy for everything else."""
    path = sqlite_file(url)
    if path is not None:
        return SqliteLedger(url, account, path)
    return SqlAlchemyLedger(url, account)


def sqlite_file(url: str) -> Path | None:
    """The file of ``sqlite:///relative`` or ``sqlite:////absolute`` (as SQLAlchemy reads
    them), or None for any URL the standard library should not interpret itself."""
    if not url.startswith("sqlite:///") or "?" in url:
        return None
    path = url.removeprefix("sqlite:///")
    if path in ("", ":memory:"):
        return None
    return Path(path).expanduser()


class Ledger:
    """One account's view of the ledger table, over one connection kept for the run.

    The connection lives on a thread of its own, and every call goes through it: a lookup
    can then run while the record loop goes on reading (SQLite and the network drivers
    release the GIL while they work), and the connection is only ever used by one thread.
    """

    def __init__(self, url: str, account: str) -> None:
        self.url = url
        self.account = account
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._closed = False
        #: Writes sent to the ledger's thread and not yet known to have succeeded.
        self._writing: list[Future[None]] = []
        try:
            self._worker.submit(self._open).result()
        except BaseException:
            self._worker.shutdown()
            raise

    def lookup_later(self, keys: Sequence[str]) -> Future[dict[str, LedgerEntry]]:
        """``contact_key → entry`` for the keys the ledger knows, when it is ready."""
        return self._worker.submit(self._lookup, keys)

    def lookup(self, keys: Sequence[str]) -> dict[str, LedgerEntry]:
        return self.lookup_later(keys).result()

    def record(self, confirmed: Confirmed, renamed: Iterable[str] = ()) -> None:
        """Write confirmed contacts (and drop renamed-away keys) in one transaction, on the
        ledger's thread while the run reads on: :meth:`settle` waits for it, before a STATE
        that covers them is printed. Lookups sent later see it (the thread takes its work
        in order)."""
        self._writing.append(self._worker.submit(self._record, confirmed, list(renamed)))

    def settle(self) -> None:
        """Wait until every write sent so far is done; raise the first that failed."""
        writing, self._writing = self._writing, []
        for write in writing:
            write.result()

    def stream_contacts(self, stream: str) -> list[str]:
        """The keys last confirmed from ``stream`` and not passivated: what a complete
        version of the stream is compared with."""
        return self._worker.submit(self._stream_contacts, stream).result()

    def passive_keys(self) -> set[str]:
        """The keys of the account the target passivated (to reactivate if they return)."""
        return self._worker.submit(self._passive_keys).result()

    def adopt_sources(self, sources: Mapping[str, tuple[str, str]]) -> None:
        """Set the source hash of entries whose payload hash is still the one given: that
        text maps to what D·engage already confirmed (e.g. a ledger written before source
        hashes existed, or a tap that now writes its JSON differently)."""
        self._worker.submit(self._adopt, sources).result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.settle()
        finally:
            try:
                self._worker.submit(self._close).result()
            finally:
                self._worker.shutdown()

    def _open(self) -> None:
        raise NotImplementedError

    def _lookup(self, keys: Sequence[str]) -> dict[str, LedgerEntry]:
        raise NotImplementedError

    def _record(self, confirmed: Confirmed, renamed: Sequence[str]) -> None:
        raise NotImplementedError

    def _adopt(self, sources: Mapping[str, tuple[str, str]]) -> None:
        raise NotImplementedError

    def _stream_contacts(self, stream: str) -> list[str]:
        raise NotImplementedError

    def _passive_keys(self) -> set[str]:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class SqliteLedger(Ledger):
    """The default ledger. WAL lets a reader (``target-dengage-ledger info``) run beside a
    load, and NORMAL sync drops an fsync per transaction: a power cut may lose the newest
    entries, which only means those contacts are sent once more; it never records an
    unconfirmed one."""

    def __init__(self, url: str, account: str, path: Path) -> None:
        self._path = path
        super().__init__(url, account)

    def _open(self) -> None:
        import sqlite3  # here: a run without change detection need not load it

        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: reads hold no transaction open; writes open one explicitly.
        self._db = db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SQLITE_TABLE)
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({TABLE})")}
        for name in _ADDED_COLUMNS.keys() - columns:
            try:
                db.execute(_add_column(name, if_not_exists=False, false="0"))
            except sqlite3.OperationalError as exc:  # another run added it first
                if "duplicate column" not in str(exc):
                    raise
        for index in _INDEXES:
            db.execute(index)
        try:
            db.execute("SELECT json_group_array(json_array(1, 'a', NULL, 1.5))")
            self._as_json = True
        except sqlite3.OperationalError:  # an SQLite built without its JSON functions
            self._as_json = False

    @staticmethod
    @functools.cache
    def _lookup_sql(size: int, as_json: bool) -> str:
        """One statement per chunk size (the driver caches its prepared form). As JSON, the
        answer is one row: SQLite does all the work in one step, without the GIL."""
        marks = ",".join("?" * size)
        columns = "contact_key, payload_hash, source_hash, confirmed_at"
        if as_json:
            columns = f"json_group_array(json_array({columns}))"
        return (
            f"SELECT {columns} FROM dengage_contact_ledger "  # noqa: S608
            f"WHERE account = ? AND contact_key IN ({marks})"
        )

    def _lookup(self, keys: Sequence[str]) -> dict[str, LedgerEntry]:
        found: dict[str, LedgerEntry] = {}
        execute = self._db.execute
        as_json = self._as_json
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start : start + LOOKUP_CHUNK]
            answer = execute(self._lookup_sql(len(chunk), as_json), (self.account, *chunk))
            rows: Iterable[LedgerEntry] = (
                _ENTRIES.decode(answer.fetchone()[0])
                if as_json
                else (LedgerEntry(*row) for row in answer)
            )
            for row in rows:
                found[row.contact_key] = row
        return found

    def _record(self, confirmed: Confirmed, renamed: Sequence[str]) -> None:
        now = time.time()
        account = self.account
        self._write(
            (_SQLITE_FORGET, [(account, key) for key in renamed]),
            (
                _SQLITE_PUT,
                [(account, k, *entry, now) for k, entry in confirmed.items()],
            ),
        )

    def _stream_contacts(self, stream: str) -> list[str]:
        return [row[0] for row in self._db.execute(_SQLITE_STREAM, (self.account, stream))]

    def _passive_keys(self) -> set[str]:
        return {row[0] for row in self._db.execute(_SQLITE_PASSIVE, (self.account,))}

    def _adopt(self, sources: Mapping[str, tuple[str, str]]) -> None:
        account = self.account
        self._write(
            (_SQLITE_ADOPT, [(src, account, k, digest) for k, (digest, src) in sources.items()])
        )

    def _write(self, *statements: tuple[str, list[tuple[object, ...]]]) -> None:
        """One transaction; the driver's own executemany."""
        db = self._db
        db.execute("BEGIN")
        try:
            for sql, rows in statements:
                if rows:
                    db.executemany(sql, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _close(self) -> None:
        self._db.close()


@functools.cache
def _schema() -> tuple[sa.MetaData, sa.Table]:
    """The table as SQLAlchemy sees it (imported only when a non-SQLite ledger is used)."""
    import sqlalchemy as sa

    metadata = sa.MetaData()
    table = sa.Table(
        TABLE,
        metadata,
        sa.Column("account", sa.String(512), primary_key=True),
        sa.Column("contact_key", sa.String(255), primary_key=True),
        sa.Column("payload_hash", sa.String(32), nullable=False),
        sa.Column("confirmed_at", sa.Float, nullable=False),
        sa.Column("source_hash", sa.String(32), nullable=True),
        sa.Column("stream", sa.String(255), nullable=True),
        sa.Column("version", sa.BigInteger, nullable=True),
        sa.Column("passivated", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    return metadata, table


class SqlAlchemyLedger(Ledger):
    """A ledger in any database SQLAlchemy speaks to, e.g. a PostgreSQL shared by a team.

    The statements are built once with expanding parameters, so SQLAlchemy compiles them
    once: a lookup of a thousand keys is one round trip.
    """

    def _open(self) -> None:
        import sqlalchemy as sa

        metadata, table = _schema()
        self._table = table
        self._engine = sa.create_engine(self.url)
        metadata.create_all(self._engine, checkfirst=True)
        columns = {c["name"] for c in sa.inspect(self._engine).get_columns(TABLE)}
        missing = [name for name in _ADDED_COLUMNS if name not in columns]
        if missing:
            postgres = self._engine.dialect.name == "postgresql"
            with self._engine.begin() as connection:
                for name in missing:
                    connection.exec_driver_sql(
                        _add_column(name, if_not_exists=postgres, false="false")
                    )
        with self._engine.begin() as connection:
            for index in _INDEXES:
                connection.exec_driver_sql(index)
        self._connection = self._engine.connect()
        keys: sa.BindParameter[list[str]] = sa.bindparam("keys", expanding=True)
        account_is = table.c.account == sa.bindparam("account")
        self._select = sa.select(
            table.c.contact_key, table.c.payload_hash, table.c.source_hash, table.c.confirmed_at
        ).where(account_is, table.c.contact_key.in_(keys))
        self._forget = table.delete().where(account_is, table.c.contact_key.in_(keys))
        self._of_stream = sa.select(table.c.contact_key).where(
            account_is, table.c.stream == sa.bindparam("stream"), sa.not_(table.c.passivated)
        )
        self._passive = sa.select(table.c.contact_key).where(account_is, table.c.passivated)
        self._adopt_statement = (
            table.update()
            .where(
                table.c.account == sa.bindparam("b_account"),
                table.c.contact_key == sa.bindparam("b_key"),
                table.c.payload_hash == sa.bindparam("b_digest"),
            )
            .values(source_hash=sa.bindparam("b_source"))
        )

    def _lookup(self, keys: Sequence[str]) -> dict[str, LedgerEntry]:
        found: dict[str, LedgerEntry] = {}
        connection = self._connection
        try:
            for start in range(0, len(keys), LOOKUP_CHUNK):
                chunk = list(keys[start : start + LOOKUP_CHUNK])
                for row in connection.execute(
                    self._select, {"account": self.account, "keys": chunk}
                ):
                    found[row[0]] = LedgerEntry(*row)
        finally:
            connection.rollback()  # end the read; nothing is held open between lookups
        return found

    def _record(self, confirmed: Confirmed, renamed: Sequence[str]) -> None:
        now = time.time()
        connection = self._connection
        gone = [*confirmed, *renamed]
        with connection.begin():
            for start in range(0, len(gone), LOOKUP_CHUNK):
                connection.execute(
                    self._forget,
                    {"account": self.account, "keys": gone[start : start + LOOKUP_CHUNK]},
                )
            if confirmed:
                connection.execute(
                    self._table.insert(),
                    [
                        {
                            "account": self.account,
                            "contact_key": key,
                            **dict(zip(RECORDED_COLUMNS, entry, strict=True)),
                            "confirmed_at": now,
                        }
                        for key, entry in confirmed.items()
                    ],
                )

    def _stream_contacts(self, stream: str) -> list[str]:
        return list(self._read(self._of_stream, stream=stream))

    def _passive_keys(self) -> set[str]:
        return set(self._read(self._passive))

    def _read(self, query: sa.Select[str], **params: str) -> Iterator[str]:
        """The first column of a query's rows, the transaction ended after."""
        connection = self._connection
        try:
            for row in connection.execute(query, {"account": self.account, **params}):
                yield row[0]
        finally:
            connection.rollback()

    def _adopt(self, sources: Mapping[str, tuple[str, str]]) -> None:
        with self._connection.begin():
            self._connection.execute(
                self._adopt_statement,
                [
                    {"b_account": self.account, "b_key": k, "b_digest": d, "b_source": s}
                    for k, (d, s) in sources.items()
                ],
            )

    def _close(self) -> None:
        self._connection.close()
        self._engine.dispose()


def _accounts(engine: sa.Engine) -> Iterator[tuple[str, int, float]]:
    import sqlalchemy as sa

    _, table = _schema()
    query = sa.select(table.c.account, sa.func.count(), sa.func.max(table.c.confirmed_at)).group_by(
        table.c.account
    )
    with engine.connect() as connection:
        yield from connection.execute(query).tuples()


def main(argv: list[str] | None = None) -> int:
    """``target-dengage-ledger``: see how big the ledger is, or reset it."""
    import sqlalchemy as sa

    parser = argparse.ArgumentParser(
        prog="target-dengage-ledger",
        description="Inspect or reset target-dengage's change-detection ledger.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the target's config file (uses its ledger_url)")
    where.add_argument("--ledger-url", help="a SQLAlchemy URL of a ledger")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="contacts recorded per account, and the newest entry")
    reset = commands.add_parser("reset", help="forget recorded contacts: the next run sends all")
    scope = reset.add_mutually_exclusive_group(required=True)
    scope.add_argument("--all", action="store_true", help="every account")
    scope.add_argument("--account", help="one account (as `info` lists it)")
    args = parser.parse_args(argv)

    url = args.ledger_url
    if url is None:
        from target_dengage.pacing import account_key

        config = json.loads(Path(args.config).read_text(encoding="utf-8"))
        account = account_key(
            config.get("api_url", "https://api.dengage.com"),
            config.get("userkey"),
            config.get("access_token"),
        )
        url = config.get("ledger_url") or default_ledger_url(account)
    # Opened as a load opens it: made, or brought up to date, the same way.
    open_ledger(url, "").close()
    _, table = _schema()
    engine = sa.create_engine(url, future=True)
    try:
        if args.command == "info":
            rows = list(_accounts(engine))
            print(f"ledger: {engine.url.render_as_string(hide_password=True)}")
            if not rows:
                print("  (empty)")
            for account, count, newest in rows:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(newest))
                print(f"  {account}: {count} contacts, newest confirmed {stamp} UTC")
            return 0
        with engine.begin() as connection:
            statement = table.delete()
            if not args.all:
                statement = statement.where(table.c.account == args.account)
            removed = connection.execute(statement).rowcount
        print(f"removed {removed} entries", file=sys.stderr)
        return 0
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
