"""HTTP client for the D·engage REST API: login, pacing, retries, answer classification.

One client serves the whole run, so one pacer sees every BulkUpsert call of every stream:
D·engage allows one sync call a minute and never two at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import backoff
import requests

from target_dengage import __version__
from target_dengage.errors import (
    DengageAuthError,
    DengageForbiddenError,
    DengageRequestError,
    DengageUnavailableError,
)
from target_dengage.pacing import Pacer
from target_dengage.protocol import (
    ASYNC_PATH,
    BULK_PATH,
    LOGIN_PATH,
    BulkOutcome,
    JobStatus,
    envelope_code,
    envelope_message,
    error_issues,
    job_path,
    parse_bulk_outcome,
    parse_job,
    parse_job_id,
    parse_login,
)

#: Answers worth another try; 429 has its own budget, see ``DengageClient._send``.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
RATE_LIMITED = 429
#: Consecutive 429s on one call before giving up (an hour at the sync endpoint's pace).
MAX_RATE_LIMITED_TRIES = 60
#: Refresh the cached token this long before D·engage says it expires.
TOKEN_MARGIN_SECONDS = 60.0
BACKOFF_MAX_SECONDS = 60.0

FORBIDDEN_HELP = (
    "D·engage answered 403 Forbidden to {what}. D·engage gives this one answer for three "
    "causes, so check all of them: (1) this machine's public IP address is not on the "
    "account's API IP allowlist; (2) the API user key / password or access token is wrong; "
    "(3) the API user lacks the {role} role."
)


@dataclass
class _Token:
    value: str
    refresh_at: float | None  # None: a pre-issued token we cannot renew


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
        self._token: _Token | None = _Token(access_token, refresh_at=None) if access_token else None
        self._token_lock = threading.Lock()
        self._max_retries = max_retries
        self._timeout = timeout_seconds
        self._logger = logger
        self.pacer = pacer
        self.retries = 0
        self.rate_limited = 0
        self.rate_limited_seconds = 0.0
        self.logins = 0
        self._session = requests.Session()
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
        response = self._call("POST", BULK_PATH, body, role="DataSpace.Manage", paced=True)
        return parse_bulk_outcome(_json(response))

    def submit_job(self, body: bytes) -> str:
        """Start a BulkUpsert-Async job; return its id. Not paced: jobs may overlap."""
        response = self._call("POST", ASYNC_PATH, body, role="DataSpace.Manage", paced=False)
        try:
            return parse_job_id(_json(response) if response.content else "")
        except ValueError as exc:
            raise DengageRequestError(
                f"D·engage accepted a BulkUpsert-Async job but {exc}: {_describe(response)}",
                status=response.status_code,
            ) from None

    def job_status(self, job_id: str) -> JobStatus:
        response = self._call("GET", job_path(job_id), None, role="DataSpace.Read", paced=False)
        return parse_job(_json(response))

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
        response = self._send(
            "POST",
            LOGIN_PATH,
            {"userkey": self._userkey, "password": self._password},
            what="the login (POST /rest/login)",
            headers={},
        )
        if response.status_code == 403:
            raise DengageForbiddenError(
                FORBIDDEN_HELP.format(what="the login (POST /rest/login)", role="API access")
            )
        if response.status_code != 200:
            raise DengageAuthError(
                f"D·engage refused the login with HTTP {response.status_code}: "
                f"{_describe(response)}. Check userkey and password."
            )
        try:
            value, lifetime = parse_login(_json(response))
        except ValueError as exc:
            raise DengageAuthError(f"D·engage login failed: {exc}.") from None
        self.logins += 1
        margin = min(TOKEN_MARGIN_SECONDS, lifetime / 2)
        self._logger.info("Logged in to D·engage; the token is valid for %d s.", lifetime)
        return _Token(value, refresh_at=time.monotonic() + lifetime - margin)

    def _call(
        self, method: str, path: str, body: bytes | None, *, role: str, paced: bool
    ) -> requests.Response:
        what = f"{method} {path}"
        relogged = False
        while True:
            headers = {"Authorization": f"Bearer {self._access_token()}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            response = self._send(method, path, body, what=what, headers=headers, paced=paced)
            status = response.status_code
            if status == 401:
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
                    self._token = None
                relogged = True
                continue
            if status == 403:
                raise DengageForbiddenError(FORBIDDEN_HELP.format(what=what, role=role))
            if 200 <= status < 300:
                return response
            envelope = _json(response)
            code = envelope_code(envelope)
            raise DengageRequestError(
                f"D·engage refused {what} with HTTP {status}"
                + (f" (code {code})" if code is not None else "")
                + f": {envelope_message(envelope) or _describe(response)}",
                status=status,
                issues=error_issues(envelope),
            )

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None,
        *,
        what: str,
        headers: dict[str, str],
        paced: bool = False,
    ) -> requests.Response:
        """POST with the retry policy; answers other than 429/5xx go back to the caller.

        - 500/502/503/504, connection errors and timeouts use up ``max_retries``, with
          exponential backoff and full jitter. A 5xx or a timeout may come after D·engage
          applied the request; resending is still safe, because BulkUpsert is an upsert by
          contact_key: applying it twice leaves the same rows.
        - 429 is the API asking us to slow down, not a failure: it has its own, larger
          budget. On the paced sync endpoint the next try waits a whole interval (the
          refused call counts as a start); elsewhere it backs off like a failure.
        - ``Retry-After`` wins whenever D·engage sends it.
        """
        url = self._base + path
        kwargs: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"data": body}

        def request() -> requests.Response:
            return self._session.request(
                method, url, timeout=self._timeout, headers=headers, **kwargs
            )

        failure_delays = _delays()
        limit_delays = _delays()
        failures = limited = 0
        limited_since: float | None = None
        while True:
            response: requests.Response | None = None
            try:
                answer = self.pacer.run(request) if paced else request()
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = _network_problem(exc, self._timeout)
            else:
                if answer.status_code != RATE_LIMITED and answer.status_code not in RETRY_STATUSES:
                    self._end_rate_limit(limited_since, paced)
                    return answer
                response = answer
                problem = f"HTTP {answer.status_code} ({_describe(answer)})"
            retry_after = _retry_after(response) if response is not None else None
            if response is not None and response.status_code == RATE_LIMITED:
                limited += 1
                self.rate_limited += 1
                if limited > MAX_RATE_LIMITED_TRIES:
                    raise DengageUnavailableError(
                        f"D·engage kept answering 429 Too Many Requests to {what} "
                        f"({limited} times in a row); another client may be using this "
                        "account's BulkUpsert budget."
                    )
                if limited_since is None:
                    limited_since = time.monotonic()
                if retry_after is not None:
                    delay = retry_after
                elif paced and self.pacer.interval > 0:
                    delay = 0.0  # the pacer waits a whole interval before the next try
                else:
                    delay = backoff.full_jitter(next(limit_delays))
                self._logger.warning(
                    "%s was rate-limited (429, %d in a row); trying again in %.1f s%s.",
                    what,
                    limited,
                    max(delay, self.pacer.interval if paced else 0.0),
                    " (Retry-After)" if retry_after is not None else "",
                )
            else:
                failures += 1
                if failures > self._max_retries:
                    raise DengageUnavailableError(
                        f"D·engage did not accept {what} after {failures} tries; the last "
                        f"answer was {problem}."
                    )
                self.retries += 1
                delay = (
                    retry_after
                    if retry_after is not None
                    else backoff.full_jitter(next(failure_delays))
                )
                self._logger.warning(
                    "%s failed: %s; retry %d of %d in %.1f s.",
                    what,
                    problem,
                    failures,
                    self._max_retries,
                    delay,
                )
            time.sleep(delay)

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


def _delays() -> Iterator[float]:
    delays: Iterator[float] = backoff.expo(base=2, factor=1, max_value=BACKOFF_MAX_SECONDS)
    next(delays)  # prime the generator, as backoff itself does
    return delays


def _network_problem(exc: requests.RequestException, timeout: float) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within request_timeout_seconds ({timeout:g} s)"
    return f"connection error ({type(exc).__name__})"


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _describe(response: requests.Response) -> str:
    """A short, header-free description of an answer, safe to put in an error message."""
    envelope = _json(response)
    message = envelope_message(envelope)
    if message:
        return message
    return (response.text or response.reason or "no message")[:200]


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
