"""The pure mapping and validation rules, value by value."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from target_dengage.mapping import (
    StreamConfigError,
    StreamPlan,
    build_row,
    plan_stream,
    validate_column_config,
)


def _plan(
    properties: tuple[str, ...] = ("id", "email", "gsm", "name", "birth_date", "tier"),
    key: tuple[str, ...] = ("id",),
    *,
    mapping: dict[str, str] | None = None,
    insert: bool = True,
) -> StreamPlan:
    return plan_stream(
        "s",
        properties,
        key,
        {"id": "contact_key"} if mapping is None else mapping,
        ["tier"],
        insert_if_not_exists=insert,
    )


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("email", "  Jane.DOE@Example.com ", "jane.doe@example.com"),
        ("gsm", "+90 (535) 123-45-67", "905351234567"),
        ("gsm", 905351234567, "905351234567"),
        ("gsm", Decimal("905351234567"), "905351234567"),
        ("birth_date", "1990-02-03", "1990-02-03"),
        ("birth_date", "1990-02-03T23:59:59Z", "1990-02-03"),
        ("birth_date", "1990-02-03T10:00:00+05:00", "1990-02-03"),
        ("birth_date", dt.datetime(1990, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "1990-02-03"),
        ("birth_date", dt.date(1990, 2, 3), "1990-02-03"),
        ("email_permission", "yes", True),
        ("email_permission", "FALSE", False),
        ("email_permission", 1, True),
        ("email_permission", 0, False),
        ("email_permission", Decimal("1"), True),
        ("gsm_status", "p", "P"),
        ("contact_status", " a ", "A"),
        ("contact_key", 42, "42"),
        ("contact_key", Decimal("42.0"), "42"),
        ("tier", Decimal("1.50"), "1.50"),
        ("tier", True, "true"),
        ("tier", {"a": [1, 2]}, '{"a":[1,2]}'),
        ("name", "Şule", "Şule"),
    ],
)
def test_values_are_normalised(column: str, value: object, expected: object) -> None:
    plan = _plan(
        properties=("id", column) if column != "contact_key" else ("id",),
        mapping={"id": "contact_key"} if column != "contact_key" else {},
    )
    row, problems = build_row(
        plan, {"id": value if column == "contact_key" else "k", column: value}
    )
    assert problems is None
    assert row[column] == expected


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("email", "not-an-email", "not an email address"),
        ("email", "a@b", "not an email address"),
        ("email", "x" * 250 + "@example.com", "limit is 255"),
        ("email", 12, "must be an email address, not a number"),
        ("gsm", "9" * 21, "21 digits; the limit is 20"),
        ("gsm", "call me", "only digits"),
        ("gsm", "٩٠٥", "only digits"),
        ("gsm", True, "boolean"),
        ("email_permission", "maybe", "true/false"),
        ("contact_key", {"a": 1}, "not an object"),
        ("email_permission", 2, "true/false"),
        ("email_permission", Decimal("sNaN"), "true/false"),
        ("gsm", Decimal("sNaN"), "phone number"),
        ("gsm_status", "X", "must be A or P"),
        ("birth_date", "03/02/1990", "not a date"),
        ("birth_date", "1990-02-30", "not a date"),
        ("name", "x" * 101, "limit is 100"),
        ("tier", Decimal("NaN"), "not a finite number"),
        ("name", "a\x00b", "NUL"),
        ("email", "a\x00@b.co", "NUL"),
        ("tier", "\ud800", "surrogate"),
    ],
)
def test_invalid_values_are_named(column: str, value: object, message: str) -> None:
    if column == "contact_key":
        plan, record = _plan(properties=("id",)), {"id": value}
    else:
        plan, record = _plan(properties=("id", column)), {"id": "k", column: value}
    row, problems = build_row(plan, record)
    assert problems is not None
    assert [p.column for p in problems] == [column]
    assert message in problems[0].message
    assert column not in row


def test_nulls_and_blanks_are_absent_not_cleared() -> None:
    row, problems = build_row(_plan(), {"id": "k", "email": None, "gsm": "  ", "name": ""})
    assert problems is None
    assert row == {"contact_key": "k"}


def test_missing_and_blank_contact_key() -> None:
    for record in ({"email": "a@b.co"}, {"id": "  ", "email": "a@b.co"}, {"id": None}):
        _, problems = build_row(_plan(), record)
        assert problems is not None
        assert problems[0].column == "contact_key"


def test_plan_drops_unknown_and_platform_columns() -> None:
    plan = _plan(properties=("id", "email", "shoe_size", "is_email_active", "tier"))
    assert [c for _, c, _ in plan.steps] == ["contact_key", "email", "tier"]
    assert plan.dropped == ("shoe_size",)
    assert plan.platform_dropped == ("is_email_active",)


def test_plan_infers_contact_key_from_single_key_property() -> None:
    plan = _plan(properties=("customer_id", "email"), key=("customer_id",), mapping={})
    assert plan.key_inferred
    assert plan.steps[0][:2] == ("customer_id", "contact_key")
    assert plan.dropped == ()


def test_plan_refuses_streams_without_contact_key() -> None:
    with pytest.raises(StreamConfigError, match="has no contact_key"):
        _plan(properties=("a", "b"), key=("a", "b"), mapping={})
    with pytest.raises(StreamConfigError, match="has no contact_key"):
        _plan(properties=("email",), key=(), mapping={})


def test_plan_refuses_two_sources_for_one_column() -> None:
    with pytest.raises(StreamConfigError, match="both feed column 'email'"):
        _plan(properties=("id", "email", "mail"), mapping={"id": "contact_key", "mail": "email"})


def test_plan_refuses_rename_with_insert() -> None:
    with pytest.raises(StreamConfigError, match="new_contact_key"):
        _plan(properties=("id", "new_contact_key"))
    assert _plan(properties=("id", "new_contact_key"), insert=False).steps


def test_column_config_validation() -> None:
    assert validate_column_config({"a": "email", "b": "tier"}, ["tier"]) == []
    errors = validate_column_config({"a": "email", "b": "email", "c": "nope"}, ["gsm"])
    assert any("both 'a' and 'b' map to 'email'" in e for e in errors)
    assert any("'nope' is neither" in e for e in errors)
    assert any("'gsm' is a built-in" in e for e in errors)
