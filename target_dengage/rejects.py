"""The rejected-records file: every contact that was not loaded, and why.

It holds whole records on purpose: they are the user's own data, needed to fix and replay
them. Each write is flushed and synced before the target prints a STATE that counts those
records as handled, so a crash never acknowledges a rejection that was not written down.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from singer_sdk.singerlib.json import serialize_json


class RejectedRecords:
    """Appends JSON lines to ``rejected_records_path``; opened on the first rejection."""

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()
        self._file: IO[str] | None = None
        self.count = 0

    def write(self, entries: Iterable[Mapping[str, Any]]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for entry in entries:
            self._file.write(serialize_json({"rejected_at": now, **entry}) + "\n")
            self.count += 1
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
