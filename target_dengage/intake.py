"""Where the run counts its records: one sequence for all streams, and the periodic work.

Each record's sequence number is what STATE is gated on: a STATE that arrived after record N
is printed once every record up to N is confirmed or written down. Sinks number their records
here (see ``DengageSink._arrive``), whichever path a record took to reach them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from target_dengage.pipeline import Pipeline

#: How often (a power of two, minus one) the record loop does its periodic work.
PERIODIC_EVERY = 255


def _nothing() -> None:
    return None


class Intake:
    """The run-wide record sequence, and what to do every few hundred records."""

    def __init__(self) -> None:
        self.seq = 0
        #: Polls async jobs and sends what holds back an old STATE (set by the target).
        self.periodic: Callable[[], None] = _nothing

    def current(self) -> int:
        """The sequence number of the newest record."""
        return self.seq

    def set_aside(self) -> int:
        """A sequence number for an input line set aside before it became a record."""
        self.seq += 1
        return self.seq


class RecordHost(Protocol):
    """What a sink needs of the target it belongs to (so it need not import the target)."""

    intake: Intake
    pipeline: Pipeline
    #: The ``version`` of the RECORD message the SDK's record path is processing.
    record_version: int | None

    @property
    def config(self) -> Any: ...
