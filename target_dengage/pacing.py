"""Pacing of sync BulkUpsert calls: never two at once, one per interval, across runs too.

D·engage counts calls per account, not per process: a run that starts right after another,
or alongside it, must wait for the rest of the interval and for the other's call to end, or
its call gets a 429. Each call therefore takes the account's turn in a shared
:class:`~target_dengage.accountstate.CallClock` (a lock across processes, with the start of
the account's last call), keyed by API URL and user.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from target_dengage.accountstate import CallClock, FileCallClock, LastCall, account_file
from target_dengage.statefiles import default_state_dir

T = TypeVar("T")

#: Spacing kept on top of the interval: D·engage times a call from when it has read it,
#: which varies with the body size, the network and the load, and a 429 costs a whole
#: interval. 2 % of the interval, at least 100 ms and at most 1 s.
PACING_MARGIN = 0.02
MIN_PACING_MARGIN_SECONDS = 0.1
MAX_PACING_MARGIN_SECONDS = 1.0

#: The file clock target.py builds: ``PacingMemory(path, account, logger)``.
PacingMemory = FileCallClock


def default_pacing_path(account: str | None = None) -> Path:
    """The account's own pacing file under the state folder (``pacing-<digest>.json``), so
    accounts never wait for each other's locks; without an account, the file of versions
    before that (``pacing.json``, keyed by account too, so it still works when given)."""
    if account is None:
        return default_state_dir() / "pacing.json"
    return account_file(default_state_dir(), "pacing", account)


def account_key(api_url: str, userkey: str | None, access_token: str | None) -> str:
    """Who the rate limit belongs to; a token is hashed, never stored."""
    if userkey:
        who = f"user:{userkey}"
    else:
        who = "token:" + hashlib.sha256((access_token or "").encode()).hexdigest()[:16]
    return f"{api_url.rstrip('/')}|{who}"


class Pacer:
    """Runs calls one at a time, their starts at least ``interval`` (+ margin) apart.

    Every call takes this process's lock, then the account's turn in the shared clock, and
    holds both until the call has returned: that is what makes "never two at once" hold
    across threads and across runs. Inside the turn it reads the account's last start (the
    other runs' calls included) and how long ago it was by the store's clock, waits out
    the spacing, records its own start and calls. With ``interval`` 0 there is nothing to
    space: no clock is touched.

    ``last_start`` (monotonic) is this process's last call start; ``waited_seconds`` the
    time spent waiting for the spacing and for other runs' turns.
    """

    def __init__(
        self,
        interval: float,
        logger: logging.Logger,
        memory: CallClock | None = None,
    ) -> None:
        self.interval = interval
        margin = min(
            MAX_PACING_MARGIN_SECONDS, max(MIN_PACING_MARGIN_SECONDS, interval * PACING_MARGIN)
        )
        self._spacing = interval + margin if interval > 0 else 0.0
        self._logger = logger
        self._clock = memory if interval > 0 else None
        self._lock = threading.Lock()
        self.last_start: float | None = None
        self.waited_seconds = 0.0
        #: The start this process last recorded (the store's clock): any other start read
        #: from the clock is another run's.
        self._recorded: float | None = None
        self._told_other_run = False

    def run(self, call: Callable[[], T]) -> T:
        with self._lock:
            if self._clock is None:
                self._wait(None)
                self.last_start = time.monotonic()
                return call()
            asked = time.monotonic()
            with self._clock.turn() as previous:
                self.waited_seconds += time.monotonic() - asked  # another run's call
                self._wait(previous)
                self._recorded = self._clock.started()
                # After recording: a store that had to reconnect made the call start later.
                self.last_start = time.monotonic()
                return call()

    def _wait(self, previous: LastCall | None) -> None:
        """Sleep out the spacing after this process's last call and after ``previous``, the
        account's last recorded start (timed by the clock's store), whichever ends later."""
        left = 0.0
        if self.last_start is not None:
            left = self.last_start + self._spacing - time.monotonic()
        if previous is not None and previous.at != self._recorded:
            ago = previous.age
            # A clock set back never makes a run wait more than one spacing.
            theirs = min(self._spacing, self._spacing - ago)
            if theirs > 0:
                self._logger.log(
                    logging.DEBUG if self._told_other_run else logging.INFO,
                    "The last BulkUpsert call for this account was %.1f s ago (an earlier run, "
                    "or one running alongside this one); this call waits for the rest of the "
                    "%g s interval.",
                    max(0.0, ago),
                    self.interval,
                )
                self._told_other_run = True
            left = max(left, theirs)
        if left > 0:
            self._logger.info(
                "Waiting %.1f s before the next BulkUpsert call "
                "(D·engage allows one call every %g s).",
                left,
                self.interval,
            )
            time.sleep(left)
            self.waited_seconds += left
