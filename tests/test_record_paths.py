"""The three ways a record is read give the same contact: the dict path (the SDK's, and
plain streams), the shaped path (a RECORD line decoded straight into the plan's struct) and
change detection's text path (only the contact key read from the JSON text)."""

from __future__ import annotations

import decimal
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from target_dengage.mapping import plan_stream, raw_identity

PROPERTIES = ("id", "email", "phone", "first_name", "dob", "opt_in", "status", "city")
MAPPING = {
    "id": "contact_key",
    "phone": "gsm",
    "first_name": "name",
    "dob": "birth_date",
    "opt_in": "email_permission",
    "status": "contact_status",
}
PLAN = plan_stream("s", PROPERTIES, ("id",), MAPPING, ["city"], insert_if_not_exists=True)
DECODE = msgspec.json.Decoder(float_hook=decimal.Decimal).decode
DECODE_SHAPE = msgspec.json.Decoder(PLAN.shape, float_hook=decimal.Decimal).decode
IDENTIFY = raw_identity(PLAN)

#: Keys as taps send them, odd ones included: padded, blank, non-ASCII, numeric, huge, NUL.
KEYS = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\s{0,2}[A-Za-z0-9@._-]{0,10}\s{0,2}", fullmatch=True),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda i: i * 10**5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "  ", "x" * 256, "İstanbul", "a\x00b", "\ud800", "1e5", "42.0"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["a@b.co", " User@Example.COM ", "+90 (535) 1234567", "1990-02-29", "P"]),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def _record_text(draw: st.DrawFn) -> bytes:
    record: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(PROPERTIES), unique=True)):
        record[name] = draw(KEYS if name == "id" else VALUES)
    if draw(st.booleans()):
        record["unmapped"] = draw(VALUES)
    try:
        return msgspec.json.encode(record)
    except (msgspec.EncodeError, UnicodeEncodeError):  # a lone surrogate: no tap writes one
        return msgspec.json.encode({"id": "k"})


@settings(max_examples=500, deadline=None)
@given(text=_record_text())
def test_dict_shaped_and_text_paths_agree(text: bytes) -> None:
    from_dict = PLAN.build(DECODE(text))
    from_shape = PLAN.build_shape(DECODE_SHAPE(text))
    assert from_dict == from_shape  # the same row and the same problems

    row, problems = from_dict
    identity = IDENTIFY(msgspec.Raw(text))
    if identity is not None:  # the text path only takes keys it reads exactly as mapped
        key, _ = identity
        assert row.get("contact_key") == key
        assert not problems or all(p.column != "contact_key" for p in problems)
