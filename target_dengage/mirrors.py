"""Full-table mirrors: the contacts a stream's complete version no longer has.

A tap that sends ACTIVATE_VERSION (an SDK tap in FULL_TABLE mode with
``emit_activate_version_messages``, the pipelinewise family) says that the records of one
version are the whole table. A contact the ledger attributes to the stream that a complete
version lacks was deleted in the source. D·engage cannot delete a contact, so with
``delete_behavior: passivate`` it is passivated (``contact_status: "P"``) exactly like a
source delete; with ``ignore`` it is counted and reported.

When a version is complete: SDK taps send ACTIVATE_VERSION before the version's records (and
put its number on each), other taps after them. So an ACTIVATE_VERSION for a version that
has records already closes it; one that opens a new version closes the stream's open one;
the end of input closes whatever is open. A record without a ``version`` belongs to its
stream's open version.

A contact of any version of the stream read in this run is never absent (an older version
must not passivate what a newer one has), nor is one with an upsert on its way. A version
with a record whose contact key could not be read passivates nothing: that record could be
any of the absent ones.

The safety limit: a tap that returns an empty table by mistake must not silence a whole
audience, so a version that would passivate more than ``max_passivate_percent`` of the
contacts the ledger held for its stream passivates nothing, and the run fails at its end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from target_dengage.books import RunStats
from target_dengage.contract import CONTACT_KEY
from target_dengage.ledger import Ledger
from target_dengage.mapping import Value
from target_dengage.pending import Pending


@dataclass(slots=True)
class _Version:
    opened: int  # the run's record sequence number when it was first seen
    records: int = 0
    unkeyed: int = 0  # records whose contact key could not be read


@dataclass(slots=True)
class _Stream:
    before: int  # contacts the ledger attributed to the stream, active, when first seen
    versions: dict[int, _Version] = field(default_factory=dict)
    open: int | None = None  # the activated version not complete yet
    seen: set[str] = field(default_factory=set)  # keys of every version read in this run
    completed: set[int] = field(default_factory=set)

    def version(self, number: int, seq: int) -> _Version:
        read = self.versions.get(number)
        if read is None:
            read = self.versions[number] = _Version(seq)
        return read


class Mirrors:
    """Follows each stream's versions, and passivates what a complete one lacks."""

    def __init__(
        self,
        *,
        passivate: bool,
        max_percent: float,
        ledger: Callable[[], Ledger],
        queue: Callable[[Pending], None],
        on_its_way: Callable[[str], bool],
        seq: Callable[[], int],
        stats: RunStats,
        versions: dict[str, int],
        logger: logging.Logger,
    ) -> None:
        self._passivate = passivate
        self._max_percent = max_percent
        self._ledger = ledger
        self._queue = queue
        self._on_its_way = on_its_way
        self._seq = seq
        self._stats = stats
        #: Each stream's open version (shared with the books, which record it).
        self._versions = versions
        self._logger = logger
        self._streams: dict[str, _Stream] = {}
        #: One line per stream over the safety limit; the run fails with them at its end.
        self.over_limit: list[str] = []

    def saw(self, stream: str, key: str | None, version: int | None) -> None:
        """A record of ``stream`` (its contact key, or None when unreadable), of ``version``
        or, without one, of the stream's open version."""
        mirror = self._streams.get(stream) or self._start(stream)
        number = version if version is not None else mirror.open
        if number is None:
            return
        read = mirror.version(number, self._seq())
        read.records += 1
        if key is None:
            read.unkeyed += 1
        else:
            mirror.seen.add(key)

    def activate(self, stream: str, version: int) -> None:
        """ACTIVATE_VERSION: closes ``version`` if its records came already (sent after
        them), else opens it and closes the stream's open version (sent before them)."""
        mirror = self._streams.get(stream) or self._start(stream)
        read = mirror.versions.get(version)
        if read is not None and read.records:
            if mirror.open is not None and mirror.open != version:
                mirror.completed.add(mirror.open)  # superseded: the newer one decides
            mirror.open = None
            self._versions[stream] = version
            self._complete(stream, mirror, version)
            return
        if mirror.open is not None and mirror.open != version:
            self._complete(stream, mirror, mirror.open)
        mirror.open = version
        self._versions[stream] = version
        mirror.version(version, self._seq())

    @property
    def min_seq(self) -> float:
        """Where the oldest version not complete yet began (``inf`` when none): with
        ``passivate``, no STATE past it is printed before the version's passivations are
        confirmed. Else a crash in between, and a rerun from that STATE (a tap resuming the
        table half way, or skipping it), would never passivate them, or would take the
        version's first half for absent."""
        if not self._passivate:
            return math.inf
        return min(
            (
                read.opened
                for mirror in self._streams.values()
                for number, read in mirror.versions.items()
                if number not in mirror.completed
            ),
            default=math.inf,
        )

    def finish(self) -> None:
        """End of input: every open version is complete; one never activated never will
        be (its records are upserts like any other)."""
        for stream, mirror in self._streams.items():
            if mirror.open is not None:
                number, mirror.open = mirror.open, None
                self._complete(stream, mirror, number)
            mirror.completed.update(mirror.versions)

    def _start(self, stream: str) -> _Stream:
        mirror = self._streams[stream] = _Stream(len(self._ledger().stream_contacts(stream)))
        return mirror

    def _complete(self, stream: str, mirror: _Stream, version: int) -> None:
        if version in mirror.completed:
            return
        mirror.completed.add(version)
        read = mirror.version(version, self._seq())
        if read.unkeyed:
            self._logger.warning(
                "Stream '%s', version %d: %d record(s) had no readable contact_key, so the "
                "contacts this version lacks cannot be told; none is passivated.",
                stream,
                version,
                read.unkeyed,
            )
            return
        absent = [
            key
            for key in self._ledger().stream_contacts(stream)
            if key not in mirror.seen and not self._on_its_way(key)
        ]
        if not absent:
            return
        self._stats.absent += len(absent)
        share = len(absent) * 100 / max(mirror.before, len(absent))
        if not self._passivate:
            self._logger.info(
                "Stream '%s', version %d (complete): %d contact(s) the source no longer has "
                "(%.1f %% of the stream's); not passivated (delete_behavior: ignore).",
                stream,
                version,
                len(absent),
                share,
            )
            return
        if share > self._max_percent:
            said = (
                f"Stream '{stream}': version {version} lacks {len(absent)} of the "
                f"{mirror.before} contact(s) the ledger held for it ({share:.1f} %), more "
                f"than max_passivate_percent ({self._max_percent:g} %); none was passivated. "
                "If the source really lost them, raise max_passivate_percent for one run."
            )
            self._logger.warning("%s", said)
            self.over_limit.append(said)
            self._stats.over_limit.append(stream)
            return
        self._logger.info(
            "Stream '%s', version %d (complete): passivating %d contact(s) the source no "
            "longer has (%.1f %% of the stream's).",
            stream,
            version,
            len(absent),
            share,
        )
        seq = self._seq()
        self._stats.absent_to_passivate += len(absent)
        for key in absent:
            row: dict[str, Value] = {CONTACT_KEY: key, "contact_status": "P"}
            self._queue(Pending(row, stream, 0, {CONTACT_KEY: key}, seq, passivation=True))
