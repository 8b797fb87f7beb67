"""TargetDengage: settings, the run-wide client and pipeline, and when STATE may be printed."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import sys
import time
import typing as t
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

import click
from singer_sdk import typing as th
from singer_sdk.exceptions import (
    ConfigValidationError,
    RecordsWithoutSchemaException,
    StreamMapConfigError,
)
from singer_sdk.helpers.capabilities import CapabilitiesEnum, PluginCapabilities
from singer_sdk.singerlib.exceptions import InvalidInputLine
from singer_sdk.singerlib.json import serialize_json

from target_dengage.batchfiles import BatchFileError, batch_records
from target_dengage.client import DengageClient
from target_dengage.contract import DEFAULT_API_URL, MAX_CONTACTS_PER_CALL, REGIONAL_HOSTS
from target_dengage.errors import DengageError, InvalidInputError
from target_dengage.intake import Intake
from target_dengage.jobs import AsyncOptions, JobJournal, default_journal_path
from target_dengage.mapping import validate_column_config
from target_dengage.masking import quote
from target_dengage.pacing import Pacer, PacingMemory, account_key, default_pacing_path
from target_dengage.pipeline import Pipeline
from target_dengage.reader import LineNumberedReader, stream_named_in, version_problem
from target_dengage.rejects import RejectedRecords
from target_dengage.report import (
    Pace,
    ProgressReporter,
    RunView,
    plan_text,
    summary_json,
    summary_text,
)
from target_dengage.sdk import SdkTarget
from target_dengage.sinks import DengageSink
from target_dengage.statefiles import unwritable, write_json_atomic

if t.TYPE_CHECKING:
    from target_dengage.accountstate import CallClock
    from target_dengage.ledger import Ledger
    from target_dengage.sharedstate import SharedState

logger = logging.getLogger(__name__)
#: STATEs held back at most; beyond it the newest replaces the last one held.
MAX_HELD_STATES = 1000


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class TargetDengage(SdkTarget):
    """Upserts contacts from any Singer tap into D·engage master_contact, paced to the API."""

    name = "target-dengage"
    default_sink_class = DengageSink
    message_reader_class = LineNumberedReader
    #: Full-table versions are mirrored (see ``mirrors``).
    capabilities: t.ClassVar[list[CapabilitiesEnum]] = [
        *SdkTarget.capabilities,
        PluginCapabilities.ACTIVATE_VERSION,
    ]

    config_jsonschema = th.PropertiesList(
        th.Property(
            "api_url",
            th.StringType(nullable=False),
            default=DEFAULT_API_URL,
            title="API URL",
            description=(
                "Base URL of the D·engage REST API. Regional hosts: "
                + ", ".join(REGIONAL_HOSTS)
                + ". Must be https (http only for a loopback emulator)."
            ),
        ),
        th.Property(
            "userkey",
            th.StringType,
            title="User key",
            description="API user key; with `password` the target logs in at /rest/login.",
        ),
        th.Property(
            "password",
            th.StringType,
            secret=True,
            title="Password",
            description="Password of the API user.",
        ),
        th.Property(
            "access_token",
            th.StringType,
            secret=True,
            title="Access token",
            description="A pre-issued access token, instead of userkey and password.",
        ),
        th.Property(
            "mode",
            th.StringType(nullable=False),
            default="sync",
            allowed_values=["sync", "async"],
            description=(
                "`sync`: BulkUpsert, one call a minute. `async`: BulkUpsert-Async, several "
                "jobs in flight while reading goes on; STATE waits for each job's confirmation."
            ),
        ),
        th.Property(
            "insert_if_not_exists",
            th.BooleanType(nullable=False),
            default=True,
            description=(
                "Sent as insertIfNotExists. true: new contact keys are created; false: only "
                "existing contacts are updated."
            ),
        ),
        th.Property(
            "stop_on_error",
            th.BooleanType(nullable=False),
            default=True,
            description=(
                "Sent as stopOnError. true: an invalid record stops the run before its batch "
                "is sent. false: invalid records go to rejected_records_path and the rest "
                "is loaded."
            ),
        ),
        th.Property(
            "batch_size_rows",
            th.IntegerType(nullable=False),
            default=MAX_CONTACTS_PER_CALL,
            minimum=1,
            maximum=MAX_CONTACTS_PER_CALL,
            description="Contacts per BulkUpsert request (D·engage takes at most 1000).",
        ),
        th.Property(
            "request_interval_seconds",
            th.IntegerType(nullable=False),
            default=60,
            minimum=0,
            maximum=3600,
            description=(
                "Least time between the starts of two sync BulkUpsert calls (D·engage "
                "allows one a minute)."
            ),
        ),
        th.Property(
            "column_mapping",
            th.ObjectType(additional_properties=th.StringType),
            default={},
            description=(
                "Source property → master_contact column, e.g. "
                '{"id": "contact_key", "first_name": "name"}.'
            ),
        ),
        th.Property(
            "custom_columns",
            th.ArrayType(th.StringType),
            default=[],
            description="The account's import-enabled custom columns that may be sent.",
        ),
        th.Property(
            "rejected_records_path",
            th.StringType,
            description=(
                "JSONL file; every record rejected, locally or by the API, is appended with "
                "stream, record number, contact key, field, reason and the whole record."
            ),
        ),
        th.Property(
            "pacing_state_path",
            th.StringType,
            description=(
                "File that remembers when the last BulkUpsert call of each account started, "
                "so runs on this machine, one after another or at once, keep to one call per "
                "interval together (read and written under a lock before every call). "
                "Default: $XDG_CACHE_HOME/target-dengage/pacing-<hash>.json, one per account "
                "(~/.cache/...)."
            ),
        ),
        th.Property(
            "max_retries",
            th.IntegerType(nullable=False),
            default=5,
            minimum=0,
            maximum=100,
            description=(
                "Retries of a call answered 5xx, timed out or lost to a network error "
                "(429 answers wait and retry without using these up)."
            ),
        ),
        th.Property(
            "request_timeout_seconds",
            th.IntegerType(nullable=False),
            default=300,
            minimum=1,
            maximum=3600,
            description="How long to wait for one API answer.",
        ),
        th.Property(
            "max_jobs_in_flight",
            th.IntegerType(nullable=False),
            default=4,
            minimum=1,
            maximum=100,
            description="async mode: most jobs submitted and not yet confirmed at once.",
        ),
        th.Property(
            "poll_interval_seconds",
            th.IntegerType(nullable=False),
            default=5,
            minimum=0,
            maximum=3600,
            description=(
                "async mode: first wait before polling a job's status; polls of a long job "
                "slow down gently (x1.5 each, up to 60 s)."
            ),
        ),
        th.Property(
            "job_timeout_seconds",
            th.IntegerType(nullable=False),
            default=3600,
            minimum=1,
            maximum=604800,
            description="async mode: a job not finished this long after submission fails the run.",
        ),
        th.Property(
            "job_journal_path",
            th.StringType,
            description=(
                "async mode: file listing submitted, unconfirmed jobs, so a rerun after a crash "
                "waits for them first (written under a lock, so runs at once lose none). "
                "Default: beside pacing_state_path's default "
                "($XDG_CACHE_HOME/target-dengage/jobs-<hash>.json, one per account)."
            ),
        ),
        th.Property(
            "change_detection",
            th.BooleanType(nullable=False),
            default=False,
            description=(
                "Send only contacts whose mapped payload changed since D·engage last "
                "confirmed it, as recorded in the ledger (ledger_url)."
            ),
        ),
        th.Property(
            "ledger_url",
            th.StringType,
            description=(
                "SQLAlchemy URL of the change-detection ledger. Default: a SQLite file per "
                "API URL + user under $XDG_DATA_HOME/target-dengage (~/.local/share/...). "
                "Point it at a shared database (e.g. postgresql+psycopg2://...) when runs "
                "move between machines."
            ),
        ),
        th.Property(
            "state_url",
            th.StringType,
            secret=True,
            title="Shared state URL",
            description=(
                "SQLAlchemy URL of a database every run of the account shares (e.g. "
                "postgresql+psycopg2://user:password@host:5432/db), for runs on several "
                "machines: it holds the pacing clock and lock (one BulkUpsert call at a time, "
                "one per interval, account-wide), the async job journal and, unless ledger_url "
                "is set, the change-detection ledger (pacing_state_path and job_journal_path "
                "are then not used). sqlite:////path/state.sqlite serves the processes of one "
                "machine. Default: unset (files of this machine)."
            ),
        ),
        th.Property(
            "ledger_max_age_days",
            th.IntegerType,
            minimum=0,
            maximum=36500,
            description=(
                "Send a contact again, even unchanged, when D·engage last confirmed it longer "
                "ago than this (heals edits made inside D·engage). Default: never."
            ),
        ),
        th.Property(
            "dry_run",
            th.BooleanType(nullable=False),
            default=False,
            description=(
                "Read, map and validate everything and report the plan (contacts, requests, "
                "least time); call no API, print no STATE."
            ),
        ),
        th.Property(
            "dry_run_output_path",
            th.StringType,
            description="With dry_run: write the exact request bodies that would be sent (JSONL).",
        ),
        th.Property(
            "progress_interval_seconds",
            th.IntegerType(nullable=False),
            default=30,
            minimum=0,
            maximum=86400,
            description="Seconds between progress lines on stderr (0: none).",
        ),
        th.Property(
            "run_summary_path",
            th.StringType,
            description=(
                "Write a JSON summary of the run here at the end (status, counts by outcome, "
                "requests, retries, rate-limit waits, duration), for a scheduler to act on."
            ),
        ),
        th.Property(
            "max_rejected_percent",
            th.NumberType,
            minimum=0,
            maximum=100,
            description=(
                "Exit non-zero, after everything valid is delivered, when more than this "
                "percentage of the records read were rejected. Default: no limit."
            ),
        ),
        th.Property(
            "delete_behavior",
            th.StringType(nullable=False),
            default="ignore",
            allowed_values=["ignore", "passivate"],
            description=(
                "What a record deleted in the source (``_sdc_deleted_at`` set, as taps in "
                "LOG_BASED mode send it) does. Either way it is never sent as data, so a "
                "deleted contact is never re-created or re-filled. `ignore`: counted and "
                'reported only. `passivate`: the contact is sent as contact_status "P" '
                "(it receives nothing), in requests that can never create a contact."
            ),
        ),
        th.Property(
            "max_passivate_percent",
            th.NumberType(nullable=False),
            default=10,
            minimum=0,
            maximum=100,
            description=(
                "Safety limit of full-table mirrors (ACTIVATE_VERSION) with delete_behavior: "
                "passivate: a stream's complete version that lacks more than this percentage "
                "of the contacts the ledger held for the stream passivates none of them, and "
                "the run fails naming the stream (its upserts are still delivered). Guards an "
                "audience against a tap that returns an empty table by mistake."
            ),
        ),
        th.Property(
            "validate_records",
            th.BooleanType(nullable=False),
            default=False,
            description=(
                "Also validate each record against the tap's JSON schema. D·engage's own "
                "column rules are always checked."
            ),
        ),
    ).to_dict()

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_parallelism = 1
        self.intake = Intake()
        self.intake.periodic = self.every_few_records
        #: STATEs not yet printed, with how many records had arrived before each.
        self._held_states: deque[tuple[int, float, dict[str, t.Any]]] = deque()
        self._printed_state: str | None = None
        self._started = time.monotonic()
        self._started_wall = time.time()
        self._check_config()
        config = self.config
        self._rejects = (
            RejectedRecords(config["rejected_records_path"])
            if config.get("rejected_records_path")
            else None
        )
        account = account_key(config["api_url"], config.get("userkey"), config.get("access_token"))
        shared = self._shared_state(account)
        memory: CallClock = (
            shared.clock(
                interval=config["request_interval_seconds"],
                call_timeout=config["request_timeout_seconds"],
            )
            if shared is not None
            else PacingMemory(
                Path(config.get("pacing_state_path") or default_pacing_path(account)).expanduser(),
                account,
                self.logger,
            )
        )
        self.client = DengageClient(
            api_url=config["api_url"],
            userkey=config.get("userkey"),
            password=config.get("password"),
            access_token=config.get("access_token"),
            pacer=Pacer(config["request_interval_seconds"], self.logger, memory),
            max_retries=config["max_retries"],
            timeout_seconds=config["request_timeout_seconds"],
            logger=self.logger,
        )
        self._pace = Pace(
            mode=config["mode"],
            batch_size=config["batch_size_rows"],
            interval=config["request_interval_seconds"],
            max_jobs=config["max_jobs_in_flight"],
            poll_interval=config["poll_interval_seconds"],
        )
        self._dry_run: bool = config["dry_run"]
        self._account = account
        passivate = config["delete_behavior"] == "passivate"
        #: The ledger: opened now for change detection and for passivations (whose contacts
        #: are reactivated if they come back), or by the first full-table version.
        ledger: Ledger | None = None
        if config["change_detection"] or passivate:
            try:
                ledger = self._open_ledger()
            except DengageError as exc:  # at start: like a bad setting, one clear line
                raise ConfigValidationError("Config validation failed", errors=[str(exc)]) from None
        #: The ``version`` of the RECORD message on the SDK's record path.
        self.record_version: int | None = None
        self.pipeline = Pipeline(
            self.client,
            self._rejects,
            batch_size=config["batch_size_rows"],
            insert_if_not_exists=config["insert_if_not_exists"],
            stop_on_error=config["stop_on_error"],
            logger=self.logger,
            on_confirmed=self._print_confirmed_state,
            async_options=AsyncOptions(
                journal=shared.jobs()
                if shared is not None
                else JobJournal(
                    Path(
                        config.get("job_journal_path") or default_journal_path(account)
                    ).expanduser(),
                    account,
                ),
                max_in_flight=config["max_jobs_in_flight"],
                poll_interval=config["poll_interval_seconds"],
                timeout=config["job_timeout_seconds"],
            )
            if config["mode"] == "async" and not config["dry_run"]
            else None,
            dry_run=self._dry_run,
            dry_run_path=config.get("dry_run_output_path"),
            ledger=ledger,
            open_ledger=self._open_ledger,
            change_detection=config["change_detection"],
            ledger_max_age_days=config.get("ledger_max_age_days"),
            passivate=passivate,
            max_passivate_percent=config["max_passivate_percent"],
            seq=self.intake.current,
        )
        self._progress = ProgressReporter(
            config["progress_interval_seconds"], self._view, self._pace, self.logger
        )
        t.cast("LineNumberedReader", self.message_reader).on_unreadable = self._unreadable_line

    def _open_ledger(self) -> Ledger:
        """The ledger; one that cannot be opened (a database that is down, a folder that
        cannot be written) is one error naming it, without its password."""
        from target_dengage.ledger import open_ledger
        from target_dengage.sharedstate import where

        url = self._ledger_url()
        try:
            ledger = open_ledger(url, self._account)
        except Exception as exc:  # any driver's error: the run cannot go on without it
            import sqlalchemy as sa

            try:
                named = where(sa.make_url(url))
            except sa.exc.ArgumentError:
                named = "its URL is not a SQLAlchemy database URL"
            reason = getattr(exc, "orig", None) or exc
            raise DengageError(
                f"The change-detection ledger cannot be opened ({named}): "
                f"{quote(str(reason).strip() or type(reason).__name__)}"
            ) from None
        return ledger

    def _close_ledger(self) -> None:
        ledger = self.pipeline.books.ledger  # opened at start, or by a full-table version
        if ledger is not None:
            ledger.close()

    def _ledger_url(self) -> str:
        from target_dengage.ledger import default_ledger_url

        config = self.config
        url = config.get("ledger_url") or config.get("state_url")
        return url or default_ledger_url(self._account)

    def _shared_state(self, account: str) -> SharedState | None:
        """The database of state_url, opened (its schema made current) before the run reads a
        line, so an unreachable or unusable one fails the run at start, like a bad setting."""
        url = self.config.get("state_url")
        if not url:
            return None
        from target_dengage.sharedstate import SharedState, SharedStateError

        try:
            return SharedState(url, account, self.logger, self.config["max_retries"])
        except SharedStateError as exc:
            raise ConfigValidationError("Config validation failed", errors=[str(exc)]) from None

    def _check_config(self) -> None:
        """Rules JSON schema cannot express, reported like schema errors."""
        config = self.config
        errors: list[str] = []
        has_login = bool(config.get("userkey")) or bool(config.get("password"))
        if config.get("access_token") and has_login:
            errors.append(
                "Give either access_token or userkey + password, not both "
                "(both were set; which should the target use?)."
            )
        elif not config.get("access_token"):
            missing = [k for k in ("userkey", "password") if not config.get(k)]
            if missing:
                errors.append(
                    "Credentials missing: set userkey and password (the target logs in), or "
                    f"access_token. Not set: {', '.join(missing)}."
                )
        url = urlsplit(config.get("api_url", ""))
        if url.username is not None or url.password is not None:
            errors.append(
                "api_url must not hold a user name or password (user:password@host): the "
                "target authenticates with userkey and password or access_token only, and "
                "would otherwise send those credentials too."
            )
        elif url.scheme not in ("https", "http") or not url.hostname:
            errors.append(f"api_url '{config.get('api_url')}' is not an http(s) URL.")
        elif url.scheme == "http" and not _is_loopback(url.hostname):
            errors.append(
                "api_url must use https: http would send credentials and contacts in clear "
                "text (http is allowed only for a loopback emulator)."
            )
        errors += validate_column_config(
            config.get("column_mapping") or {}, config.get("custom_columns") or ()
        )
        if not errors:
            errors += self._unwritable_outputs()
        if errors:
            raise ConfigValidationError("Config validation failed", errors=errors)

    def _unwritable_outputs(self) -> list[str]:
        """Every file the run will write, checked before it reads a line or calls the API."""
        config = self.config
        account = account_key(config["api_url"], config.get("userkey"), config.get("access_token"))
        dry = config["dry_run"]
        outputs: list[tuple[str, str | None, bool]] = [
            ("rejected_records_path", config.get("rejected_records_path"), False),
            ("run_summary_path", config.get("run_summary_path"), True),
        ]
        if dry:
            outputs.append(("dry_run_output_path", config.get("dry_run_output_path"), False))
        elif config.get("state_url"):
            pass  # the pacing clock and the job journal live in that database
        elif config["mode"] == "async":
            journal = config.get("job_journal_path") or str(default_journal_path(account))
            outputs.append(("job_journal_path", journal, True))
        else:
            pacing = config.get("pacing_state_path") or str(default_pacing_path(account))
            outputs.append(("pacing_state_path", pacing, True))
        if config["change_detection"] or config["delete_behavior"] == "passivate":
            from target_dengage.ledger import default_ledger_url, sqlite_file

            ledger = sqlite_file(
                config.get("ledger_url") or config.get("state_url") or default_ledger_url(account)
            )
            if ledger is not None:
                outputs.append(("ledger_url", str(ledger), False))
        errors = []
        for setting, path, replaced in outputs:
            if path:
                why = unwritable(Path(path).expanduser(), replaced=replaced)
                if why is not None:
                    errors.append(f"{setting}: '{path}' cannot be written ({why}).")
        return errors

    # Records and STATE ----------------------------------------------------------------

    def _bad_message(self, what: str) -> InvalidInputError:
        line = t.cast("LineNumberedReader", self.message_reader).line_number
        return InvalidInputError(f"Input line {line}: {what}")

    def _unreadable_line(
        self, number: int, line: bytes | str, why: str, stream: str | None = None
    ) -> None:
        """A line that cannot be decoded: with stop_on_error, the run stops naming it;
        without, it is a rejected record like any other (written down before any STATE
        past it), and the rest loads."""
        stream = stream or stream_named_in(line)
        said = f"Input line {number} {why}" + (f" (stream '{stream}')" if stream else "")
        if self.config["stop_on_error"]:
            raise InvalidInputError(
                f"{said}; a Singer tap must write one JSON message per line. Set "
                "stop_on_error: false (with rejected_records_path) to set such lines aside "
                "and load the rest."
            )
        self.pipeline.reject_line(number, stream, why, line, self.intake.set_aside())
        self.logger.warning("%s; set aside.", said)

    def check_schema_message(self, message: dict[str, t.Any]) -> None:
        schema = message.get("schema")
        keys = message.get("key_properties")
        if (
            not isinstance(message.get("stream"), str)
            or not isinstance(schema, dict)
            or not isinstance(schema.get("properties"), dict)
            or not (
                keys is None or (isinstance(keys, list) and all(isinstance(k, str) for k in keys))
            )
        ):
            raise self._bad_message(
                "a SCHEMA message needs a 'stream' (text), a 'schema' object with "
                "'properties', and 'key_properties' as a list of names."
            )

    def schema_ready(self, stream: str) -> None:
        """Plain streams' records go from the reader straight to their sink."""
        sink = self.plain_sink(stream)
        reader = t.cast("LineNumberedReader", self.message_reader)
        reader.records.pop(stream, None)
        reader.raw_records.pop(stream, None)
        if isinstance(sink, DengageSink):
            reader.records[stream] = sink
            if self.pipeline.lookups is not None and not sink.may_delete:
                reader.raw_records[stream] = sink.take_raw

    def check_record_message(self, message: dict[str, t.Any]) -> None:
        if not isinstance(message.get("stream"), str) or not isinstance(
            message.get("record"), dict
        ):
            raise self._bad_message(
                "a RECORD message needs a 'stream' (text) and a 'record' (an object)."
            )
        version = message.get("version")
        problem = version_problem(version)
        if problem is not None:
            raise self._bad_message(problem)
        self.record_version = version

    def check_activate_version_message(self, message: dict[str, t.Any]) -> None:
        stream = message.get("stream")
        version = message.get("version")
        if not isinstance(stream, str):
            raise self._bad_message("an ACTIVATE_VERSION message needs a 'stream' (text).")
        if type(version) is not int:
            raise self._bad_message(
                f"the ACTIVATE_VERSION message of stream '{quote(stream, 80)}' needs an integer "
                f"'version', not {quote(repr(version), 40)}."
            )
        if stream not in self.mapper.stream_maps:
            raise self._bad_message(
                f"an ACTIVATE_VERSION message for stream '{quote(stream, 80)}', which no SCHEMA "
                "message has declared."
            )

    def batch_message(self, message: dict[str, t.Any]) -> None:
        """A BATCH message's records take the RECORD path, one at a time as their files are
        streamed: the same maps, validation, rejection, change detection and STATE rules.
        A file that cannot be read stops the run, with no STATE past it."""
        stream = message.get("stream")
        encoding = message.get("encoding")
        manifest = message.get("manifest")
        if (
            not isinstance(stream, str)
            or not isinstance(encoding, dict)
            or not isinstance(manifest, list)
            or not all(isinstance(url, str) for url in manifest)
        ):
            raise self._bad_message(
                "a BATCH message needs a 'stream' (text), an 'encoding' object and a "
                "'manifest' (a list of file URLs)."
            )
        line = t.cast("LineNumberedReader", self.message_reader).line_number
        for url in manifest:
            try:
                for number, item in batch_records(url, encoding):
                    if isinstance(item, str):
                        why = f"holds a record that cannot be read: line {number} of {url} {item}"
                        self._unreadable_line(line, b"", why, stream)
                    else:
                        self.record_message({"type": "RECORD", "stream": stream, "record": item})
            except BatchFileError as exc:
                raise InvalidInputError(
                    f"Input line {line} (stream '{stream}'), a BATCH message: its manifest "
                    f"file '{url}' cannot be read ({quote(str(exc))}). No STATE past it is "
                    "printed."
                ) from None

    def state_received(self, state: dict[str, t.Any]) -> None:
        """Hold the STATE until every record before it is confirmed or written down."""
        held = self._held_states
        seq = self.intake.seq
        if held and (held[-1][0] == seq or len(held) >= MAX_HELD_STATES):
            # Collapse into the newer STATE: it covers everything the older one did, so
            # this only delays that checkpoint, and memory stays bounded for taps that
            # send a STATE after every record.
            received = held.pop()[1]
        else:
            received = time.monotonic()
        held.append((seq, received, state))
        self._print_confirmed_state()

    def input_drained(self) -> None:
        """After the SDK's drain: everything is sent; print what D·engage confirmed."""
        self.pipeline.flush_all()
        self._print_confirmed_state()

    def _print_confirmed_state(self) -> None:
        """Print the newest STATE whose records are all confirmed or written down."""
        if self._dry_run:
            return
        watermark = self.pipeline.watermark
        ready = None
        while self._held_states and self._held_states[0][0] < watermark:
            ready = self._held_states.popleft()[2]
        if ready is None:
            return
        self.pipeline.books.settle()
        line = serialize_json(ready)
        if line != self._printed_state:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):  # a closed pipe, or a closed stream
                raise DengageError(
                    "stdout was closed; no STATE could be written. Whatever reads the "
                    "target's output (the orchestrator) went away; the next run sends the "
                    "unacknowledged records again."
                ) from None
            self._printed_state = line

    def every_few_records(self) -> None:
        """Polls async jobs that are due. And instead of the SDK's drain of everything every
        5 minutes (which would send part-full requests of every column set), sends only the
        buckets that keep the newest STATE from being printed, once the oldest held STATE is
        that old."""
        self.pipeline.poll()
        held = self._held_states
        if held and time.monotonic() - held[0][1] > self._MAX_RECORD_AGE_IN_MINUTES * 60:
            self.pipeline.flush_through(held[-1][0])
            self._print_confirmed_state()

    def process_endofpipe(self) -> None:
        for sink in self.all_sinks():
            if isinstance(sink, DengageSink):
                sink.sync_counts()  # before the drain reads them
        try:
            self.pipeline.mirrors.finish()  # its passivations go in the drain, before STATE
            super().process_endofpipe()
        finally:
            self.client.close()  # no more calls after the end of input
            self._close_ledger()
        self._report_deletes()
        if self.pipeline.mirrors.over_limit:
            raise DengageError(
                " ".join(self.pipeline.mirrors.over_limit)
                + " Everything else was delivered and STATE printed; the run is marked failed "
                "so that someone looks."
            )
        stats = self.pipeline.stats
        if stats.unaccounted:
            raise DengageError(
                f"{stats.unaccounted} record(s) were rejected and no rejected_records_path is "
                "set, so they are only in the log above; the final STATE was not printed. "
                "Set rejected_records_path to keep them and let the run complete."
            )
        limit = self.config.get("max_rejected_percent")
        rejected = stats.rejected_locally + stats.rejected_by_api
        if limit is not None and stats.records_read and rejected * 100 > limit * stats.records_read:
            raise DengageError(
                f"{rejected} of {stats.records_read} records "
                f"({rejected * 100 / stats.records_read:.1f} %) were rejected, more than "
                f"max_rejected_percent ({limit:g} %). Everything valid was delivered and the "
                "rejected records are in the rejected-records file; the run is marked failed "
                "so that someone looks at them."
            )

    def _report_deletes(self) -> None:
        """One line per stream that sent deletes, saying what became of them."""
        ignored = self.config["delete_behavior"] == "ignore"
        for sink in self.all_sinks():
            if isinstance(sink, DengageSink) and sink.deletes:
                if ignored:
                    self.logger.info(
                        "Stream '%s': %d deleted record(s) were not sent "
                        "(delete_behavior: ignore); delete_behavior: passivate would "
                        'passivate those contacts in D·engage (contact_status "P").',
                        sink.stream_name,
                        sink.deletes,
                    )
                else:
                    self.logger.info(
                        "Stream '%s': %d deleted record(s) sent as passivations "
                        '(contact_status "P"; never creating a contact).',
                        sink.stream_name,
                        sink.deletes,
                    )

    def _view(self) -> RunView:
        client = self.client
        return RunView(
            stats=self.pipeline.stats,
            jobs=self.pipeline.jobs,
            retries=client.retries,
            rate_limited=client.rate_limited,
            rate_limited_seconds=client.rate_limited_seconds,
            pacing_seconds=client.pacer.waited_seconds,
            seconds=time.monotonic() - self._started,
        )

    def close(self, error: str | None) -> None:
        """Report the run, however it ended (a failed run's summary says what did arrive)."""
        self._progress.stop()
        view = self._view()
        config = self.config
        rejected_path = str(self._rejects.path) if self._rejects is not None else None
        if self._dry_run:
            self.pipeline.close()
            self.logger.info("%s", plan_text(view, self._pace, config.get("dry_run_output_path")))
        self.logger.info("%s", summary_text(view, rejected_path))
        if config.get("run_summary_path"):
            summary = summary_json(
                view,
                mode=config["mode"],
                dry_run=self._dry_run,
                started_at=self._started_wall,
                error=error,
                rejected_path=rejected_path,
                last_state=json.loads(self._printed_state) if self._printed_state else None,
            )
            try:
                write_json_atomic(Path(config["run_summary_path"]).expanduser(), summary)
            except OSError as exc:
                self.logger.warning(
                    "Could not write the run summary to run_summary_path %s (%s); the run's "
                    "outcome is as reported above.",
                    config["run_summary_path"],
                    exc.strerror or type(exc).__name__,
                )
        self.client.close()
        self._close_ledger()

    # Ending a run ------------------------------------------------------------------------

    def signalled(self, signum: int) -> None:
        """Stop at once, without the SDK's final drain (meltano/sdk#3775): records not
        yet confirmed stay unacknowledged, so the next run sends them again."""
        self.logger.warning(
            "Received signal %d; stopping. No STATE is printed for unconfirmed records; the "
            "next run sends them again.",
            signum,
        )
        signal.signal(signum, signal.SIG_DFL)
        sys.exit(128 + signum)

    @classmethod
    def get_singer_command(cls) -> click.Command:
        """The SDK's command, with ``--input`` read as bytes like standard input, so a line
        that is not UTF-8 is named by its own line number."""
        command = super().get_singer_command()
        for param in command.params:
            if param.name == "file_input" and isinstance(param, click.Option):
                param.type = click.File("rb")
        return command

    @classmethod
    def run(cls, target: t.Any, file_input: t.IO[str] | t.IO[bytes] | None) -> None:
        """The run, plus: our own errors as one clear line (not a traceback), a non-zero
        exit, the run summary however the run ends, and a quick exit."""
        assert isinstance(target, TargetDengage)
        target._progress.start()
        try:
            target.listen(t.cast("t.IO[str] | None", file_input))
        except UnicodeDecodeError:
            line = t.cast("LineNumberedReader", target.message_reader).line_number
            message = f"Input line {line} is not valid UTF-8 text."
        except (
            DengageError,
            InvalidInputLine,
            RecordsWithoutSchemaException,
            StreamMapConfigError,
        ) as exc:
            message = str(exc)
        except BaseException as exc:
            target.close(error=_ending(exc))
            raise
        else:
            target.close(error=None)
            _exit_now(0)
        cls.logger.error("%s", message)
        target.close(error=message)
        _exit_now(1)


def _exit_now(code: int) -> t.NoReturn:
    """End the process without the interpreter's teardown, which costs a tenth of a second
    or more once the SDK is loaded, on every run. Everything the run writes is closed by
    now (STATE is flushed as printed; the ledger, journal, rejected and summary files are
    closed); only the log handlers and the standard streams may hold buffered text."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            code = code or 1
    os._exit(code)


def _ending(exc: BaseException) -> str:
    """How an unexpected end reads in the run summary."""
    if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128:
        return f"stopped by signal {exc.code - 128}"
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    TargetDengage.cli()
