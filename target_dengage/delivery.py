"""Delivery: a request's worth of contacts to D·engage, and its answer to the books.

Three ways to deliver, behind one interface: sync BulkUpsert (one paced call), async
BulkUpsert-Async (a job in flight, confirmed when a poll says it finished) and a dry run (the
body written down, nothing sent). What they share lives here too: with stop_on_error false, a
request refused as a whole is split until the records D·engage refuses stand alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from target_dengage.books import ISSUES_LOGGED_PER_REQUEST, Books, issues_about
from target_dengage.client import DengageClient
from target_dengage.contract import CONTACT_KEY
from target_dengage.errors import DengageError, DengageRequestError
from target_dengage.jobs import AsyncOptions, Job, JobTracker
from target_dengage.masking import quote
from target_dengage.pending import Pending, merges
from target_dengage.protocol import BulkOutcome, ItemIssue, bulk_body


class Delivery:
    """Sends groups of contacts; subclasses say how one request is delivered."""

    def __init__(
        self, books: Books, logger: logging.Logger, *, insert: bool, stop_on_error: bool
    ) -> None:
        self._books = books
        self._stats = books.stats
        self._logger = logger
        self._insert = insert
        self._stop_on_error = stop_on_error

    @property
    def min_seq(self) -> float:
        """Lowest sequence number delivered but not yet confirmed (async jobs)."""
        return math.inf

    def carries(self, contact_key: str) -> bool:
        """Whether a delivery still unconfirmed holds this contact."""
        return False

    def poll(self) -> None:
        """Let finished deliveries confirm their records (async jobs); cheap to call often."""

    def finish(self) -> None:
        """Wait until everything delivered is confirmed or failed."""

    def send(self, columns: list[str], group: list[Pending]) -> None:
        """Deliver a request's worth of contacts; returns once D·engage answered for all of
        them (for async mode: once their jobs are submitted). Every earlier confirmation is
        in the ledger before it goes: the ledger's writes overlap the reading of a request's
        records, never a call, so a crash during a call loses none of them."""
        self._books.settle()
        groups = [group]
        split_budget = _split_budget(len(group))
        while groups:
            part = groups.pop(0)
            try:
                self._deliver(columns, part)
            except DengageRequestError as exc:
                if self._stop_on_error or not exc.refused_data:
                    self._books.refused(exc, part)
                    raise
                more = self._isolate(exc, part, split_budget)
                split_budget -= len(more)
                groups.extend(more)

    def _deliver(self, columns: list[str], group: list[Pending]) -> None:
        raise NotImplementedError

    def _body(self, columns: list[str], group: list[Pending]) -> bytes:
        return bulk_body(
            columns,
            [p.row for p in group],
            # A passivation must never create the contact it is about.
            insert_if_not_exists=self._insert and not group[0].passivation,
            stop_on_error=self._stop_on_error,
        )

    def _isolate(
        self, exc: DengageRequestError, group: list[Pending], budget: int
    ) -> list[list[Pending]]:
        """With stop_on_error false, a 400 for the whole request must not sink the good
        records in it: set aside the records D·engage names, or else split the request in
        halves until the bad ones stand alone. Returns the groups still to send."""
        named = issues_about(exc.issues, {str(p.row[CONTACT_KEY]) for p in group})
        if len(group) == 1 and not named:
            named = [ItemIssue(str(group[0].row[CONTACT_KEY]), str(exc))]
        if named:
            self._books.reject_api(named, group)
            refused = {i.contact_key for i in named}
            rest = [p for p in group if p.row[CONTACT_KEY] not in refused]
            if rest and budget < 1:
                raise exc
            return [rest] if rest else []
        if budget < 2:
            raise DengageRequestError(
                f"{exc} Splitting the request to isolate the records D·engage refuses used "
                f"up its {_split_budget(len(group))} extra calls, and {len(group)} records "
                "are still refused as a group; the refusal is probably not about single "
                "records. No STATE past them is printed.",
                status=exc.status,
            ) from None
        half = len(group) // 2
        self._logger.warning(
            "D·engage refused a request of %d contacts as a whole (%s); splitting it in two "
            "to isolate the bad records (up to %d more calls).",
            len(group),
            quote(str(exc)),
            budget,
        )
        return [group[:half], group[half:]]


class DryRunDelivery(Delivery):
    """Nothing is sent: the bodies are counted, and written down when a path is given."""

    def __init__(
        self,
        books: Books,
        logger: logging.Logger,
        *,
        insert: bool,
        stop_on_error: bool,
        path: str | None,
    ) -> None:
        super().__init__(books, logger, insert=insert, stop_on_error=stop_on_error)
        self._file: IO[bytes] | None = None
        if path:
            target = Path(path).expanduser()
            target.parent.mkdir(parents=True, exist_ok=True)
            self._file = target.open("wb")

    def _deliver(self, columns: list[str], group: list[Pending]) -> None:
        if self._file is not None:
            self._file.write(self._body(columns, group) + b"\n")
        self._stats.requests += 1
        self._stats.contacts_sent += len(group)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SyncDelivery(Delivery):
    """One paced BulkUpsert call per request; its answer is the confirmation."""

    def __init__(
        self,
        books: Books,
        logger: logging.Logger,
        *,
        insert: bool,
        stop_on_error: bool,
        client: DengageClient,
    ) -> None:
        super().__init__(books, logger, insert=insert, stop_on_error=stop_on_error)
        self._client = client

    def _deliver(self, columns: list[str], group: list[Pending]) -> None:
        body = self._body(columns, group)
        stats = self._stats
        pacer = self._client.pacer
        started = time.monotonic()
        waited = pacer.waited_seconds
        try:
            outcome = self._client.bulk_upsert(body)
        except DengageRequestError:
            stats.requests += 1  # answered, if with a refusal
            raise
        stats.requests += 1
        elapsed_ms = (time.monotonic() - started - (pacer.waited_seconds - waited)) * 1000
        stats.contacts_sent += len(group)
        named = self._books.confirmed(group, outcome)
        self._logger.info(
            "BulkUpsert %d: sent %d contacts (streams: %s; columns: %s): %d inserted, "
            "%d updated, %d rejected, %d duplicates merged, %d warnings, %.0f ms.",
            stats.requests,
            len(group),
            ", ".join(sorted({p.stream for p in group})),
            ", ".join(columns),
            len(named.inserted),
            len(named.updated),
            len(named.errors),
            merges(group),
            len(named.warnings),
            elapsed_ms,
        )


class AsyncDelivery(Delivery):
    """One BulkUpsert-Async job per request, several in flight; a job's records are
    confirmed when a poll says it finished, and a failed job blocks every later STATE."""

    def __init__(
        self,
        books: Books,
        logger: logging.Logger,
        *,
        insert: bool,
        stop_on_error: bool,
        client: DengageClient,
        options: AsyncOptions,
        on_confirmed: Callable[[], None],
    ) -> None:
        super().__init__(books, logger, insert=insert, stop_on_error=stop_on_error)
        self._on_confirmed = on_confirmed
        self._failures: list[str] = []
        self.jobs = JobTracker(
            client, options, logger=logger, on_done=self._job_done, on_failed=self._job_failed
        )

    @property
    def min_seq(self) -> float:
        return self.jobs.min_seq

    def carries(self, contact_key: str) -> bool:
        return self.jobs.carries(contact_key)

    def poll(self) -> None:
        self.jobs.poll_due()

    def finish(self) -> None:
        self.jobs.wait_all()
        self._raise_failures()

    def _deliver(self, columns: list[str], group: list[Pending]) -> None:
        if self._failures or not self.jobs.submit(columns, group, self._body(columns, group)):
            self.finish()
        self._stats.requests += 1
        self._stats.contacts_sent += len(group)

    def _job_done(self, job: Job, outcome: BulkOutcome, seconds: float) -> None:
        named = self._books.confirmed(job.group, outcome)
        self._logger.info(
            "Job %s confirmed after %.1f s: %d contacts (streams: %s): %d inserted, "
            "%d updated, %d rejected, %d duplicates merged, %d warnings.",
            job.job_id,
            seconds,
            len(job.group),
            ", ".join(sorted({p.stream for p in job.group})),
            len(named.inserted),
            len(named.updated),
            len(named.errors),
            merges(job.group),
            len(named.warnings),
        )
        self._on_confirmed()

    def _job_failed(self, job: Job, message: str) -> None:
        """A failed job's records are not confirmed: no STATE past them, ever, in this run."""
        self._failures.append(message)
        self._books.block(job.min_seq)
        self._logger.error(
            "BulkUpsert-Async %s. Its %d contacts (streams: %s) are not confirmed; no STATE "
            "past them will be printed, and the run will fail once the other jobs are resolved.",
            quote(message),
            len(job.group),
            ", ".join(sorted({p.stream for p in job.group})),
        )

    def _raise_failures(self) -> None:
        if self._failures:
            raise DengageError(
                f"{len(self._failures)} BulkUpsert-Async job(s) failed: "
                + "; ".join(quote(m) for m in self._failures[:ISSUES_LOGGED_PER_REQUEST])
            )


def _split_budget(size: int) -> int:
    """Extra calls allowed to isolate bad records in a refused request of ``size``: enough
    for a binary search down to one record, plus a resend of the rest."""
    return 2 * math.ceil(math.log2(max(size, 1))) + 2
