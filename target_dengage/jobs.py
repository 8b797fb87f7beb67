"""BulkUpsert-Async jobs: submitted one at a time, several in flight, each confirmed by polling.

A job accepted is not a job done: its records stay unconfirmed (and hold back STATE) until a
poll says it finished. Jobs may finish in any order, so a contact is never sent in a new job
while an older job that carries it is still running: the older data could land last.

The ids of unconfirmed jobs, with the contact keys they carry, are kept in a journal (a file,
or the shared database of ``state_url``). After a crash, the next run (on any machine that
shares the journal) polls those jobs before it submits anything, for the same reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from target_dengage.accountstate import FileJobLog, JobLog, account_file
from target_dengage.errors import DengageError, DengageRequestError
from target_dengage.masking import quote
from target_dengage.protocol import BulkOutcome, JobStatus
from target_dengage.statefiles import default_state_dir

if TYPE_CHECKING:
    from target_dengage.client import DengageClient
    from target_dengage.pending import Pending

#: Polls of a long job slow down by this factor each time, up to MAX_POLL_SECONDS.
POLL_BACKOFF = 1.5
MAX_POLL_SECONDS = 60.0
#: Shortest sleep between polls, so a poll interval of 0 (tests) is not a busy loop.
MIN_POLL_SECONDS = 0.05


def default_journal_path(account: str | None = None) -> Path:
    """The account's own journal under the state folder (``jobs-<digest>.json``); without an
    account, the shared file of versions before that (``jobs.json``, keyed by account)."""
    if account is None:
        return default_state_dir() / "jobs.json"
    return account_file(default_state_dir(), "jobs", account)


class JobJournal(FileJobLog):
    """Unconfirmed job ids per account, with the contact keys each carries (a file
    :class:`~target_dengage.accountstate.JobLog`, safe for runs at the same time).

    Given the account's default file, it also takes over the account's entries from the
    shared default file older versions wrote, so a crash before an upgrade is recovered.
    """

    def __init__(self, path: Path, key: str) -> None:
        legacy = default_journal_path() if path == default_journal_path(key) else None
        super().__init__(path, key, legacy=legacy)


@dataclass(frozen=True)
class AsyncOptions:
    """The async mode's settings."""

    journal: JobLog
    max_in_flight: int
    poll_interval: float
    timeout: float


@dataclass(eq=False)
class Job:
    """A submitted job and the records it carries (compared by identity)."""

    job_id: str
    group: list[Pending]
    columns: list[str]
    submitted: float
    min_seq: int = field(init=False)
    next_poll: float = 0.0
    poll_delay: float = 0.0

    def __post_init__(self) -> None:
        self.min_seq = min(p.seq for p in self.group)


@dataclass
class JobStats:
    submitted: int = 0
    confirmed: int = 0
    failed: int = 0
    recovered: int = 0
    longest_seconds: float = 0.0
    longest_job: str = ""


class JobTracker:
    """Keeps at most ``max_in_flight`` jobs unconfirmed and reports each one's end."""

    def __init__(
        self,
        client: DengageClient,
        options: AsyncOptions,
        *,
        logger: logging.Logger,
        on_done: Callable[[Job, BulkOutcome, float], None],
        on_failed: Callable[[Job, str], None],
    ) -> None:
        self._client = client
        self._journal = options.journal
        self._max = options.max_in_flight
        self._poll_interval = options.poll_interval
        self._timeout = options.timeout
        self._logger = logger
        self._on_done = on_done
        self._on_failed = on_failed
        self._inflight: dict[str, Job] = {}
        self._by_key: dict[str, Job] = {}
        #: Every job id D·engage gave this run: a second job under one id could not be told
        #: apart from the first, so its status would speak for contacts it never saw.
        self._ids: set[str] = set()
        self._next_due = float("inf")
        self._recovered = False
        self.stats = JobStats()

    def carries(self, contact_key: str) -> bool:
        """Whether an unconfirmed job holds this contact."""
        return contact_key in self._by_key

    @property
    def min_seq(self) -> float:
        return min((job.min_seq for job in self._inflight.values()), default=float("inf"))

    def submit(self, columns: list[str], group: list[Pending], body: bytes) -> bool:
        """Submit one job, after the jobs it must not overtake and within the in-flight cap.

        Returns False, submitting nothing, when a job turned out failed while waiting: after a
        failure no new job starts.
        """
        self._recover()
        older = {self._by_key[k] for p in group if (k := str(p.row["contact_key"])) in self._by_key}
        while any(job.job_id in self._inflight for job in older):
            self._wait()
        while len(self._inflight) >= self._max:
            self._wait()
        if self.stats.failed:
            return False
        job_id = self._client.submit_job(body)
        if job_id in self._ids:
            raise DengageError(
                f"D·engage answered a BulkUpsert-Async submit of {len(group)} contacts with "
                f"job id '{quote(job_id, 80)}', which it had already given to an earlier job "
                "of this run. The two jobs cannot be told apart, so these contacts are not "
                "confirmed and no STATE past them is printed; the next run sends them again."
            )
        self._ids.add(job_id)
        now = time.monotonic()
        job = Job(job_id, group, columns, now)
        job.poll_delay = self._poll_interval
        job.next_poll = now + job.poll_delay
        self._inflight[job_id] = job
        for pending in group:
            self._by_key[str(pending.row["contact_key"])] = job
        self._next_due = min(self._next_due, job.next_poll)
        self.stats.submitted += 1
        self._journal.add(job_id, [str(p.row["contact_key"]) for p in group])
        self._logger.info(
            "Submitted job %s: %d contacts; %d job(s) in flight.",
            job_id,
            len(group),
            len(self._inflight),
        )
        return True

    def poll_due(self) -> None:
        """Poll the jobs whose time has come; cheap to call after every record."""
        now = time.monotonic()
        if now < self._next_due:
            return
        for job in list(self._inflight.values()):
            if job.next_poll <= now:
                self._poll(job)
        self._next_due = min((j.next_poll for j in self._inflight.values()), default=float("inf"))

    def wait_all(self) -> None:
        self._recover()
        while self._inflight:
            self._wait()

    def _wait(self) -> None:
        time.sleep(max(MIN_POLL_SECONDS, self._next_due - time.monotonic()))
        self._next_due = time.monotonic()
        self.poll_due()

    def _poll(self, job: Job) -> None:
        status = self._status(job.job_id)
        elapsed = time.monotonic() - job.submitted
        if status is not None and status.state == "running":
            if elapsed <= self._timeout:
                job.poll_delay = min(
                    max(job.poll_delay, MIN_POLL_SECONDS) * POLL_BACKOFF,
                    max(MAX_POLL_SECONDS, self._poll_interval),
                )
                job.next_poll = time.monotonic() + job.poll_delay
                return
            message = (
                f"job {job.job_id} did not finish within job_timeout_seconds "
                f"({self._timeout:g} s; last status '{status.word}')"
            )
        elif status is None:
            message = f"D·engage does not know job {job.job_id} (404)"
        elif status.state == "failed":
            message = (
                f"job {job.job_id} failed ('{quote(status.word, 60)}'): "
                f"{quote(status.message) or 'no reason'}"
            )
        else:
            message = ""
        self._forget(job)
        if elapsed > self.stats.longest_seconds:
            self.stats.longest_seconds, self.stats.longest_job = elapsed, job.job_id
        if message:
            self.stats.failed += 1
            self._on_failed(job, message)
        else:
            assert status is not None
            self.stats.confirmed += 1
            self._on_done(job, status.outcome, elapsed)

    def _status(self, job_id: str) -> JobStatus | None:
        try:
            return self._client.job_status(job_id)
        except DengageRequestError as exc:
            if exc.status == 404:
                return None
            raise

    def _forget(self, job: Job) -> None:
        del self._inflight[job.job_id]
        for pending in job.group:
            key = str(pending.row["contact_key"])
            if self._by_key.get(key) is job:
                del self._by_key[key]
        self._journal.remove([job.job_id])

    def _recover(self) -> None:
        """Before the first submission: wait for the jobs a crashed run left unconfirmed."""
        if self._recovered:
            return
        self._recovered = True
        entries = self._journal.entries()
        if not entries:
            return
        self._logger.info(
            "The job journal holds %d unconfirmed job(s) from an earlier run; polling them "
            "before submitting anything, so newer data is not overtaken by older.",
            len(entries),
        )
        outcomes: dict[str, int] = {"completed": 0, "failed": 0, "unknown": 0}
        for entry in entries:
            outcomes[self._settle_old(entry)] += 1
        self._journal.remove(e["job_id"] for e in entries)
        self.stats.recovered = outcomes["completed"]
        self._logger.info(
            "Earlier run's jobs: %d completed (recovered; their contacts are confirmed), "
            "%d failed, %d unknown. Records of the rerun are sent again as usual.",
            outcomes["completed"],
            outcomes["failed"],
            outcomes["unknown"],
        )

    def _settle_old(self, entry: dict[str, Any]) -> str:
        job_id = entry["job_id"]
        submitted = entry.get("submitted_at")
        deadline = (
            submitted if isinstance(submitted, int | float) else time.time()
        ) + self._timeout
        delay = max(self._poll_interval, MIN_POLL_SECONDS)
        while True:
            status = self._status(job_id)
            if status is None:
                return "unknown"
            if status.state == "done":
                return "completed"
            if status.state == "failed":
                return "failed"
            if time.time() > deadline:
                raise DengageError(
                    f"Job {job_id} of an earlier run is still running after "
                    f"job_timeout_seconds; wait for it to finish before loading again."
                )
            time.sleep(delay)
            delay = min(delay * POLL_BACKOFF, MAX_POLL_SECONDS)
