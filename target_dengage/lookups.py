"""Change detection's ledger lookups, in front of the buckets.

With ``change_detection``, every valid record is checked against the ledger of what D·engage
confirmed before: a contact whose text (or, failing that, whose mapped payload) is the one
confirmed is dropped as unchanged; the rest go on to the buckets. Lookups are batched, a
request's worth of keys at a time, and run on the ledger's own thread while the record loop
goes on reading.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from target_dengage.books import Books
from target_dengage.contract import CONTACT_KEY
from target_dengage.ledger import LedgerEntry
from target_dengage.mapping import payload_hash
from target_dengage.pending import Pending, Unread

if TYPE_CHECKING:
    from concurrent.futures import Future

    from target_dengage.ledger import Ledger

#: Ledger lookups out at once: enough that the record loop never waits for one, while each
#: holds a request's worth of records.
LOOKUPS_IN_FLIGHT = 2
#: What a lookup answers for a key the ledger does not know: matches nothing, ever.
_UNKNOWN = LedgerEntry("", "", None, -math.inf)


@dataclass(slots=True)
class _Flight:
    """A ledger lookup on its way, and the keys written to the ledger since it was sent."""

    entries: list[Pending | Unread]
    answer: Future[dict[str, LedgerEntry]]
    written: set[str] = field(default_factory=set)


def _keys(entries: Iterable[Pending | Unread]) -> list[str]:
    return [e.key if isinstance(e, Unread) else str(e.row[CONTACT_KEY]) for e in entries]


class ChangeFilter:
    """Drops the records D·engage already has; passes the rest on, in their order."""

    def __init__(
        self,
        ledger: Ledger,
        books: Books,
        *,
        batch_size: int,
        max_age_days: int | None,
        queue: Callable[[Pending], None],
        on_its_way: Callable[[str], bool],
    ) -> None:
        self._ledger = ledger
        self._stats = books.stats
        self._batch_size = batch_size
        self._max_age = None if max_age_days is None else max_age_days * 86400.0
        self._queue = queue
        self._on_its_way = on_its_way
        #: Valid records waiting for one batched lookup.
        self._waiting: list[Pending | Unread] = []
        #: Lookups sent to the ledger's thread and not yet resolved, oldest first (their
        #: records came before those in ``_waiting``).
        self._flights: deque[_Flight] = deque()
        books.on_ledger_write.append(self._written)

    @property
    def min_seq(self) -> float:
        """Lowest sequence number waiting for the ledger (``inf`` when none is)."""
        waiting = self._flights[0].entries if self._flights else self._waiting
        return waiting[0].seq if waiting else math.inf

    def add(self, entry: Pending | Unread) -> None:
        """Take a valid contact, or a record still in its JSON text (see :class:`Unread`)."""
        waiting = self._waiting
        waiting.append(entry)
        if len(waiting) >= self._batch_size:
            self._look_up_later()

    def resolve_all(self) -> None:
        """Resolve every record waiting for the ledger, now."""
        while self._flights:
            self._land()
        entries, self._waiting = self._waiting, []
        if entries:
            self._resolve(entries, self._ledger.lookup(_keys(entries)), ())

    def _written(self, keys: Iterable[str]) -> None:
        for flight in self._flights:
            flight.written.update(keys)

    def _look_up_later(self) -> None:
        """Send the waiting records' lookup to the ledger's thread and go on reading. At
        most ``LOOKUPS_IN_FLIGHT`` are out at once; they resolve in the order sent."""
        if len(self._flights) >= LOOKUPS_IN_FLIGHT:
            self._land()
        entries, self._waiting = self._waiting, []
        self._flights.append(_Flight(entries, self._ledger.lookup_later(_keys(entries))))

    def _land(self) -> None:
        """Resolve the oldest lookup in flight."""
        flight = self._flights.popleft()
        self._resolve(flight.entries, flight.answer.result(), flight.written)

    def _resolve(
        self,
        entries: list[Pending | Unread],
        known: Mapping[str, LedgerEntry],
        stale: Container[str],
    ) -> None:
        """Drop the unchanged records; queue the rest. ``stale``: keys written to the ledger
        after the lookup was sent, so its answer for them may be out of date."""
        oldest = -math.inf if self._max_age is None else time.time() - self._max_age
        seen: set[str] = set()
        on_its_way = self._on_its_way
        unchanged = 0
        adopted: dict[str, tuple[str, str]] = {}
        for entry in entries:
            if isinstance(entry, Unread):
                key, source = entry.key, entry.source
            else:
                key, source = str(entry.row[CONTACT_KEY]), None
            found = known.get(key, _UNKNOWN)
            # A contact that is already on its way (or came twice in this lookup) is always
            # sent: skipping its later version would let the earlier one land last.
            skippable = (
                found.confirmed_at > oldest
                and key not in seen
                and key not in stale
                and not on_its_way(key)
            )
            seen.add(key)
            if isinstance(entry, Unread):
                if skippable and found.source_hash == source:  # the very text confirmed
                    unchanged += 1
                    continue
                made = entry.materialize(entry.raw, entry.record_number, entry.seq)
                if made is None:  # invalid: set aside
                    continue
                pending = made
                pending.source = source
            else:
                pending = entry
            pending.digest = payload_hash(pending.row)
            if skippable and found.payload_hash == pending.digest:
                unchanged += 1
                if source is not None:
                    # New text for a payload D·engage has: next run, know it by its text.
                    adopted[key] = (pending.digest, source)
            else:
                self._queue(pending)
        self._stats.unchanged += unchanged
        if adopted:
            self._ledger.adopt_sources(adopted)
