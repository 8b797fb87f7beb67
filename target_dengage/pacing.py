"""Pacing of sync BulkUpsert calls: never two at once, one per interval, across runs too.

D·engage counts calls per account, not per process: a run that starts right after another
must wait for the rest of the interval, or its first call gets a 429. The start time of each
call is therefore kept in a small JSON file, keyed by API URL and user.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from target_dengage.statefiles import default_state_dir, read_json_object, write_json_atomic

T = TypeVar("T")

#: Spacing kept on top of the interval: D·engage times a call from when it has read it,
#: which varies with the body size, the network and the load, and a 429 costs a whole
#: interval. 2 % of the interval, at least 100 ms and at most 1 s.
PACING_MARGIN = 0.02
MIN_PACING_MARGIN_SECONDS = 0.1
MAX_PACING_MARGIN_SECONDS = 1.0


def default_pacing_path() -> Path:
    return default_state_dir() / "pacing.json"


def account_key(api_url: str, userkey: str | None, access_token: str | None) -> str:
    """Who the rate limit belongs to; a token is hashed, never stored."""
    if userkey:
        who = f"user:{userkey}"
    else:
        who = "token:" + hashlib.sha256((access_token or "").encode()).hexdigest()[:16]
    return f"{api_url.rstrip('/')}|{who}"


class PacingMemory:
    """The last call's start time per account, in a JSON file replaced atomically."""

    def __init__(self, path: Path, key: str, logger: logging.Logger) -> None:
        self.path = path
        self._key = key
        self._logger = logger
        self._warned = False

    def _read(self) -> dict[str, float]:
        data = read_json_object(self.path)
        return {k: v for k, v in data.items() if isinstance(v, int | float)}

    def last_start(self) -> float | None:
        """Wall-clock time of the account's last call, if one was recorded."""
        return self._read().get(self._key)

    def record(self, started: float) -> None:
        data = self._read()
        data[self._key] = started
        try:
            write_json_atomic(self.path, data, durable=False)  # advisory: a 429 at worst
        except OSError as exc:
            if not self._warned:
                self._warned = True
                self._logger.warning(
                    "Cannot write the pacing state file %s (%s); a run started right after "
                    "this one may be rate-limited.",
                    self.path,
                    exc.strerror or exc,
                )


class Pacer:
    """Runs calls one at a time, their starts at least ``interval`` seconds apart.

    The lock is held for the whole call, which is what makes "never two at once" hold
    across threads; each wait is logged once, with the time left.
    """

    def __init__(
        self,
        interval: float,
        logger: logging.Logger,
        memory: PacingMemory | None = None,
    ) -> None:
        self.interval = interval
        margin = min(
            MAX_PACING_MARGIN_SECONDS, max(MIN_PACING_MARGIN_SECONDS, interval * PACING_MARGIN)
        )
        self._spacing = interval + margin if interval > 0 else 0.0
        self._logger = logger
        self._memory = memory
        self._lock = threading.Lock()
        self.last_start: float | None = None
        self.waited_seconds = 0.0
        previous = memory.last_start() if memory else None
        if previous is not None and interval > 0:
            ago = max(0.0, time.time() - previous)
            if ago < self._spacing:
                self.last_start = time.monotonic() - ago
                logger.info(
                    "The last BulkUpsert call for this account was %.1f s ago (an earlier run); "
                    "the first call waits for the rest of the %g s interval.",
                    ago,
                    interval,
                )

    def run(self, call: Callable[[], T]) -> T:
        with self._lock:
            if self.last_start is not None:
                left = self.last_start + self._spacing - time.monotonic()
                if left > 0:
                    self._logger.info(
                        "Waiting %.1f s before the next BulkUpsert call "
                        "(D·engage allows one call every %g s).",
                        left,
                        self.interval,
                    )
                    time.sleep(left)
                    self.waited_seconds += left
            self.last_start = time.monotonic()
            if self._memory is not None and self.interval > 0:
                self._memory.record(time.time())
            return call()
