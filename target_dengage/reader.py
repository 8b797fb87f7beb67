"""Reading the tap's output: one Singer message per line, decoded fast, named by number.

The SDK's reader loop, leaner: msgspec decodes each line (several times faster than the
standard library; floats still become ``Decimal``, as in the SDK's reader), the ``type`` check
is done once, and malformed input is named by its line number without echoing it (a line may
hold a whole contact). Records of plain streams go from here straight to their sink.
"""

from __future__ import annotations

import decimal
import logging
import re
import sys
import typing as t
from collections import Counter

import msgspec
from singer_sdk.exceptions import RecordsWithoutSchemaException, SingerSDKError
from singer_sdk.io_base import SingerReader
from singer_sdk.singerlib.exceptions import InvalidInputLine

from target_dengage.errors import DengageError, InvalidInputError
from target_dengage.masking import quote
from target_dengage.sinks import DengageSink

logger = logging.getLogger(__name__)
_DECODER = msgspec.json.Decoder(float_hook=decimal.Decimal)


class _Envelope(msgspec.Struct):
    """A message with its record left as JSON text (see ``LineNumberedReader.raw_records``)."""

    type: str
    stream: str = ""
    record: msgspec.Raw = msgspec.Raw(b"")
    version: int | None = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)


#: Longest input line read: one Singer message, a record of a few KB in practice. A longer
#: line is passed over unread (memory stays bounded) and set aside like an undecodable one.
MAX_LINE_BYTES = 8 * 1024 * 1024
_STREAM_NAME = re.compile(rb'"stream"\s*:\s*"((?:[^"\\]|\\.){1,200})"')


def _refuse_line(number: int, line: bytes | str, why: str) -> None:
    raise InvalidInputError(
        f"Input line {number} {why}; a Singer tap must write one JSON message per line."
    )


class LineNumberedReader(SingerReader):
    """The SDK's reader, through its public ``process_lines``. Input is read as bytes, a
    line at most ``MAX_LINE_BYTES`` long: msgspec checks the UTF-8 itself, so nothing is
    decoded twice, and a line number is always the line's."""

    line_number = 0

    def __init__(self) -> None:
        super().__init__()
        #: Streams whose records skip the SDK's generic record steps (see
        #: ``TargetDengage.schema_ready``), with the sink that takes them.
        self.records: dict[str, DengageSink] = {}
        #: Of those, the streams whose records may be taken as JSON text (change detection's
        #: short path): stream → a function that takes a record's text, or declines it.
        self.raw_records: dict[str, t.Callable[[msgspec.Raw, int | None], bool]] = {}
        #: Told of a line that cannot be decoded (number, line, why): it stops the run by
        #: raising, or sets the line aside and returns.
        self.on_unreadable: t.Callable[[int, bytes | str, str], None] = _refuse_line

    def process_lines(
        self,
        file_input: t.IO[str] | t.IO[bytes] | None,
        callbacks: dict[str, t.Callable[[dict[str, t.Any]], None]],
    ) -> t.Counter[str]:
        stats: t.Counter[str] = Counter()
        decode = self._decode
        records = self.records
        raw_records = self.raw_records
        envelope = _ENVELOPE.decode
        not_read = (msgspec.DecodeError, RecursionError)
        direct = 0
        # The stream of the last record, whose sink reads the next line first: runs of
        # records of one stream are decoded straight into the shape its rows are built from.
        shaped: str | None = None
        shaper: DengageSink | None = None
        lines: t.IO[str] | t.IO[bytes] = file_input or sys.stdin.buffer
        readline = lines.readline
        limit = MAX_LINE_BYTES + 1
        while line := readline(limit):
            self.line_number += 1
            if len(line) == limit and line[-1:] not in (b"\n", "\n"):
                self._pass_over(readline, limit)
                self.on_unreadable(
                    self.line_number, line, f"is longer than {MAX_LINE_BYTES:,} bytes"
                )
                continue
            if raw_records:
                try:
                    outline = envelope(line)
                except not_read:
                    pass  # decoded again below, which names what is wrong
                else:
                    if outline.type == "RECORD":
                        take = raw_records.get(outline.stream)
                        if take is not None and take(outline.record, outline.version):
                            direct += 1
                            continue
            if shaper is not None:
                try:
                    shaped_line = shaper.decode_line(line)
                except not_read:
                    pass  # decoded again below, which names what is wrong
                else:
                    if shaped_line.type == "RECORD" and shaped_line.stream == shaped:
                        shaper.take_shaped(shaped_line.record, line, shaped_line.version)
                        direct += 1
                        continue
            message = decode(line)
            if message is None:
                continue
            kind = message["type"]
            if kind == "RECORD":
                stream = message.get("stream")
                record = message.get("record")
                if type(stream) is str and type(record) is dict:
                    sink = records.get(stream)
                    if sink is not None:
                        version = message.get("version")
                        problem = version_problem(version)
                        if problem is not None:
                            raise InvalidInputError(
                                f"Input line {self.line_number} (stream '{quote(stream, 80)}'): "
                                f"{problem}"
                            )
                        sink.take_record(record, version)
                        direct += 1
                        shaped, shaper = stream, sink
                        continue
            else:
                shaper = None  # a SCHEMA may replace the sink
            callback = callbacks.get(kind)
            if callback is None:
                raise InvalidInputError(
                    f"Input line {self.line_number}: unknown Singer message type "
                    f"'{kind[:40]}' (expected SCHEMA, RECORD, STATE, ACTIVATE_VERSION or "
                    "BATCH)."
                )
            self._handle(callback, message)
            stats[kind] += 1
        stats["RECORD"] += direct
        return stats

    def _handle(
        self, callback: t.Callable[[dict[str, t.Any]], None], message: dict[str, t.Any]
    ) -> None:
        """Hand a message to the SDK's steps; whatever they raise about it (a stream map
        failing on a value, a malformed schema) becomes one line naming the input line."""
        try:
            callback(message)
        except (DengageError, InvalidInputLine, RecordsWithoutSchemaException):
            raise
        except (SingerSDKError, KeyError, TypeError, ValueError, RecursionError) as exc:
            logger.debug("The SDK failed on input line %d", self.line_number, exc_info=True)
            stream = message.get("stream")
            named = f" (stream '{stream}')" if isinstance(stream, str) else ""
            raise InvalidInputError(
                f"Input line {self.line_number}{named}, a {message['type']} message, cannot "
                f"be processed: {type(exc).__name__}: {quote(str(exc))}"
            ) from None

    @staticmethod
    def _pass_over(readline: t.Callable[[int], bytes | str], limit: int) -> None:
        """Read the rest of an overlong line, a block at a time, keeping none of it."""
        while (rest := readline(limit)) and rest[-1:] not in (b"\n", "\n"):
            pass

    def deserialize_json(self, line: str) -> dict[str, t.Any]:
        self.line_number += 1
        message = self._decode(line)
        if message is None:
            raise InvalidInputError(f"Input line {self.line_number} cannot be decoded.")
        return message

    def _decode(self, line: str | bytes) -> dict[str, t.Any] | None:
        """The line's message, or None when it was undecodable and set aside."""
        try:
            message = _DECODER.decode(line)
        except RecursionError:
            self.on_unreadable(self.line_number, line, "is nested too deeply to be read")
            return None
        except msgspec.DecodeError as exc:
            self.on_unreadable(self.line_number, line, f"is not valid JSON ({exc})")
            return None
        if type(message) is not dict or type(message.get("type")) is not str:
            raise InvalidInputError(
                f"Input line {self.line_number} is not a Singer message (a JSON object with "
                "a 'type')."
            )
        return message


def version_problem(version: object) -> str | None:
    """What is wrong with a RECORD message's ``version`` (its full-table version), if
    anything: one wording for every record path."""
    if version is None or type(version) is int:
        return None
    return f"a RECORD message's 'version' must be an integer, not {quote(repr(version), 40)}."


def stream_named_in(line: bytes | str) -> str | None:
    """The stream an undecodable line names, when it can be found without decoding it."""
    head = line[:65536]
    found = _STREAM_NAME.search(head.encode() if isinstance(head, str) else head)
    return found.group(1).decode("utf-8", "replace") if found else None
