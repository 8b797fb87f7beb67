"""The run's books: what D·engage confirmed (stats, the ledger), and what was set aside.

Everything that ends a contact's journey is written down here, before the STATE that covers
it may be printed: a confirmation (counted, and recorded in the change-detection ledger), a
rejection (written to the rejected file), or, when a rejection has nowhere to be written, a
block: no STATE past it is ever printed.
"""

from __future__ import annotations

import logging
import math
import typing as t
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from target_dengage.contract import CONTACT_KEY, NEW_CONTACT_KEY
from target_dengage.errors import DengageRequestError
from target_dengage.mapping import FieldProblem, payload_hash
from target_dengage.masking import mask, quote
from target_dengage.pending import Pending, shown_key, whole_record
from target_dengage.protocol import BulkOutcome, ItemIssue
from target_dengage.rejects import RejectedRecords

if TYPE_CHECKING:
    from target_dengage.ledger import Ledger, Recorded

#: How many individual API errors or warnings are spelled out in the log per request.
ISSUES_LOGGED_PER_REQUEST = 5
#: How much of an undecodable input line the rejected file keeps.
LINE_KEPT_CHARS = 2000
#: Most characters of D·engage's reason kept in the rejected file (the record is whole there).
REASON_LIMIT = 2000


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
    #: Source deletes: not sent (delete_behavior: ignore), or passivated (passivate).
    deletes_ignored: int = 0
    passivations_sent: int = 0
    passivated: int = 0
    #: Passivations of keys D·engage does not have (it created nothing).
    passivations_not_found: int = 0
    #: Full-table mirrors: contacts a complete version no longer had, of them those sent to
    #: be passivated (delete_behavior: passivate, within max_passivate_percent), and
    #: contacts passivated earlier that came back (sent as contact_status "A").
    absent: int = 0
    absent_to_passivate: int = 0
    reactivated: int = 0
    #: Streams whose complete version was over max_passivate_percent: nothing passivated.
    over_limit: list[str] = field(default_factory=list)


class Named:
    """What an answer names, reduced to the contacts the request carried, each key once
    (the first issue about a key speaks for it): an answer is D·engage's word about this
    request, not about other contacts."""

    __slots__ = ("errors", "failed", "inserted", "strangers", "updated", "warnings")

    def __init__(self, outcome: BulkOutcome, sent: set[str]) -> None:
        self.inserted = sent.intersection(outcome.inserted)
        self.updated = sent.intersection(outcome.updated)
        self.errors = issues_about(outcome.errors, sent)
        self.warnings = issues_about(outcome.warnings, sent)
        self.failed = {i.contact_key for i in (*self.errors, *self.warnings)}
        listed = {*outcome.inserted, *outcome.updated}
        listed.update(i.contact_key for i in (*outcome.errors, *outcome.warnings) if i.contact_key)
        self.strangers = len(listed - sent)


def issues_about(issues: Sequence[ItemIssue], sent: set[str]) -> list[ItemIssue]:
    """The issues that name a contact of the request, the first one per key."""
    first: dict[str, ItemIssue] = {}
    for issue in issues:
        if issue.contact_key in sent:
            first.setdefault(issue.contact_key, issue)
    return list(first.values())


class Books:
    """Counts, the ledger's writes and the rejected file, for the whole run."""

    def __init__(
        self, rejects: RejectedRecords | None, ledger: Ledger | None, logger: logging.Logger
    ) -> None:
        self._rejects = rejects
        self._ledger = ledger
        self._logger = logger
        self.stats = RunStats()
        #: Lowest sequence number of a rejection that could not be written down anywhere,
        #: or of a job that failed; no STATE past it is ever printed.
        self.blocked_seq: float = math.inf
        #: Told the keys written to the ledger (change detection's lookups in flight must
        #: not trust an answer about them that was read before).
        self.on_ledger_write: list[Callable[[Iterable[str]], None]] = []
        #: Each stream's current ACTIVATE_VERSION, recorded with the contacts it confirms.
        self.versions: dict[str, int] = {}

    @property
    def ledger(self) -> Ledger | None:
        return self._ledger

    def settle(self) -> None:
        """Wait for the ledger's writes: a STATE may be printed only once they are done."""
        if self._ledger is not None:
            self._ledger.settle()

    def use_ledger(self, ledger: Ledger) -> None:
        """Record confirmations from now on (a mirror opened the ledger mid-run)."""
        self._ledger = ledger

    def block(self, seq: float) -> None:
        self.blocked_seq = min(self.blocked_seq, seq)

    def reject_locally(
        self, pending: Pending, problems: Sequence[FieldProblem], *, fatal: bool
    ) -> str:
        """Set aside a record that failed validation; return the message that explains it."""
        first = problems[0]
        record = whole_record(pending.record)
        reason = "; ".join(_problem_text(p, record) for p in problems)
        self.stats.rejected_locally += 1
        entry = {
            "stream": pending.stream,
            "record_number": pending.record_number,
            "contact_key": pending.row.get(CONTACT_KEY),
            "field": first.column,
            "reason": reason,
            "source": "validation",
            "record": record,
        }
        self._account([entry], [pending.seq], fatal=fatal)
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

    def confirmed(self, group: list[Pending], outcome: BulkOutcome) -> Named:
        """Book what D·engage did with a confirmed group; return what its answer named.

        Only contact keys the request carried count, each once, whatever the answer lists.
        A contact the answer does not name at all is confirmed for STATE (the request was),
        but not written to the ledger, so the next run sends it again."""
        stats = self.stats
        sent = {t.cast("str", p.row[CONTACT_KEY]) for p in group}  # text by then
        named = Named(outcome, sent)
        confirmed = len(group) - self.reject_api(named.errors, group)
        if group[0].passivation:
            stats.passivated += len(named.inserted) + len(named.updated)
            stats.passivations_not_found += len(named.warnings)
            # A mirror's passivation (record number 0) is no record read: "confirmed"
            # counts records.
            refused = {issue.contact_key for issue in named.errors}
            confirmed -= sum(
                p.record_number == 0 and p.row[CONTACT_KEY] not in refused for p in group
            )
        else:
            stats.inserted += len(named.inserted)
            stats.updated += len(named.updated)
            stats.warnings += len(named.warnings)
        stats.confirmed += confirmed
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
        if group[0].passivation:
            if named.warnings:
                self._logger.info(
                    "%d passivated contact(s) were not in D·engage; nothing was created.",
                    len(named.warnings),
                )
            return named
        for issue in named.warnings[:ISSUES_LOGGED_PER_REQUEST]:
            self._logger.warning(
                "D·engage warning for contact_key '%s': %s",
                shown_key(issue.contact_key),
                quote(issue.message),
            )
        return named

    def _remember(self, group: list[Pending], named: Named) -> None:
        """Record what D·engage confirmed, before the STATE that covers it can be printed.
        Only contacts the answer names as inserted or updated, and neither rejected nor
        warned about: the others go again next run."""
        assert self._ledger is not None
        done = (named.inserted | named.updated) - named.failed
        entries: dict[str, Recorded] = {}
        renamed: list[str] = []
        versions = self.versions
        for pending in group:
            key = str(pending.row[CONTACT_KEY])
            if key not in done:
                continue
            digest = pending.digest or payload_hash(pending.row)
            stream = pending.stream
            version = versions.get(stream)
            passive = pending.passivation
            new_key = pending.row.get(NEW_CONTACT_KEY)
            if new_key is None:
                entries[key] = (digest, pending.source, stream, version, passive)
            else:
                # The text names the old key: under the new one it would not match again.
                renamed.append(key)
                entries[str(new_key)] = (digest, None, stream, version, passive)
        self._ledger.record(entries, renamed)
        for listener in self.on_ledger_write:
            listener([*entries, *renamed])

    def reject_api(self, issues: Sequence[ItemIssue], group: Sequence[Pending]) -> int:
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

    def refused(self, exc: DengageRequestError, group: Sequence[Pending]) -> None:
        """Before a refusal ends the run: name the records behind it and write them down."""
        by_key = {str(p.row[CONTACT_KEY]): p for p in group}
        issues = issues_about(exc.issues, set(by_key))
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
        self.block(min(seqs))


def _problem_text(problem: FieldProblem, record: Mapping[str, Any]) -> str:
    source = "" if problem.source == problem.column else f" (from property '{problem.source}')"
    value = record.get(problem.source)
    shown = "" if value is None else f" [value {mask(value)}]"
    return f"field '{problem.column}'{source} {problem.message}{shown}"


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
    key = shown_key(entry["contact_key"])
    return f"{where}contact_key '{key}'{column}: {entry['reason']}"
