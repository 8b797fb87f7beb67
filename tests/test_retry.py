"""The retry policy on its own: budgets, backoff and Retry-After, without HTTP or clocks."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from target_dengage.retry import Attempt, RetryPolicy, Wait

NOW = datetime(2024, 5, 17, 12, 0, 0, tzinfo=timezone.utc).timestamp()
ALMOST_ONE = 0.999_999


def zero() -> float:
    return 0.0


def almost_one() -> float:
    return ALMOST_ONE


def half() -> float:
    return 0.5


def _after(policy: RetryPolicy, kind: Attempt, times: int) -> RetryPolicy:
    for _ in range(times):
        policy = policy.increment(kind)
    return policy


# -- budgets -----------------------------------------------------------------------------


def test_defaults() -> None:
    policy = RetryPolicy(total_failures=5)
    assert policy.total_rate_limited == 60
    assert policy.backoff_factor == 1.0
    assert policy.backoff_max == 60.0
    assert policy.retry_after_max == 900.0
    assert (policy.failures, policy.rate_limited) == (0, 0)


def test_failures_are_exhausted_only_past_their_budget() -> None:
    policy = RetryPolicy(total_failures=3)
    for n in range(1, 4):
        policy = policy.increment(Attempt.FAILURE)
        assert policy.failures == n
        assert not policy.exhausted(Attempt.FAILURE)
    policy = policy.increment(Attempt.FAILURE)
    assert policy.exhausted(Attempt.FAILURE)
    assert not policy.exhausted(Attempt.RATE_LIMITED)


def test_no_retries_means_the_first_failure_ends_the_call() -> None:
    policy = RetryPolicy(total_failures=0)
    assert not policy.exhausted(Attempt.FAILURE)
    assert policy.increment(Attempt.FAILURE).exhausted(Attempt.FAILURE)


def test_rate_limits_have_their_own_budget() -> None:
    policy = _after(RetryPolicy(total_failures=0, total_rate_limited=60), Attempt.RATE_LIMITED, 60)
    assert policy.rate_limited == 60
    assert policy.failures == 0
    assert not policy.exhausted(Attempt.RATE_LIMITED)
    assert not policy.exhausted(Attempt.FAILURE)
    assert policy.increment(Attempt.RATE_LIMITED).exhausted(Attempt.RATE_LIMITED)


def test_kinds_count_separately() -> None:
    policy = RetryPolicy(total_failures=2, total_rate_limited=2)
    policy = policy.increment(Attempt.FAILURE).increment(Attempt.RATE_LIMITED)
    policy = policy.increment(Attempt.RATE_LIMITED).increment(Attempt.RATE_LIMITED)
    assert (policy.failures, policy.rate_limited) == (1, 3)
    assert policy.count(Attempt.FAILURE) == 1
    assert policy.count(Attempt.RATE_LIMITED) == 3
    assert not policy.exhausted(Attempt.FAILURE)
    assert policy.exhausted(Attempt.RATE_LIMITED)


# -- immutability ------------------------------------------------------------------------


def test_increment_returns_a_new_policy_and_leaves_the_old_one() -> None:
    pristine = RetryPolicy(total_failures=5)
    after = pristine.increment(Attempt.FAILURE)
    assert after is not pristine
    assert (pristine.failures, pristine.rate_limited) == (0, 0)
    assert (after.failures, after.rate_limited) == (1, 0)
    assert after.total_failures == pristine.total_failures
    limited = pristine.increment(Attempt.RATE_LIMITED)
    assert (limited.failures, limited.rate_limited) == (0, 1)
    assert pristine == RetryPolicy(total_failures=5)


def test_policy_is_frozen() -> None:
    policy = RetryPolicy(total_failures=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.failures = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"total_failures": -1},
        {"total_rate_limited": -1},
        {"backoff_factor": -1.0},
        {"backoff_max": float("inf")},
        {"retry_after_max": float("nan")},
    ],
)
def test_a_bad_budget_is_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**{"total_failures": 5, **changes})  # type: ignore[arg-type]


# -- backoff with full jitter --------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Attempt))
def test_full_jitter_may_wait_nothing(kind: Attempt) -> None:
    policy = _after(RetryPolicy(total_failures=10), kind, 4)
    assert policy.backoff(kind, rng=zero) == 0.0


@pytest.mark.parametrize("kind", list(Attempt))
def test_full_jitter_stays_under_a_cap_that_doubles_then_stops(kind: Attempt) -> None:
    policy = RetryPolicy(total_failures=20, total_rate_limited=20)
    caps = []
    for _ in range(9):
        policy = policy.increment(kind)
        wait = policy.backoff(kind, rng=almost_one)
        cap = wait / ALMOST_ONE
        assert wait < cap
        caps.append(round(cap, 6))
    assert caps == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_factor_and_max_shape_the_cap() -> None:
    policy = RetryPolicy(total_failures=10, backoff_factor=0.5, backoff_max=3.0)
    waits = []
    for _ in range(5):
        policy = policy.increment(Attempt.FAILURE)
        waits.append(policy.backoff(Attempt.FAILURE, rng=half))
    assert waits == [0.25, 0.5, 1.0, 1.5, 1.5]


def test_each_kind_backs_off_from_its_own_count() -> None:
    policy = _after(RetryPolicy(total_failures=10), Attempt.FAILURE, 4)
    policy = policy.increment(Attempt.RATE_LIMITED)
    assert policy.backoff(Attempt.FAILURE, rng=half) == 4.0
    assert policy.backoff(Attempt.RATE_LIMITED, rng=half) == 0.5


def test_a_long_history_does_not_overflow_the_cap() -> None:
    policy = RetryPolicy(total_failures=5000, failures=5000)
    assert policy.backoff(Attempt.FAILURE, rng=half) == 30.0


def test_wait_without_retry_after_is_the_backoff() -> None:
    policy = _after(RetryPolicy(total_failures=5), Attempt.FAILURE, 3)
    assert policy.wait(Attempt.FAILURE, None, now=NOW, rng=half) == Wait(2.0, False, None)


# -- Retry-After -----------------------------------------------------------------------------


def _first(kind: Attempt = Attempt.FAILURE) -> RetryPolicy:
    return RetryPolicy(total_failures=5).increment(kind)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("1.5", 1.5), (" 7 ", 7.0), ("0", 0.0), ("900", 900.0)],
)
@pytest.mark.parametrize("kind", list(Attempt))
def test_retry_after_in_seconds_is_honoured_exactly(
    value: str, seconds: float, kind: Attempt
) -> None:
    wait = _first(kind).wait(kind, value, now=NOW, rng=almost_one)
    assert wait == Wait(seconds, honoured=True, warning=None)


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    when = datetime.fromtimestamp(NOW, tz=timezone.utc) + timedelta(seconds=120)
    value = format_datetime(when, usegmt=True)
    assert value.endswith(" GMT")
    wait = _first().wait(Attempt.FAILURE, value, now=NOW, rng=almost_one)
    assert wait == Wait(120.0, honoured=True, warning=None)


def test_retry_after_with_a_numeric_zone_is_read() -> None:
    wait = _first().wait(Attempt.FAILURE, "Fri, 17 May 2024 14:01:00 +0200", now=NOW)
    assert wait == Wait(60.0, honoured=True, warning=None)


def test_retry_after_date_in_the_past_means_now() -> None:
    wait = _first().wait(Attempt.FAILURE, "Fri, 17 May 2024 11:00:00 GMT", now=NOW, rng=half)
    assert wait == Wait(0.0, honoured=True, warning=None)


def test_retry_after_over_the_cap_is_capped_with_a_warning() -> None:
    policy = RetryPolicy(total_failures=5, retry_after_max=900.0).increment(Attempt.FAILURE)
    wait = policy.wait(Attempt.FAILURE, "86400", now=NOW, rng=half, what="POST /x")
    assert wait.seconds == 900.0
    assert wait.honoured
    assert wait.warning == (
        "D·engage asked to wait 86400 before retrying POST /x (Retry-After); waiting 900 s, "
        "the most the target waits for one try."
    )


def test_retry_after_date_over_the_cap_is_capped() -> None:
    wait = _first().wait(Attempt.FAILURE, "Sat, 18 May 2024 12:00:00 GMT", now=NOW)
    assert (wait.seconds, wait.honoured) == (900.0, True)
    assert wait.warning is not None
    assert "Sat, 18 May 2024 12:00:00 GMT" in wait.warning


@pytest.mark.parametrize(
    "value",
    [
        "-5",
        "-0.5",
        "inf",
        "-inf",
        "nan",
        "1e400",
        "soon",
        "",
        "Fri, 17 May 2024 12:02:00",  # an HTTP date without a zone
        "Fri, 17 May 2024 12:02:00 -0000",  # "-0000" says the zone is unknown
        "Fri, 99 Foo 2024 12:02:00 GMT",
    ],
)
@pytest.mark.parametrize("kind", list(Attempt))
def test_unusable_retry_after_backs_off_with_a_warning(value: str, kind: Attempt) -> None:
    policy = _after(RetryPolicy(total_failures=5), kind, 3)
    wait = policy.wait(kind, value, now=NOW, rng=half, what="POST /rest/bulk/contacts")
    assert wait.seconds == policy.backoff(kind, rng=half) == 2.0
    assert not wait.honoured
    assert wait.warning == (
        f"Ignoring the unusable Retry-After {value!r} in D·engage's answer to "
        "POST /rest/bulk/contacts; backing off as usual."
    )


def test_a_long_unusable_retry_after_is_quoted_cut_short() -> None:
    value = "later " * 100
    wait = _first().wait(Attempt.FAILURE, value, now=NOW, rng=zero)
    assert wait == Wait(0.0, False, wait.warning)
    assert wait.warning is not None
    assert wait.warning.startswith("Ignoring the unusable Retry-After 'later later")
    assert "characters in all" in wait.warning
    assert len(wait.warning) < 200


def test_wait_does_not_change_the_policy() -> None:
    policy = _first()
    before = dataclasses.replace(policy)
    policy.wait(Attempt.FAILURE, "soon", now=NOW, rng=half)
    assert policy == before
