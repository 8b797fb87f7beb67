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

import decimal
import logging
import math
import time
import typing as t
from collections import deque
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from target_dengage.client import DengageClient
from target_dengage.contract import CONTACT_KEY, NEW_CONTACT_KEY
from target_dengage.errors import DengageError, DengageRequestError
from target_dengage.jobs import AsyncOptions, Job, JobTracker
from target_dengage.mapping import FieldProblem, Value, payload_hash
from target_dengage.masking import mask, quote
from target_dengage.protocol import BulkOutcome, ItemIssue, bulk_body
from target_dengage.rejects import RejectedRecords

if TYPE_CHECKING:
    from concurrent.futures import Future

    from target_dengage.ledger import Entry, Ledger

#: A record as a contact keeps it to explain a rejection: the record itself, its JSON text
#: (``msgspec.Raw``), or the whole RECORD line it came in (``bytes`` or ``str``). Only the
#: rare rejected record is decoded again (:func:`whole_record`).
RecordSource = Mapping[str, Any] | bytes | str | msgspec.Raw
_DECODER = msgspec.json.Decoder(float_hook=decimal.Decimal)


def whole_record(source: RecordSource) -> Mapping[str, Any]:
    """The record a contact came from, as the tap sent it."""
    if isinstance(source, Mapping):
        return source
    decoded = _DECODER.decode(source)
    if isinstance(source, msgspec.Raw):
        return t.cast("Mapping[str, Any]", decoded)
    return t.cast("Mapping[str, Any]", decoded["record"])


#: Decodes and maps a record taken as JSON text: (text, record number, sequence number).
Materialize = Callable[[msgspec.Raw, int, int], "Pending | None"]
#: A record taken as JSON text: (contact key, source hash), text, sequence and record
#: numbers, and how to map it.
Unmapped = tuple[tuple[str, str], msgspec.Raw, int, int, Materialize]
#: Ledger lookups out at once (change detection): enough that the record loop never waits
#: for one, while each holds a request's worth of records.
LOOKUPS_IN_FLIGHT = 2
#: How much of an undecodable input line the rejected file keeps.
LINE_KEPT_CHARS = 2000
#: How many individual API errors or warnings are spelled out in the log per request.
ISSUES_LOGGED_PER_REQUEST = 5


class Pending(msgspec.Struct, gc=False):
    """A contact waiting to be sent, with what is needed to explain a rejection. A struct
    made in C, one per record: a third of the cost of a dataclass. It is never part of a
    reference cycle, so the garbage collector need not track it."""

    row: dict[str, Value]
    stream: str
    record_number: int
    record: RecordSource  # see whole_record
    seq: int
    merges: int = 0  # earlier records of the same contact folded into this one
    digest: str | None = None  # the row's ledger hash, once computed
    source: str | None = None  # hash of the one record's JSON text the row is made of

    def describe(self) -> str:
        key = self.row.get(CONTACT_KEY)
        named = "no contact_key" if key is None else f"contact_key '{_shown_key(str(key))}'"
        return f"stream '{self.stream}', record {self.record_number}, {named}"


class DryRunWriter:
    """Where a dry run puts the request bodies it would have sent (or just counts them)."""

    def __init__(self, path: str | None) -> None:
        self._file: IO[bytes] | None = None
        if path:
            target = Path(path).expanduser()
            target.parent.mkdir(parents=True, exist_ok=True)
            self._file = target.open("wb")

    def write(self, body: bytes) -> None:
        if self._file is not None:
            self._file.write(body + b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(slots=True)
class _Bucket:
    columns: tuple[str, ...]
    rows: dict[str, Pending] = field(default_factory=dict)
    min_seq: float = math.inf


@dataclass(slots=True)
class _Flight:
    """A ledger lookup on its way, and the keys written to the ledger since it was sent."""

    entries: list[Pending | Unmapped]
    answer: Future[dict[str, Entry]]
    written: set[str] = field(default_factory=set)


#: What a lookup answers for a key the ledger does not know: matches nothing, ever.
_UNKNOWN: Entry = ("", "", None, -math.inf)


def _keys(entries: Iterable[Pending | Unmapped]) -> list[str]:
    return [e[0][0] if isinstance(e, tuple) else str(e.row[CONTACT_KEY]) for e in entries]


@dataclass
class RunStats:
    """Counts for the per-request log lines and the end-of-run summary."""

    records_read: int = 0
    requests: int = 0
    contacts_sent: int = 0
    confirmed: int = 0
    inserted: int = 0
    updated: int = 0
    rejected_locally: int = 0
    rejected_by_api: int = 0
    duplicates_merged: int = 0
    unchanged: int = 0
    warnings: int = 0
    unaccounted: int = 0
    #: Contacts of confirmed requests that D·engage's answer did not name at all.
    unaccounted_by_api: int = 0


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
        on_confirmed: Callable[[], None],
        async_options: AsyncOptions | None = None,
        dry_run: DryRunWriter | None = None,
        ledger: Ledger | None = None,
        ledger_max_age_days: int | None = None,
    ) -> None:
        self._client = client
        self._rejects = rejects
        self._batch_size = batch_size
        self._insert = insert_if_not_exists
        self._stop_on_error = stop_on_error
        self._logger = logger
        self._on_confirmed = on_confirmed
        self._dry_run = dry_run
        self._ledger = ledger
        self._ledger_max_age = (
            None if ledger_max_age_days is None else ledger_max_age_days * 86400.0
        )
        #: Valid records waiting for one batched ledger lookup (change detection only).
        self._lookups: list[Pending | Unmapped] = []
        #: Lookups sent to the ledger's thread and not yet resolved, oldest first (their
        #: records came before those in ``_lookups``).
        self._flights: deque[_Flight] = deque()
        self._buckets: dict[tuple[str, ...], _Bucket] = {}
        self._where: dict[str, tuple[str, ...]] = {}
        self._column_sets: dict[tuple[str, ...], tuple[str, ...]] = {}
        #: Lowest sequence number of a rejection that could not be written down anywhere;
        #: no STATE past it is ever printed.
        self._blocked_seq: float = math.inf
        self.stats = RunStats()
        self.jobs = (
            JobTracker(
                client,
                async_options,
                logger=logger,
                on_done=self._job_done,
                on_failed=self._job_failed,
            )
            if async_options is not None
            else None
        )
        self._job_failures: list[str] = []
        if ledger is None:
            self.add = self._queue  # type: ignore[method-assign]  # one call less per record

    @property
    def watermark(self) -> float:
        """Lowest sequence number not yet confirmed (``inf`` when everything is)."""
        lowest = self._blocked_seq
        if self.jobs is not None:
            lowest = min(lowest, self.jobs.min_seq)
        waiting = self._flights[0].entries if self._flights else self._lookups
        if waiting:
            first = waiting[0]
            lowest = min(lowest, first[2] if isinstance(first, tuple) else first.seq)
        for bucket in self._buckets.values():
            lowest = min(lowest, bucket.min_seq)
        return lowest

    def add(self, pending: Pending) -> None:
        """Take a valid contact: through the ledger check when change detection is on
        (without it, ``add`` is ``_queue`` itself: see ``__init__``)."""
        self._lookups.append(pending)
        if len(self._lookups) >= self._batch_size:
            self._look_up_later()

    def add_unmapped(
        self,
        identity: tuple[str, str],
        raw: msgspec.Raw,
        seq: int,
        number: int,
        materialize: Materialize,
    ) -> None:
        """Take a record still in its JSON text (change detection only), with its contact
        key and source hash: it is decoded and mapped only if the ledger does not know its
        text already. A tuple, not a :class:`Pending`: nearly all of them are dropped as
        unchanged a moment later."""
        lookups = self._lookups
        lookups.append((identity, raw, seq, number, materialize))
        if len(lookups) >= self._batch_size:
            self._look_up_later()

    def _look_up_later(self) -> None:
        """Send the waiting records' lookup to the ledger's thread and go on reading. At
        most ``LOOKUPS_IN_FLIGHT`` are out at once; they resolve in the order sent."""
        assert self._ledger is not None
        if len(self._flights) >= LOOKUPS_IN_FLIGHT:
            self._land()
        entries, self._lookups = self._lookups, []
        self._flights.append(_Flight(entries, self._ledger.lookup_later(_keys(entries))))

    def _land(self) -> None:
        """Resolve the oldest lookup in flight."""
        flight = self._flights.popleft()
        self._resolve(flight.entries, flight.answer.result(), flight.written)

    def _resolve_lookups(self) -> None:
        """Resolve every record waiting for the ledger, now."""
        assert self._ledger is not None
        while self._flights:
            self._land()
        entries, self._lookups = self._lookups, []
        if entries:
            self._resolve(entries, self._ledger.lookup(_keys(entries)), ())

    def _resolve(
        self, entries: list[Pending | Unmapped], known: Mapping[str, Entry], stale: Container[str]
    ) -> None:
        """Drop the unchanged records; queue the rest. ``stale``: keys written to the ledger
        after the lookup was sent, so its answer for them may be out of date."""
        assert self._ledger is not None
        oldest = -math.inf if self._ledger_max_age is None else time.time() - self._ledger_max_age
        seen: set[str] = set()
        where = self._where
        jobs = self.jobs
        unchanged = 0
        adopted: dict[str, tuple[str, str]] = {}
        for entry in entries:
            pending: Pending | None
            if isinstance(entry, tuple):
                (key, source), raw, seq, number, materialize = entry
                pending = None
            else:
                pending, source = entry, None
                key = str(pending.row[CONTACT_KEY])
            found = known.get(key, _UNKNOWN)
            # A contact that is already on its way (or came twice in this lookup) is always
            # sent: skipping its later version would let the earlier one land last.
            skippable = (
                found[3] > oldest
                and key not in seen
                and key not in where
                and key not in stale
                and (jobs is None or not jobs.carries(key))
            )
            seen.add(key)
            if pending is None:
                if skippable and found[2] == source:  # the very text D·engage confirmed
                    unchanged += 1
                    continue
                pending = materialize(raw, number, seq)
                if pending is None:  # invalid: set aside
                    continue
                pending.source = source
            pending.digest = payload_hash(pending.row)
            if skippable and found[1] == pending.digest:
                unchanged += 1
                if source is not None:
                    # New text for a payload D·engage has: next run, know it by its text.
                    adopted[key] = (pending.digest, source)
            else:
                self._queue(pending)
        self.stats.unchanged += unchanged
        if adopted:
            self._ledger.adopt_sources(adopted)

    def _queue(self, pending: Pending) -> None:
        """Queue a contact to send; send its bucket as soon as it is full."""
        row = pending.row
        key = t.cast("str", row[CONTACT_KEY])  # contact keys are text by then
        order = tuple(row)
        columns = self._column_sets.get(order) or self._column_set(row)
        previous = self._where.get(key)
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
            self.stats.duplicates_merged += 1
        bucket = self._buckets.get(columns)
        if bucket is None:
            bucket = self._buckets[columns] = _Bucket(columns)
        bucket.rows[key] = pending
        if pending.seq < bucket.min_seq:
            bucket.min_seq = pending.seq
        self._where[key] = columns
        if len(bucket.rows) >= self._batch_size:
            self._send(bucket)

    def _column_set(self, row: Mapping[str, Value]) -> tuple[str, ...]:
        """The row's columns, sorted: a bucket key that is the same whatever the order of
        the record's properties. A cache makes it one tuple and one lookup per record."""
        order = tuple(row)
        columns = self._column_sets.get(order)
        if columns is None:
            columns = self._column_sets[order] = tuple(sorted(order))
        return columns

    def reject_locally(
        self, pending: Pending, problems: Sequence[FieldProblem], *, fatal: bool
    ) -> str:
        """Set aside a record that failed validation; return the message that explains it."""
        first = problems[0]
        record = whole_record(pending.record)
        reason = "; ".join(_problem_text(p, record) for p in problems)
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
                    "record": record,
                }
            ],
            [pending.seq],
            fatal=fatal,
        )
        return f"Invalid record ({pending.describe()}): {reason}"

    def reject_line(
        self, number: int, stream: str | None, reason: str, line: bytes | str, seq: int
    ) -> None:
        """Set aside an input line that could not be decoded into a record at all."""
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        self.stats.records_read += 1
        self.stats.rejected_locally += 1
        entry = {
            "stream": stream,
            "record_number": None,
            "line_number": number,
            "contact_key": None,
            "field": None,
            "reason": reason,
            "source": "input",
            "line": text[:LINE_KEPT_CHARS],
        }
        self._account([entry], [seq], fatal=False)

    def flush_all(self) -> None:
        """Send everything buffered and, in async mode, wait until every job is resolved."""
        if self._ledger is not None:
            self._resolve_lookups()
        for bucket in list(self._buckets.values()):
            self._send(bucket)
        if self.jobs is not None:
            self.jobs.wait_all()
            self._raise_job_failures()

    def poll(self) -> None:
        """Let finished async jobs confirm their records (a no-op in sync mode)."""
        if self.jobs is not None:
            self.jobs.poll_due()

    def flush_through(self, seq: int) -> None:
        """Send the buckets that hold back a STATE received after record ``seq``."""
        if self._ledger is not None:
            self._resolve_lookups()
        for bucket in list(self._buckets.values()):
            if bucket.min_seq <= seq:
                self._send(bucket)

    def _send(self, bucket: _Bucket) -> None:
        """Deliver a bucket; it leaves the run's books only once D·engage has answered for it."""
        columns = [CONTACT_KEY, *(c for c in bucket.columns if c != CONTACT_KEY)]
        groups = [list(bucket.rows.values())]
        split_budget = _split_budget(len(groups[0]))
        while groups:
            group = groups.pop(0)
            try:
                self._deliver(columns, group)
            except DengageRequestError as exc:
                if self._stop_on_error or not exc.refused_data:
                    self._report_refusal(exc, group)
                    raise
                more = self._isolate(exc, group, split_budget)
                split_budget -= len(more)
                groups.extend(more)
        del self._buckets[bucket.columns]
        for key in bucket.rows:
            del self._where[key]
        self._on_confirmed()

    def _isolate(
        self, exc: DengageRequestError, group: list[Pending], budget: int
    ) -> list[list[Pending]]:
        """With stop_on_error false, a 400 for the whole request must not sink the good
        records in it: set aside the records D·engage names, or else split the request in
        halves until the bad ones stand alone. Returns the groups still to send."""
        named = _issues_about(exc.issues, {str(p.row[CONTACT_KEY]) for p in group})
        if len(group) == 1 and not named:
            named = [ItemIssue(str(group[0].row[CONTACT_KEY]), str(exc))]
        if named:
            self._reject_api(named, group)
            refused = {i.contact_key for i in named}
            rest = [p for p in group if p.row[CONTACT_KEY] not in refused]
            if rest and budget < 1:
                raise exc
            return [rest] if rest else []
        if budget < 2:
            raise DengageRequestError(
                f"{exc} Splitting the request to isolate the records D·engage refuses used "
                f"up its {_split_budget(len(group))} extra calls, and {len(group)} records "
                "are still refused as a group; the refusal is probably not about single "
                "records. No STATE past them is printed.",
                status=exc.status,
            ) from None
        half = len(group) // 2
        self._logger.warning(
            "D·engage refused a request of %d contacts as a whole (%s); splitting it in two "
            "to isolate the bad records (up to %d more calls).",
            len(group),
            quote(str(exc)),
            budget,
        )
        return [group[:half], group[half:]]

    def _deliver(self, columns: list[str], group: list[Pending]) -> None:
        body = bulk_body(
            columns,
            [p.row for p in group],
            insert_if_not_exists=self._insert,
            stop_on_error=self._stop_on_error,
        )
        if self._dry_run is not None:
            self._dry_run.write(body)
            self.stats.requests += 1
            self.stats.contacts_sent += len(group)
            return
        if self.jobs is None:
            self._upsert(columns, group, body)
            return
        if self._job_failures or not self.jobs.submit(columns, group, body):
            self.jobs.wait_all()
            self._raise_job_failures()
        self.stats.requests += 1
        self.stats.contacts_sent += len(group)

    def _record_outcome(self, group: list[Pending], outcome: BulkOutcome) -> _Named:
        """Book what D·engage did with a confirmed group; return what its answer named.

        Only contact keys the request carried count, each once, whatever the answer lists:
        an answer is D·engage's word about this request, not about other contacts. A
        contact the answer does not name at all is confirmed for STATE (the request was),
        but not written to the ledger, so the next run sends it again."""
        stats = self.stats
        sent = {str(p.row[CONTACT_KEY]) for p in group}
        named = _Named(outcome, sent)
        stats.inserted += len(named.inserted)
        stats.updated += len(named.updated)
        stats.warnings += len(named.warnings)
        stats.confirmed += len(group) - self._reject_api(named.errors, group)
        unaccounted = len(sent - named.inserted - named.updated - named.failed)
        if unaccounted:
            stats.unaccounted_by_api += unaccounted
            self._logger.warning(
                "D·engage confirmed a request of %d contacts but its answer does not name %d "
                "of them as inserted, updated, rejected or warned about; they count as "
                "delivered, are not recorded as unchanged, and are sent again next run.",
                len(group),
                unaccounted,
            )
        if named.strangers:
            self._logger.warning(
                "D·engage's answer names %d contact key(s) that the request did not carry; "
                "ignored.",
                named.strangers,
            )
        if self._ledger is not None:
            self._remember(group, named)
        for issue in named.warnings[:ISSUES_LOGGED_PER_REQUEST]:
            self._logger.warning(
                "D·engage warning for contact_key '%s': %s",
                _shown_key(issue.contact_key),
                quote(issue.message),
            )
        return named

    def _remember(self, group: list[Pending], named: _Named) -> None:
        """Record what D·engage confirmed, before the STATE that covers it can be printed.
        Only contacts the answer names as inserted or updated, and neither rejected nor
        warned about: the others go again next run."""
        assert self._ledger is not None
        done = (named.inserted | named.updated) - named.failed
        entries: dict[str, tuple[str, str | None]] = {}
        renamed: list[str] = []
        for pending in group:
            key = str(pending.row[CONTACT_KEY])
            if key not in done:
                continue
            digest = pending.digest or payload_hash(pending.row)
            new_key = pending.row.get(NEW_CONTACT_KEY)
            if new_key is None:
                entries[key] = (digest, pending.source)
            else:
                # The text names the old key: under the new one it would not match again.
                renamed.append(key)
                entries[str(new_key)] = (digest, None)
        self._ledger.record(entries, renamed)
        for flight in self._flights:
            flight.written.update(entries, renamed)

    def _job_done(self, job: Job, outcome: BulkOutcome, seconds: float) -> None:
        named = self._record_outcome(job.group, outcome)
        self._logger.info(
            "Job %s confirmed after %.1f s: %d contacts (streams: %s): %d inserted, "
            "%d updated, %d rejected, %d duplicates merged, %d warnings.",
            job.job_id,
            seconds,
            len(job.group),
            ", ".join(sorted({p.stream for p in job.group})),
            len(named.inserted),
            len(named.updated),
            len(named.errors),
            _merges(job.group),
            len(named.warnings),
        )
        self._on_confirmed()

    def _job_failed(self, job: Job, message: str) -> None:
        """A failed job's records are not confirmed: no STATE past them, ever, in this run."""
        self._job_failures.append(message)
        self._blocked_seq = min(self._blocked_seq, job.min_seq)
        self._logger.error(
            "BulkUpsert-Async %s. Its %d contacts (streams: %s) are not confirmed; no STATE "
            "past them will be printed, and the run will fail once the other jobs are resolved.",
            quote(message),
            len(job.group),
            ", ".join(sorted({p.stream for p in job.group})),
        )

    def _raise_job_failures(self) -> None:
        if self._job_failures:
            raise DengageError(
                f"{len(self._job_failures)} BulkUpsert-Async job(s) failed: "
                + "; ".join(quote(m) for m in self._job_failures[:ISSUES_LOGGED_PER_REQUEST])
            )

    def _upsert(self, columns: list[str], group: list[Pending], body: bytes) -> None:
        started = time.monotonic()
        waited = self._client.pacer.waited_seconds
        try:
            outcome = self._client.bulk_upsert(body)
        except DengageRequestError:
            self.stats.requests += 1  # answered, if with a refusal
            raise
        self.stats.requests += 1
        paced = self._client.pacer.waited_seconds - waited
        elapsed_ms = (time.monotonic() - started - paced) * 1000

        stats = self.stats
        stats.contacts_sent += len(group)
        named = self._record_outcome(group, outcome)
        self._logger.info(
            "BulkUpsert %d: sent %d contacts (streams: %s; columns: %s): %d inserted, "
            "%d updated, %d rejected, %d duplicates merged, %d warnings, %.0f ms.",
            stats.requests,
            len(group),
            ", ".join(sorted({p.stream for p in group})),
            ", ".join(columns),
            len(named.inserted),
            len(named.updated),
            len(named.errors),
            _merges(group),
            len(named.warnings),
            elapsed_ms,
        )

    def _reject_api(self, issues: Sequence[ItemIssue], group: Sequence[Pending]) -> int:
        """Write down the records D·engage refused (``issues`` name keys of ``group``)."""
        if not issues:
            return 0
        by_key = {str(p.row[CONTACT_KEY]): p for p in group}
        entries: list[dict[str, Any]] = []
        for issue in issues:
            pending = by_key[str(issue.contact_key)]
            entries.append(_api_entry(issue, pending))
            if len(entries) <= ISSUES_LOGGED_PER_REQUEST:
                self._logger.warning(
                    "D·engage rejected %s%s: %s",
                    pending.describe(),
                    f", field '{quote(issue.field, 60)}'" if issue.field else "",
                    quote(issue.message),
                )
        self.stats.rejected_by_api += len(entries)
        self._account(entries, [by_key[str(i.contact_key)].seq for i in issues], fatal=False)
        return len(entries)

    def _report_refusal(self, exc: DengageRequestError, group: Sequence[Pending]) -> None:
        """Before a refusal ends the run: name the records behind it and write them down."""
        by_key = {str(p.row[CONTACT_KEY]): p for p in group}
        issues = _issues_about(exc.issues, set(by_key))
        if not issues:
            return
        entries = [_api_entry(i, by_key[str(i.contact_key)]) for i in issues]
        if self._rejects is not None:
            self._rejects.write(entries)
        named = "; ".join(_entry_text(e) for e in entries[:ISSUES_LOGGED_PER_REQUEST])
        exc.args = (f"{exc.args[0]}. Records named by D·engage: {quote(named, 1000)}",)

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


class _Named:
    """What an answer names, reduced to the contacts the request carried, each key once
    (the first issue about a key speaks for it)."""

    __slots__ = ("errors", "failed", "inserted", "strangers", "updated", "warnings")

    def __init__(self, outcome: BulkOutcome, sent: set[str]) -> None:
        self.inserted = sent.intersection(outcome.inserted)
        self.updated = sent.intersection(outcome.updated)
        self.errors = _issues_about(outcome.errors, sent)
        self.warnings = _issues_about(outcome.warnings, sent)
        self.failed = {i.contact_key for i in (*self.errors, *self.warnings)}
        listed = {*outcome.inserted, *outcome.updated}
        listed.update(i.contact_key for i in (*outcome.errors, *outcome.warnings) if i.contact_key)
        self.strangers = len(listed - sent)


def _issues_about(issues: Sequence[ItemIssue], sent: set[str]) -> list[ItemIssue]:
    first: dict[str, ItemIssue] = {}
    for issue in issues:
        if issue.contact_key in sent:
            first.setdefault(issue.contact_key, issue)
    return list(first.values())


def _merges(group: Sequence[Pending]) -> int:
    return sum(p.merges for p in group)


def _split_budget(size: int) -> int:
    """Extra calls allowed to isolate bad records in a refused request of ``size``: enough
    for a binary search down to one record, plus a resend of the rest."""
    return 2 * math.ceil(math.log2(max(size, 1))) + 2


def _shown_key(key: str | None) -> str:
    """Contact keys are named in messages, unless they are email addresses (PII)."""
    return mask(key) if key and "@" in key else str(key)


def _problem_text(problem: FieldProblem, record: Mapping[str, Any]) -> str:
    source = "" if problem.source == problem.column else f" (from property '{problem.source}')"
    value = record.get(problem.source)
    shown = "" if value is None else f" [value {mask(value)}]"
    return f"field '{problem.column}'{source} {problem.message}{shown}"


#: Most characters of D·engage's reason kept in the rejected file (the record is whole there).
REASON_LIMIT = 2000


def _api_entry(issue: ItemIssue, pending: Pending) -> dict[str, Any]:
    return {
        "stream": pending.stream,
        "record_number": pending.record_number,
        "contact_key": issue.contact_key,
        "field": issue.field,
        "reason": issue.message[:REASON_LIMIT],
        "source": "api",
        "record": whole_record(pending.record),
    }


def _entry_text(entry: Mapping[str, Any]) -> str:
    where = f"stream '{entry['stream']}', record {entry['record_number']}, "
    column = f", field '{entry['field']}'" if entry["field"] else ""
    key = _shown_key(entry["contact_key"])
    return f"{where}contact_key '{key}'{column}: {entry['reason']}"
