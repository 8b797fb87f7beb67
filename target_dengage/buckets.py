"""Run-wide buckets: contacts grouped by column set into full requests, duplicates merged.

Why run-wide and not per stream: every stream lands in the same ``master_contact`` table and
shares the same one-call-a-minute budget, so contacts of all streams that carry the same
columns travel in the same requests, and a contact that appears in two streams is merged
instead of racing itself across two requests.

Why grouped by column set: every object in one request must carry exactly the request's
``columns``, and a record carries only the columns it has values for (a null never wipes data
in D·engage). Each distinct column set fills its own requests.
"""

from __future__ import annotations

import math
import typing as t
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from target_dengage.books import RunStats
from target_dengage.contract import CONTACT_KEY
from target_dengage.mapping import Value
from target_dengage.pending import Pending

#: Delivers one request's worth of contacts: (columns, contacts); returns once D·engage has
#: answered for them (or raises).
Send = Callable[[list[str], list[Pending]], None]


@dataclass(slots=True)
class Bucket:
    columns: tuple[str, ...]
    rows: dict[str, Pending] = field(default_factory=dict)
    min_seq: float = math.inf


class Buckets:
    """Contacts waiting to be sent, by column set; a full bucket is sent at once."""

    def __init__(
        self, batch_size: int, send: Send, stats: RunStats, on_sent: Callable[[], None]
    ) -> None:
        self._batch_size = batch_size
        self._send_rows = send
        self._stats = stats
        self._on_sent = on_sent
        self._buckets: dict[tuple[str, ...], Bucket] = {}
        #: The bucket each waiting contact is in, by contact key.
        self.where: dict[str, tuple[str, ...]] = {}
        self._column_sets: dict[tuple[str, ...], tuple[str, ...]] = {}

    @property
    def min_seq(self) -> float:
        """Lowest sequence number waiting in a bucket (``inf`` when none is)."""
        return min((bucket.min_seq for bucket in self._buckets.values()), default=math.inf)

    def add(self, pending: Pending) -> None:
        """Queue a contact to send; send its bucket as soon as it is full."""
        row = pending.row
        key = t.cast("str", row[CONTACT_KEY])  # contact keys are text by then
        order = tuple(row)
        columns = self._column_sets.get(order) or self._column_set(row)
        previous = self.where.get(key)
        if previous is not None:
            old_bucket = self._buckets[previous]
            old = old_bucket.rows.pop(key)
            if previous != columns:
                # Same result as sending both in order: the later values win, and the
                # columns only the earlier record had keep its values.
                pending.row = {**old.row, **pending.row}
                pending.digest = None
                pending.source = None  # no longer the row of one record's text
                columns = self._column_set(pending.row)
                if not old_bucket.rows:
                    del self._buckets[previous]
            pending.seq = min(pending.seq, old.seq)
            pending.merges = old.merges + 1
            self._stats.duplicates_merged += 1
        bucket = self._buckets.get(columns)
        if bucket is None:
            bucket = self._buckets[columns] = Bucket(columns)
        bucket.rows[key] = pending
        if pending.seq < bucket.min_seq:
            bucket.min_seq = pending.seq
        self.where[key] = columns
        if len(bucket.rows) >= self._batch_size:
            self._send(bucket)

    def discard(self, key: str) -> None:
        """Forget a waiting contact: a later event about it (a delete) supersedes it. Its
        bucket keeps its lowest sequence number, which at worst holds a STATE until the
        bucket is sent."""
        columns = self.where.pop(key, None)
        if columns is None:
            return
        bucket = self._buckets[columns]
        del bucket.rows[key]
        if not bucket.rows:
            del self._buckets[columns]

    def _column_set(self, row: Mapping[str, Value]) -> tuple[str, ...]:
        """The row's columns, sorted: a bucket key that is the same whatever the order of
        the record's properties. A cache makes it one tuple and one lookup per record."""
        order = tuple(row)
        columns = self._column_sets.get(order)
        if columns is None:
            columns = self._column_sets[order] = tuple(sorted(order))
        return columns

    def send_through(self, seq: float) -> None:
        """Send the buckets holding a record numbered ``seq`` or lower (all: ``inf``)."""
        for bucket in list(self._buckets.values()):
            if bucket.min_seq <= seq:
                self._send(bucket)

    def _send(self, bucket: Bucket) -> None:
        """Deliver a bucket; it leaves the buckets only once D·engage has answered for it,
        so until then its records still hold back STATE."""
        columns = [CONTACT_KEY, *(c for c in bucket.columns if c != CONTACT_KEY)]
        self._send_rows(columns, list(bucket.rows.values()))
        del self._buckets[bucket.columns]
        for key in bucket.rows:
            del self.where[key]
        self._on_sent()
