"""When a call to D·engage is tried again, and how long the target waits first.

The policy is a value, in the spirit of urllib3's ``Retry``: each try that gets no usable
answer yields a new policy with one more in its history, so a call's budget can never leak
into another call (or another thread's call) through shared state, and the decisions can be
tested without HTTP, clocks or sleeps: the time and the random source are parameters.

Two kinds of try use separate budgets, because they mean different things. A failure (5xx,
a network error, a timeout, an answer that cannot be read or does not confirm) may be a
fault that persists, so it has the user's small ``max_retries``. A 429 is D·engage asking
us to slow down, which it may ask for a long time while another client spends the
account's budget: it has its own, larger budget.
"""

from __future__ import annotations

import dataclasses
import email.utils
import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from target_dengage.masking import quote

#: Consecutive 429s on one call before giving up (an hour at the sync endpoint's pace).
DEFAULT_TOTAL_RATE_LIMITED = 60
DEFAULT_BACKOFF_FACTOR = 1.0
#: Longest backoff: past a minute, a longer wait only delays noticing that the API is back.
DEFAULT_BACKOFF_MAX = 60.0
#: Longest ``Retry-After`` honoured; a longer one waits this long (with a warning), so a
#: misconfigured proxy cannot park the run for a day.
DEFAULT_RETRY_AFTER_MAX = 900.0
#: Most characters of a ``Retry-After`` value quoted in a warning: it comes from outside.
_QUOTE_VALUE = 60

#: Returns a float in [0, 1), like :func:`random.random`.
Rng = Callable[[], float]


class Attempt(enum.Enum):
    """Why a try must be repeated; each kind spends its own budget."""

    FAILURE = "failure"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Wait:
    """How long to wait before the next try, and whether D·engage chose it.

    ``honoured`` is true when the answer's ``Retry-After`` decides the wait (even capped at
    ``retry_after_max``): a caller that paces its calls by other means must then wait this
    long instead. ``warning`` is text for the log when the ``Retry-After`` could not be
    followed as sent.
    """

    seconds: float
    honoured: bool
    warning: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """The budgets of one call, and what its tries have used of them so far."""

    #: Retries allowed after tries with no usable answer (the user's ``max_retries``).
    total_failures: int
    #: Consecutive 429 answers tolerated before giving up.
    total_rate_limited: int = DEFAULT_TOTAL_RATE_LIMITED
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR
    backoff_max: float = DEFAULT_BACKOFF_MAX
    retry_after_max: float = DEFAULT_RETRY_AFTER_MAX
    #: History: tries of each kind so far in this call.
    failures: int = 0
    rate_limited: int = 0

    def __post_init__(self) -> None:
        # A bad budget would otherwise show up only as a call that never retries, or one
        # that sleeps forever: refuse it where it is made.
        for name in ("total_failures", "total_rate_limited", "failures", "rate_limited"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetryPolicy.{name} must not be negative")
        for name in ("backoff_factor", "backoff_max", "retry_after_max"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"RetryPolicy.{name} must be a finite, non-negative number")

    def count(self, kind: Attempt) -> int:
        """Tries of this kind so far: the n of the n-th retry once incremented."""
        return self.failures if kind is Attempt.FAILURE else self.rate_limited

    def total(self, kind: Attempt) -> int:
        """The budget of this kind."""
        return self.total_failures if kind is Attempt.FAILURE else self.total_rate_limited

    def increment(self, kind: Attempt) -> RetryPolicy:
        """The policy after one more try of this kind; this one is left as it was, so the
        client's pristine policy can start every call."""
        if kind is Attempt.FAILURE:
            return dataclasses.replace(self, failures=self.failures + 1)
        return dataclasses.replace(self, rate_limited=self.rate_limited + 1)

    def exhausted(self, kind: Attempt) -> bool:
        """True once the tries of this kind exceed its budget: the call must give up."""
        return self.count(kind) > self.total(kind)

    def backoff(self, kind: Attempt, rng: Rng = random.random) -> float:
        """Seconds to wait, with full jitter, before the retry this policy has counted.

        Full jitter (a uniform draw up to the exponential cap) rather than the cap itself:
        clients that failed together would otherwise retry together and fail together
        again.
        """
        n = max(1, self.count(kind))
        # Bounded exponent: 2.0 ** 1024 overflows, and the cap is reached long before.
        cap = min(self.backoff_max, self.backoff_factor * 2.0 ** min(n - 1, 1023))
        return cap * rng()

    def wait(
        self,
        kind: Attempt,
        retry_after: str | None,
        *,
        now: float,
        rng: Rng = random.random,
        what: str = "the call",
    ) -> Wait:
        """How long to wait before the retry this policy has counted.

        ``Retry-After`` wins whenever D·engage sends a usable one: the server knows better
        than our guess when it can take the call. ``now`` is the time (seconds since the
        epoch) an HTTP-date value is measured from; ``what`` names the call in warnings.
        """
        if retry_after is None:
            return Wait(self.backoff(kind, rng), honoured=False)
        seconds = _parse_retry_after(retry_after, now)
        if seconds is not None and seconds <= self.retry_after_max:
            return Wait(seconds, honoured=True)
        if seconds is not None:  # finite and too long: wait, but only as long as we allow
            return Wait(
                self.retry_after_max,
                honoured=True,
                warning=(
                    f"D·engage asked to wait {quote(retry_after, _QUOTE_VALUE)} before "
                    f"retrying {what} (Retry-After); waiting {self.retry_after_max:g} s, "
                    "the most the target waits for one try."
                ),
            )
        return Wait(
            self.backoff(kind, rng),
            honoured=False,
            warning=(
                f"Ignoring the unusable Retry-After {quote(repr(retry_after), _QUOTE_VALUE)} "
                f"in D·engage's answer to {what}; backing off as usual."
            ),
        )


def _parse_retry_after(value: str, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: a number of seconds or an HTTP date
    (RFC 9110). None when it is neither, negative, or not finite, so that a value we cannot
    trust never decides how long the run sleeps."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # a date without a zone could be hours off either way
            return None
        seconds = max(0.0, when.timestamp() - now)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
