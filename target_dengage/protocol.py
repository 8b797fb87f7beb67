"""The D·engage wire format: request bodies out, answers in, and what each answer means.

docs/dengage-api.md marks several shapes as *assumed*: answer items (plain contact-key strings, or
objects with a key and a message), where the async job id sits in the 202 answer, and the
job-status answer with its status words. This module is the one place that interprets them,
so when the real API turns out to differ, only this file changes. :func:`classify` is the one
place that decides whether an answer confirms anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote as quote_path
from urllib.parse import urlsplit

import msgspec

from target_dengage.contract import (
    ASYNC_PATH,
    DATA_REFUSAL_CODES,
    DEFAULT_TOKEN_SECONDS,
    HAS_ERROR_FIELDS,
    ITEM_FIELD_FIELDS,
    ITEM_KEY_FIELDS,
    ITEM_MESSAGE_FIELDS,
    JOB_DONE,
    JOB_FAILED,
    JOB_ID_FIELDS,
    JOB_STATUS_FIELDS,
    MAX_JOB_ID_LENGTH,
    RETRY_STATUSES,
    SUCCESS_STATUS,
    Endpoint,
)

#: msgspec writes the same compact JSON as json.dumps, about ten times faster.
_ENCODER = msgspec.json.Encoder()


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
            # clients: the name public callers of the live API send for the same choice
            # (docs/dengage-api.md); the vendor page's own name was lost, so both go, always equal.
            "throwExceptionIfInvalidRecord": stop_on_error,
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
        key = _first(item, ITEM_KEY_FIELDS)
        message = _first(item, ITEM_MESSAGE_FIELDS)
        column = _first(item, ITEM_FIELD_FIELDS)
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
        message = _first(envelope, ITEM_MESSAGE_FIELDS)
        if message is not None:
            return str(message)
    return ""


def error_issues(envelope: object) -> list[ItemIssue]:
    """Per-record errors attached to a refused request, when the API names them."""
    return _issues(payload(envelope).get("errors"))


def parse_login(envelope: object) -> tuple[str, float, str | None]:
    """Read ``{"access_token": ..., "expires_in": seconds}``; ``ValueError`` without a token.

    Returns the token, its lifetime, and how the answer spelled the lifetime when it was not
    a finite positive number (then the lifetime is the default); ``None`` when it was fine.
    """
    data = envelope if isinstance(envelope, Mapping) else {}
    token = data.get("access_token") or payload(envelope).get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("the login answer has no access_token")
    expires = data.get("expires_in", payload(envelope).get("expires_in", DEFAULT_TOKEN_SECONDS))
    try:
        seconds = float(expires) if not isinstance(expires, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if math.isfinite(seconds) and seconds > 0:
        return token, seconds, None
    return token, DEFAULT_TOKEN_SECONDS, repr(expires)


def job_path(job_id: str) -> str:
    """The job's status path; the id is D·engage's text, so it is escaped, never trusted."""
    return f"{ASYNC_PATH}/{quote_path(job_id, safe='')}"


def parse_job_id(envelope: object) -> str:
    """The job id of a 202 answer: top-level ``transactionId`` (assumed), else in ``data``."""
    for where in (envelope, payload(envelope)):
        if isinstance(where, Mapping):
            job_id = _first(where, JOB_ID_FIELDS)
            if isinstance(job_id, str | int) and not isinstance(job_id, bool):
                text = str(job_id).strip()
                if text and len(text) <= MAX_JOB_ID_LENGTH and text.isprintable():
                    return text
    raise ValueError("the answer has no readable job id (transactionId)")


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
    word = str(_first(data, JOB_STATUS_FIELDS) or _first(envelope, JOB_STATUS_FIELDS) or "")
    normal = word.replace(" ", "").replace("_", "").lower()
    if normal in JOB_DONE:
        state = "done"
    elif normal in JOB_FAILED:
        state = "failed"
    else:
        state = "running"
    message = envelope_message(data) or envelope_message(envelope)
    return JobStatus(state, word, message, parse_bulk_outcome(envelope))


class Meaning(Enum):
    """What an answer means for the contacts it is about."""

    CONFIRMED = "confirmed"  # D·engage says it took the request
    REFUSED = "refused"  # D·engage refused the data (per record or whole): 400, codes 1 and 11
    RETRY = "retry"  # no usable answer: 5xx, 2xx that is not a confirmation, unreadable body
    RATE_LIMITED = "rate_limited"  # 429: slow down
    UNAUTHENTICATED = "unauthenticated"  # 401: log in again
    FORBIDDEN = "forbidden"  # 403
    FAILED = "failed"  # anything else: a redirect, another 4xx; final


@dataclass(frozen=True)
class Verdict:
    """An answer, read: its meaning, the parsed envelope, and the words to report it with
    (raw answer text; quote it before it reaches a log)."""

    meaning: Meaning
    status: int
    envelope: Any
    said: str
    code: int | None = None


def _has_error(envelope: Mapping[str, Any]) -> bool:
    return any(
        where.get(name) is True
        for where in (envelope, payload(envelope))
        for name in HAS_ERROR_FIELDS
    )


def classify(endpoint: Endpoint, status: int, body: bytes, location: str | None = None) -> Verdict:
    """Decide what one answer of ``endpoint`` means. Every answer of every call goes here.

    clients (docs/dengage-api.md): a 2xx confirms only when its envelope says success: a JSON object
    whose ``code`` is absent or 0, without ``HasError`` true, with the status the endpoint
    documents (200; 202 for an async submit). Codes 1 and 11 refuse the data, as a 400 does;
    999, unknown codes, bodies that are not a JSON object and other 2xx statuses are no
    answer at all, so the call is retried and, if that never helps, the run fails: nothing
    is taken as done that D·engage did not clearly say it did.
    """
    envelope = _decode(body)
    said = envelope_message(envelope) or body.decode("utf-8", "replace").strip()
    code = envelope_code(envelope)
    if 300 <= status < 400:
        host = urlsplit(location or "").hostname or "no Location"
        return Verdict(
            Meaning.FAILED, status, envelope, f"a redirect (HTTP {status}) to {host}", code
        )
    if status == 401:
        return Verdict(Meaning.UNAUTHENTICATED, status, envelope, said, code)
    if status == 403:
        return Verdict(Meaning.FORBIDDEN, status, envelope, said, code)
    if status == 429:
        return Verdict(Meaning.RATE_LIMITED, status, envelope, said, code)
    if status == 400:
        return Verdict(Meaning.REFUSED, status, envelope, said, code)
    if status in RETRY_STATUSES:
        return Verdict(Meaning.RETRY, status, envelope, said or f"HTTP {status}", code)
    if not 200 <= status < 300:
        return Verdict(Meaning.FAILED, status, envelope, said or f"HTTP {status}", code)
    if not isinstance(envelope, Mapping):
        shown = said or "an empty body"
        return Verdict(
            Meaning.RETRY, status, envelope, f"HTTP {status} without a JSON object: {shown}"
        )
    raw_code = envelope.get("code")
    if raw_code is not None and code is None:
        return Verdict(Meaning.RETRY, status, envelope, f"an unreadable code {raw_code!r}: {said}")
    if code in DATA_REFUSAL_CODES and endpoint in (Endpoint.BULK, Endpoint.SUBMIT):
        return Verdict(Meaning.REFUSED, status, envelope, said, code)
    if code:
        return Verdict(Meaning.RETRY, status, envelope, f"code {code}: {said}", code)
    if _has_error(envelope):
        if endpoint in (Endpoint.BULK, Endpoint.SUBMIT):
            return Verdict(Meaning.REFUSED, status, envelope, f"HasError: {said}", code)
        return Verdict(Meaning.RETRY, status, envelope, f"HasError: {said}", code)
    if status != SUCCESS_STATUS[endpoint]:
        return Verdict(
            Meaning.RETRY,
            status,
            envelope,
            f"HTTP {status} where D·engage answers {SUCCESS_STATUS[endpoint]}: {said}",
            code,
        )
    return Verdict(Meaning.CONFIRMED, status, envelope, said, code)


def _decode(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None
