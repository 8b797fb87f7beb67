"""Turn Singer records into D·engage ``master_contact`` rows.

Everything here is pure (no I/O, no logging) so it is cheap to test and cheap to run: a
stream's columns are resolved once when its SCHEMA arrives (:func:`plan_stream`), and each
record then only walks a precompiled tuple of ``(source, column, coercer)`` steps
(:func:`build_row`). The rules follow ``shared/dengage-api/CONTRACT.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

CONTACT_KEY = "contact_key"
NEW_CONTACT_KEY = "new_contact_key"

#: Writable columns of master_contact, with their value kind.
STANDARD_COLUMNS: Mapping[str, str] = {
    CONTACT_KEY: "key",
    "contact_status": "status",
    "email": "email",
    "email_permission": "boolean",
    "email_status": "status",
    "gsm": "gsm",
    "gsm_permission": "boolean",
    "gsm_status": "status",
    "name": "text100",
    "surname": "text100",
    "gender": "text100",
    "birth_date": "date",
    "subscription_date": "date",
    NEW_CONTACT_KEY: "key",
}

#: Maintained by D·engage itself; sending them is refused by the API.
PLATFORM_COLUMNS = frozenset(
    {"email_status_reason", "gsm_status_reason", "is_email_active", "is_email_engaged"}
)

CONTACT_KEY_MAX = 255
EMAIL_MAX = 255
GSM_MAX = 20
TEXT_MAX = 100
CUSTOM_MAX = 4000
MASK_LONG = 40
MASK_KEEP_DOMAIN = 64

_EMAIL_RE = re.compile(r"[^@\s]+@(?:[^@\s.]+\.)+[^@\s.]+")
#: Separators people type into phone numbers; removed before the digits-only check.
_GSM_SEPARATORS = str.maketrans("", "", " -().+/")
_TRUE_WORDS = frozenset({"true", "yes", "1", "y", "t"})
_FALSE_WORDS = frozenset({"false", "no", "0", "n", "f"})

Value = str | bool


class Absent(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a coercer for a value that means "no value" (blank text).

    Blank strings are how warehouses often spell NULL; treating them as absent keeps the
    rule that a record never clears a column it has no real value for.
    """


class InvalidValueError(ValueError):
    """A value that cannot be made valid for its column."""


def _kind(value: object) -> str:
    """How a value is described in messages: its JSON kind, never its content (PII)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "text"
    return type(value).__name__


def _clean(text: str) -> str:
    """Refuse what no text column can hold: NUL characters (and lone surrogates)."""
    if "\x00" in text:
        raise InvalidValueError("contains a NUL character (\\u0000)")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise InvalidValueError("contains an unpaired UTF-16 surrogate") from None
    return text


def _text(value: object) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise Absent
        return _clean(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidValueError("is not a finite number")
        return str(int(value)) if value == value.to_integral_value() else str(value)
    if isinstance(value, float):
        return _text(Decimal(repr(value)))
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise InvalidValueError(f"must be text, not {_kind(value)}")


def coerce_key(value: object) -> str:
    """Contact keys: text or whole numbers (``42`` and ``42.0`` both become ``"42"``)."""
    if isinstance(value, bool | dict | list):
        raise InvalidValueError(f"must be text or a whole number, not {_kind(value)}")
    try:
        text = _text(value).strip()
    except Absent:
        raise InvalidValueError("is blank") from None
    if len(text) > CONTACT_KEY_MAX:
        raise InvalidValueError(f"is {len(text)} characters long; the limit is {CONTACT_KEY_MAX}")
    return text


def coerce_email(value: object) -> str:
    """Trimmed and lowercased, as D·engage stores it, so duplicates compare equal."""
    if not isinstance(value, str):
        raise InvalidValueError(f"must be an email address, not {_kind(value)}")
    # Lowercased first: that is what D·engage stores, and lowercasing can lengthen text.
    text = _clean(value.strip()).lower()
    if not text:
        raise Absent
    if len(text) > EMAIL_MAX:
        raise InvalidValueError(f"is {len(text)} characters long; the limit is {EMAIL_MAX}")
    if not _EMAIL_RE.fullmatch(text):
        raise InvalidValueError("is not an email address")
    return text


def coerce_boolean(value: object) -> bool:
    """Booleans as warehouses spell them: true/false, 1/0, yes/no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Decimal) and not value.is_finite():
        raise InvalidValueError("must be true/false, 1/0 or yes/no")
    if isinstance(value, int | Decimal | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        if not word:
            raise Absent
    raise InvalidValueError("must be true/false, 1/0 or yes/no")


def coerce_date(value: object) -> str:
    """Dates and date-times become ``yyyy-MM-dd`` (the date as written, no time zone shift)."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str):
        raise InvalidValueError(f"must be a date, not {_kind(value)}")
    text = value.strip()
    if not text:
        raise Absent
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text).isoformat()
        return coerce_date(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise InvalidValueError("is not a date (expected yyyy-MM-dd)") from None


def coerce_gsm(value: object) -> str:
    """Phone numbers are sent as digits only (country code included, no ``+``)."""
    if isinstance(value, bool):
        raise InvalidValueError("must be a phone number, not a boolean")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, Decimal) and value.is_finite() and value == int(value):
        text = str(int(value))
    elif isinstance(value, str):
        if not value.strip():
            raise Absent
        text = value.translate(_GSM_SEPARATORS)
    else:
        raise InvalidValueError(f"must be a phone number, not {_kind(value)}")
    if not text.isdigit() or not text.isascii():
        raise InvalidValueError("must contain only digits (with country code)")
    if len(text) > GSM_MAX:
        raise InvalidValueError(f"has {len(text)} digits; the limit is {GSM_MAX}")
    return text


def coerce_status(value: object) -> str:
    """Statuses are ``A`` (active) or ``P`` (passive), in any case."""
    if isinstance(value, str):
        word = value.strip().upper()
        if word in ("A", "P"):
            return word
        if not word:
            raise Absent
    raise InvalidValueError("must be A or P")


def coerce_text100(value: object) -> str:
    text = _text(value)
    if len(text) > TEXT_MAX:
        raise InvalidValueError(f"is {len(text)} characters long; the limit is {TEXT_MAX}")
    return text


def coerce_custom(value: object) -> str:
    """Custom columns are sent as text; objects and arrays as compact JSON."""
    text = (
        json.dumps(value, separators=(",", ":"), default=str)
        if isinstance(value, dict | list)
        else _text(value)
    )
    if len(text) > CUSTOM_MAX:
        raise InvalidValueError(f"is {len(text)} characters long; the limit is {CUSTOM_MAX}")
    return text


Coercer = Callable[[object], Value]

_COERCERS: Mapping[str, Coercer] = {
    "key": coerce_key,
    "status": coerce_status,
    "email": coerce_email,
    "boolean": coerce_boolean,
    "gsm": coerce_gsm,
    "text100": coerce_text100,
    "date": coerce_date,
}


class StreamConfigError(ValueError):
    """A stream that cannot be loaded as configured (raised when its SCHEMA arrives)."""


@dataclass(frozen=True)
class StreamPlan:
    """How one stream's records become rows, decided once per SCHEMA."""

    stream: str
    steps: tuple[tuple[str, str, Coercer], ...]
    key_source: str
    dropped: tuple[str, ...] = ()
    platform_dropped: tuple[str, ...] = ()
    key_inferred: bool = False


@dataclass(frozen=True)
class FieldProblem:
    """One invalid value: which column, from which source property, and why."""

    column: str
    source: str
    message: str


def validate_column_config(
    column_mapping: Mapping[str, str], custom_columns: Iterable[str]
) -> list[str]:
    """Check the user's column settings once, at start, so mistakes surface before any data."""
    errors = []
    custom = set(custom_columns)
    for name in sorted(custom):
        if name in STANDARD_COLUMNS or name in PLATFORM_COLUMNS:
            errors.append(
                f"custom_columns: '{name}' is a built-in master_contact column; list only the "
                "account's own import-enabled custom columns"
            )
    targets: dict[str, str] = {}
    for source, column in column_mapping.items():
        if not isinstance(column, str):
            errors.append(f"column_mapping: '{source}' must map to a column name (text)")
            continue
        if column in PLATFORM_COLUMNS:
            errors.append(
                f"column_mapping: '{source}' → '{column}': '{column}' is maintained by "
                "D·engage and cannot be written"
            )
        elif column not in STANDARD_COLUMNS and column not in custom:
            errors.append(
                f"column_mapping: '{source}' → '{column}': '{column}' is neither a "
                "master_contact column nor listed in custom_columns"
            )
        if column in targets:
            errors.append(
                f"column_mapping: both '{targets[column]}' and '{source}' map to '{column}'"
            )
        targets[column] = source
    return errors


def plan_stream(
    stream: str,
    properties: Iterable[str],
    key_properties: Sequence[str],
    column_mapping: Mapping[str, str],
    custom_columns: Iterable[str],
    *,
    insert_if_not_exists: bool,
) -> StreamPlan:
    """Resolve which source property feeds which column, or explain why the stream can't load."""
    custom = frozenset(custom_columns)
    steps: list[tuple[str, str, Coercer]] = []
    by_column: dict[str, str] = {}
    dropped: list[str] = []
    platform: list[str] = []
    for source in properties:
        column = column_mapping.get(source, source)
        if column in PLATFORM_COLUMNS:
            platform.append(source)
            continue
        if column in STANDARD_COLUMNS:
            coercer = _COERCERS[STANDARD_COLUMNS[column]]
        elif column in custom:
            coercer = coerce_custom
        else:
            dropped.append(source)
            continue
        if column in by_column:
            raise StreamConfigError(
                f"Stream '{stream}': properties '{by_column[column]}' and '{source}' both "
                f"feed column '{column}'. Map one of them elsewhere with column_mapping, or "
                f'drop it with a stream map ("{source}": "__NULL__").'
            )
        by_column[column] = source
        steps.append((source, column, coercer))

    key_inferred = False
    if CONTACT_KEY not in by_column:
        if len(key_properties) != 1:
            raise StreamConfigError(
                f"Stream '{stream}' has no contact_key: no property is named or mapped to "
                f"'contact_key', and its key properties {list(key_properties)} are not exactly "
                'one. Map one, e.g. column_mapping: {"customer_id": "contact_key"}, or with a '
                'stream map: {"contact_key": "customer_id"}.'
            )
        key_source = key_properties[0]
        by_column[CONTACT_KEY] = key_source
        steps.insert(0, (key_source, CONTACT_KEY, coerce_key))
        if key_source in dropped:
            dropped.remove(key_source)
        key_inferred = True

    if NEW_CONTACT_KEY in by_column and insert_if_not_exists:
        raise StreamConfigError(
            f"Stream '{stream}' writes new_contact_key (from '{by_column[NEW_CONTACT_KEY]}'), "
            "which D·engage refuses together with insertIfNotExists; set "
            "insert_if_not_exists: false for renames."
        )
    return StreamPlan(
        stream=stream,
        steps=tuple(steps),
        key_source=by_column[CONTACT_KEY],
        dropped=tuple(dropped),
        platform_dropped=tuple(platform),
        key_inferred=key_inferred,
    )


def build_row(
    plan: StreamPlan, record: Mapping[str, object]
) -> tuple[dict[str, Value], list[FieldProblem] | None]:
    """Map and validate one record.

    The row holds only columns with a real value: a null or blank never reaches the API, so
    a record never clears what D·engage already has.
    """
    row: dict[str, Value] = {}
    problems: list[FieldProblem] | None = None
    for source, column, coercer in plan.steps:
        value = record.get(source)
        if value is None:
            continue
        try:
            row[column] = coercer(value)
        except Absent:
            continue
        except InvalidValueError as exc:
            if problems is None:
                problems = []
            problems.append(FieldProblem(column, source, str(exc)))
    if CONTACT_KEY not in row and not any(p.column == CONTACT_KEY for p in problems or ()):
        problems = [
            FieldProblem(CONTACT_KEY, plan.key_source, "is missing"),
            *(problems or ()),
        ]
    return row, problems


def mask(value: object) -> str:
    """Hide personal data in log lines while keeping enough to recognise it.

    ``jane.doe@example.com`` → ``j***@example.com``; ``905351234567`` → ``90***67``. The result
    is short whatever the input (a 10 MB value must not become a 10 MB log line).
    """
    text = str(value) if not isinstance(value, str) else value
    if "@" in text:
        local, _, domain = text.partition("@")
        return f"{local[:1]}***@{domain[:MASK_KEEP_DOMAIN]}"
    if len(text) <= 4:
        return "*" * len(text)
    hidden = f"***({len(text)} chars)***" if len(text) > MASK_LONG else "***"
    return f"{text[:2]}{hidden}{text[-2:]}"


#: An email, or a phone-like run of 10+ digits (single spaces or dashes between them) that
#: is not part of a longer token such as a UUID.
_PII_RE = re.compile(r"[^\s@'\"<>(),;:]+@[^\s@'\"<>(),;:]+|(?<![\w-])\+?\d(?:[ -]?\d){9,}(?![\w-])")


def scrub(text: str) -> str:
    """Mask anything that looks like an email or a phone number in free text, e.g. an API
    message that quotes the value it refused."""
    return _PII_RE.sub(lambda m: mask(m.group()), text)
