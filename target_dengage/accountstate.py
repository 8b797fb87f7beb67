"""An account's run state, shared by every run of that account: its call clock and job log.

D·engage counts BulkUpsert calls per account, and an async job outlives the run that
submitted it, so two runs of one account (two pipelines, a rerun started while the last
one still ends, a scheduler's overlap) must see one pacing clock and one job log, and must
not overwrite each other's updates. Two interfaces say what a run needs:

* :class:`CallClock`: a turn that only one caller of the account holds at a time (across
  threads and processes), carrying the start of the account's last call;
* :class:`JobLog`: the unconfirmed async jobs of the account, added durably.

The file implementations here serve the runs of one machine: each file is a JSON object
keyed by account (so one explicitly configured file may serve several accounts), replaced
whole by an atomic rename, and read-modify-written under an exclusive ``fcntl.flock`` on a
separate ``<file>.lock``: the rename replaces the data file's inode, so a lock held on the
data file itself would guard a file that is no longer there. Locks are released by the
kernel when their holder dies, even by SIGKILL; lock files are never deleted (deleting one
while another process waits on it would let a third lock a new file beside them).

Runs on several machines share a database instead (``state_url``:
:mod:`target_dengage.sharedstate`), which implements the same two interfaces.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from target_dengage.statefiles import read_json_object, write_json_atomic

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no flock, runs go unlocked (warned)
    fcntl = None  # type: ignore[assignment]

#: The logger the SDK gives the target (its plugin name), for stores built without one.
DEFAULT_LOGGER = "target-dengage"


class LastCall(NamedTuple):
    """The account's last recorded call start, as a turn finds it."""

    #: When it started, on the store's clock (epoch seconds): tells one start from another.
    at: float
    #: Seconds since then, measured by that same clock, so that runs on machines whose
    #: clocks disagree still space their calls by the store's one clock.
    age: float


class CallClock(Protocol):
    """When the account's last call started, and whose turn it is to call."""

    def turn(self) -> AbstractContextManager[LastCall | None]:
        """Hold the account's call lock exclusively, across threads and processes, until the
        block ends; the block gets the account's last recorded call start, or None. Not
        reentrant: a holder that asks again waits (for ever, or until the store's bound)."""
        ...

    def started(self) -> float | None:
        """Record now, on the store's clock, as the start of the account's current call; only
        called while holding the turn. Returns the start recorded (the ``at`` a later turn
        reads), or None when it could not be. Advisory: a failure costs a 429 at worst, so
        it is warned about, not raised."""
        ...


class JobLog(Protocol):
    """The account's submitted, unconfirmed async jobs, with the contact keys each carries."""

    def entries(self) -> list[dict[str, Any]]:
        """Each ``{"job_id": str, "submitted_at": float, "keys": [str, ...]}`` still listed."""
        ...

    def add(self, job_id: str, keys: Sequence[str]) -> None:
        """List a job; durable (synced to disk) when it returns, since a job the log forgets
        could land after a rerun's newer data."""
        ...

    def remove(self, job_ids: Iterable[str]) -> None:
        """Unlist jobs; need not be durable (a confirmed job still listed costs one poll)."""
        ...


def account_digest(account: str) -> str:
    """A file-name-safe name for an account (API URL + user), as the ledger's file uses."""
    return hashlib.sha256(account.encode()).hexdigest()[:16]


def account_file(directory: Path, stem: str, account: str) -> Path:
    """``<directory>/<stem>-<digest>.json``: one account's file, so accounts never wait for
    each other's locks, and a corrupt file loses one account's state only."""
    return directory / f"{stem}-{account_digest(account)}.json"


def lock_path(path: Path) -> Path:
    """The lock guarding read-modify-writes of ``path`` (never ``path`` itself: see above)."""
    return path.with_name(f"{path.name}.lock")


class _WarnOnce:
    """Logs a warning the first time only: one per run is enough to act on."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._done = False

    def __call__(self, message: str, *args: object) -> None:
        if not self._done:
            self._done = True
            self._logger.warning(message, *args)


class BusyNotice:
    """Tells the user a call waits for another run's: at INFO the first time, then at DEBUG
    (a run beside another would otherwise log it before every call)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._told = False

    def __call__(self) -> None:
        level = logging.DEBUG if self._told else logging.INFO
        self._told = True
        self._logger.log(
            level,
            "Another run of this account is calling BulkUpsert; waiting for its call to end "
            "(runs of one account take turns, one call at a time).",
        )


@contextlib.contextmanager
def exclusive(
    path: Path,
    on_failure: Callable[[OSError], None],
    on_busy: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    The file is opened read-only, which is all flock needs, so a lock file another user
    created stays usable. Each call opens its own descriptor, so the lock excludes other
    threads of this process too. When the lock cannot be had (the file cannot be created,
    the file system has no locks), ``on_failure`` is told and the block runs unlocked:
    pacing and the journal then work as they did before locks, which beats failing a load.
    ``on_busy`` is called once if another holder makes this one wait.
    """
    fd: int | None = None
    try:
        if fcntl is None:
            raise OSError("no flock on this platform")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_busy is not None:
                on_busy()
            fcntl.flock(fd, fcntl.LOCK_EX)  # Python retries it on EINTR (PEP 475)
    except BaseException as exc:  # a signal's exception while waiting must not leak the fd
        if fd is not None:
            os.close(fd)
            fd = None
        if not isinstance(exc, OSError):
            raise
        on_failure(exc)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class FileCallClock:
    """:class:`CallClock` in a JSON file of last-call starts keyed by account.

    The turn is a lock file of its own per account (``<file>.turn-<digest>.lock``), held for
    a whole call, so accounts that share one explicitly configured file do not wait for each
    other's calls; the data file's ``<file>.lock`` is only held for each short rewrite.
    """

    def __init__(self, path: Path, account: str, logger: logging.Logger) -> None:
        self.path = path
        self._account = account
        self._logger = logger
        self._turn_lock = path.with_name(f"{path.name}.turn-{account_digest(account)}.lock")
        self._warn_write = _WarnOnce(logger)
        self._warn_lock = _WarnOnce(logger)
        self._busy = BusyNotice(logger)

    def last_start(self) -> LastCall | None:
        """The account's last recorded call start (this machine's wall clock), if any. Needs
        no lock: the file is only ever replaced whole."""
        value = read_json_object(self.path).get(self._account)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return LastCall(float(value), time.time() - value)
        return None

    @contextlib.contextmanager
    def turn(self) -> Iterator[LastCall | None]:
        with exclusive(self._turn_lock, self._lock_failed, self._busy):
            yield self.last_start()

    def started(self) -> float:
        at = time.time()
        try:
            with exclusive(lock_path(self.path), self._lock_failed):
                data = read_json_object(self.path)
                data[self._account] = at
                write_json_atomic(self.path, data, durable=False)  # advisory: a 429 at worst
        except OSError as exc:
            self._warn_write(
                "Cannot write the pacing state file %s (%s); a run started right after "
                "this one may be rate-limited.",
                self.path,
                _why(exc),
            )
        return at

    def _lock_failed(self, exc: OSError) -> None:
        self._warn_lock(
            "Cannot lock the pacing state file %s (%s); runs of this account started at the "
            "same time are not kept apart and may be rate-limited.",
            self.path,
            _why(exc),
        )


class FileJobLog:
    """:class:`JobLog` in a JSON file of job lists keyed by account.

    ``legacy``: an older shared file (``jobs.json`` of versions before per-account files)
    whose entries for this account are moved here on first use, so a crash before an
    upgrade is still recovered after it.
    """

    def __init__(
        self,
        path: Path,
        account: str,
        logger: logging.Logger | None = None,
        *,
        legacy: Path | None = None,
    ) -> None:
        self.path = path
        self._account = account
        self._legacy = legacy if legacy is not None and legacy != path else None
        self._warn_lock = _WarnOnce(logger or logging.getLogger(DEFAULT_LOGGER))

    def entries(self) -> list[dict[str, Any]]:
        self._take_over_legacy()
        return self._read(self.path)

    def add(self, job_id: str, keys: Sequence[str]) -> None:
        self._take_over_legacy()
        entry = {"job_id": job_id, "submitted_at": time.time(), "keys": list(keys)}
        self._update(self.path, lambda jobs: [*jobs, entry], durable=True)

    def remove(self, job_ids: Iterable[str]) -> None:
        self._take_over_legacy()
        gone = set(job_ids)
        self._update(self.path, lambda jobs: [j for j in jobs if j["job_id"] not in gone])

    def _read(self, path: Path) -> list[dict[str, Any]]:
        jobs = read_json_object(path).get(self._account, [])
        if not isinstance(jobs, list):
            return []
        return [j for j in jobs if isinstance(j, dict) and isinstance(j.get("job_id"), str)]

    def _update(
        self,
        path: Path,
        change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        *,
        durable: bool = False,
    ) -> None:
        """Read, change and replace this account's list, all under the file's lock, so that
        no other run's update made in between is lost."""
        with exclusive(lock_path(path), self._lock_failed):
            data = read_json_object(path)
            jobs = change(self._read(path))
            if jobs:
                data[self._account] = jobs
            else:
                data.pop(self._account, None)
            write_json_atomic(path, data, durable=durable)

    def _take_over_legacy(self) -> None:
        """Move this account's entries from the legacy file: first added here (durably),
        then removed there, so a crash in between only lists them twice, never nowhere."""
        legacy, self._legacy = self._legacy, None
        if legacy is None or not self._read(legacy):
            return
        with exclusive(lock_path(legacy), self._lock_failed):
            old = self._read(legacy)
            if not old:
                return

            def merged(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
                known = {j["job_id"] for j in jobs}
                return [*(j for j in old if j["job_id"] not in known), *jobs]

            self._update(self.path, merged, durable=True)
            data = read_json_object(legacy)
            data.pop(self._account, None)
            write_json_atomic(legacy, data, durable=False)

    def _lock_failed(self, exc: OSError) -> None:
        self._warn_lock(
            "Cannot lock the job journal %s (%s); two runs of one account started at the "
            "same time could lose each other's journal entries.",
            self.path,
            _why(exc),
        )
