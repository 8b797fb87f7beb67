"""The account's run state in a database every run of the account shares (``state_url``).

Pipelines of one account are scheduled on whichever worker is free, so the call clock and
the job log of :mod:`target_dengage.accountstate` must not live in one machine's HOME. The
coordinator is a database the runs already trust, not a service of our own:

* **The turn** (one BulkUpsert call at a time per account) is a PostgreSQL session-level
  advisory lock on a key derived from the account, taken on a connection the clock keeps for
  the run. A run that dies or loses that connection loses the lock with it: the server ends
  the session, and TCP keepalives set on it bound how long a vanished machine's session
  lingers. Waiting is bounded too: after the longest a turn can last, the waiter looks at the
  holder's age and gives up, naming it, when the holder has held the turn longer than any
  call takes. With SQLite (several processes of one machine) the turn is an ``flock`` beside
  the database file, as for the file clock: SQLite's only lock is on the whole database, and
  holding it for an interval would stall every writer of the file (the ledger among them).
* **Times** are the database's (epoch seconds, FLOAT), never the machine's: runs on machines
  whose clocks disagree still space their calls by one clock.
* Statements run in autocommit mode on connections kept for the run; a connection that
  breaks is opened again, and the statement repeated, under the run's retry policy
  (``max_retries``, with backoff). Every statement may be repeated safely.

The schema is created on first use and upgraded in place, under a lock, by the migrations in
:data:`MIGRATIONS`; ``dengage_state_schema`` holds the version reached. The README documents
the tables and columns. ``sqlalchemy`` is imported only here, and this module only when
``state_url`` is set, so runs without it do not pay for the import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from target_dengage.accountstate import BusyNotice, LastCall, account_digest, exclusive
from target_dengage.errors import DengageError
from target_dengage.masking import hide, quote
from target_dengage.retry import Attempt, RetryPolicy

if TYPE_CHECKING:
    import sqlalchemy as sa

T = TypeVar("T")

#: The schema each version adds, applied in order from the version a database has reached.
#: Only ever append: a run of an older version must keep working beside a newer one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE dengage_call_clock (
            account VARCHAR(512) NOT NULL PRIMARY KEY,
            last_start FLOAT,
            turn_at FLOAT
        )""",
        """CREATE TABLE dengage_async_jobs (
            account VARCHAR(512) NOT NULL,
            job_id VARCHAR(255) NOT NULL,
            submitted_at FLOAT NOT NULL,
            contact_keys TEXT NOT NULL,
            PRIMARY KEY (account, job_id)
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

#: Seconds a turn may last beyond the interval and the call's own timeout (the margin, the
#: statements around the call) before a waiting run takes its holder for hung.
HOLD_SLACK_SECONDS = 60.0
#: Seconds to wait for the database to answer a connection attempt (PostgreSQL), unless
#: state_url sets ``connect_timeout`` itself; and for SQLite's lock on the file.
CONNECT_TIMEOUT_SECONDS = 10
SQLITE_BUSY_SECONDS = 30
#: Server-side TCP keepalives of the lock's session, so that the server notices a machine
#: that vanished (and releases its lock) within about a minute instead of hours.
KEEPALIVES = {
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}
#: Job ids per DELETE: below every database's limit on bound parameters.
DELETE_CHUNK = 500
#: SQLSTATE of a lock wait that ran into ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"

#: Now, in epoch seconds, by the database's clock (``clock_timestamp``: not the start of the
#: transaction, which in autocommit mode would be the same thing anyway).
_NOW = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


class SharedStateError(DengageError):
    """The shared state database cannot be used; the message names it, never its password."""


def where(url: sa.URL) -> str:
    """The database of ``url`` as a log line may name it: host, port and database only."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database}"
    host = f"{url.host}:{url.port or 5432}" if url.host else "the local socket"
    return f"PostgreSQL database '{url.database or url.username or ''}' on {host}"


def _reason(exc: BaseException) -> str:
    """The driver's own words for a failure (they name host and port, never a password;
    secrets are redacted all the same)."""
    original = getattr(exc, "orig", None) or exc
    return quote(str(original).strip() or type(original).__name__)


def _lock_timeout(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) == LOCK_NOT_AVAILABLE


class SharedState:
    """The database of ``state_url``, opened and its schema made current at construction, so
    an unusable one fails the run before it reads a line; then one account's clock and job
    log in it, each on a connection of its own opened on first use."""

    def __init__(self, url: str, account: str, logger: logging.Logger, max_retries: int) -> None:
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        self.account = account
        self.logger = logger
        self.retry = RetryPolicy(total_failures=max_retries)
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError:
            raise SharedStateError(
                "state_url is not a SQLAlchemy database URL (e.g. "
                "postgresql+psycopg2://user:password@host:5432/db, or sqlite:////path/state.db)."
            ) from None
        hide(parsed.password)
        self.backend = parsed.get_backend_name()
        self.turn_file: Path | None = None
        connect_args: dict[str, Any] = {}
        if self.backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise SharedStateError(
                    "state_url: a SQLite state database must be a file every run opens "
                    "(sqlite:////path/state.sqlite); one in memory is seen by one process."
                )
            path = Path(parsed.database or "").expanduser()
            parsed = parsed.set(database=str(path))
            self.turn_file = path.with_name(f"{path.name}.turn-{account_digest(account)}.lock")
            connect_args = {"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False}
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SharedStateError(
                    f"state_url: cannot create the folder of {where(parsed)} ({_reason(exc)})."
                ) from None
        elif self.backend == "postgresql":
            if "connect_timeout" not in parsed.query:
                connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
        else:
            raise SharedStateError(
                f"state_url: {self.backend} databases are not supported as the shared state "
                "database; use PostgreSQL (postgresql+psycopg2://..., runs on several "
                "machines) or SQLite (sqlite:////path/state.sqlite, runs on one machine)."
            )
        self.where = where(parsed)
        self.now = _NOW[self.backend]
        try:
            self._engine = sa.create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
        except ModuleNotFoundError as exc:
            raise SharedStateError(
                f"state_url needs the database driver '{exc.name}', which is not installed: "
                "install it, or name psycopg2 in the URL (postgresql+psycopg2://...) and "
                "pip install 'target-dengage[postgres]'."
            ) from None
        except sa.exc.ArgumentError as exc:  # a driver SQLAlchemy does not know
            raise SharedStateError(f"state_url: {_reason(exc)}") from None
        try:
            with self.connect() as connection:
                self._upgrade(connection)
        except sa.exc.DBAPIError as exc:
            raise SharedStateError(
                f"state_url: cannot use the shared state database ({self.where}): {_reason(exc)}"
            ) from None

    def connect(self) -> sa.Connection:
        return self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def clock(self, *, interval: float, call_timeout: float) -> SqlCallClock:
        """The account's call clock; a turn is taken for hung once it has lasted longer than
        the interval, a call (``call_timeout``) and :data:`HOLD_SLACK_SECONDS`."""
        return SqlCallClock(self, max_hold=interval + call_timeout + HOLD_SLACK_SECONDS)

    def jobs(self) -> SqlJobLog:
        return SqlJobLog(self)

    def _upgrade(self, connection: sa.Connection) -> None:
        """Create or upgrade the schema: checked without a lock (the usual case: current),
        upgraded in one transaction under a lock, so runs that start together on a new
        database neither collide nor apply a migration twice."""
        import sqlalchemy as sa

        try:
            if _version(connection) >= SCHEMA_VERSION:
                return
        except (sa.exc.ProgrammingError, sa.exc.OperationalError):
            pass  # no version table yet
        with self._transaction(connection):
            if self.backend == "postgresql":
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": _lock_key("schema")},
                )
            connection.execute(
                sa.text(
                    "CREATE TABLE IF NOT EXISTS dengage_state_schema (version INTEGER NOT NULL)"
                )
            )
            reached = _version(connection)
            for statements in MIGRATIONS[reached:]:
                for statement in statements:
                    connection.execute(sa.text(statement))
            if reached < SCHEMA_VERSION:
                connection.execute(sa.text("DELETE FROM dengage_state_schema"))
                connection.execute(
                    sa.text("INSERT INTO dengage_state_schema (version) VALUES (:version)"),
                    {"version": SCHEMA_VERSION},
                )

    @contextlib.contextmanager
    def _transaction(self, connection: sa.Connection) -> Iterator[None]:
        """A transaction on an autocommit connection; SQLite's takes the write lock at once,
        so two upgrades cannot both read the old version."""
        connection.exec_driver_sql("BEGIN IMMEDIATE" if self.backend == "sqlite" else "BEGIN")
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                connection.exec_driver_sql("ROLLBACK")
            raise
        connection.exec_driver_sql("COMMIT")


def _version(connection: sa.Connection) -> int:
    import sqlalchemy as sa

    value = connection.execute(sa.text("SELECT max(version) FROM dengage_state_schema")).scalar()
    return int(value or 0)


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for ``name`` (an account, or the schema)."""
    digest = hashlib.sha256(f"target-dengage {name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _Link:
    """A connection kept for the run, opened on first use and again after it breaks."""

    def __init__(
        self, store: SharedState, setup: Callable[[sa.Connection], None] | None = None
    ) -> None:
        self._store = store
        self._setup = setup
        self.connection: sa.Connection | None = None

    def run(self, work: Callable[[sa.Connection], T], doing: str) -> T:
        """``work`` on the connection; when the connection fails (dropped, the server
        restarting, SQLite busy), it is opened again and ``work`` repeated, with backoff,
        until ``max_retries`` retries are used up. A lock timeout is the caller's to handle."""
        import sqlalchemy as sa

        policy = self._store.retry
        while True:
            try:
                if self.connection is None:
                    self.connection = self._store.connect()
                    if self._setup is not None:
                        self._setup(self.connection)
                return work(self.connection)
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                if _lock_timeout(exc):
                    raise
                self.drop()
                policy = policy.increment(Attempt.FAILURE)
                if policy.exhausted(Attempt.FAILURE):
                    raise SharedStateError(
                        f"The shared state database ({self._store.where}) failed while "
                        f"{doing}, {policy.failures} times in a row: {_reason(exc)}"
                    ) from None
                delay = policy.wait(Attempt.FAILURE, None, now=time.time()).seconds
                self._store.logger.warning(
                    "The shared state database (%s) failed while %s: %s; retry %d of %d in %.1f s.",
                    self._store.where,
                    doing,
                    _reason(exc),
                    policy.failures,
                    policy.total_failures,
                    delay,
                )
                time.sleep(delay)

    def drop(self) -> None:
        """Forget the connection (closing it if it still can be): the next use opens one."""
        import sqlalchemy as sa

        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                connection.invalidate()
                connection.close()


class SqlCallClock:
    """:class:`~target_dengage.accountstate.CallClock` in ``dengage_call_clock``, one row per
    account: the turn as described in the module's docstring, times by the database."""

    def __init__(self, store: SharedState, *, max_hold: float) -> None:
        import sqlalchemy as sa

        self._store = store
        self._max_hold = max_hold
        self._key = _lock_key(f"turn {store.account}")
        postgres = store.backend == "postgresql"
        self._link = _Link(store, self._prepare if postgres else None)
        self._thread_lock = threading.Lock()  # one session's advisory lock is reentrant
        self._busy = BusyNotice(store.logger)
        #: The connection whose session holds the account's lock (PostgreSQL).
        self._held_on: sa.Connection | None = None
        now = store.now  # a constant expression per database: no input reaches the SQL
        self._mark = sa.text(
            "INSERT INTO dengage_call_clock (account, turn_at) "  # noqa: S608
            f"VALUES (:account, {now}) "
            "ON CONFLICT (account) DO UPDATE SET turn_at = excluded.turn_at"
        )
        self._read = sa.text(
            f"SELECT last_start, {now} - last_start "  # noqa: S608
            "FROM dengage_call_clock WHERE account = :account"
        )
        self._record = sa.text(
            f"UPDATE dengage_call_clock SET last_start = {now} "  # noqa: S608
            "WHERE account = :account"
        )
        self._recorded = sa.text(
            "SELECT last_start FROM dengage_call_clock WHERE account = :account"
        )
        self._holder_age = sa.text(
            f"SELECT {now} - turn_at FROM dengage_call_clock "  # noqa: S608
            "WHERE account = :account"
        )

    @contextlib.contextmanager
    def turn(self) -> Iterator[LastCall | None]:
        with self._thread_lock, self._file_turn():
            try:
                yield self._link.run(self._enter, "taking this account's turn to call")
            finally:
                self._leave()

    def started(self) -> float | None:
        try:
            return self._link.run(self._start, "recording the start of a call")
        except SharedStateError as exc:
            self._store.logger.warning(
                "%s; a run started right after this one may be rate-limited.", exc
            )
            return None

    def _file_turn(self) -> contextlib.AbstractContextManager[None]:
        if self._store.turn_file is None:
            return contextlib.nullcontext()
        return exclusive(self._store.turn_file, self._unlockable, self._busy)

    def _unlockable(self, exc: OSError) -> None:
        self._store.logger.warning(
            "Cannot lock %s (%s); runs of this account started at the same time are not kept "
            "apart and may be rate-limited.",
            self._store.turn_file,
            exc.strerror or exc,
        )

    def _prepare(self, connection: sa.Connection) -> None:
        """Settings of the lock's session: how long one wait for the lock may last, the
        keepalives, and a name that tells the holder apart in ``pg_stat_activity``."""
        import sqlalchemy as sa

        settings = {
            **KEEPALIVES,
            "lock_timeout": str(round(self._max_hold * 1000)),
            "application_name": "target-dengage",
        }
        names = ", ".join(f"set_config(:name{i}, :value{i}, false)" for i in range(len(settings)))
        values: dict[str, str] = {}
        for i, (name, value) in enumerate(settings.items()):
            values[f"name{i}"], values[f"value{i}"] = name, value
        connection.execute(sa.text(f"SELECT {names}"), values)

    def _enter(self, connection: sa.Connection) -> LastCall | None:
        self._hold(connection)
        account = {"account": self._store.account}
        connection.execute(self._mark, account)
        row = connection.execute(self._read, account).one()
        return None if row[0] is None else LastCall(float(row[0]), float(row[1]))

    def _start(self, connection: sa.Connection) -> float | None:
        self._hold(connection)  # again, if the connection was opened anew since the turn
        account = {"account": self._store.account}
        connection.execute(self._record, account)
        value = connection.execute(self._recorded, account).scalar()
        return None if value is None else float(value)

    def _hold(self, connection: sa.Connection) -> None:
        """Take the account's advisory lock on ``connection``'s session, unless it holds it.

        Each wait is bounded by the session's ``lock_timeout``; after one, a holder that
        took its turn longer ago than a turn can last is given up on, by name and age, and
        any other (several runs taking turns before this one) is waited for again.
        """
        import sqlalchemy as sa

        if self._store.backend != "postgresql" or self._held_on is connection:
            return
        key = {"key": self._key}
        if not connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
            self._busy()
            while True:
                try:
                    connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), key)
                    break
                except sa.exc.OperationalError as exc:
                    if not _lock_timeout(exc):
                        raise
                age = connection.execute(
                    self._holder_age, {"account": self._store.account}
                ).scalar()
                if age is not None and float(age) > self._max_hold:
                    raise SharedStateError(
                        f"Another run of this account has held its turn to call BulkUpsert "
                        f"for {float(age):.0f} s (in {self._store.where}), longer than a "
                        f"call can take ({self._max_hold:.0f} s: request_interval_seconds + "
                        f"request_timeout_seconds + {HOLD_SLACK_SECONDS:.0f} s). It is hung, "
                        "or its machine is cut off from the database: end its session "
                        "(application_name 'target-dengage' in pg_stat_activity) or wait "
                        "for the server to notice, then run again."
                    )
        self._held_on = connection

    def _leave(self) -> None:
        """Release the lock; if that fails, drop the session, which releases it as well."""
        import sqlalchemy as sa

        connection, self._held_on = self._held_on, None
        if connection is None or connection is not self._link.connection:
            return
        try:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        except sa.exc.SQLAlchemyError:
            self._link.drop()


class SqlJobLog:
    """:class:`~target_dengage.accountstate.JobLog` in ``dengage_async_jobs``: one row per
    unconfirmed job, its contact keys as a JSON array; each change commits on its own."""

    def __init__(self, store: SharedState) -> None:
        import sqlalchemy as sa

        self._store = store
        self._link = _Link(store)
        self._lock = threading.Lock()  # a connection serves one thread at a time
        self._select = sa.text(
            "SELECT job_id, submitted_at, contact_keys FROM dengage_async_jobs "
            "WHERE account = :account ORDER BY submitted_at, job_id"
        )
        self._insert = sa.text(
            "INSERT INTO dengage_async_jobs (account, job_id, submitted_at, contact_keys) "  # noqa: S608
            f"VALUES (:account, :job_id, {store.now}, :keys) "
            "ON CONFLICT (account, job_id) DO NOTHING"  # a retry after a lost commit answer
        )
        self._delete = sa.text(
            "DELETE FROM dengage_async_jobs WHERE account = :account AND job_id IN :job_ids"
        ).bindparams(sa.bindparam("job_ids", expanding=True))

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._link.run(
                lambda c: c.execute(self._select, {"account": self._store.account}).all(),
                "reading the job journal",
            )
        return [
            {"job_id": row[0], "submitted_at": float(row[1]), "keys": json.loads(row[2])}
            for row in rows
        ]

    def add(self, job_id: str, keys: Sequence[str]) -> None:
        values = {"account": self._store.account, "job_id": job_id, "keys": json.dumps(keys)}
        with self._lock:
            self._link.run(lambda c: c.execute(self._insert, values), "journaling a job")

    def remove(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        with self._lock:
            for start in range(0, len(ids), DELETE_CHUNK):
                self._link.run(self._deleting(ids[start : start + DELETE_CHUNK]), "unlisting jobs")

    def _deleting(self, job_ids: list[str]) -> Callable[[sa.Connection], object]:
        values = {"account": self._store.account, "job_ids": job_ids}
        return lambda connection: connection.execute(self._delete, values)
