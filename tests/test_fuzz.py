"""Hostile input: property-based tests of the value rules, and fuzzed Singer input."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import MAPPING, contact, record, run_target, schema, state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target_dengage.contract import STANDARD_COLUMNS
from target_dengage.emulator import DengageEmulator, value_problem
from target_dengage.mapping import build_row, plan_stream

CUSTOM = "city"
COLUMNS = [*sorted(set(STANDARD_COLUMNS) - {"contact_key", "new_contact_key"}), CUSTOM]

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([None, dt.timezone.utc])),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
#: Values that look like what the columns want, so the accepting paths get exercised too.
NEAR_VALID = st.one_of(
    st.from_regex(r"\s?[A-Za-z0-9._+İ-]{0,12}@([A-Za-z0-9-]{0,6}\.){0,3}[A-Za-z]{0,4}\s?"),
    st.from_regex(r"[+ ()0-9-]{0,26}", fullmatch=True),
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})?)?"
    ),
    st.sampled_from(["true", "FALSE", "yes", "No", "1", "0", "a", "P", " p ", "", "  "]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=120),
    st.text(alphabet=st.sampled_from("a\x00İß\ud800🌍 "), max_size=8),
)


def _plan(column: str):
    return plan_stream(
        "s", ("id", column), ("id",), {"id": "contact_key"}, [CUSTOM], insert_if_not_exists=True
    )


PLANS = {column: _plan(column) for column in COLUMNS}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(column=st.sampled_from(COLUMNS), value=st.one_of(ANY_VALUE, NEAR_VALID))
def test_whatever_the_target_accepts_the_emulator_accepts(column: str, value: object) -> None:
    row, problems = build_row(PLANS[column], {"id": "k", column: value})  # never raises
    if column in row:
        sent = json.loads(json.dumps(row[column]))  # what goes over the wire
        assert value_problem(column, sent) is None, (column, value, sent)
    else:
        assert problems is None or [p.column for p in problems] == [column]


@settings(max_examples=200, deadline=None)
@given(key=st.one_of(ANY_VALUE, st.text(max_size=300)))
def test_contact_keys_are_either_valid_or_named_invalid(key: object) -> None:
    row, problems = build_row(PLANS["email"], {"id": key})
    if problems is None:
        assert value_problem("contact_key", row["contact_key"]) is None
    else:
        assert problems[0].column == "contact_key"
        assert "contact_key" not in row


BIG = "x" * (10 * 1024 * 1024)
LONE_SURROGATE = (
    '{"type": "RECORD", "stream": "contacts", "record": {"id": "c2", "first_name": "\\ud800"}}'
)


def _fuzz_cases() -> list[tuple[str, list[Any]]]:
    rng = random.Random(7)
    random_bytes = bytes(rng.randrange(256) for _ in range(300)).decode("latin-1")
    good = [schema(), record(**contact(1)), state({"position": 1})]
    bad_name = {**contact(2), "first_name": BIG}
    bad_key = {**contact(2), "id": BIG}
    return [
        ("random bytes", [*good, random_bytes.replace("\n", " ")]),
        ("truncated line", [*good, json.dumps(record(**contact(2)))[:40]]),
        ("10 MB name", [*good, record(**bad_name)]),
        ("10 MB contact key", [*good, record(**bad_key)]),
        ("record is a number", [*good, {"type": "RECORD", "stream": "contacts", "record": 5}]),
        ("stream is a number", [*good, {"type": "RECORD", "stream": 3, "record": {}}]),
        ("schema is text", [*good, {"type": "SCHEMA", "stream": "x", "schema": "nope"}]),
        ("no type", [*good, {"stream": "contacts"}]),
        ("json array", [*good, "[1, 2, 3]"]),
        ("email is a list", [*good, record(**{**contact(2), "email": [1, 2]})]),
        ("NUL in a name", [*good, record(**{**contact(2), "first_name": "Zo\u00eb\u0000"})]),
        ("lone surrogate", [*good, LONE_SURROGATE]),
    ]


@pytest.mark.parametrize("stop_on_error", [True, False])
@pytest.mark.parametrize(("name", "messages"), _fuzz_cases(), ids=[c[0] for c in _fuzz_cases()])
def test_fuzzed_input_fails_clearly_or_rejects_the_record(
    name: str,
    messages: list[Any],
    stop_on_error: bool,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config = {**base_config, "column_mapping": MAPPING, "stop_on_error": stop_on_error}
    after = [record(**contact(3)), state({"position": 3})]
    run = run_target(config, [*messages, *after], tmp_path)

    assert "Traceback" not in run.stderr, name
    assert len(run.stderr) < 200_000  # a 10 MB value never lands in the log
    if run.returncode == 0:
        assert not stop_on_error
        assert run.states == [{"position": 3}]
        rejected = Path(config["rejected_records_path"]).read_text().splitlines()
        assert len(rejected) == 1
        assert {"c1", "c3"} <= set(emulator.contacts())
    else:
        assert run.returncode == 1
        assert "Input line" in run.stderr or "Invalid record" in run.stderr or "UTF-8" in run.stderr
        assert run.stdout == ""  # nothing was confirmed before the bad line


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
STREAM = st.one_of(st.just("contacts"), st.text(max_size=6), st.integers(), st.none())


@st.composite
def _message(draw: st.DrawFn, batch_dir: Path) -> dict[str, Any]:
    kind = draw(st.sampled_from(["RECORD", "SCHEMA", "STATE", "BATCH", "ACTIVATE_VERSION", "FOO"]))
    message: dict[str, Any] = {"type": kind}
    if draw(st.booleans()):
        message["stream"] = draw(STREAM)
    if kind == "RECORD":
        message["record"] = draw(st.one_of(st.just(contact(draw(st.integers(1, 9)))), JSON_VALUE))
    elif kind == "SCHEMA":
        message.update(
            draw(st.one_of(st.just(schema()), st.fixed_dictionaries({"schema": JSON_VALUE})))
        )
    elif kind == "STATE":
        message["value"] = draw(JSON_VALUE)
    elif kind == "BATCH":
        message["encoding"] = draw(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "format": st.sampled_from(["jsonl", "parquet", "csv", 5]),
                        "compression": st.sampled_from(["gzip", "none", None, "zstd"]),
                    }
                ),
                JSON_VALUE,
            )
        )
        files = st.sampled_from(
            [(batch_dir / "good.jsonl").as_uri(), (batch_dir / "missing.jsonl").as_uri(), 7]
        )
        message["manifest"] = draw(st.one_of(st.lists(files, max_size=2), JSON_VALUE))
    elif kind == "ACTIVATE_VERSION":
        message["version"] = draw(st.one_of(st.integers(), JSON_VALUE))
    return message


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), stop_on_error=st.booleans())
def test_fuzzed_message_shapes_end_clearly(
    data: st.DataObject,
    stop_on_error: bool,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Any sequence of message shapes, BATCH and ACTIVATE_VERSION included: the run ends
    (RUN_TIMEOUT bounds each example), with exit 0 or one clear error, never a traceback."""
    (tmp_path / "good.jsonl").write_text(json.dumps(contact(5)) + "\n")
    messages = data.draw(st.lists(_message(tmp_path), max_size=5))
    config = {**base_config, "column_mapping": MAPPING, "stop_on_error": stop_on_error}
    run = run_target(config, [schema(), *messages, state({"end": True})], tmp_path)

    assert "Traceback" not in run.stderr
    assert run.returncode in (0, 1), run.stderr[-2000:]
    if run.returncode == 1:
        assert "| ERROR" in run.stderr
