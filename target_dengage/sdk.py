"""Every private part of singer-sdk this target relies on, in one place.

The SDK's public hooks do not reach far enough for three things this target must do: print a
STATE only once D·engage confirmed what came before it (not after the SDK's drain), take the
records of plain streams straight from the reader (the SDK's generic per-record steps are
no-ops for them, and cost most of the time), and end a failed run with one clear line. So
the SDK's private methods are overridden here, and only here, each turned into a named hook
that ``TargetDengage`` implements; tests/test_sdk.py fails with a clear message if a new SDK
release drops or renames one of them.
"""

from __future__ import annotations

import typing as t
from importlib.metadata import version

from singer_sdk.mapper import SameRecordTransform
from singer_sdk.plugin_base import _ConfigInput
from singer_sdk.sinks import BatchSink, Sink
from singer_sdk.target_base import Target

from target_dengage.mapping import DELETED_MARKER

if t.TYPE_CHECKING:
    from types import FrameType

    from singer_sdk.helpers.conform import DatetimeErrorTreatmentEnum
    from singer_sdk.sinks.core import BaseJSONSchemaValidator


class SdkTarget(Target):
    """singer-sdk's ``Target``, its private hooks turned into named ones."""

    # -- hooks for the target ---------------------------------------------------------------

    def check_schema_message(self, message: dict[str, t.Any]) -> None:
        """Refuse a malformed SCHEMA message, before the SDK reads it."""

    def schema_ready(self, stream: str) -> None:
        """A stream's SCHEMA was processed: its sink exists."""

    def check_record_message(self, message: dict[str, t.Any]) -> None:
        """Refuse a malformed RECORD message, before the SDK reads it."""

    def batch_message(self, message: dict[str, t.Any]) -> None:
        """A BATCH message arrived."""

    def check_activate_version_message(self, message: dict[str, t.Any]) -> None:
        """Refuse a malformed ACTIVATE_VERSION message, before the SDK reads it."""

    def state_received(self, state: dict[str, t.Any]) -> None:
        """A new, non-empty STATE arrived; printing it is the target's business."""

    def input_drained(self) -> None:
        """The SDK drained every sink (end of input, or a sink full): STATE may follow."""

    def signalled(self, signum: int) -> None:
        """SIGTERM or SIGINT arrived."""

    @classmethod
    def run(cls, target: t.Any, file_input: t.IO[str] | t.IO[bytes] | None) -> None:
        """Run ``target`` on the input, however it ends."""
        target.listen(file_input)

    # -- what the target may ask of the SDK -------------------------------------------------

    def record_message(self, message: dict[str, t.Any]) -> None:
        """Hand a RECORD message to the SDK's record path (stream maps, validation)."""
        self._process_record_message(message)

    def all_sinks(self) -> list[Sink]:
        """Every sink of the run, those replaced by a later SCHEMA included."""
        return [*self._sinks_active.values(), *self._sinks_to_clear]

    def plain_sink(self, stream: str) -> Sink | None:
        """The sink a stream's records can go to straight, when the SDK's generic steps
        would all be no-ops for them: no stream map or flattening (so no copy of the record
        is needed, as the sink never changes it), no ``_sdc`` metadata, no validation."""
        maps = self.mapper.stream_maps.get(stream, [])
        if len(maps) != 1 or type(maps[0]) is not SameRecordTransform:
            return None
        if maps[0].flattening_options and maps[0].flattening_enabled:
            return None
        sink = self._sinks_active.get(maps[0].stream_alias)
        if sink is None or sink.include_sdc_metadata_properties or sink.get_validator():
            return None
        return sink

    # -- the SDK's private hooks ------------------------------------------------------------

    def _process_schema_message(self, message_dict: dict[str, t.Any]) -> None:
        self.check_schema_message(message_dict)
        super()._process_schema_message(message_dict)
        self.schema_ready(message_dict["stream"])

    def _process_record_message(self, message_dict: dict[str, t.Any]) -> None:
        self.check_record_message(message_dict)
        super()._process_record_message(message_dict)

    def _process_batch_message(self, message_dict: dict[str, t.Any]) -> None:
        self.batch_message(message_dict)

    def _process_activate_version_message(self, message_dict: dict[str, t.Any]) -> None:
        """The SDK's, checked first, and without its warning that ``_sdc`` properties are
        added to the schema (a SQL target's concern: each sink's public
        ``activate_version`` hook is what this target implements)."""
        self.check_activate_version_message(message_dict)
        for stream_map in self.mapper.stream_maps[message_dict["stream"]]:
            sink = self._sinks_active.get(stream_map.stream_alias)
            if sink is None:  # a stream the stream maps drop
                continue
            if not sink.process_activate_version_messages:
                self.logger.warning(
                    "ACTIVATE_VERSION ignored for stream '%s' "
                    "(process_activate_version_messages is false).",
                    stream_map.stream_alias,
                )
                continue
            sink.activate_version(message_dict["version"])

    def _process_state_message(self, message_dict: dict[str, t.Any]) -> None:
        super()._process_state_message(message_dict)
        state: dict[str, t.Any] = message_dict["value"]
        if state and self._latest_state is state:
            self.state_received(state)

    def _write_state_message(self, state: dict[str, t.Any]) -> None:
        """The SDK prints STATE after a drain; this target prints it when confirmed."""
        self.input_drained()

    def _handle_max_record_age(self) -> None:
        """The SDK drains every sink after a while, sending part-full requests of every
        column set; the target's intake does its own periodic work instead."""

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """Stop at once, without the SDK's final drain (meltano/sdk#3775)."""
        self.signalled(signum)

    @classmethod
    def invoke(  # type: ignore[override]
        cls,
        *,
        about: bool = False,
        about_format: str | None = None,
        config: _ConfigInput | None = None,
        file_input: t.IO[str] | None = None,
    ) -> None:
        """The SDK's invoke (``--about``, ``--version``, the config), then :meth:`run`."""
        super(Target, cls).invoke(about=about, about_format=about_format)
        cls.print_version(print_fn=cls.logger.info)
        config = config or _ConfigInput()
        target = cls(config=config.config, validate_config=True, parse_env_config=config.parse_env)
        cls.run(target, file_input)


def _counts_records_when_written() -> bool:
    """singer-sdk 0.55 advances the ``record_count`` metric when a drain marks the records
    read as written; 0.54 advanced it per record in its record loop, which the target's
    plain-stream path bypasses."""
    major, minor = (int(part) for part in version("singer-sdk").split(".")[:2])
    return (major, minor) >= (0, 55)


COUNTS_RECORDS_WHEN_WRITTEN = _counts_records_when_written()


class SdkSink(BatchSink):
    """singer-sdk's ``BatchSink``, with the steps the sink does itself switched off."""

    def count_read(self, count: int) -> None:
        """Records the sink took past the SDK's record loop: in the SDK's tally of records
        read, and in the ``record_count`` metric, as the loop would have counted them."""
        self.tally_record_read(count)
        if not COUNTS_RECORDS_WHEN_WRITTEN:
            self.record_counter_metric.increment(count)

    @property
    def schema_check(self) -> BaseJSONSchemaValidator | None:
        """The validator the SDK ran on the record just processed, if any."""
        return self._validator

    def _remove_sdc_metadata_from_record(self, record: dict[str, t.Any]) -> None:
        """The SDK takes its ``_sdc`` properties out of a record; ``_sdc_deleted_at`` says
        the record is a source delete, which the sink must see."""
        deleted = record.get(DELETED_MARKER)
        super()._remove_sdc_metadata_from_record(record)
        if deleted is not None:
            record[DELETED_MARKER] = deleted

    def _singer_validate_message(self, record: dict[str, t.Any]) -> None:
        """Leave key checks to the row builder, which names the stream, record and field."""

    def _parse_timestamps_in_record(
        self,
        record: dict[str, t.Any],
        schema: dict[str, t.Any],
        treatment: DatetimeErrorTreatmentEnum,
    ) -> None:
        """Skip the SDK's parse: date columns parse their own text, and report bad values
        as invalid records instead of the SDK turning them into nulls or crashing."""
