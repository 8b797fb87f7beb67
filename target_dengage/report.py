"""What the user is told: progress while loading, the plan of a dry run, the run summary.

Everything here reads counters; nothing here changes what is loaded.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from target_dengage.books import RunStats
from target_dengage.jobs import JobStats


@dataclass(frozen=True)
class Pace:
    """The settings that decide how fast a load can go."""

    mode: str
    batch_size: int
    interval: float
    max_jobs: int
    poll_interval: float


@dataclass
class RunView:
    """A snapshot of everything the reports show."""

    stats: RunStats
    jobs: JobStats | None
    retries: int
    rate_limited: int
    rate_limited_seconds: float
    pacing_seconds: float
    seconds: float

    @property
    def rejected(self) -> int:
        return self.stats.rejected_locally + self.stats.rejected_by_api

    @property
    def buffered(self) -> int:
        """Read and valid, not yet confirmed (waiting in a batch, a request or a job)."""
        s = self.stats
        done = s.duplicates_merged + self.rejected + s.confirmed + s.unchanged + s.deletes_ignored
        return max(0, s.records_read - done)


def least_seconds(requests: int, pace: Pace) -> float:
    """The least time ``requests`` calls take: the pacing (sync) or the waves of jobs (async)."""
    if requests <= 0:
        return 0.0
    if pace.mode == "async":
        return math.ceil(requests / pace.max_jobs) * pace.poll_interval
    return (requests - 1) * pace.interval


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressReporter:
    """Logs a progress line every ``interval`` seconds from a thread of its own, so it keeps
    talking during long pacing waits and job polls."""

    def __init__(
        self,
        interval: float,
        view: Callable[[], RunView],
        pace: Pace,
        logger: logging.Logger,
    ) -> None:
        self._interval = interval
        self._view = view
        self._pace = pace
        self._logger = logger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._logger.info("%s", progress_line(self._view(), self._pace))


def progress_line(view: RunView, pace: Pace) -> str:
    s = view.stats
    per_minute = s.confirmed / view.seconds * 60 if view.seconds > 0 else 0.0
    buffered = view.buffered
    if pace.mode == "async":
        eta = buffered / per_minute * 60 if per_minute > 0 else None
    else:
        eta = least_seconds(math.ceil(buffered / pace.batch_size), pace) + (
            pace.interval if buffered else 0
        )
    return (
        f"Progress: {s.records_read} read, {s.contacts_sent} sent, {s.confirmed} confirmed, "
        f"{view.rejected} rejected, {s.unchanged} unchanged; {per_minute:.0f} contacts/min; "
        f"{buffered} buffered"
        + (f", ETA {_duration(eta)}" if eta is not None and buffered else "")
        + _deletes_said(s)
        + "."
    )


def _deletes_said(s: RunStats) -> str:
    """The progress line's part about deletes and mirrors, when there are any."""
    deletes = s.deletes_ignored + s.passivations_sent
    if not (deletes or s.absent or s.reactivated):
        return ""
    return (
        f"; {deletes} source deletes, {s.absent} absent from full-table versions, "
        f"{s.passivated} passivated, {s.reactivated} reactivated"
    )


def plan_text(view: RunView, pace: Pace, output_path: str | None) -> str:
    """The dry run's report: what a real run would do, and the least time it would take."""
    s = view.stats
    valid = s.records_read - s.rejected_locally
    lines = [
        "Dry run: nothing was sent to D·engage. The plan:",
        f"  contacts read ........ {s.records_read}",
        f"  valid ................ {valid}",
        f"  invalid .............. {s.rejected_locally}",
        f"  duplicates merged .... {s.duplicates_merged}",
        f"  unchanged (ledger) ... {s.unchanged}",
        f"  deletes ignored ...... {s.deletes_ignored}",
        f"  to passivate ......... {s.passivations_sent}",
        f"  absent from versions . {s.absent}",
        f"  of them to passivate . {s.absent_to_passivate}",
        f"  to reactivate ........ {s.reactivated}",
        f"  to send .............. {s.contacts_sent}",
        f"  requests needed ...... {s.requests}"
        + (" jobs" if pace.mode == "async" else " sync BulkUpsert calls"),
        f"  least time ........... {_duration(least_seconds(s.requests, pace))}"
        + (
            f" (one call every {pace.interval:g} s)"
            if pace.mode == "sync"
            else f" ({pace.max_jobs} jobs in flight, each polled after {pace.poll_interval:g} s"
            " at the soonest; D·engage's job time comes on top)"
        ),
    ]
    if s.over_limit:
        lines.append(
            f"  over max_passivate_percent (nothing passivated): {', '.join(s.over_limit)}"
        )
    if output_path:
        lines.append(f"  request bodies ....... {output_path}")
    return "\n".join(lines)


def summary_text(view: RunView, rejected_path: str | None) -> str:
    s = view.stats
    rows = [
        ("records read", f"{s.records_read}"),
        ("contacts sent", f"{s.contacts_sent} in {s.requests} requests"),
        ("contacts confirmed", f"{s.confirmed} ({s.inserted} inserted, {s.updated} updated)"),
        (
            "rejected",
            f"{view.rejected} ({s.rejected_locally} locally, {s.rejected_by_api} by D·engage)"
            + (f" → {rejected_path}" if view.rejected and rejected_path else ""),
        ),
        ("duplicates merged", f"{s.duplicates_merged}"),
        ("unchanged (ledger)", f"{s.unchanged}"),
        ("warnings", f"{s.warnings}"),
        ("not in API answer", f"{s.unaccounted_by_api}"),
        (
            "source deletes",
            f"{s.deletes_ignored} ignored, {s.passivations_sent} to passivate "
            f"({s.passivated} passivated, {s.passivations_not_found} not in D·engage)",
        ),
        (
            "full-table mirrors",
            f"{s.absent} contacts absent, {s.absent_to_passivate} of them to passivate; "
            f"{s.reactivated} reactivated"
            + (f"; over max_passivate_percent: {', '.join(s.over_limit)}" if s.over_limit else ""),
        ),
        ("retries", f"{view.retries}"),
        ("rate-limited (429)", f"{view.rate_limited} times, {view.rate_limited_seconds:.0f} s"),
        ("pacing waits", f"{view.pacing_seconds:.0f} s"),
        ("duration", f"{view.seconds:.1f} s"),
    ]
    if view.jobs is not None:
        j = view.jobs
        rows.insert(
            2,
            (
                "jobs",
                f"{j.submitted} submitted, {j.confirmed} confirmed, {j.failed} failed, "
                f"{j.recovered} recovered; longest {j.longest_seconds:.1f} s"
                + (f" ({j.longest_job})" if j.longest_job else ""),
            ),
        )
    width = max(len(name) for name, _ in rows) + 2
    body = "\n".join(f"  {name} {'.' * (width - len(name))} {value}" for name, value in rows)
    return f"Run summary\n{body}"


def summary_json(
    view: RunView,
    *,
    mode: str,
    dry_run: bool,
    started_at: float,
    error: str | None,
    rejected_path: str | None,
    last_state: Any,
) -> dict[str, Any]:
    """The run as data, for a scheduler: ``status`` first, then counts by outcome."""
    s = view.stats
    return {
        "status": "failed" if error else "succeeded",
        "error": error,
        "mode": mode,
        "dry_run": dry_run,
        "started_at": _iso(started_at),
        "finished_at": _iso(time.time()),
        "duration_seconds": round(view.seconds, 3),
        "records_read": s.records_read,
        "contacts": {
            "sent": s.contacts_sent,
            "confirmed": s.confirmed,
            "inserted": s.inserted,
            "updated": s.updated,
            "rejected": view.rejected,
            "rejected_locally": s.rejected_locally,
            "rejected_by_api": s.rejected_by_api,
            "duplicates_merged": s.duplicates_merged,
            "unchanged": s.unchanged,
            "unconfirmed": view.buffered,
            "unaccounted_by_api": s.unaccounted_by_api,
        },
        "deletes": {
            "ignored": s.deletes_ignored,
            "to_passivate": s.passivations_sent,
            "passivated": s.passivated,
            "not_found": s.passivations_not_found,
            "reactivated": s.reactivated,
        },
        "full_table_versions": {
            "absent": s.absent,
            "to_passivate": s.absent_to_passivate,
            "streams_over_limit": list(s.over_limit),
        },
        "warnings": s.warnings,
        "requests": s.requests,
        "retries": view.retries,
        "rate_limited": {
            "count": view.rate_limited,
            "seconds": round(view.rate_limited_seconds, 3),
        },
        "pacing_wait_seconds": round(view.pacing_seconds, 3),
        "jobs": None
        if view.jobs is None
        else {
            "submitted": view.jobs.submitted,
            "confirmed": view.jobs.confirmed,
            "failed": view.jobs.failed,
            "recovered": view.jobs.recovered,
            "longest_seconds": round(view.jobs.longest_seconds, 3),
        },
        "rejected_records_path": rejected_path,
        "last_state_printed": last_state,
    }


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")
