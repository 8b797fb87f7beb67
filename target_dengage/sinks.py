"""The SDK sink: numbers, maps and validates each record, then hands it to the pipeline."""

from __future__ import annotations

import decimal
import typing as t

import msgspec
from singer_sdk.exceptions import InvalidRecord
from singer_sdk.sinks.core import JSONSchemaValidator

from target_dengage.contract import CONTACT_KEY
from target_dengage.errors import InvalidInputError, MissingContactKeyError
from target_dengage.intake import PERIODIC_EVERY, RecordHost
from target_dengage.mapping import (
    DELETED_MARKER,
    Built,
    FieldProblem,
    InvalidValueError,
    StreamConfigError,
    deleted_at,
    plan_stream,
    raw_identity,
)
from target_dengage.masking import quote
from target_dengage.pending import Pending, RecordSource, Unread
from target_dengage.sdk import SdkSink

if t.TYPE_CHECKING:
    from singer_sdk.target_base import Target
#: Invalid records spelled out in the log before the rest go only to the rejected file.
REJECTIONS_LOGGED = 20


class SchemaCheck(JSONSchemaValidator):
    """The SDK's JSON-schema validation (``validate_records``), with a violation kept for
    the sink to set the record aside like any invalid record, instead of raised: raised, it
    would end the run with a traceback whose message quotes the raw value."""

    violation: tuple[str, str] | None = None

    def validate(self, record: dict[str, t.Any]) -> None:
        try:
            super().validate(record)
        except InvalidRecord as exc:
            self.violation = _violation(exc)


def _violation(exc: InvalidRecord) -> tuple[str, str]:
    """The property a schema violation is about, and what is wrong, without its value."""
    cause = exc.__cause__
    path = [str(part) for part in getattr(cause, "path", ())]
    rule = getattr(cause, "validator", None)
    if rule is None:
        return "", f"does not match the tap's schema ({quote(str(exc), 120)})"
    expected = quote(repr(getattr(cause, "validator_value", "")), 80)
    where = "/".join(path[1:])
    inside = f" at '{quote(where, 80)}'" if where else ""
    return (
        path[0] if path else ""
    ), f"does not match the tap's schema{inside} ({rule}: {expected})"


def _key(built: Built) -> str | None:
    """The record's contact key, or None when it has none that could be read."""
    row, problems = built
    if problems is not None and any(p.column == CONTACT_KEY for p in problems):
        return None
    key = row.get(CONTACT_KEY)
    return None if key is None else str(key)


class DengageSink(SdkSink):
    """One per stream. It owns no buffer: full requests are assembled across streams."""

    MAX_SIZE_DEFAULT = 1000

    def __init__(
        self,
        target: Target,
        stream_name: str,
        schema: dict[str, t.Any],
        key_properties: list[str] | tuple[str, ...] | None,
    ) -> None:
        super().__init__(target, stream_name, schema, key_properties)
        self._host = host = t.cast("RecordHost", target)
        self._intake = host.intake
        self._pipeline = host.pipeline
        self._mirrors = host.pipeline.mirrors
        #: Whether the stream had an ACTIVATE_VERSION: its records without a ``version``
        #: belong to the open version.
        self._versioned = False
        self._stats = host.pipeline.stats
        self._stop_on_error: bool = target.config["stop_on_error"]
        self._record_number = 0
        try:
            self._plan = plan_stream(
                stream_name,
                # as the tap sent it: the SDK has taken its _sdc metadata out of ``schema``
                self.original_schema.get("properties", {}),
                list(key_properties or ()),
                target.config.get("column_mapping") or {},
                target.config.get("custom_columns") or (),
                insert_if_not_exists=target.config["insert_if_not_exists"],
            )
        except StreamConfigError as exc:
            raise InvalidInputError(str(exc)) from None
        plan = self._plan
        #: Whether records may be source deletes (the schema has ``_sdc_deleted_at``).
        self._deletes = plan.deleted_source is not None
        #: Source deletes seen (passivated or ignored, as delete_behavior says).
        self.deletes = 0
        #: Which column each property feeds, to name a schema violation's column.
        self._columns = {source: column for source, column, _ in plan.steps}
        self._build = plan.build
        self._identify = raw_identity(plan)
        self._build_shape = plan.build_shape
        self._decode_shape = msgspec.json.Decoder(plan.shape, float_hook=decimal.Decimal).decode
        #: Decodes a whole RECORD line, its record into the plan's shape (see
        #: ``LineNumberedReader``).
        self.decode_line: t.Callable[[bytes | str], t.Any] = msgspec.json.Decoder(
            msgspec.defstruct(
                "ShapedRecordMessage",
                [
                    ("type", str),
                    ("stream", str, ""),
                    ("record", plan.shape, msgspec.field(default_factory=plan.shape)),
                    ("version", int | None, None),
                ],
            ),
            float_hook=decimal.Decimal,
        ).decode
        self._untallied = 0
        self._materialize_later = self._materialize  # one bound method, not one per record
        if "contact_status" in self._columns.values():
            host.pipeline.status_streams.add(stream_name)
        if plan.key_inferred:
            self.logger.info(
                "Stream '%s' has no contact_key column; using its key property '%s' as "
                "contact_key.",
                stream_name,
                plan.key_source,
            )
        if plan.dropped:
            self.logger.warning(
                "Stream '%s': these properties are neither master_contact columns nor listed "
                "in custom_columns, so they are not sent: %s. Map them with column_mapping "
                "or custom_columns if D·engage should get them.",
                stream_name,
                ", ".join(plan.dropped),
            )
        if plan.platform_dropped:
            self.logger.warning(
                "Stream '%s': these columns are maintained by D·engage and never sent: %s.",
                stream_name,
                ", ".join(plan.platform_dropped),
            )
        columns = {column for _, column, _ in plan.steps}
        if target.config["insert_if_not_exists"]:
            for channel in ("email", "gsm"):
                if channel in columns and f"{channel}_permission" not in columns:
                    self.logger.warning(
                        "Stream '%s' sends %s but not %s_permission: D·engage opts NEW "
                        "contacts in (%s_permission defaults to true on insert). Map an "
                        "opt-in column to %s_permission unless that is intended.",
                        stream_name,
                        channel,
                        channel,
                        channel,
                        channel,
                    )
        self.logger.info(
            "Stream '%s' loads columns: %s.",
            stream_name,
            ", ".join(f"{s}→{c}" if s != c else c for s, c, _ in plan.steps),
        )

    @property
    def may_delete(self) -> bool:
        """Whether the stream's records may be source deletes (``_sdc_deleted_at``): those
        must be read whole, never recognised by their text alone as unchanged."""
        return self._deletes

    def activate_version(self, new_version: int) -> None:
        """ACTIVATE_VERSION (the SDK's hook): a full-table version of the stream, whose
        complete set of contacts makes the ones it lacks known (see ``mirrors``)."""
        self._versioned = True
        self._mirrors.activate(self.stream_name, new_version)

    def get_validator(self) -> SchemaCheck | None:
        """Validation that sets an invalid record aside instead of crashing (see
        :class:`SchemaCheck`)."""
        if not self.validate_schema:
            return None
        return SchemaCheck(self.schema, validate_formats=self.validate_field_string_format)

    @property
    def is_full(self) -> bool:
        """Never: the buckets send each column set's request the moment it is full."""
        return False

    def _arrive(self, *, tallied: bool = False) -> tuple[int, int]:
        """Every record of every path enters here: numbered in the run's sequence and in its
        stream, counted, and every few hundred records, the periodic work. ``tallied``: the
        SDK counted it already (its own record path does)."""
        intake = self._intake
        seq = intake.seq = intake.seq + 1
        number = self._record_number = self._record_number + 1
        self._stats.records_read += 1
        if not tallied:
            self._untallied += 1
        if not seq & PERIODIC_EVERY:
            self.sync_counts()
            intake.periodic()
        return seq, number

    def process_record(self, record: dict[str, t.Any], context: dict[str, t.Any]) -> None:
        """The SDK's record path: stream maps, flattening, ``_sdc`` properties or schema
        validation were applied first."""
        seq, number = self._arrive(tallied=True)
        built = self._build(record)
        version = self._host.record_version
        if version is not None or self._versioned:
            self._mirrors.saw(self.stream_name, _key(built), version)
        if self._deletes and self._deleted(record.get(DELETED_MARKER), built, record, number, seq):
            return
        check = self.schema_check
        if isinstance(check, SchemaCheck) and check.violation is not None:
            source, message = check.violation
            check.violation = None
            row, problems = built
            column = self._columns.get(source, source or CONTACT_KEY)
            built = row, [FieldProblem(column, source or column, message), *(problems or ())]
        pending = self._admit(built, record, number, seq)
        if pending is not None:
            self._pipeline.add(pending)

    def take_record(self, record: dict[str, t.Any], version: int | None) -> None:
        """The record path for a stream whose records need none of the SDK's generic steps
        (see ``TargetDengage._direct_sink``); ``version``: the RECORD message's."""
        seq, number = self._arrive()
        built = self._build(record)
        if version is not None or self._versioned:
            self._mirrors.saw(self.stream_name, _key(built), version)
        if self._deletes and self._deleted(record.get(DELETED_MARKER), built, record, number, seq):
            return
        pending = self._admit(built, record, number, seq)
        if pending is not None:
            self._pipeline.add(pending)

    def take_shaped(self, record: msgspec.Struct, line: bytes | str, version: int | None) -> None:
        """:meth:`take_record` for a record that :attr:`decode_line` read into the plan's
        shape: the hot path of every load. The line is kept for explaining a rejection."""
        seq, number = self._arrive()
        row, problems = self._build_shape(record)
        if version is not None or self._versioned:
            self._mirrors.saw(self.stream_name, _key((row, problems)), version)
        if self._deletes and self._deleted(record.deleted, (row, problems), line, number, seq):  # type: ignore[attr-defined]
            return
        if problems is None:
            self._pipeline.add(Pending(row, self.stream_name, number, line, seq))
        else:
            self._admit((row, problems), line, number, seq)

    def take_raw(self, raw: msgspec.Raw, version: int | None) -> bool:
        """Change detection's short path, in place of the SDK's record loop, for a record
        still in its JSON text: read only its contact key and hash the text; the ledger
        lookup decides whether it is decoded and mapped at all. False: the key is not
        plain, so the record takes the full path."""
        identity = self._identify(raw)
        if identity is None:
            return False
        seq, number = self._arrive()
        key, source = identity
        if version is not None or self._versioned:
            self._mirrors.saw(self.stream_name, key, version)
        self._pipeline.add_unread(Unread(key, source, raw, seq, number, self._materialize_later))
        return True

    def sync_counts(self) -> None:
        """Bring the SDK's counts (records read, the record_count metric) up to date with
        the records :meth:`take_raw` took: once per few hundred records, not per record,
        and before anything reads them (the drain at the end)."""
        if self._untallied:
            self.count_read(self._untallied)
            self._untallied = 0

    def _materialize(self, raw: msgspec.Raw, number: int, seq: int) -> Pending | None:
        """Decode and map a record that :meth:`take_raw` took, once it has to be sent."""
        return self._admit(self._build_shape(self._decode_shape(raw)), raw, number, seq)

    def _deleted(
        self, marker: object, built: Built, record: RecordSource, number: int, seq: int
    ) -> bool:
        """Whether the record is a source delete, handled here: never sent as data, but
        passivated or ignored as ``delete_behavior`` says. Only its contact key matters; a
        delete whose key or ``_sdc_deleted_at`` is invalid is an invalid record."""
        row, problems = built
        try:
            if not deleted_at(marker):
                return False
        except InvalidValueError as exc:
            problem = FieldProblem(DELETED_MARKER, DELETED_MARKER, str(exc))
            self._admit((row, [problem, *(problems or ())]), record, number, seq)
            return True
        wrong_key = [p for p in problems or () if p.column == CONTACT_KEY]
        if wrong_key:
            self._admit((row, wrong_key), record, number, seq)
            return True
        self.deletes += 1
        passive = {CONTACT_KEY: row[CONTACT_KEY], "contact_status": "P"}
        self._pipeline.delete(
            Pending(passive, self.stream_name, number, record, seq, passivation=True)
        )
        return True

    def _admit(self, built: Built, record: RecordSource, number: int, seq: int) -> Pending | None:
        """The contact to send, or None when the record is invalid and set aside (with
        stop_on_error, an invalid record ends the run here)."""
        row, problems = built
        pending = Pending(row, self.stream_name, number, record, seq)
        if problems is None:
            return pending
        stop = self._stop_on_error
        message = self._pipeline.reject_locally(pending, problems, fatal=stop)
        if stop:
            error = (
                MissingContactKeyError
                if problems[0].column == CONTACT_KEY and CONTACT_KEY not in row
                else InvalidInputError
            )
            raise error(
                f"{message}. Nothing of its batch was sent. Fix the record, or set "
                "stop_on_error: false (with rejected_records_path) to set invalid records "
                "aside and load the rest."
            )
        if self._stats.rejected_locally <= REJECTIONS_LOGGED:
            self.logger.warning("%s; set aside.", message)
        elif self._stats.rejected_locally == REJECTIONS_LOGGED + 1:
            self.logger.warning(
                "More invalid records are being set aside; the rejected file lists them all."
            )
        return None

    def process_batch(self, context: dict[str, t.Any]) -> None:
        """Called by the SDK's drain at end of input: send what is left, confirmed."""
        self._pipeline.flush_all()
