"""A strict local emulator of the D·engage contact API.

No machine that builds or tests target-dengage can reach the real API, so this module serves the
subset of it that the target speaks (login, BulkUpsert, BulkUpsert-Async and its job status), as
written down in the project's D·engage API contract. It is deliberately
*stricter* than the real service: anything it accepts should also be accepted by D·engage, so a
pipeline that passes against the emulator does not depend on the service's leniency.

It runs in-process for tests (``DengageEmulator(...).start()``) and from the command line as
``dengage-emulator`` so that users can try a pipeline without credentials. It only ever listens on
a loopback address.

Tests also need the answers a broken server or proxy gives, which a well-behaved server never
does: ``inject_fault`` can send any body (JSON or raw text), relabel it with any header, drip it
byte by byte or cut it off mid-body, and ``repeat_job_ids`` can hand out a job id twice.

The API's rules (paths, limits, column kinds, value patterns, body fields) are imported from
``target_dengage.contract``, the same module the target reads them from, where those the vendor
pages do not state are marked *assumed*: one edit changes both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import re
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from target_dengage.contract import (
    ASYNC_PATH,
    BODY_FIELDS,
    BULK_PATH,
    CONTACT_KEY_MAX,
    CUSTOM_MAX,
    DATE_PATTERN,
    EMAIL_MAX,
    EMAIL_PATTERN,
    GSM_PATTERN,
    LOGIN_PATH,
    MAX_CONTACTS_PER_CALL,
    PLATFORM_COLUMNS,
    STANDARD_COLUMNS,
    TEXT_MAX,
)

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024  # far above 1000 records; guards the process, not the contract


def _columns_of(kind: str) -> frozenset[str]:
    """The API's rules are the target's own (target_dengage.contract); only their grouping
    by kind of value is the emulator's."""
    return frozenset(column for column, of in STANDARD_COLUMNS.items() if of == kind)


STATUS_COLUMNS = _columns_of("status")
BOOLEAN_COLUMNS = _columns_of("boolean")
TEXT_COLUMNS = _columns_of("text100")
DATE_COLUMNS = _columns_of("date")
KEY_COLUMNS = _columns_of("key")
MASTER_COLUMNS = frozenset(STANDARD_COLUMNS)
STOP_FLAGS = ("stopOnError", "throwExceptionIfInvalidRecord")  # two names for one switch
SYNC_PATH = BULK_PATH
ADMIN_PREFIX = "/_emulator/"

JOB_PATH_RE = re.compile(re.escape(ASYNC_PATH) + r"/([^/]+)")
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The emulator frames every answer itself, so a test cannot make it lie about the body's length.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
RAW_CONTENT_TYPE = "text/plain; charset=utf-8"

UNAUTHENTICATED = {"code": 401, "message": "Not authenticated. Please re-login."}
FORBIDDEN = {"code": 10, "message": "Forbidden"}
NOT_FOUND = {"code": 404, "message": "Not found"}
INJECTED_FAULT = {"code": 999, "message": "Injected fault"}
JOB_NOT_FOUND = {"code": 1, "message": "Job not found"}
TOO_MANY_JOBS = {"code": 429, "message": "Too many concurrent requests"}
SYNC_CONCURRENT = {"code": 429, "message": "Too many requests: concurrent request"}
SYNC_TOO_SOON = {"code": 429, "message": "Too many requests: call once a minute"}
NOT_INSERTED = "Contact not found; not inserted (insertIfNotExists is false)"


class _FieldError(Exception):
    """A structural problem with a request body: the API's FieldError [1]."""


@dataclasses.dataclass(frozen=True)
class _Unreadable:
    """Stands in for a request body that is not JSON, so each endpoint can say so in its turn."""

    reason: str


class _Reply(NamedTuple):
    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()  # override the emulator's own, case-insensitively
    raw: bytes | None = None  # sent as-is instead of ``body`` as JSON
    drip_seconds: float = 0.0
    cut_off: bool = False


def _bodiless(status: int) -> bool:
    """Statuses that end at the headers; a body after them would desync the connection."""
    return status < 200 or status in (204, 304)


def _overridden(
    own: Iterable[tuple[str, str]], extra: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """``own`` headers less those that ``extra`` names (case-insensitively), then ``extra``."""
    extra = list(extra)
    names = {name.lower() for name, _ in extra}
    return [(name, value) for name, value in own if name.lower() not in names] + extra


@dataclasses.dataclass(frozen=True)
class _Batch:
    """A BulkUpsert body that passed the structural checks."""

    columns: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    insert_if_not_exists: bool
    stop_on_error: bool


@dataclasses.dataclass
class _Outcome:
    inserted: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    warnings: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def as_data(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Job:
    """An async BulkUpsert; it is applied lazily, on first observation after ``due``."""

    id: str
    batch: _Batch
    record_errors: list[dict[str, Any]]
    due: float
    fail_message: str | None
    hang: bool
    submitted: float  # wall-clock time, for tests that compare with the client's clock
    duration: float
    status: str = "Processing"
    message: str = "Processing"
    outcome: _Outcome = dataclasses.field(default_factory=_Outcome)


@dataclasses.dataclass
class _Fault:
    path: str
    status: int | None
    remaining: int
    hang_seconds: float
    body: Any
    headers: dict[str, str] | None = None
    raw: bytes | None = None
    drip_seconds: float = 0.0
    cut_off: bool = False

    def reply(self, status: int) -> _Reply:
        """The fault's own answer, standing in for the API's."""
        headers = (("Content-Type", RAW_CONTENT_TYPE),) if self.raw is not None else ()
        return self.shape(
            _Reply(status, INJECTED_FAULT if self.body is None else self.body, headers, self.raw)
        )

    def shape(self, reply: _Reply) -> _Reply:
        """Deliver ``reply`` the way this fault asks (headers, drip, cut-off)."""
        return reply._replace(
            headers=tuple(_overridden(reply.headers, (self.headers or {}).items())),
            drip_seconds=self.drip_seconds,
            cut_off=self.cut_off,
        )


@dataclasses.dataclass(frozen=True)
class _Options:
    userkey: str
    password: str
    token_lifetime_seconds: int
    sync_interval_seconds: float
    custom_columns: frozenset[str]
    async_job_seconds: float
    max_running_jobs: int


def _checked_option(name: str, value: Any) -> Any:
    """Validate one option, because bad values arrive untyped through the admin endpoint."""
    if name in ("userkey", "password"):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string")
        return value
    if name == "custom_columns":
        columns = [] if isinstance(value, str) else list(value)
        if isinstance(value, str) or not all(isinstance(column, str) for column in columns):
            raise ValueError("custom_columns must be a list of strings")
        return frozenset(columns)
    if name in ("token_lifetime_seconds", "max_running_jobs"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")
        return value
    if name in ("sync_interval_seconds", "async_job_seconds"):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative number")
        return float(value)
    raise TypeError(f"unknown option {name!r}")


def _loopback_host(host: str) -> str | None:
    """Return the IPv4 loopback address to bind for ``host``, or None if it is not loopback."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        return host if ipaddress.IPv4Address(host).is_loopback else None
    except ValueError:
        return None


def _read_json(raw: bytes, content_type: str | None) -> Any:
    """Decode a body the way an API that binds JSON models would: it must be declared JSON."""
    if (content_type or "").partition(";")[0].strip().lower() != "application/json":
        return _Unreadable("Content-Type must be application/json")
    try:
        return json.loads(raw)
    except ValueError:
        return _Unreadable("Malformed JSON body")


def _method_not_allowed(allowed: str) -> _Reply:
    return _Reply(405, {"code": 405, "message": "Method not allowed"}, (("Allow", allowed),))


def _field_error(message: str) -> _Reply:
    return _Reply(400, {"code": 1, "message": message})


def _parse_batch(body: Any, custom_columns: frozenset[str]) -> _Batch:
    """Apply the structural checks that make the API answer FieldError [1] for the whole call."""
    if isinstance(body, _Unreadable):
        raise _FieldError(body.reason)
    if not isinstance(body, dict):
        raise _FieldError("Request body must be a JSON object")
    if unknown_fields := sorted(set(body) - BODY_FIELDS):
        raise _FieldError(f"Unknown body field(s): {', '.join(unknown_fields)}")
    columns = body.get("columns")
    if not isinstance(columns, list) or not columns:
        raise _FieldError("columns must be a non-empty array")
    if not all(isinstance(column, str) for column in columns) or len(set(columns)) != len(columns):
        raise _FieldError("columns must be unique strings")
    if "contact_key" not in columns:
        raise _FieldError("columns must include contact_key")
    if platform := [column for column in columns if column in PLATFORM_COLUMNS]:
        raise _FieldError(f"Platform-maintained column(s) cannot be written: {', '.join(platform)}")
    allowed = MASTER_COLUMNS | custom_columns
    if unknown := [column for column in columns if column not in allowed]:
        raise _FieldError(f"Unknown or not import-enabled column(s): {', '.join(unknown)}")
    rows = body.get("contactDatas")
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_CONTACTS_PER_CALL:
        raise _FieldError(f"contactDatas must be an array of 1 to {MAX_CONTACTS_PER_CALL} objects")
    for flag in ("insertIfNotExists", *STOP_FLAGS):
        if flag in body and not isinstance(body[flag], bool):
            raise _FieldError(f"{flag} must be a boolean")
    insert_if_not_exists = body.get("insertIfNotExists", False)
    stops = {body[flag] for flag in STOP_FLAGS if flag in body}
    if len(stops) > 1:
        raise _FieldError("stopOnError and throwExceptionIfInvalidRecord disagree")
    stop_on_error = stops.pop() if stops else True
    if insert_if_not_exists and "new_contact_key" in columns:
        raise _FieldError("new_contact_key cannot be used with insertIfNotExists=true")
    wanted = set(columns)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _FieldError(f"contactDatas[{index}] must be an object")
        if set(row) != wanted:
            missing = ", ".join(sorted(wanted - set(row))) or "none"
            extra = ", ".join(sorted(set(row) - wanted)) or "none"
            raise _FieldError(
                f"contactDatas[{index}] keys must equal columns"
                f" (missing: {missing}; extra: {extra})"
            )
    return _Batch(tuple(columns), tuple(rows), insert_if_not_exists, stop_on_error)


def _is_string(value: Any, max_length: int) -> bool:
    """A storable string: within the limit, no NUL, no unpaired surrogate (not valid UTF-8)."""
    if not isinstance(value, str) or len(value) > max_length or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def value_problem(column: str, value: Any) -> str | None:
    """Describe why ``value`` is not acceptable for ``column``, or return None if it is."""
    if value is None:
        return "null is not accepted"
    if column in KEY_COLUMNS:
        ok = _is_string(value, CONTACT_KEY_MAX) and bool(value.strip())
        return None if ok else f"must be a non-empty string of at most {CONTACT_KEY_MAX}"
    if column in STATUS_COLUMNS:
        return None if value in ("A", "P") else "must be 'A' or 'P'"
    if column in BOOLEAN_COLUMNS:
        return None if isinstance(value, bool) else "must be a JSON boolean"
    if column == "email":
        ok = _is_string(value, EMAIL_MAX) and EMAIL_PATTERN.fullmatch(value) is not None
        return None if ok else f"must be an email address of at most {EMAIL_MAX} characters"
    if column == "gsm":
        ok = isinstance(value, str) and GSM_PATTERN.fullmatch(value) is not None
        return None if ok else "must be 1 to 20 digits (country code included)"
    if column in TEXT_COLUMNS:
        ok = _is_string(value, TEXT_MAX)
        return None if ok else f"must be a string of at most {TEXT_MAX} characters"
    if column in DATE_COLUMNS:
        return None if _is_date(value) else "must be a real date in yyyy-MM-dd format"
    ok = _is_string(value, CUSTOM_MAX)
    return None if ok else f"must be a string of at most {CUSTOM_MAX} characters"


def _is_date(value: Any) -> bool:
    if not isinstance(value, str) or DATE_PATTERN.fullmatch(value) is None:
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _record_errors(batch: _Batch) -> list[dict[str, Any]]:
    """Check every value of every record; the API validates all data before updating any."""
    errors = []
    for index, row in enumerate(batch.rows):
        key = row["contact_key"] if isinstance(row["contact_key"], str) else None
        for column in batch.columns:
            if problem := value_problem(column, row[column]):
                item = {"contact_key": key, "index": index, "field": column}
                errors.append({**item, "message": problem})
    return errors


def _validation_failed(errors: list[dict[str, Any]]) -> _Reply:
    first = errors[0]
    summary = f"contactDatas[{first['index']}].{first['field']}: {first['message']}"
    return _Reply(
        400, {"code": 11, "message": f"ValidationFails: {summary}", "data": {"errors": errors}}
    )


def _merge(row: dict[str, Any], values: dict[str, Any]) -> None:
    """Write ``values`` into a stored row the way the API does (lowercase email, status resets)."""
    if "email" in values:
        values["email"] = values["email"].lower()
    for column, status in (("email", "email_status"), ("gsm", "gsm_status")):
        if column in values and status not in values and row.get(column) != values[column]:
            row[status] = "A"
    row.update(values)


def _apply(
    contacts: dict[str, dict[str, Any]], batch: _Batch, record_errors: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, Any] | None], _Outcome]:
    """Work out a validated batch's changes without touching the store, so a failing
    stopOnError call is a no-op; returns ``key → new row`` (``None``: the key is gone).

    Rows are copied when first touched, so the cost follows the batch, not the store.
    Only the last record of each contact_key is processed; invalid records are skipped (they
    are already listed in ``record_errors``).
    """
    changes: dict[str, dict[str, Any] | None] = {}

    def current(key: str) -> dict[str, Any] | None:
        if key in changes:
            return changes[key]
        row = contacts.get(key)
        return None if row is None else dict(row)

    outcome = _Outcome(errors=list(record_errors))
    invalid = {error["index"] for error in record_errors}
    keys = [row["contact_key"] for row in batch.rows]
    last = {key: index for index, key in enumerate(keys) if isinstance(key, str)}
    for index in sorted(set(last.values()) - invalid):
        row = batch.rows[index]
        key = sent_key = row["contact_key"]
        stored = current(key)
        if "new_contact_key" in row:
            new_key = row["new_contact_key"]
            if stored is None or (new_key != key and current(new_key) is not None):
                message = "Contact not found" if stored is None else "Key already in use"
                item = {"contact_key": key, "index": index, "field": "new_contact_key"}
                outcome.errors.append({**item, "message": message})
                continue
            changes[key] = None
            key = stored["contact_key"] = new_key
        values = {column: row[column] for column in batch.columns if column not in KEY_COLUMNS}
        if stored is None:
            if not batch.insert_if_not_exists:
                outcome.warnings.append({"contact_key": key, "message": NOT_INSERTED})
                continue
            stored = {
                "contact_key": key,
                "contact_status": "A",
                "email_permission": True,
                "gsm_permission": True,
            }
            outcome.inserted.append(sent_key)
        else:
            outcome.updated.append(sent_key)
        _merge(stored, values)
        changes[key] = stored
    return changes, outcome


def _check_headers(headers: Any) -> None:
    """Refuse headers that could not go on the wire as given, or would misframe the body."""
    if headers is None:
        return
    if not isinstance(headers, dict) or not all(
        isinstance(name, str) and isinstance(value, str) for name, value in headers.items()
    ):
        raise ValueError("headers must map header names to strings")
    for name, value in headers.items():
        if HEADER_NAME_RE.fullmatch(name) is None or any(c in value for c in "\r\n\x00"):
            raise ValueError(f"header {name!r} cannot be sent as given")
        if name.lower() in FRAMING_HEADERS:
            raise ValueError(f"{name} is set by the emulator")


class DengageEmulator:
    """An in-memory D·engage account served over HTTP on loopback; every accessor is thread-safe."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        userkey: str = "demo",
        password: str = "demo-password",  # noqa: S107 - the emulator's documented demo login
        static_tokens: Iterable[str] = (),
        token_lifetime_seconds: int = 3600,
        sync_interval_seconds: float = 60.0,
        custom_columns: Iterable[str] = (),
        async_job_seconds: float = 0.0,
        max_running_jobs: int = 4,
    ) -> None:
        bind_host = _loopback_host(host)
        if bind_host is None:
            raise ValueError(f"refusing to listen on non-loopback host {host!r}")
        self._address = (bind_host, port)
        settings = {
            "userkey": userkey,
            "password": password,
            "token_lifetime_seconds": token_lifetime_seconds,
            "sync_interval_seconds": sync_interval_seconds,
            "custom_columns": custom_columns,
            "async_job_seconds": async_job_seconds,
            "max_running_jobs": max_running_jobs,
        }
        self._options = _Options(**{k: _checked_option(k, v) for k, v in settings.items()})
        self._lock = threading.Lock()
        self._static_tokens = frozenset(static_tokens)
        self._static_valid = True
        self._tokens: dict[str, float] = {}  # token -> time.monotonic() expiry
        self._logins = 0
        self._contacts: dict[str, dict[str, Any]] = {}
        self._log: list[dict[str, Any]] = []
        self._faults: deque[_Fault] = deque()
        self._refused_keys: set[str] = set()
        self._job_durations: deque[float] = deque()
        self._jobs: dict[str, _Job] = {}
        self._job_failures: deque[str | None] = deque()  # None: that job runs normally
        self._job_hangs = 0
        self._repeat_job_ids = 0
        self._last_job_answer: str | None = None  # the transactionId of the last 202
        self._sync_busy = False
        self._sync_last_start: float | None = None
        self._async_busy = False
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the running server (the port is only known once bound)."""
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DengageEmulator:
        """Bind and serve in a daemon thread, so tests and the CLI share one code path."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._stopping.clear()
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="dengage-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every socket, including idle keep-alive connections."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        self._stopping.set()  # wakes requests sleeping in an injected hang
        server.shutdown()
        server.close_connections()
        server.server_close()  # joins the handler threads
        thread.join()

    def __enter__(self) -> DengageEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state for tests -------------------------------------------------------------------

    def contacts(self) -> dict[str, dict[str, object]]:
        """Stored contacts by key, after applying every async job that is due by now."""
        with self._lock:
            self._settle_jobs()
            return copy.deepcopy(self._contacts)

    def request_log(self) -> list[dict[str, object]]:
        """One entry per /rest/* request, in arrival order (never credentials or tokens)."""
        with self._lock:
            return copy.deepcopy(self._log)

    def bulk_calls(self) -> list[dict[str, object]]:
        return [
            entry
            for entry in self.request_log()
            if entry["method"] == "POST" and entry["path"] == SYNC_PATH
        ]

    def login_count(self) -> int:
        """Successful logins since start or the last reset()."""
        with self._lock:
            return self._logins

    # -- test controls ---------------------------------------------------------------------

    def inject_fault(
        self,
        path: str,
        *,
        status: int | None = None,
        count: int = 1,
        hang_seconds: float = 0.0,
        body: Any = None,
        raw_body: str | None = None,
        headers: dict[str, str] | None = None,
        drip_seconds: float = 0.0,
        cut_off: bool = False,
    ) -> None:
        """Make the next ``count`` /rest/* requests under ``path`` hang and/or fail.

        A fault with a status answers before authentication and pacing (like a failing gateway),
        so it never moves the once-a-minute window and applies nothing. Its answer is ``body``
        as JSON (any JSON value), or ``raw_body`` verbatim, so that clients meet non-JSON and
        empty answers too. Without a status, the real answer is sent, shaped as below, so a
        call can be applied and still reach the client broken.

        ``headers`` replace the emulator's own of the same name (a wrong Content-Type, a
        Content-Encoding the body does not have, a redirect's Location, Retry-After).
        ``drip_seconds`` sends the body a byte at a time, for read timeouts that a slow
        server trips while the connection stays busy; ``cut_off`` closes the connection
        halfway through the announced body, as a crashing server or proxy would.
        """
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError("path must start with '/'")
        if status is not None and (
            not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599
        ):
            raise ValueError("status must be an HTTP status code")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("count must be a positive integer")
        for name, seconds in (("hang_seconds", hang_seconds), ("drip_seconds", drip_seconds)):
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
                raise ValueError(f"{name} must be a non-negative number")
        if not isinstance(cut_off, bool):
            raise ValueError("cut_off must be a boolean")
        try:
            payload = json.dumps(INJECTED_FAULT if body is None else body, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError("body must be a JSON value") from None
        raw = None
        if raw_body is not None:
            if not isinstance(raw_body, str):
                raise ValueError("raw_body must be a string")
            if status is None or body is not None:
                raise ValueError("raw_body needs a status and no body")
            try:
                raw = raw_body.encode()
            except UnicodeEncodeError:
                raise ValueError("raw_body must be encodable as UTF-8") from None
        _check_headers(headers)
        if cut_off and status is not None:
            size = len(payload.encode()) if raw is None else len(raw)
            if _bodiless(status) or size < 2:
                raise ValueError("cut_off needs a status with a body of at least 2 bytes")
        fault = _Fault(
            path,
            status,
            count,
            float(hang_seconds),
            body,
            dict(headers) if headers is not None else None,
            raw,
            float(drip_seconds),
            cut_off,
        )
        with self._lock:
            self._faults.append(fault)

    def refuse_batches_containing(self, contact_keys: Iterable[str]) -> None:
        """Answer 400 FieldError, naming no record, to any BulkUpsert that carries one of these
        contact keys: a whole-request refusal the client cannot attribute to a record."""
        keys = list(contact_keys)
        if not all(isinstance(key, str) for key in keys):
            raise ValueError("contact_keys must be strings")
        with self._lock:
            self._refused_keys.update(keys)

    def expire_tokens(self) -> None:
        """Invalidate every issued token and, for good, the static ones."""
        with self._lock:
            self._tokens.clear()
            self._static_valid = False

    def set_options(self, **kwargs: Any) -> None:
        checked = {name: _checked_option(name, value) for name, value in kwargs.items()}
        with self._lock:
            self._options = dataclasses.replace(self._options, **checked)

    def repeat_job_ids(self, count: int = 1) -> None:
        """Answer the next ``count`` async submits with the previous submit's transactionId,
        as a buggy gateway or cache would; each job still runs under its own hidden id."""
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("count must be a positive integer")
        with self._lock:
            self._repeat_job_ids += count

    def reset(self) -> None:
        """Forget contacts, log, faults, jobs and the pacing window; tokens stay valid."""
        with self._lock:
            self._contacts.clear()
            self._log.clear()
            self._faults.clear()
            self._refused_keys.clear()
            self._job_durations.clear()
            self._jobs.clear()
            self._job_failures.clear()
            self._job_hangs = 0
            self._repeat_job_ids = 0
            self._last_job_answer = None
            self._sync_last_start = None
            self._logins = 0

    def clear_faults(self) -> None:
        """Drop the faults not yet used, keeping what is stored: D·engage healed."""
        with self._lock:
            self._faults.clear()

    def fail_next_jobs(
        self, count: int = 1, message: str = "Injected job failure", *, after: int = 0
    ) -> None:
        """The ``count`` jobs that follow the next ``after`` ones end Failed, applying nothing."""
        with self._lock:
            self._job_failures.extend([None] * after + [message] * count)

    def set_next_job_durations(self, seconds: Iterable[float]) -> None:
        """Give the next async jobs these run times, in order (then async_job_seconds)."""
        durations = [float(value) for value in seconds]
        if any(value < 0 for value in durations):
            raise ValueError("job durations must be non-negative")
        with self._lock:
            self._job_durations.extend(durations)

    def jobs(self) -> list[dict[str, object]]:
        """Every async job so far: id, status, wall-clock submit and finish times, keys."""
        with self._lock:
            self._settle_jobs()
            return [
                {
                    "id": job.id,
                    "status": job.status,
                    "submitted": job.submitted,
                    "finished": None
                    if job.status == "Processing"
                    else job.submitted + job.duration,
                    "count": len(job.batch.rows),
                    "contact_keys": [row["contact_key"] for row in job.batch.rows],
                }
                for job in self._jobs.values()
            ]

    def hang_next_jobs(self, count: int = 1) -> None:
        with self._lock:
            self._job_hangs += count

    # -- request handling ------------------------------------------------------------------

    def _dispatch(
        self,
        method: str,
        path: str,
        authorization: str | None,
        content_type: str | None,
        raw: bytes,
        arrived: tuple[float, float],
    ) -> tuple[_Reply, dict[str, Any] | None]:
        """The reply, and the request's log entry: ``started`` when the request line came
        in, ``finished`` when the reply was ready, and ``replied`` once it has been written
        (the emulator's whole cost for the call lies between ``started`` and ``replied``)."""
        if path.startswith(ADMIN_PREFIX):
            return self._admin(method, path.removeprefix(ADMIN_PREFIX), raw), None
        if not path.startswith("/rest/"):
            return _Reply(404, NOT_FOUND), None
        body = _read_json(raw, content_type)
        entry: dict[str, Any] = {
            "method": method,
            "path": path,
            "status": None,
            "started": arrived[0],
            "finished": None,
            "replied": None,
            "columns": None,
            "count": None,
            "contact_keys": None,
            "insert_if_not_exists": None,
            "authorization": authorization is not None,
        }
        if isinstance(body, dict):
            if isinstance(body.get("columns"), list):
                entry["columns"] = body["columns"]
            entry["insert_if_not_exists"] = body.get("insertIfNotExists")
            if isinstance(rows := body.get("contactDatas"), list):
                entry["count"] = len(rows)
                entry["contact_keys"] = [
                    r.get("contact_key") if isinstance(r, dict) else None for r in rows
                ]
        with self._lock:
            self._log.append(entry)
            fault = self._take_fault(path)
        try:
            if fault is not None and fault.status is not None:
                self._pause(fault.hang_seconds)
                reply = fault.reply(fault.status)
            else:
                reply = self._route(method, path, authorization, body, fault, arrived[1])
                if fault is not None:
                    reply = fault.shape(reply)
        except Exception:
            logger.exception("emulator failed on %s %s", method, path)
            reply = _Reply(500, {"code": 999, "message": "UnexpectedError"})
        with self._lock:
            entry["status"] = reply.status
            entry["finished"] = time.time()
        return reply, entry

    def _written(self, entry: dict[str, Any]) -> None:
        with self._lock:
            entry["replied"] = time.time()

    def _take_fault(self, path: str) -> _Fault | None:
        """Pop one use of the first queued fault matching ``path`` (lock held)."""
        for fault in self._faults:
            if path.startswith(fault.path):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _route(
        self,
        method: str,
        path: str,
        authorization: str | None,
        body: Any,
        fault: _Fault | None,
        arrived: float,
    ) -> _Reply:
        hang = fault.hang_seconds if fault is not None else 0.0
        job = JOB_PATH_RE.fullmatch(path)
        if job is None and path not in (LOGIN_PATH, SYNC_PATH, ASYNC_PATH):
            return _Reply(404, NOT_FOUND)
        allowed = "GET" if job else "POST"
        if method != allowed:
            return _method_not_allowed(allowed)
        if path == LOGIN_PATH:
            self._pause(hang)
            return self._login(body)
        if not self._authenticated(authorization):
            return _Reply(401, UNAUTHENTICATED)
        if job is not None:
            self._pause(hang)
            return self._job_status(job.group(1))
        if path == SYNC_PATH:
            return self._bulk_sync(body, hang, arrived)
        return self._bulk_async(body, hang)

    def _login(self, body: Any) -> _Reply:
        if isinstance(body, _Unreadable):
            return _field_error(body.reason)
        if not isinstance(body, dict):
            return _field_error("Request body must be a JSON object")
        with self._lock:
            options = self._options
            if body.get("userkey") != options.userkey or body.get("password") != options.password:
                return _Reply(403, FORBIDDEN)
            now = time.monotonic()
            self._tokens = {token: expiry for token, expiry in self._tokens.items() if expiry > now}
            token = secrets.token_urlsafe(32)
            self._tokens[token] = now + options.token_lifetime_seconds
            self._logins += 1
        return _Reply(200, {"access_token": token, "expires_in": options.token_lifetime_seconds})

    def _authenticated(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        token = token.strip()
        with self._lock:
            if self._static_valid and token in self._static_tokens:
                return True
            expiry = self._tokens.get(token)
            return expiry is not None and time.monotonic() < expiry

    def _validate(
        self, body: Any, custom_columns: frozenset[str]
    ) -> tuple[_Batch, list[dict[str, Any]]] | _Reply:
        """The checks both BulkUpsert endpoints make before anything is applied: the batch
        and its per-record errors, or the 400 answer that refuses it."""
        try:
            batch = self._parse_admitted(body, custom_columns)
        except _FieldError as exc:
            return _field_error(str(exc))
        errors = _record_errors(batch)
        if batch.stop_on_error and errors:
            return _validation_failed(errors)
        return batch, errors

    def _parse_admitted(self, body: Any, custom_columns: frozenset[str]) -> _Batch:
        """Structural checks, plus the refusals a test asked for (refuse_batches_containing)."""
        batch = _parse_batch(body, custom_columns)
        with self._lock:
            refused = self._refused_keys.intersection(
                key for row in batch.rows if isinstance(key := row["contact_key"], str)
            )
        if refused:
            raise _FieldError("FieldError: the request could not be processed")
        return batch

    def _bulk_sync(self, body: Any, hang: float, arrived: float) -> _Reply:
        """Sync BulkUpsert: admit at most one call at a time and one per interval, then upsert."""
        with self._lock:
            if self._sync_busy:
                return _Reply(429, SYNC_CONCURRENT)
            now, last = arrived, self._sync_last_start
            if last is not None and now - last < self._options.sync_interval_seconds:
                return _Reply(429, SYNC_TOO_SOON)
            self._sync_busy, self._sync_last_start = True, now
            custom_columns = self._options.custom_columns
        try:
            self._pause(hang)
            checked = self._validate(body, custom_columns)
            if isinstance(checked, _Reply):
                return checked
            batch, errors = checked
            with self._lock:
                self._settle_jobs()
                outcome = self._apply_locked(batch, errors)
            if batch.stop_on_error and outcome.errors:
                return _validation_failed(outcome.errors)
            return _Reply(200, {"code": 0, "message": "Success", "data": outcome.as_data()})
        finally:
            with self._lock:
                self._sync_busy = False

    def _bulk_async(self, body: Any, hang: float) -> _Reply:
        """Async BulkUpsert: validate now, queue a job that applies after async_job_seconds."""
        with self._lock:
            self._settle_jobs()
            running = sum(job.status == "Processing" for job in self._jobs.values())
            if self._async_busy or running >= self._options.max_running_jobs:
                return _Reply(429, TOO_MANY_JOBS)
            self._async_busy = True
            custom_columns = self._options.custom_columns
        try:
            self._pause(hang)
            checked = self._validate(body, custom_columns)
            if isinstance(checked, _Reply):
                return checked
            batch, errors = checked
            with self._lock:
                hang_job = self._job_hangs > 0
                failure = None
                if hang_job:
                    self._job_hangs -= 1
                elif self._job_failures:
                    failure = self._job_failures.popleft()
                duration = (
                    self._job_durations.popleft()
                    if self._job_durations
                    else self._options.async_job_seconds
                )
                job = _Job(
                    str(uuid.uuid4()),
                    batch,
                    errors,
                    time.monotonic() + duration,
                    failure,
                    hang_job,
                    time.time(),
                    duration,
                )
                self._jobs[job.id] = job
                answered = job.id
                if self._repeat_job_ids > 0:
                    self._repeat_job_ids -= 1
                    answered = self._last_job_answer or job.id
                self._last_job_answer = answered
            body = {"transactionId": answered, "code": 0, "message": "Accepted", "data": None}
            return _Reply(202, body)
        finally:
            with self._lock:
                self._async_busy = False

    def _job_status(self, job_id: str) -> _Reply:
        with self._lock:
            self._settle_jobs()
            job = self._jobs.get(job_id)
            if job is None:
                return _Reply(404, JOB_NOT_FOUND)
            data = {
                "status": job.status,
                "transactionId": job.id,
                **copy.deepcopy(job.outcome.as_data()),
                "message": job.message,
            }
        return _Reply(200, {"code": 0, "message": "Success", "data": data})

    def _apply_locked(self, batch: _Batch, errors: list[dict[str, Any]]) -> _Outcome:
        """Apply a batch (lock held); a stopOnError batch with any error changes nothing."""
        changes, outcome = _apply(self._contacts, batch, errors)
        if not (batch.stop_on_error and outcome.errors):
            for key, row in changes.items():
                if row is None:
                    self._contacts.pop(key, None)
                else:
                    self._contacts[key] = row
        return outcome

    def _settle_jobs(self) -> None:
        """Finish due jobs, oldest deadline first, so each is applied exactly once (lock held)."""
        now = time.monotonic()
        due = [job for job in self._jobs.values() if job.status == "Processing" and not job.hang]
        for job in sorted((job for job in due if job.due <= now), key=lambda job: job.due):
            if job.fail_message is not None:
                job.status, job.message = "Failed", job.fail_message
                continue
            job.outcome = self._apply_locked(job.batch, job.record_errors)
            if job.batch.stop_on_error and job.outcome.errors:
                job.status, job.message = (
                    "Failed",
                    _validation_failed(job.outcome.errors).body["message"],
                )
            else:
                job.status, job.message = "Completed", "Success"

    def _admin(self, method: str, name: str, raw: bytes) -> _Reply:
        """Unauthenticated controls for CLI users and tests in other processes."""
        readers: dict[str, Callable[[], object]] = {
            "contacts": self.contacts,
            "jobs": self.jobs,
            "requests": self.request_log,
            "health": lambda: {"ok": True},
        }
        writers: dict[str, Callable[..., None]] = {
            "faults": self.inject_fault,
            "refuse": self.refuse_batches_containing,
            "options": self.set_options,
            "expire-tokens": self.expire_tokens,
            "repeat-job-ids": self.repeat_job_ids,
            "reset": self.reset,
        }
        if name not in readers and name not in writers:
            return _Reply(404, NOT_FOUND)
        allowed = "GET" if name in readers else "POST"
        if method != allowed:
            return _method_not_allowed(allowed)
        if name in readers:
            return _Reply(200, readers[name]())
        try:
            kwargs = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _field_error("Malformed JSON body")
        if not isinstance(kwargs, dict):
            return _field_error("Request body must be a JSON object")
        try:
            writers[name](**kwargs)
        except (TypeError, ValueError) as exc:
            return _field_error(str(exc))
        return _Reply(200, {"ok": True})


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that can also close idle keep-alive connections on stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: DengageEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup (getfqdn), which could leave loopback."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle clients, so server_close() can join them."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Speaks HTTP/1.1 keep-alive, because the target reuses connections via requests.Session."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid delayed-ACK stalls
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        # A call is timed from its arrival, as a server's rate limiter would, not from when
        # its body has been read (which varies with the body's size and the machine's load).
        arrived = self._arrived
        raw = self._read_body()
        if raw is None:
            return
        path = urlsplit(self.path).path
        headers = self.headers
        emulator = self.server.emulator
        reply, entry = emulator._dispatch(
            self.command,
            path,
            headers.get("Authorization"),
            headers.get("Content-Type"),
            raw,
            arrived,
        )
        try:
            self._send(reply)
        finally:
            if entry is not None:
                emulator._written(entry)

    def parse_request(self) -> bool:
        """Note the arrival as soon as the request line is in, before its headers are read."""
        self._arrived = (time.time(), time.monotonic())
        return super().parse_request()

    def _read_body(self) -> bytes | None:
        """Read exactly Content-Length bytes so the next request on the connection stays aligned."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(411, "Content-Length required")
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.send_error(400 if length < 0 else 413, "Bad Content-Length")
            return None
        return self.rfile.read(length)

    def _send(self, reply: _Reply) -> None:
        """Write ``reply``; a drip or cut-off that loses its client just ends the connection."""
        bodiless = _bodiless(reply.status)
        if bodiless:
            data, own = b"", []
        else:
            data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
            own = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        headers = _overridden(own, reply.headers)
        if self.close_connection and not any(name.lower() == "connection" for name, _ in headers):
            headers.append(("Connection", "close"))
        self.send_response(reply.status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            data = b""
        if reply.cut_off and data:
            data = data[: max(1, len(data) // 2)]
        try:
            if reply.drip_seconds > 0:
                self._drip(data, reply.drip_seconds)
            elif data:
                self.wfile.write(data)
        except ConnectionError:  # the client left (BrokenPipe, ConnectionReset): so do we
            self.close_connection = True
            return
        if reply.cut_off:
            self._hang_up()

    def _drip(self, data: bytes, pause: float) -> None:
        """Write ``data`` a byte at a time; give up, closing the connection, on stop()."""
        stopping = self.server.emulator._stopping
        for index in range(len(data)):
            if index and stopping.wait(pause):
                self._hang_up()
                return
            self.wfile.write(data[index : index + 1])
            self.wfile.flush()

    def _hang_up(self) -> None:
        """Close the connection now, whatever the headers announced."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer protocol-level errors in JSON too, and drop the connection (body unread)."""
        self.close_connection = True
        self._send(_Reply(code, {"code": code, "message": message or HTTPStatus(code).phrase}))

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM (the ``dengage-emulator`` console script)."""
    parser = argparse.ArgumentParser(
        prog="dengage-emulator", description="Serve a local emulator of the D·engage contact API."
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    parser.add_argument("--userkey", default="demo")
    parser.add_argument("--password", default="demo-password")
    parser.add_argument("--static-token", action="append", default=[], dest="static_tokens")
    parser.add_argument("--token-lifetime", type=int, default=3600)
    parser.add_argument("--sync-interval", type=float, default=60.0)
    parser.add_argument("--custom-column", action="append", default=[], dest="custom_columns")
    parser.add_argument("--async-job-seconds", type=float, default=0.0)
    parser.add_argument("--max-running-jobs", type=int, default=4)
    args = parser.parse_args(argv)
    if _loopback_host(args.host) is None:
        print(f"dengage-emulator: refusing non-loopback host {args.host!r}", file=sys.stderr)
        return 2
    try:
        emulator = DengageEmulator(
            host=args.host,
            port=args.port,
            userkey=args.userkey,
            password=args.password,
            static_tokens=args.static_tokens,
            token_lifetime_seconds=args.token_lifetime,
            sync_interval_seconds=args.sync_interval,
            custom_columns=args.custom_columns,
            async_job_seconds=args.async_job_seconds,
            max_running_jobs=args.max_running_jobs,
        ).start()
    except (OSError, ValueError) as exc:
        print(f"dengage-emulator: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        print(
            f"D·engage emulator listening on {emulator.url} (userkey={args.userkey})",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
    finally:
        emulator.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
