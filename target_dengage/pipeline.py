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
from target_dengage.delivery import AsyncDelivery, Delivery, DryRunDelivery, SyncDelivery
from target_dengage.jobs import AsyncOptions, JobStats
from target_dengage.ledger import Ledger
from target_dengage.lookups import ChangeFilter
from target_dengage.mapping import FieldProblem
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
        ledger_max_age_days: int | None = None,
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
        self.buckets = buckets = Buckets(batch_size, self.delivery.send, books.stats, on_confirmed)
        self.lookups: ChangeFilter | None = None
        #: Where a valid contact goes: the ledger check with change detection, else straight
        #: into its bucket (one call less per record).
        self.add: Callable[[Pending], None] = buckets.add
        if ledger is not None:
            self.lookups = ChangeFilter(
                ledger,
                books,
                batch_size=batch_size,
                max_age_days=ledger_max_age_days,
                queue=buckets.add,
                on_its_way=self._on_its_way,
            )
            self.add = self.lookups.add
        self.reject_line = books.reject_line

    @property
    def jobs(self) -> JobStats | None:
        return self.delivery.jobs.stats if isinstance(self.delivery, AsyncDelivery) else None

    @property
    def watermark(self) -> float:
        """Lowest sequence number not yet confirmed (``inf`` when everything is)."""
        lowest = min(self.books.blocked_seq, self.delivery.min_seq, self.buckets.min_seq)
        if self.lookups is not None:
            lowest = min(lowest, self.lookups.min_seq)
        return lowest

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

    def poll(self) -> None:
        self.delivery.poll()

    def close(self) -> None:
        if isinstance(self.delivery, DryRunDelivery):
            self.delivery.close()

    def _on_its_way(self, key: str) -> bool:
        return key in self.buckets.where or self.delivery.carries(key)
