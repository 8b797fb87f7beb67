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
from typing import Any

from singer_sdk.singerlib.json import serialize_json


class RejectedRecords:
    """Appends JSON lines to ``rejected_records_path``.

    The file is opened for each write and closed again: rejections are rare next to the
    records that load, and no handle is left open however the run ends.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()
        self.count = 0

    def write(self, entries: Iterable[Mapping[str, Any]]) -> None:
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        lines = [serialize_json({"rejected_at": now, **entry}) + "\n" for entry in entries]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        self.count += len(lines)
