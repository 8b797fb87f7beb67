"""Turn Singer records into D·engage ``master_contact`` rows.

Everything here is pure (no I/O, no logging) so it is cheap to test and cheap to run: a
stream's columns are resolved once when its SCHEMA arrives (:func:`plan_stream`), and each
record then only walks a precompiled tuple of ``(source, column, coercer)`` steps
(:func:`build_row`). The rules are those of ``contract`` (docs/dengage-api.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from target_dengage.contract import (
    CONTACT_KEY,
    CONTACT_KEY_MAX,
    CUSTOM_MAX,
    EMAIL_MAX,
    GSM_MAX,
    NEW_CONTACT_KEY,
    PLATFORM_COLUMNS,
    STANDARD_COLUMNS,
    TEXT_MAX,
)
from target_dengage.contract import DATE_PATTERN as _DATE_RE
from target_dengage.contract import EMAIL_PATTERN as _EMAIL_RE

#: Keys sorted, compact, UTF-8: the same row always gives the same bytes.
_SORTED_JSON = msgspec.json.Encoder(order="sorted")
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


#: Most digits of a number turned into text: more than any column holds. Checked first, in
#: constant time, because the conversion grows with the number (``1e100000000`` is 14 bytes
#: of JSON and would take hours to write out).
MAX_NUMBER_DIGITS = CUSTOM_MAX
_MAX_NUMBER_BITS = int(MAX_NUMBER_DIGITS * 3.33)
_TOO_LARGE = f"is a number too large (more than {MAX_NUMBER_DIGITS} digits)"


def _whole_or_decimal(value: Decimal, max_digits: int = MAX_NUMBER_DIGITS) -> str:
    """A finite number as text: whole numbers without a fraction or exponent."""
    if not value.is_finite():
        raise InvalidValueError("is not a finite number")
    if value.adjusted() >= max_digits:
        raise InvalidValueError(
            _TOO_LARGE
            if max_digits == MAX_NUMBER_DIGITS
            else f"is a number too large (more than {max_digits} digits)"
        )
    return str(int(value)) if value == value.to_integral_value() else str(value)


def _text(value: object) -> str:
    if type(value) is str:  # the common case first: this runs for every text cell
        if not value or value.isspace():
            raise Absent
        return value if value.isascii() and "\x00" not in value else _clean(value)
    if isinstance(value, str):
        return _text(str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > _MAX_NUMBER_BITS:
            raise InvalidValueError(_TOO_LARGE)
        return str(value)
    if isinstance(value, Decimal):
        return _whole_or_decimal(value)
    if isinstance(value, float):
        return _text(Decimal(repr(value)))
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise InvalidValueError(f"must be text, not {_kind(value)}")


def coerce_key(value: object) -> str:
    """Contact keys: text or whole numbers (``42`` and ``42.0`` both become ``"42"``)."""
    if isinstance(value, bool | dict | list):
        raise InvalidValueError(f"must be text or a whole number, not {_kind(value)}")
    if isinstance(value, Decimal):
        value = _whole_or_decimal(value, CONTACT_KEY_MAX)
    try:
        text = _text(value).strip()
    except Absent:
        raise InvalidValueError("is blank") from None
    if len(text) > CONTACT_KEY_MAX:
        raise InvalidValueError(f"is {len(text)} characters long; the limit is {CONTACT_KEY_MAX}")
    return text


def coerce_email(value: object) -> str:
    """Trimmed and lowercased, as D·engage stores it, so duplicates compare equal."""
    if type(value) is str and value.isascii() and "\x00" not in value:
        text = value.strip().lower()
        if 0 < len(text) <= EMAIL_MAX and _EMAIL_RE.fullmatch(text):
            return text
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


#: singer-sdk's metadata properties; the one that marks a source delete (tap-postgres
#: LOG_BASED mode sends it).
SDC_PREFIX = "_sdc_"
DELETED_MARKER = "_sdc_deleted_at"


def deleted_at(value: object) -> bool:
    """Whether a record's ``_sdc_deleted_at`` says it was deleted: set, not null or blank.
    ``InvalidValueError`` when it is set but not a date-time (a delete cannot be trusted
    from a value that is not one)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return False
    if isinstance(value, dt.datetime | dt.date):
        return True
    if isinstance(value, str):
        try:
            dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return True
    raise InvalidValueError(f"is not a date-time ({_kind(value)})")


def coerce_date(value: object) -> str:
    """Dates and date-times become ``yyyy-MM-dd`` (the date as written, no time zone shift)."""
    if type(value) is str and len(value) == 10 and _DATE_RE.fullmatch(value):
        try:
            dt.date.fromisoformat(value)  # a real calendar day, then sent as written
        except ValueError:
            raise InvalidValueError("is not a date (expected yyyy-MM-dd)") from None
        return value
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
        text = str(value) if value.bit_length() <= _MAX_NUMBER_BITS else "x"
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        text = _whole_or_decimal(value, GSM_MAX + 1)
    elif isinstance(value, str):
        if not value or value.isspace():
            raise Absent
        text = value if value.isdigit() else value.translate(_GSM_SEPARATORS)
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
    if isinstance(value, dict | list):
        try:
            text = json.dumps(value, separators=(",", ":"), default=str)
        except RecursionError:
            raise InvalidValueError("is nested too deeply to be sent as text") from None
    else:
        text = _text(value)
    if len(text) > CUSTOM_MAX:
        raise InvalidValueError(f"is {len(text)} characters long; the limit is {CUSTOM_MAX}")
    return text


Coercer = Callable[[object], Value]
Built = tuple[dict[str, Value], "list[FieldProblem] | None"]

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
    #: The property that marks a record as a delete in the source (``_sdc_deleted_at``, as
    #: taps in LOG_BASED mode send it), when the stream has one.
    deleted_source: str | None = None
    build: Callable[[Mapping[str, object]], Built] = field(init=False, repr=False, compare=False)
    #: The record as a struct of just the properties the steps read (see :func:`record_shape`).
    shape: type[msgspec.Struct] = field(init=False, repr=False, compare=False)
    #: :attr:`build` for a record decoded into :attr:`shape`: the same row, the same problems.
    build_shape: Callable[[msgspec.Struct], Built] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "build", _compile(self, shaped=False))
        object.__setattr__(self, "shape", record_shape(self))
        object.__setattr__(self, "build_shape", _compile(self, shaped=True))

    @property
    def sources(self) -> tuple[str, ...]:
        """The properties the steps read, each once, in order."""
        return tuple(dict.fromkeys(source for source, _, _ in self.steps))


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
    deleted_source: str | None = None
    for source in properties:
        column = column_mapping.get(source, source)
        if source == DELETED_MARKER and source not in column_mapping:
            deleted_source = source
            continue
        if column in PLATFORM_COLUMNS:
            platform.append(source)
            continue
        if column in STANDARD_COLUMNS:
            coercer = _COERCERS[STANDARD_COLUMNS[column]]
        elif column in custom:
            coercer = coerce_custom
        else:
            if not source.startswith(SDC_PREFIX):  # the SDK's metadata is never data
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
        deleted_source=deleted_source,
    )


def build_row(plan: StreamPlan, record: Mapping[str, object]) -> Built:
    """Map and validate one record.

    The row holds only columns with a real value: a null or blank never reaches the API, so
    a record never clears what D·engage already has.
    """
    return plan.build(record)


def _problem(
    problems: list[FieldProblem] | None, column: str, source: str, error: Exception
) -> list[FieldProblem]:
    found = FieldProblem(column, source, str(error))
    if problems is None:
        return [found]
    problems.append(found)
    return problems


#: Inline checks that settle the usual value of a column kind without a function call; any
#: other value goes to the column's coercer, which returns exactly what these accept as is.
_FAST_PATHS: Mapping[str, tuple[str, str]] = {
    "key": (
        "type(v) is str and 0 < len(v) <= {key_max} and v.isascii() and not v[0].isspace()"
        ' and not v[-1].isspace() and "\\x00" not in v',
        "v",
    ),
    "text100": (
        'type(v) is str and 0 < len(v) <= {text_max} and "\\x00" not in v'
        " and not v.isspace() and (v.isascii() or _encodes(v))",
        "v",
    ),
    "custom": (
        'type(v) is str and 0 < len(v) <= {custom_max} and "\\x00" not in v'
        " and not v.isspace() and (v.isascii() or _encodes(v))",
        "v",
    ),
    "email": (
        'type(v) is str and v.isascii() and "\\x00" not in v'
        " and 0 < len(t := v.strip().lower()) <= {email_max} and _email_match(t)",
        "t",
    ),
    "gsm": (
        "type(v) is str and (t := v.translate(_gsm_separators)).isdigit() and t.isascii()"
        " and len(t) <= {gsm_max}",
        "t",
    ),
    "date": (
        "type(v) is str and len(v) == 10 and _date_match(v) and (v[8:] < '29' or _real_day(v))",
        "v",
    ),
    "boolean": ("v is True or v is False", "v"),
    "status": ('v == "A" or v == "P"', "v"),
}

_STEP = """
    v = {read}
    if v is not None:
        if {fast}:
            row[{column!r}] = {value}
        elif {numeric_key} and type(v) is int and -{int_max} < v < {int_max}:
            row[{column!r}] = str(v)
        else:
            try:
                row[{column!r}] = coercers[{index}](v)
            except Absent:
                pass
            except InvalidValueError as exc:
                problems = _problem(problems, {column!r}, {source!r}, exc)
"""


#: yyyy-MM-dd with a month and a day that exist in some month (year 0000 is no year).
_PLAUSIBLE_DATE_RE = re.compile(r"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])")


def _real_day(text: str) -> bool:
    """Whether a plausible date's 29th, 30th or 31st exists in its month."""
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _encodes(text: str) -> bool:
    """Whether text can be sent as UTF-8 (no unpaired surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def record_shape(plan: StreamPlan) -> type[msgspec.Struct]:
    """A struct with one field per property the plan reads (absent or null: None).

    msgspec decodes a record straight into it, skipping every other property without
    building a value for it: half the cost of decoding the record into a dict.
    """
    fields = [
        (f"p{index}", Any, msgspec.field(default=None, name=source))
        for index, source in enumerate(plan.sources)
    ]
    if plan.deleted_source is not None:
        fields.append(("deleted", Any, msgspec.field(default=None, name=plan.deleted_source)))
    return msgspec.defstruct(f"Shape_{plan.stream.encode().hex()[:40]}", fields)


def _compile(plan: StreamPlan, *, shaped: bool) -> Callable[[Any], Built]:
    """Turn a plan into one straight-line function: no loop over steps, and the usual value
    of most columns checked inline. Names are embedded with ``repr``, so any property name is
    safe in the generated source. ``shaped``: the record is a :func:`record_shape` struct,
    read by attribute, instead of a dict."""
    kinds = {coerce: kind for kind, coerce in _COERCERS.items()}
    limits = {
        "key_max": CONTACT_KEY_MAX,
        "text_max": TEXT_MAX,
        "custom_max": CUSTOM_MAX,
        "email_max": EMAIL_MAX,
        "gsm_max": GSM_MAX,
    }
    lines = ["def build(record):", "    row = {}", "    problems = None"]
    if not shaped:
        lines.insert(1, "    get = record.get")
    fields = {source: f"p{index}" for index, source in enumerate(plan.sources)}
    for index, (source, column, coercer) in enumerate(plan.steps):
        kind = kinds.get(coercer, "custom" if coercer is coerce_custom else "")
        fast, value = _FAST_PATHS.get(kind, ("False", "v"))
        lines.append(
            _STEP.format(
                read=f"record.{fields[source]}" if shaped else f"get({source!r})",
                source=source,
                column=column,
                index=index,
                fast=fast.format(**limits),
                value=value,
                numeric_key=kind == "key",
                int_max=10**18,  # far below the 255-character limit
            )
        )
    lines.append(
        f"""
    if {CONTACT_KEY!r} not in row and not (
        problems and any(p.column == {CONTACT_KEY!r} for p in problems)
    ):
        problems = [FieldProblem({CONTACT_KEY!r}, {plan.key_source!r}, "is missing"),
                    *(problems or ())]
    return row, problems
"""
    )
    namespace: dict[str, object] = {
        "coercers": tuple(coercer for _, _, coercer in plan.steps),
        "Absent": Absent,
        "InvalidValueError": InvalidValueError,
        "FieldProblem": FieldProblem,
        "_problem": _problem,
        "_encodes": _encodes,
        "_date_match": _PLAUSIBLE_DATE_RE.fullmatch,
        "_real_day": _real_day,
        "_email_match": _EMAIL_RE.fullmatch,
        "_gsm_separators": _GSM_SEPARATORS,
    }
    exec(compile("\n".join(lines), f"<row builder for {plan.stream!r}>", "exec"), namespace)  # noqa: S102
    return namespace["build"]  # type: ignore[return-value]


def payload_hash(row: Mapping[str, Value]) -> str:
    """A stable hash of what a contact's row says, apart from which contact it is (so a
    renamed contact's entry still matches its payload)."""
    content = {k: v for k, v in row.items() if k != CONTACT_KEY and k != NEW_CONTACT_KEY}
    return hashlib.blake2b(_SORTED_JSON.encode(content), digest_size=16).hexdigest()


#: Part of every source hash: bump it when a change to the rules above would map the same
#: record text to another row. Source hashes recorded before then stop matching, and those
#: contacts are compared by their mapped payload once, as if they had changed.
SOURCE_RULES_VERSION = 1


def raw_identity(plan: StreamPlan) -> Callable[[msgspec.Raw], tuple[str, str] | None]:
    """Read a record's contact key straight from its JSON text, without decoding the rest,
    and hash the text: ``(contact_key, source_hash)``.

    The key is exactly what :func:`build_row` would make of it; whenever that is not plain
    (text that needs trimming, a number too long, no key, not an object) the answer is None
    and the record takes the full path, which maps it or explains what is wrong.

    Equal text under an equal plan maps to an equal row, so a record whose text D·engage
    already confirmed is recognised without being mapped. The plan (which property feeds
    which column, by which rule) personalises the hash: change the mapping and no text
    matches until it has been compared by payload again.
    """
    described = [SOURCE_RULES_VERSION, [[s, c, f.__name__] for s, c, f in plan.steps]]
    person = hashlib.blake2b(json.dumps(described).encode(), digest_size=16).digest()
    blake2b = hashlib.blake2b
    shape = msgspec.defstruct(
        "KeyOnly", [("key", object, msgspec.field(default=None, name=plan.key_source))]
    )
    decode = msgspec.json.Decoder(shape).decode
    error = msgspec.DecodeError

    def identify(raw: msgspec.Raw) -> tuple[str, str] | None:
        try:
            key = decode(raw).key  # type: ignore[attr-defined]
        except error:
            return None
        if type(key) is str:
            if not (
                0 < len(key) <= CONTACT_KEY_MAX
                and key.isascii()
                and not key[0].isspace()
                and not key[-1].isspace()
                and "\x00" not in key
            ):
                return None
        elif type(key) is int and -(10**18) < key < 10**18:
            key = str(key)
        else:
            return None
        return key, blake2b(raw, digest_size=16, person=person).hexdigest()

    return identify
