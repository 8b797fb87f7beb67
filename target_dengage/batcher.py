"""Run-wide batching of contacts into full BulkUpsert requests, and what is confirmed.

Why run-wide and not per stream: every stream lands in the same ``master_contact`` table
and shares the same one-call-a-minute budget, so contacts of all streams that carry the
same columns travel in the same requests, and a contact that appears in two streams is
merged instead of racing itself across two requests.

Why grouped by column set: every object in one request must carry exactly the request's
``columns``, and a record carries only the columns it has values for (a null never wipes
data in D·engage). Each distinct column set fills its own requests.

Every record gets a sequence number when it arrives. The lowest sequence number still
waiting for D·engage is the *watermark*: a STATE that arrived after record N may be printed
once the watermark is past N.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from target_dengage.client import DengageClient
from target_dengage.errors import DengageRequestError
from target_dengage.mapping import CONTACT_KEY, FieldProblem, Value, mask
from target_dengage.protocol import ItemIssue, bulk_body
from target_dengage.rejects import RejectedRecords

#: How many individual API errors or warnings are spelled out in the log per request.
ISSUES_LOGGED_PER_REQUEST = 5


@dataclass(slots=True)
class Pending:
    """A contact waiting to be sent, with what is needed to explain a rejection."""

    row: dict[str, Value]
    stream: str
    record_number: int
    record: Mapping[str, Any]
    seq: int

    def describe(self) -> str:
        key = self.row.get(CONTACT_KEY)
        named = "no contact_key" if key is None else f"contact_key '{key}'"
        return f"stream '{self.stream}', record {self.record_number}, {named}"


@dataclass(slots=True)
class _Bucket:
    columns: frozenset[str]
    rows: dict[str, Pending] = field(default_factory=dict)
    min_seq: float = math.inf
    merged: int = 0


@dataclass
class RunStats:
    """Counts for the per-request log lines and the end-of-run summary."""

    records_read: int = 0
    requests: int = 0
    contacts_sent: int = 0
    inserted: int = 0
    updated: int = 0
    rejected_locally: int = 0
    rejected_by_api: int = 0
    duplicates_merged: int = 0
    warnings: int = 0
    unaccounted: int = 0


class ContactBatcher:
    """Groups contacts by column set, sends full requests, and tracks what is confirmed."""

    def __init__(
        self,
        client: DengageClient,
        rejects: RejectedRecords | None,
        *,
        batch_size: int,
        insert_if_not_exists: bool,
        stop_on_error: bool,
        logger: logging.Logger,
    ) -> None:
        self._client = client
        self._rejects = rejects
        self._batch_size = batch_size
        self._insert = insert_if_not_exists
        self._stop_on_error = stop_on_error
        self._logger = logger
        self._buckets: dict[frozenset[str], _Bucket] = {}
        self._where: dict[str, frozenset[str]] = {}
        #: Lowest sequence number of a rejection that could not be written down anywhere;
        #: no STATE past it is ever printed.
        self._blocked_seq: float = math.inf
        self.stats = RunStats()

    @property
    def watermark(self) -> float:
        """Lowest sequence number not yet confirmed (``inf`` when everything is)."""
        lowest = self._blocked_seq
        for bucket in self._buckets.values():
            lowest = min(lowest, bucket.min_seq)
        return lowest

    def add(self, pending: Pending) -> None:
        """Queue a valid contact; send its bucket as soon as it is full."""
        key = str(pending.row[CONTACT_KEY])
        columns = frozenset(pending.row)
        previous = self._where.get(key)
        merged = False
        if previous is not None:
            old_bucket = self._buckets[previous]
            old = old_bucket.rows.pop(key)
            if previous != columns:
                # Same result as sending both in order: the later values win, and the
                # columns only the earlier record had keep its values.
                pending.row = {**old.row, **pending.row}
                columns = frozenset(pending.row)
                if not old_bucket.rows:
                    del self._buckets[previous]
            pending.seq = min(pending.seq, old.seq)
            merged = True
        bucket = self._buckets.get(columns)
        if bucket is None:
            bucket = self._buckets[columns] = _Bucket(columns)
        bucket.rows[key] = pending
        bucket.min_seq = min(bucket.min_seq, pending.seq)
        self._where[key] = columns
        if merged:
            bucket.merged += 1
            self.stats.duplicates_merged += 1
        if len(bucket.rows) >= self._batch_size:
            self._send(bucket)

    def reject_locally(
        self, pending: Pending, problems: Sequence[FieldProblem], *, fatal: bool
    ) -> str:
        """Set aside a record that failed validation; return the message that explains it."""
        first = problems[0]
        reason = "; ".join(_problem_text(p, pending.record) for p in problems)
        self.stats.rejected_locally += 1
        self._account(
            [
                {
                    "stream": pending.stream,
                    "record_number": pending.record_number,
                    "contact_key": pending.row.get(CONTACT_KEY),
                    "field": first.column,
                    "reason": reason,
                    "source": "validation",
                    "record": pending.record,
                }
            ],
            [pending.seq],
            fatal=fatal,
        )
        return f"Invalid record ({pending.describe()}): {reason}"

    def flush_all(self) -> None:
        for bucket in list(self._buckets.values()):
            self._send(bucket)

    def flush_through(self, seq: int) -> None:
        """Send the buckets that hold back a STATE received after record ``seq``."""
        for bucket in list(self._buckets.values()):
            if bucket.min_seq <= seq:
                self._send(bucket)

    def _send(self, bucket: _Bucket) -> None:
        pendings = list(bucket.rows.values())
        columns = [CONTACT_KEY, *sorted(bucket.columns - {CONTACT_KEY})]
        body = bulk_body(
            columns,
            [p.row for p in pendings],
            insert_if_not_exists=self._insert,
            stop_on_error=self._stop_on_error,
        )
        started = time.monotonic()
        waited = self._client.pacer.waited_seconds
        try:
            outcome = self._client.bulk_upsert(body)
        except DengageRequestError as exc:
            if exc.issues:
                self._report_refusal(exc, bucket)
            raise
        paced = self._client.pacer.waited_seconds - waited
        elapsed_ms = (time.monotonic() - started - paced) * 1000
        del self._buckets[bucket.columns]
        for key in bucket.rows:
            del self._where[key]

        stats = self.stats
        stats.requests += 1
        stats.contacts_sent += len(pendings)
        stats.inserted += len(outcome.inserted)
        stats.updated += len(outcome.updated)
        stats.warnings += len(outcome.warnings)
        rejected = self._record_api_errors(outcome.errors, bucket.rows)
        for issue in outcome.warnings[:ISSUES_LOGGED_PER_REQUEST]:
            self._logger.warning(
                "D·engage warning for contact_key '%s': %s", issue.contact_key, issue.message
            )
        streams = sorted({p.stream for p in pendings})
        self._logger.info(
            "BulkUpsert %d: sent %d contacts (streams: %s; columns: %s): %d inserted, "
            "%d updated, %d rejected, %d duplicates merged, %d warnings, %.0f ms.",
            stats.requests,
            len(pendings),
            ", ".join(streams),
            ", ".join(columns),
            len(outcome.inserted),
            len(outcome.updated),
            rejected,
            bucket.merged,
            len(outcome.warnings),
            elapsed_ms,
        )

    def _record_api_errors(self, errors: Sequence[ItemIssue], rows: Mapping[str, Pending]) -> int:
        if not errors:
            return 0
        entries: list[dict[str, Any]] = []
        seqs: list[float] = []
        for issue in errors:
            pending = rows.get(issue.contact_key or "")
            entries.append(_api_entry(issue, pending))
            seqs.append(pending.seq if pending else min(p.seq for p in rows.values()))
            if len(entries) <= ISSUES_LOGGED_PER_REQUEST:
                where = pending.describe() if pending else f"contact_key '{issue.contact_key}'"
                self._logger.warning(
                    "D·engage rejected %s%s: %s",
                    where,
                    f", field '{issue.field}'" if issue.field else "",
                    issue.message,
                )
        self.stats.rejected_by_api += len(entries)
        self._account(entries, seqs, fatal=False)
        return len(entries)

    def _report_refusal(self, exc: DengageRequestError, bucket: _Bucket) -> None:
        """Name the records behind a whole-request refusal and write them down."""
        entries = [_api_entry(i, bucket.rows.get(i.contact_key or "")) for i in exc.issues]
        if self._rejects is not None:
            self._rejects.write(entries)
        named = "; ".join(_entry_text(e) for e in entries[:ISSUES_LOGGED_PER_REQUEST])
        exc.args = (f"{exc.args[0]}. Records named by D·engage: {named}",)

    def _account(
        self, entries: Sequence[Mapping[str, Any]], seqs: Iterable[float], *, fatal: bool
    ) -> None:
        """Write rejections down, or, with nowhere to write them, hold STATE before them."""
        if self._rejects is not None:
            self._rejects.write(entries)
            return
        if fatal:
            return
        self.stats.unaccounted += len(entries)
        self._blocked_seq = min(self._blocked_seq, *seqs)


def _problem_text(problem: FieldProblem, record: Mapping[str, Any]) -> str:
    source = "" if problem.source == problem.column else f" (from property '{problem.source}')"
    value = record.get(problem.source)
    shown = "" if value is None else f" [value {mask(value)}]"
    return f"field '{problem.column}'{source} {problem.message}{shown}"


def _api_entry(issue: ItemIssue, pending: Pending | None) -> dict[str, Any]:
    return {
        "stream": pending.stream if pending else None,
        "record_number": pending.record_number if pending else None,
        "contact_key": issue.contact_key,
        "field": issue.field,
        "reason": issue.message,
        "source": "api",
        "record": pending.record if pending else None,
    }


def _entry_text(entry: Mapping[str, Any]) -> str:
    where = (
        f"stream '{entry['stream']}', record {entry['record_number']}, " if entry["stream"] else ""
    )
    column = f", field '{entry['field']}'" if entry["field"] else ""
    return f"{where}contact_key '{entry['contact_key']}'{column}: {entry['reason']}"
