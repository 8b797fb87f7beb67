"""The D·engage wire format: request bodies out, answers in.

CONTRACT.md marks several shapes as *assumed*: answer items (plain contact-key strings, or
objects with a key and a message), where the async job id sits in the 202 answer, and the
job-status answer with its status words. This module is the one place that interprets them,
so when the real API turns out to differ, only this file changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

LOGIN_PATH = "/rest/login"
BULK_PATH = "/rest/bulk/contacts"
ASYNC_PATH = "/rest/bulk/async/contacts"

_JOB_ID_FIELDS = ("transactionId", "TransactionId", "jobId", "JobId", "id", "Id")
_STATUS_FIELDS = ("status", "Status", "state", "State", "jobStatus")
JOB_RUNNING = frozenset({"queued", "pending", "processing", "running", "inprogress"})
JOB_DONE = frozenset({"completed", "success", "succeeded", "done", "finished"})
JOB_FAILED = frozenset({"failed", "error", "cancelled", "canceled"})

#: msgspec writes the same compact JSON as json.dumps, about ten times faster.
_ENCODER = msgspec.json.Encoder()

_KEY_FIELDS = ("contact_key", "contactKey", "ContactKey", "key", "Key")
_MESSAGE_FIELDS = ("message", "Message", "error", "Error", "reason", "description", "errorMessage")
_FIELD_FIELDS = ("field", "Field", "column", "Column", "columnName")


@dataclass(frozen=True)
class ItemIssue:
    """One error or warning the API reported about a contact."""

    contact_key: str | None
    message: str
    field: str | None = None


@dataclass(frozen=True)
class BulkOutcome:
    """What a BulkUpsert answer says happened to the contacts it carried."""

    inserted: Sequence[str] = ()
    updated: Sequence[str] = ()
    errors: Sequence[ItemIssue] = ()
    warnings: Sequence[ItemIssue] = ()
    message: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def bulk_body(
    columns: Sequence[str],
    rows: Sequence[Mapping[str, object]],
    *,
    insert_if_not_exists: bool,
    stop_on_error: bool,
) -> bytes:
    """Serialize a BulkUpsert body once; rows hold only text and booleans by construction."""
    return _ENCODER.encode(
        {
            "columns": list(columns),
            "contactDatas": rows,
            "insertIfNotExists": insert_if_not_exists,
            "stopOnError": stop_on_error,
        }
    )


def _first(item: object, names: Sequence[str]) -> Any:
    if not isinstance(item, Mapping):
        return None
    for name in names:
        value = item.get(name)
        if value not in (None, ""):
            return value
    return None


def parse_item(item: object) -> ItemIssue:
    """Read an answer item: a bare contact key, or an object naming one and a message."""
    if isinstance(item, Mapping):
        key = _first(item, _KEY_FIELDS)
        message = _first(item, _MESSAGE_FIELDS)
        column = _first(item, _FIELD_FIELDS)
        return ItemIssue(
            contact_key=None if key is None else str(key),
            message=str(message) if message is not None else json.dumps(item, default=str),
            field=None if column is None else str(column),
        )
    return ItemIssue(contact_key=None if item is None else str(item), message="")


def _keys(items: object) -> list[str]:
    """Contact keys of an answer list; plain strings (the usual case) are taken as they are."""
    if not isinstance(items, list):
        return []
    keys = []
    for item in items:
        key = item if type(item) is str else parse_item(item).contact_key
        if key is not None:
            keys.append(key)
    return keys


def _issues(items: object) -> list[ItemIssue]:
    return [parse_item(i) for i in items] if isinstance(items, list) else []


def payload(envelope: object) -> Mapping[str, Any]:
    """The part of an envelope that holds results: ``data`` if it is an object, else the top."""
    if not isinstance(envelope, Mapping):
        return {}
    data = envelope.get("data")
    return data if isinstance(data, Mapping) else envelope


def parse_bulk_outcome(envelope: object) -> BulkOutcome:
    """Read a 200 BulkUpsert answer (``{"code": 0, "data": {"inserted": ...}}``)."""
    data = payload(envelope)
    return BulkOutcome(
        inserted=_keys(data.get("inserted")),
        updated=_keys(data.get("updated")),
        errors=_issues(data.get("errors")),
        warnings=_issues(data.get("warnings")),
        message=envelope_message(envelope),
    )


def envelope_code(envelope: object) -> int | None:
    """The envelope's ``code`` (0 is success; 1 FieldError, 10 Forbidden, 11 ValidationFails)."""
    code = envelope.get("code") if isinstance(envelope, Mapping) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def envelope_message(envelope: object) -> str:
    if isinstance(envelope, Mapping):
        message = _first(envelope, _MESSAGE_FIELDS)
        if message is not None:
            return str(message)
    return ""


def error_issues(envelope: object) -> list[ItemIssue]:
    """Per-record errors attached to a refused request, when the API names them."""
    return _issues(payload(envelope).get("errors"))


def parse_login(envelope: object) -> tuple[str, float]:
    """Read ``{"access_token": ..., "expires_in": seconds}``; ``ValueError`` if it isn't there."""
    data = envelope if isinstance(envelope, Mapping) else {}
    token = data.get("access_token") or payload(envelope).get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("the login answer has no access_token")
    expires = data.get("expires_in", payload(envelope).get("expires_in", 3600))
    try:
        seconds = float(expires)
    except (TypeError, ValueError):
        seconds = 3600.0
    return token, seconds


def job_path(job_id: str) -> str:
    return f"{ASYNC_PATH}/{job_id}"


def parse_job_id(envelope: object) -> str:
    """The job id of a 202 answer: top-level ``transactionId`` (assumed), else in ``data``."""
    for where in (envelope, payload(envelope)):
        if isinstance(where, Mapping):
            job_id = _first(where, _JOB_ID_FIELDS)
            if isinstance(job_id, str | int) and not isinstance(job_id, bool):
                return str(job_id)
    if isinstance(envelope, str) and envelope.strip():
        return envelope.strip()  # a bare id as the whole body
    raise ValueError("the answer has no job id (transactionId)")


@dataclass(frozen=True)
class JobStatus:
    """Where an async job stands: ``running``, ``done`` or ``failed``, with its results."""

    state: str
    word: str
    message: str
    outcome: BulkOutcome


def parse_job(envelope: object) -> JobStatus:
    """Read a job-status answer; results sit in ``data`` or at the top level (both assumed).

    Status words are matched without regard to case, spaces or underscores; an unknown word
    is reported as still running, so the job timeout decides rather than a guess.
    """
    data = payload(envelope)
    word = str(_first(data, _STATUS_FIELDS) or _first(envelope, _STATUS_FIELDS) or "")
    normal = word.replace(" ", "").replace("_", "").lower()
    if normal in JOB_DONE:
        state = "done"
    elif normal in JOB_FAILED:
        state = "failed"
    else:
        state = "running"
    message = envelope_message(data) or envelope_message(envelope)
    return JobStatus(state, word, message, parse_bulk_outcome(envelope))
