"""The change-detection ledger: what D·engage confirmed for each contact, and when.

A nightly full-table sync re-reads every row, and most have not changed; with one sync call a
minute, re-sending them costs hours. The ledger keeps, per account and contact key, a stable
hash of the mapped, normalized payload that D·engage confirmed. A record whose hash matches is
skipped. It is written only for confirmed contacts, one transaction per confirmed request, so
a crash never marks an unconfirmed contact as sent.

SQLAlchemy talks to it: a SQLite file by default, or any database a team shares between
machines (``ledger_url``, e.g. ``postgresql+psycopg2://...``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

TABLE = "dengage_contact_ledger"
#: Keys per lookup query: below every database's limit on bound parameters.
LOOKUP_CHUNK = 1000

_metadata = sa.MetaData()
_ledger = sa.Table(
    TABLE,
    _metadata,
    sa.Column("account", sa.String(512), primary_key=True),
    sa.Column("contact_key", sa.String(255), primary_key=True),
    sa.Column("payload_hash", sa.String(32), nullable=False),
    sa.Column("confirmed_at", sa.Float, nullable=False),
)


def default_ledger_url(account: str) -> str:
    """A SQLite file per account (API URL + user) under the user's data directory."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    name = hashlib.sha256(account.encode()).hexdigest()[:16]
    return f"sqlite:///{Path(data) / 'target-dengage' / f'ledger-{name}.sqlite'}"


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL lets a reader (``target-dengage-ledger info``) run beside a load, and NORMAL
    sync drops an fsync per transaction: a power cut may lose the newest entries, which
    only means those contacts are sent once more; it never records an unconfirmed one."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_LOOKUP = sa.select(_ledger.c.contact_key, _ledger.c.payload_hash, _ledger.c.confirmed_at).where(
    _ledger.c.account == sa.bindparam("account"),
    _ledger.c.contact_key.in_(sa.bindparam("keys", expanding=True)),
)
_FORGET = _ledger.delete().where(
    _ledger.c.account == sa.bindparam("account"),
    _ledger.c.contact_key.in_(sa.bindparam("keys", expanding=True)),
)


_SQLITE_PUT = (
    "INSERT OR REPLACE INTO dengage_contact_ledger "
    "(account, contact_key, payload_hash, confirmed_at) VALUES (?, ?, ?, ?)"
)
_SQLITE_FORGET = "DELETE FROM dengage_contact_ledger WHERE account = ? AND contact_key = ?"


class Ledger:
    """One account's view of the ledger table, over one connection kept for the run.

    The statements are built once with expanding parameters, so SQLAlchemy compiles them
    once: a lookup of a thousand keys is one round trip of about a millisecond or three.
    """

    def __init__(self, url: str, account: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(
                parents=True, exist_ok=True
            )
        self.url = url
        self.account = account
        self._engine = sa.create_engine(url)
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        _metadata.create_all(self._engine, checkfirst=True)
        self._connection = self._engine.connect()

    def close(self) -> None:
        self._connection.close()
        self._engine.dispose()

    def lookup(self, keys: Sequence[str]) -> dict[str, tuple[str, float]]:
        """``contact_key → (payload_hash, confirmed_at)`` for the keys the ledger knows."""
        found: dict[str, tuple[str, float]] = {}
        connection = self._connection
        try:
            for start in range(0, len(keys), LOOKUP_CHUNK):
                chunk = list(set(keys[start : start + LOOKUP_CHUNK]))
                params = {"account": self.account, "keys": chunk}
                for key, digest, confirmed_at in connection.execute(_LOOKUP, params):
                    found[key] = (digest, confirmed_at)
        finally:
            connection.rollback()  # end the read; nothing is held open between lookups
        return found

    def record(self, entries: Mapping[str, str], renamed: Iterable[str] = ()) -> None:
        """Write confirmed payloads (and drop renamed-away keys) in one transaction."""
        now = time.time()
        connection = self._connection
        with connection.begin():
            if self._engine.dialect.name == "sqlite":
                # The default ledger: the driver's own executemany, twice as fast as Core's.
                dropped = [(self.account, k) for k in renamed]
                if dropped:
                    connection.exec_driver_sql(_SQLITE_FORGET, dropped)
                if entries:
                    connection.exec_driver_sql(
                        _SQLITE_PUT, [(self.account, k, d, now) for k, d in entries.items()]
                    )
                return
            gone = [*entries, *renamed]
            for start in range(0, len(gone), LOOKUP_CHUNK):
                connection.execute(
                    _FORGET, {"account": self.account, "keys": gone[start : start + LOOKUP_CHUNK]}
                )
            if entries:
                connection.execute(
                    _ledger.insert(),
                    [
                        {
                            "account": self.account,
                            "contact_key": key,
                            "payload_hash": digest,
                            "confirmed_at": now,
                        }
                        for key, digest in entries.items()
                    ],
                )


def _accounts(engine: sa.Engine) -> Iterator[tuple[str, int, float]]:
    query = sa.select(
        _ledger.c.account, sa.func.count(), sa.func.max(_ledger.c.confirmed_at)
    ).group_by(_ledger.c.account)
    with engine.connect() as connection:
        yield from connection.execute(query).tuples()


def main(argv: list[str] | None = None) -> int:
    """``target-dengage-ledger``: see how big the ledger is, or reset it."""
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
    engine = sa.create_engine(url, future=True)
    try:
        _metadata.create_all(engine, checkfirst=True)
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
            statement = _ledger.delete()
            if not args.all:
                statement = statement.where(_ledger.c.account == args.account)
            removed = connection.execute(statement).rowcount
        print(f"removed {removed} entries", file=sys.stderr)
        return 0
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
