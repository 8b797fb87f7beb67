"""A contact on its way: what travels from the sink to D·engage and back to the books.

Each record becomes one :class:`Pending` (or, on change detection's text path, an
:class:`Unread` that becomes one only if it has to be sent). Both carry the record's run-wide
sequence number, which is what STATE is gated on.
"""

from __future__ import annotations

import decimal
import typing as t
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from target_dengage.contract import CONTACT_KEY
from target_dengage.mapping import Value
from target_dengage.masking import mask

#: A record as a contact keeps it to explain a rejection: the record itself, its JSON text
#: (``msgspec.Raw``), or the whole RECORD line it came in (``bytes`` or ``str``). Only the
#: rare rejected record is decoded again (:func:`whole_record`).
RecordSource = Mapping[str, Any] | bytes | str | msgspec.Raw
_DECODER = msgspec.json.Decoder(float_hook=decimal.Decimal)


def whole_record(source: RecordSource) -> Mapping[str, Any]:
    """The record a contact came from, as the tap sent it."""
    if isinstance(source, Mapping):
        return source
    decoded = _DECODER.decode(source)
    if isinstance(source, msgspec.Raw):
        return t.cast("Mapping[str, Any]", decoded)
    return t.cast("Mapping[str, Any]", decoded["record"])


class Pending(msgspec.Struct, gc=False):
    """A contact waiting to be sent, with what is needed to explain a rejection. A struct
    made in C, one per record: a third of the cost of a dataclass. It is never part of a
    reference cycle, so the garbage collector need not track it."""

    row: dict[str, Value]
    stream: str
    record_number: int
    record: RecordSource  # see whole_record
    seq: int
    merges: int = 0  # earlier records of the same contact folded into this one
    digest: str | None = None  # the row's ledger hash, once computed
    source: str | None = None  # hash of the one record's JSON text the row is made of
    #: A source delete, sent as ``contact_status: "P"`` and never able to create a contact.
    passivation: bool = False

    def describe(self) -> str:
        key = self.row.get(CONTACT_KEY)
        named = "no contact_key" if key is None else f"contact_key '{shown_key(str(key))}'"
        return f"stream '{self.stream}', record {self.record_number}, {named}"


#: Decodes and maps a record taken as JSON text: (text, record number, sequence number).
Materialize = Callable[[msgspec.Raw, int, int], "Pending | None"]


class Unread(msgspec.Struct, gc=False):
    """A record still in its JSON text (change detection's short path): its contact key and
    the hash of its text are known, and it is decoded and mapped only if the ledger does not
    know that text already. Nearly all of them are dropped as unchanged a moment later."""

    key: str
    source: str  # hash of the record's JSON text
    raw: msgspec.Raw
    seq: int
    record_number: int
    materialize: Materialize


def shown_key(key: str | None) -> str:
    """Contact keys are named in messages, unless they are email addresses (PII)."""
    return mask(key) if key and "@" in key else str(key)


def merges(group: Sequence[Pending]) -> int:
    """Earlier records folded into the contacts of a group (duplicates merged)."""
    return sum(p.merges for p in group)
