"""The delivery line, put together: change detection → buckets → delivery → books.

A record enters as a :class:`Pending` (or an :class:`Unread`, on change detection's text
path) and leaves the line once D·engage confirmed it or it was written to the rejected file.
The lowest sequence number still on the line is the *watermark*: a STATE that arrived after
record N may be printed once the watermark is past N.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from target_dengage.books import Books, RunStats
from target_dengage.buckets import Buckets
from target_dengage.client import DengageClient
from target_dengage.contract import CONTACT_KEY
from target_dengage.delivery import AsyncDelivery, Delivery, DryRunDelivery, SyncDelivery
from target_dengage.jobs import AsyncOptions, JobStats
from target_dengage.ledger import Ledger
from target_dengage.lookups import ChangeFilter
from target_dengage.mapping import FieldProblem
from target_dengage.mirrors import Mirrors
from target_dengage.pending import Pending, Unread
from target_dengage.rejects import RejectedRecords


class Pipeline:
    """Every contact of the run, from the sink until D·engage answered for it."""

    def __init__(
        self,
        client: DengageClient,
        rejects: RejectedRecords | None,
        *,
        batch_size: int,
        insert_if_not_exists: bool,
        stop_on_error: bool,
        logger: logging.Logger,
        on_confirmed: Callable[[], None],
        async_options: AsyncOptions | None = None,
        dry_run_path: str | None = None,
        dry_run: bool = False,
        ledger: Ledger | None = None,
        open_ledger: Callable[[], Ledger] | None = None,
        change_detection: bool = False,
        ledger_max_age_days: int | None = None,
        passivate: bool = False,
        max_passivate_percent: float = 10.0,
        seq: Callable[[], int] = lambda: 0,
    ) -> None:
        self.books = books = Books(rejects, ledger, logger)
        self.stats: RunStats = books.stats
        flags = {"insert": insert_if_not_exists, "stop_on_error": stop_on_error}
        self.delivery: Delivery
        if dry_run:
            self.delivery = DryRunDelivery(books, logger, path=dry_run_path, **flags)
        elif async_options is not None:
            self.delivery = AsyncDelivery(
                books,
                logger,
                client=client,
                options=async_options,
                on_confirmed=on_confirmed,
                **flags,
            )
        else:
            self.delivery = SyncDelivery(books, logger, client=client, **flags)
        self.buckets = Buckets(batch_size, self.delivery.send, books.stats, on_confirmed)
        #: Source deletes to passivate (delete_behavior: passivate): requests of their own.
        self.passivations = (
            Buckets(batch_size, self.delivery.send, books.stats, on_confirmed)
            if passivate
            else None
        )
        self._open_ledger = open_ledger
        #: Contacts the target passivated in earlier runs: made active again if they return.
        self._passive: set[str] = set() if ledger is None else ledger.passive_keys()
        #: Streams that map contact_status themselves: theirs is never overridden.
        self.status_streams: set[str] = set()
        self.mirrors = Mirrors(
            passivate=passivate,
            max_percent=max_passivate_percent,
            ledger=self.need_ledger,
            queue=self._passivate_absent,
            on_its_way=self._on_its_way,
            seq=seq,
            stats=books.stats,
            versions=books.versions,
            logger=logger,
        )
        self.lookups: ChangeFilter | None = None
        if change_detection:
            assert ledger is not None
            self.lookups = ChangeFilter(
                ledger,
                books,
                batch_size=batch_size,
                max_age_days=ledger_max_age_days,
                queue=self._to_buckets,
                on_its_way=self._on_its_way,
            )
        self.add: Callable[[Pending], None]
        self._upsert: Callable[[Pending], None]
        self._wire()
        self.reject_line = books.reject_line

    def _wire(self) -> None:
        """Where a valid contact goes: the ledger check with change detection, else straight
        into its bucket (one call less per record), past the reactivation check only when
        there is anyone to reactivate, and past the deletes of this run when it has any."""
        if self.lookups is not None:
            self._upsert = self.lookups.add
        elif self._passive:
            self._upsert = self._to_buckets
        else:
            self._upsert = self.buckets.add
        self.add = self._add_after_deletes if self.passivations is not None else self._upsert

    def need_ledger(self) -> Ledger:
        """The ledger, opened now if the run had no need of it before (a full-table
        version): from then on every confirmation is recorded in it."""
        ledger = self.books.ledger
        if ledger is None:
            assert self._open_ledger is not None
            ledger = self._open_ledger()
            self.books.use_ledger(ledger)
            self._passive = ledger.passive_keys()
            self._wire()
        return ledger

    @property
    def jobs(self) -> JobStats | None:
        return self.delivery.jobs.stats if isinstance(self.delivery, AsyncDelivery) else None

    @property
    def watermark(self) -> float:
        """Lowest sequence number not yet confirmed (``inf`` when everything is)."""
        lowest = min(self.books.blocked_seq, self.delivery.min_seq, self.buckets.min_seq)
        if self.lookups is not None:
            lowest = min(lowest, self.lookups.min_seq)
        if self.passivations is not None:
            lowest = min(lowest, self.passivations.min_seq, self.mirrors.min_seq)
        return lowest

    def delete(self, pending: Pending) -> None:
        """A contact deleted in the source: passivated (``pending`` is its passivation) or,
        with ``delete_behavior: ignore`` (no passivations), not sent. Either way a change to
        it still waiting to be sent is dropped: the later event wins, as in the source."""
        if self.lookups is not None:
            self.lookups.resolve_all()  # what waits for the ledger is in a bucket after this
        key = str(pending.row[CONTACT_KEY])
        self.buckets.discard(key)
        if self.passivations is None:
            self.stats.deletes_ignored += 1
            return
        self.stats.passivations_sent += 1
        self.passivations.add(pending)

    def _to_buckets(self, pending: Pending) -> None:
        """Into its bucket; a contact the target passivated is made active again, unless its
        stream maps contact_status itself."""
        passive = self._passive
        if passive:
            key = str(pending.row[CONTACT_KEY])
            if (
                key in passive
                and "contact_status" not in pending.row
                and pending.stream not in self.status_streams
            ):
                passive.discard(key)
                pending.row["contact_status"] = "A"
                self.stats.reactivated += 1
        self.buckets.add(pending)

    def _passivate_absent(self, pending: Pending) -> None:
        """A contact a complete full-table version lacks (see ``mirrors``)."""
        assert self.passivations is not None
        self.passivations.add(pending)

    def _add_after_deletes(self, pending: Pending) -> None:
        """An upsert after a delete of the same contact in this run wins over it."""
        assert self.passivations is not None
        if self.passivations.where:
            self.passivations.discard(str(pending.row[CONTACT_KEY]))
        self._upsert(pending)

    def add_unread(self, unread: Unread) -> None:
        """Take a record still in its JSON text (change detection only)."""
        assert self.lookups is not None
        self.lookups.add(unread)

    def reject_locally(
        self, pending: Pending, problems: Sequence[FieldProblem], *, fatal: bool
    ) -> str:
        return self.books.reject_locally(pending, problems, fatal=fatal)

    def flush_all(self) -> None:
        """Send everything waiting and wait until every delivery is resolved."""
        self.flush_through(float("inf"))
        self.delivery.finish()

    def flush_through(self, seq: float) -> None:
        """Send what holds back a STATE received after record ``seq``."""
        if self.lookups is not None:
            self.lookups.resolve_all()
        self.buckets.send_through(seq)
        if self.passivations is not None:
            self.passivations.send_through(seq)

    def poll(self) -> None:
        self.delivery.poll()

    def close(self) -> None:
        if isinstance(self.delivery, DryRunDelivery):
            self.delivery.close()

    def _on_its_way(self, key: str) -> bool:
        return (
            key in self.buckets.where
            or (self.passivations is not None and key in self.passivations.where)
            or self.delivery.carries(key)
        )
