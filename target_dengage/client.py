"""HTTP client for the D·engage REST API: login, pacing, retries, and the transport's bounds.

One client serves the whole run, so one pacer sees every BulkUpsert call of every stream:
D·engage allows one sync call a minute and never two at once. What an answer *means* is
decided by :func:`target_dengage.protocol.classify`; this module only carries answers there.

The transport is held to what the API needs and no more: credentials go to ``api_url`` and
nowhere else (no redirects are followed, our own ``Authorization`` header always wins over
netrc or URL credentials), every call ends within ``request_timeout_seconds`` with its whole
answer read, and answers larger than anything D·engage sends are refused unread.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from target_dengage import __version__
from target_dengage.contract import (
    ASYNC_PATH,
    BULK_PATH,
    LOGIN_PATH,
    TOKEN_MARGIN_SECONDS,
    Endpoint,
)
from target_dengage.errors import (
    DengageAuthError,
    DengageError,
    DengageForbiddenError,
    DengageRequestError,
    DengageUnavailableError,
)
from target_dengage.masking import hide, quote
from target_dengage.pacing import Pacer
from target_dengage.protocol import (
    BulkOutcome,
    JobStatus,
    Meaning,
    Verdict,
    classify,
    error_issues,
    job_path,
    parse_bulk_outcome,
    parse_job,
    parse_job_id,
    parse_login,
)
from target_dengage.retry import Attempt, RetryPolicy

#: Largest answer read: a BulkUpsert answer for 1000 contacts, each named with a long
#: message, is well under 1 MB; anything this large is not D·engage's answer.
MAX_ANSWER_BYTES = 20 * 1024 * 1024
_READ_CHUNK = 64 * 1024

FORBIDDEN_HELP = (
    "D·engage answered 403 Forbidden to {what}. D·engage gives this one answer for three "
    "causes, so check all of them: (1) this machine's public IP address is not on the "
    "account's API IP allowlist; (2) the API user key / password or access token is wrong; "
    "(3) the API user lacks the {role} role."
)
REDIRECT_HELP = (
    "D·engage answered {what} with {said}. The target never follows redirects, so that the "
    "credentials and contacts go to api_url and nowhere else: if that address is D·engage's "
    "new one, set api_url to it. No STATE past the records of this call is printed."
)


@dataclass
class _Token:
    value: str
    refresh_at: float | None  # None: a pre-issued token we cannot renew


@dataclass(frozen=True)
class _Answer:
    """One HTTP answer, read whole within the call's time and size bounds."""

    status: int
    body: bytes
    location: str | None
    retry_after: str | None


class _NoAnswerError(Exception):
    """No complete answer came (a network error, a timeout, a cut-off or undecodable
    body): worth another try."""


class _Bearer(requests.auth.AuthBase):
    """Our token, set last: netrc entries and ``user:password@`` in a URL never replace it."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop("Authorization", None)
        if self._token is not None:
            request.headers["Authorization"] = f"Bearer {self._token}"
        return request


# -- the call's deadline -------------------------------------------------------------------
# A read timeout bounds each wait for a byte, not the call: an answer that drips a byte
# every second would never time out. So every call has a watch, and a watchdog shuts down
# the call's socket when the deadline passes; the blocked read then fails at once.


class _Watch:
    def __init__(self) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


class _Watchdog:
    """One thread for the client's life, expiring the watches whose deadline passed: a
    thread (or timer) per call would cost more than the calls of a fast load."""

    def __init__(self) -> None:
        self._deadlines: dict[_Watch, float] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, watch: _Watch, seconds: float) -> None:
        with self._changed:
            self._deadlines[watch] = time.monotonic() + seconds
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dengage-call-deadlines", daemon=True
                )
                self._thread.start()
            self._changed.notify()

    def unwatch(self, watch: _Watch) -> None:
        with self._changed:
            self._deadlines.pop(watch, None)

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for watch, deadline in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[watch]
                        watch.expire()
                wake = min(self._deadlines.values(), default=None)
                self._changed.wait(None if wake is None else wake - now)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: nothing left to wake
        sock.shutdown(socket.SHUT_RDWR)


_CURRENT_WATCH: contextvars.ContextVar[_Watch | None] = contextvars.ContextVar(
    "target_dengage_watch", default=None
)


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:  # the answer is awaited from here on: watch the socket
        watch = _CURRENT_WATCH.get()
        if watch is not None:
            watch.attach(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:
        watch = _CURRENT_WATCH.get()
        if watch is not None:
            watch.attach(self.sock)
        return super().getresponse()


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter, with connections whose sockets the call's watch can shut down."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class DengageClient:
    """Talks to one D·engage account. Thread-safe for the calls the target makes."""

    def __init__(
        self,
        *,
        api_url: str,
        userkey: str | None,
        password: str | None,
        access_token: str | None,
        pacer: Pacer,
        max_retries: int,
        timeout_seconds: float,
        logger: logging.Logger,
    ) -> None:
        self._base = api_url.rstrip("/")
        self._userkey = userkey
        self._password = password
        hide(password)
        hide(access_token)
        self._token: _Token | None = _Token(access_token, refresh_at=None) if access_token else None
        self._token_lock = threading.Lock()
        self._retry_policy = RetryPolicy(total_failures=max_retries)
        self._timeout = float(timeout_seconds)
        self._logger = logger
        self.pacer = pacer
        self.retries = 0
        self.rate_limited = 0
        self.rate_limited_seconds = 0.0
        self.logins = 0
        self._watchdog = _Watchdog()
        self._session = requests.Session()
        adapter = _WatchedAdapter()
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update(
            {"User-Agent": f"target-dengage/{__version__}", "Accept": "application/json"}
        )

    def close(self) -> None:
        self._session.close()

    @property
    def _can_login(self) -> bool:
        return bool(self._userkey and self._password)

    def bulk_upsert(self, body: bytes) -> BulkOutcome:
        """Send one sync BulkUpsert and return what D·engage did with each contact."""
        verdict = self._call(Endpoint.BULK, "POST", BULK_PATH, body, role="DataSpace.Manage")
        return parse_bulk_outcome(verdict.envelope)

    def submit_job(self, body: bytes) -> str:
        """Start a BulkUpsert-Async job; return its id. Not paced: jobs may overlap."""
        verdict = self._call(Endpoint.SUBMIT, "POST", ASYNC_PATH, body, role="DataSpace.Manage")
        try:
            return parse_job_id(verdict.envelope)
        except ValueError as exc:
            raise DengageRequestError(
                f"D·engage answered a BulkUpsert-Async submit with 202 but {exc}: "
                f"{quote(verdict.said)}. Its contacts are not confirmed; no STATE past them "
                "is printed.",
                status=verdict.status,
            ) from None

    def job_status(self, job_id: str) -> JobStatus:
        verdict = self._call(Endpoint.JOB, "GET", job_path(job_id), None, role="DataSpace.Read")
        return parse_job(verdict.envelope)

    def _access_token(self) -> str:
        with self._token_lock:
            token = self._token
            if token is not None and (
                token.refresh_at is None or time.monotonic() < token.refresh_at
            ):
                return token.value
            self._token = self._login()
            return self._token.value

    def _login(self) -> _Token:
        what = "the login (POST /rest/login)"
        body = json.dumps({"userkey": self._userkey, "password": self._password}).encode()
        verdict = self._send(Endpoint.LOGIN, "POST", LOGIN_PATH, body, what=what, token=None)
        if verdict.meaning is Meaning.FORBIDDEN:
            raise DengageForbiddenError(FORBIDDEN_HELP.format(what=what, role="API access"))
        if 300 <= verdict.status < 400:
            raise DengageAuthError(REDIRECT_HELP.format(what=what, said=quote(verdict.said)))
        if verdict.meaning is not Meaning.CONFIRMED:
            raise DengageAuthError(
                f"D·engage refused the login with HTTP {verdict.status}: "
                f"{quote(verdict.said)}. Check userkey and password."
            )
        try:
            value, lifetime, odd = parse_login(verdict.envelope)
        except ValueError as exc:
            raise DengageAuthError(f"D·engage login failed: {exc}.") from None
        hide(value)
        if odd is not None:
            self._logger.warning(
                "D·engage's login answer gave the token's lifetime as %s, not a positive "
                "number of seconds; assuming %d s.",
                quote(odd, 60),
                lifetime,
            )
        self.logins += 1
        margin = min(TOKEN_MARGIN_SECONDS, lifetime / 2)
        self._logger.info("Logged in to D·engage; the token is valid for %d s.", lifetime)
        return _Token(value, refresh_at=time.monotonic() + lifetime - margin)

    def _call(
        self, endpoint: Endpoint, method: str, path: str, body: bytes | None, *, role: str
    ) -> Verdict:
        """One API call with a token: a 401 logs in again once; anything but a
        confirmation ends in an error that says what D·engage answered."""
        what = f"{method} {path}"
        relogged = False
        while True:
            token = self._access_token()
            verdict = self._send(endpoint, method, path, body, what=what, token=token)
            meaning = verdict.meaning
            if meaning is Meaning.CONFIRMED:
                return verdict
            if meaning is Meaning.UNAUTHENTICATED:
                if not self._can_login:
                    raise DengageAuthError(
                        f"D·engage answered 401 Not Authenticated to {what}: the access_token "
                        "is expired or invalid. Issue a new token, or configure userkey and "
                        "password so the target can log in by itself."
                    )
                if relogged:
                    raise DengageAuthError(
                        f"D·engage answered 401 Not Authenticated to {what} again right after "
                        "a fresh login; the API user cannot use this endpoint."
                    )
                self._logger.info("D·engage answered 401; logging in again and resending.")
                with self._token_lock:
                    if self._token is not None and self._token.value == token:
                        self._token = None
                relogged = True
                continue
            if meaning is Meaning.FORBIDDEN:
                raise DengageForbiddenError(FORBIDDEN_HELP.format(what=what, role=role))
            if 300 <= verdict.status < 400:
                raise DengageRequestError(
                    REDIRECT_HELP.format(what=what, said=quote(verdict.said)),
                    status=verdict.status,
                )
            code = f" (code {verdict.code})" if verdict.code is not None else ""
            raise DengageRequestError(
                f"D·engage refused {what} with HTTP {verdict.status}{code}: "
                f"{quote(verdict.said) or 'no message'}",
                status=verdict.status,
                issues=error_issues(verdict.envelope) if meaning is Meaning.REFUSED else (),
                refused_data=meaning is Meaning.REFUSED,
            )

    def _send(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        body: bytes | None,
        *,
        what: str,
        token: str | None,
    ) -> Verdict:
        """Exchange under the retry policy (:class:`target_dengage.retry.RetryPolicy`); answers
        other than 429 and "try again" go back to the caller, read.

        - No usable answer (5xx, a 2xx that is not a confirmation, a network error, a
          timeout, a cut-off or undecodable body) uses up ``max_retries``, with exponential
          backoff and full jitter. Such a call may have been applied; resending is still
          safe, because BulkUpsert is an upsert by contact_key: applying it twice leaves the
          same rows.
        - 429 is the API asking us to slow down, not a failure: it has its own, larger
          budget. On the paced sync endpoint the next try waits a whole interval (the
          refused call counts as a start); elsewhere it backs off like a failure.
        - ``Retry-After`` wins whenever D·engage sends a usable one.
        """
        paced = endpoint is Endpoint.BULK
        url = self._base + path
        headers = {"Content-Type": "application/json"} if body is not None else {}
        auth = _Bearer(token)

        def exchange() -> _Answer:
            return self._exchange(method, url, body, headers, auth)

        policy = self._retry_policy  # every call starts with the whole budget
        limited_since: float | None = None
        while True:
            answer: _Answer | None = None
            verdict: Verdict | None = None
            try:
                answer = self.pacer.run(exchange) if paced else exchange()
            except _NoAnswerError as exc:
                problem = str(exc)
            else:
                verdict = classify(endpoint, answer.status, answer.body, answer.location)
                if verdict.meaning not in (Meaning.RETRY, Meaning.RATE_LIMITED):
                    self._end_rate_limit(limited_since, paced)
                    return verdict
                problem = f"HTTP {answer.status} ({quote(verdict.said) or 'no message'})"
            kind = (
                Attempt.RATE_LIMITED
                if verdict is not None and verdict.meaning is Meaning.RATE_LIMITED
                else Attempt.FAILURE
            )
            policy = policy.increment(kind)
            wait = policy.wait(
                kind, answer.retry_after if answer else None, now=time.time(), what=what
            )
            if wait.warning is not None:
                self._logger.warning("%s", wait.warning)
            if kind is Attempt.RATE_LIMITED:
                self.rate_limited += 1
                if policy.exhausted(kind):
                    raise DengageUnavailableError(
                        f"D·engage kept answering 429 Too Many Requests to {what} "
                        f"({policy.rate_limited} times in a row); another client may be "
                        "using this account's BulkUpsert budget."
                    )
                if limited_since is None:
                    limited_since = time.monotonic()
                if not wait.honoured and paced and self.pacer.interval > 0:
                    delay = 0.0  # the pacer waits a whole interval before the next try
                else:
                    delay = wait.seconds
                self._logger.warning(
                    "%s was rate-limited (429, %d in a row); trying again in %.1f s%s.",
                    what,
                    policy.rate_limited,
                    max(delay, self.pacer.interval if paced else 0.0),
                    " (Retry-After)" if wait.honoured else "",
                )
            else:
                if policy.exhausted(kind):
                    raise DengageUnavailableError(
                        f"D·engage did not accept {what} after {policy.failures} tries; the "
                        f"last answer was {problem}. Nothing of this call is counted as "
                        "confirmed: no STATE past its records is printed."
                    )
                self.retries += 1
                delay = wait.seconds
                self._logger.warning(
                    "%s failed: %s; retry %d of %d in %.1f s.",
                    what,
                    problem,
                    policy.failures,
                    policy.total_failures,
                    delay,
                )
            time.sleep(delay)

    def _exchange(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        auth: _Bearer,
    ) -> _Answer:
        """One request and its whole answer, within ``request_timeout_seconds``."""
        watch = _Watch()
        reset = _CURRENT_WATCH.set(watch)
        self._watchdog.watch(watch, self._timeout)
        try:
            response = self._session.request(
                method,
                url,
                data=body,
                headers=headers,
                auth=auth,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
            )
            with response:
                content = _read_answer(response)
            return _Answer(
                response.status_code,
                content,
                response.headers.get("Location"),
                response.headers.get("Retry-After"),
            )
        except _NoAnswerError:
            raise
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
            http.client.HTTPException,
            OSError,
        ) as exc:
            raise _NoAnswerError(_network_problem(exc, watch.expired, self._timeout)) from None
        except requests.RequestException as exc:
            raise DengageError(
                f"The request to D·engage could not be made ({type(exc).__name__}: "
                f"{quote(str(exc))}); check api_url."
            ) from None
        finally:
            self._watchdog.unwatch(watch)
            _CURRENT_WATCH.reset(reset)

    def _end_rate_limit(self, since: float | None, paced: bool) -> None:
        """Add the time from the first 429 to the try that got through to the run's total."""
        if since is None:
            return
        resumed = self.pacer.last_start if paced and self.pacer.last_start else time.monotonic()
        waited = max(0.0, resumed - since)
        self.rate_limited_seconds += waited
        self._logger.warning(
            "Rate-limited by D·engage for %.1f s before the call went through.", waited
        )


def _read_answer(response: requests.Response) -> bytes:
    """The answer's body, decoded, refused unread past ``MAX_ANSWER_BYTES``."""
    if response.status_code in (204, 304) or response.request.method == "HEAD":
        return b""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise _NoAnswerError(f"an answer of {int(declared):,} bytes, too large to be D·engage's")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_READ_CHUNK):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:  # the connection is closed on the way out, not reused
            raise _NoAnswerError(f"an answer of more than {MAX_ANSWER_BYTES:,} bytes, not read")
        chunks.append(chunk)
    return b"".join(chunks)


def _network_problem(exc: BaseException, expired: bool, timeout: float) -> str:
    if expired or isinstance(exc, requests.Timeout):
        return f"no answer within request_timeout_seconds ({timeout:g} s)"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the answer was cut off before its end"
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return "the answer could not be decoded (its Content-Encoding does not match its body)"
    return f"connection error ({type(exc).__name__})"
