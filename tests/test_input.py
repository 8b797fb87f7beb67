"""Whatever a tap or a user sends is loaded or refused clearly: BATCH files, absurd numbers,
deep or huge lines, schema violations, failing stream maps, unknown messages, unwritable
paths, absurd settings, a closed stdout. Through the real CLI, with stop_on_error both ways:
the good records around a bad one are stored, and no line of stderr is a traceback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    MAPPING,
    NETWORK_GUARD,
    Run,
    cli_command,
    contact,
    record,
    run_target,
    schema,
    state,
)
from singer_sdk.contrib.batch_encoder_jsonl import JSONLinesBatcher
from singer_sdk.contrib.batch_encoder_parquet import ParquetBatcher
from singer_sdk.helpers._batch import BatchConfig

from target_dengage.emulator import DengageEmulator

FORMATS = [("jsonl", "gzip"), ("jsonl", "none"), ("parquet", "none"), ("parquet", "gzip")]


def _batch_messages(
    tmp_path: Path, form: str, compression: str, first: int, last: int, size: int
) -> list[dict[str, Any]]:
    """BATCH messages for contacts first..last, written by the SDK's own batch encoders."""
    config = BatchConfig(
        encoding={"format": form, "compression": compression},
        storage={"root": (tmp_path / "batches").as_uri(), "prefix": "part-"},
        batch_size=size,
    )
    (tmp_path / "batches").mkdir(exist_ok=True)
    batcher = (JSONLinesBatcher if form == "jsonl" else ParquetBatcher)(
        "tap-warehouse", "contacts", config
    )
    records = [contact(i) for i in range(first, last + 1)]
    encoding = {"format": form, "compression": compression}
    return [
        {"type": "BATCH", "stream": "contacts", "encoding": encoding, "manifest": manifest}
        for manifest in batcher.get_batches(iter(records))
    ]


def _keys(first: int, last: int) -> set[str]:
    return {f"c{i}" for i in range(first, last + 1)}


def _rejected(config: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(config["rejected_records_path"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _stopped_or_set_aside(
    run: Run, emulator: DengageEmulator, config: dict[str, Any], *, stop_on_error: bool
) -> dict[str, Any] | None:
    """Of c1, a bad second input and c3: with stop_on_error the run stops, no STATE printed
    (None); without, the rest loads and the bad one is the one rejected entry (returned)."""
    if stop_on_error:
        assert run.returncode == 1
        assert run.states == []
        return None
    assert run.returncode == 0, run.stderr
    assert run.states == [{"position": 3}]
    assert {"c1", "c3"} <= set(emulator.contacts())
    [rejected] = _rejected(config)
    return rejected


def _no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert 'File "' not in stderr


@pytest.mark.parametrize(("form", "compression"), FORMATS)
def test_batch_messages_are_loaded_like_records(
    form: str,
    compression: str,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config = {**base_config, "column_mapping": MAPPING, "batch_size_rows": 100}
    batches = _batch_messages(tmp_path, form, compression, 1, 250, size=120)
    assert len(batches) == 3
    messages = [
        schema(),
        *batches,
        state({"position": 250}),
        record(**contact(251)),
        state({"position": 251}),
    ]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert run.states[-1] == {"position": 251}
    assert set(emulator.contacts()) == _keys(1, 251)
    assert emulator.contacts()["c7"]["email"] == "user.c7@example.com"
    assert run.summary["records_read"] == 251
    assert all(call["count"] == 100 for call in emulator.bulk_calls()[:2])  # full requests


def test_batch_records_go_through_change_detection(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "change_detection": True,
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
    }
    messages = [schema(), *_batch_messages(tmp_path, "jsonl", "gzip", 1, 50, 50), state({"p": 1})]
    first = run_target(config, messages, tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_target(config, messages, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.summary["contacts"]["unchanged"] == 50
    assert len(emulator.bulk_calls()) == 1


@pytest.mark.parametrize("stop_on_error", [True, False])
def test_batch_with_a_missing_file_stops_with_no_state_past_it(
    stop_on_error: bool, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "column_mapping": MAPPING, "stop_on_error": stop_on_error}
    good = _batch_messages(tmp_path, "jsonl", "gzip", 1, 10, 10)
    missing = {**good[0], "manifest": [(tmp_path / "gone.jsonl.gz").as_uri()]}
    messages = [schema(), *good, state({"position": 10}), missing, state({"position": 20})]
    run = run_target({**config, "batch_size_rows": 10}, messages, tmp_path)

    assert run.returncode == 1
    assert run.states == [{"position": 10}]
    assert "gone.jsonl.gz" in run.stderr
    assert "cannot be read" in run.stderr
    assert set(emulator.contacts()) == _keys(1, 10)
    _no_traceback(run.stderr)


def test_batch_file_with_a_bad_line_sets_it_aside(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "part.jsonl"
    lines = [json.dumps(contact(1)), '{"id": "c2", "email": ', json.dumps(contact(3))]
    path.write_text("\n".join(lines) + "\n")
    batch = {
        "type": "BATCH",
        "stream": "contacts",
        "encoding": {"format": "jsonl", "compression": "none"},
        "manifest": [path.as_uri()],
    }
    config = {**base_config, "column_mapping": MAPPING, "stop_on_error": False}
    run = run_target(config, [schema(), batch, state({"p": 1})], tmp_path)

    assert run.returncode == 0, run.stderr
    assert run.states == [{"p": 1}]
    assert set(emulator.contacts()) == {"c1", "c3"}
    [rejected] = _rejected(config)
    assert rejected["line_number"] == 2
    assert rejected["stream"] == "contacts"
    assert "line 2 of" in rejected["reason"]


NUMBERS = {
    "key": {"id": "1e100000000"},
    "key-5000": {"id": "1e5000"},
    "custom": {"city": "-1e100000000"},
    "gsm": {"phone": "1e100000000"},
}


def _raw_record(values: dict[str, str], i: int) -> str:
    """A RECORD line with some values as bare JSON numbers (not strings)."""
    fields = {**contact(i), **dict.fromkeys(values, "@@")}
    text = json.dumps(record(**fields))
    for value in values.values():
        text = text.replace('"@@"', value, 1)
    return text


@pytest.mark.parametrize("stop_on_error", [True, False])
@pytest.mark.parametrize("case", sorted(NUMBERS))
def test_huge_numbers_are_rejected_in_constant_time(
    case: str,
    stop_on_error: bool,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "custom_columns": ["city"],
        "stop_on_error": stop_on_error,
    }
    props = ("id", "email", "phone", "first_name", "dob", "city")
    messages = [
        schema(properties=props),
        record(**contact(1)),
        _raw_record(NUMBERS[case], 2),
        record(**contact(3)),
        state({"position": 3}),
    ]
    run = run_target(config, messages, tmp_path)  # hours, before: RUN_TIMEOUT bounds it

    _no_traceback(run.stderr)
    assert "number too large" in run.stderr
    rejected = _stopped_or_set_aside(run, emulator, config, stop_on_error=stop_on_error)
    if rejected is None:
        assert "record 2" in run.stderr
    else:
        assert rejected["record_number"] == 2
        assert "number too large" in rejected["reason"]


LINES = {
    "deep": "{}".join(["[" * 1000, "]" * 1000]),
    "huge": '"' + "x" * (9 * 1024 * 1024) + '"',
}


@pytest.mark.parametrize("stop_on_error", [True, False])
@pytest.mark.parametrize("case", sorted(LINES))
def test_lines_too_deep_or_too_large_are_set_aside_or_named(
    case: str,
    stop_on_error: bool,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    config = {**base_config, "column_mapping": MAPPING, "stop_on_error": stop_on_error}
    bad = json.dumps(record(**contact(2), notes="@@")).replace('"@@"', LINES[case])
    messages = [schema(), record(**contact(1)), bad, record(**contact(3)), state({"position": 3})]
    run = run_target(config, messages, tmp_path)

    _no_traceback(run.stderr)
    assert len(run.stderr) < 100_000
    reason = "is nested too deeply" if case == "deep" else "is longer than 8,388,608 bytes"
    assert f"Input line 3 {reason}" in run.stderr
    rejected = _stopped_or_set_aside(run, emulator, config, stop_on_error=stop_on_error)
    if rejected is not None:
        assert rejected["line_number"] == 3
        assert rejected["stream"] == "contacts"
        assert rejected["source"] == "input"
        assert len(rejected["line"]) <= 2000


@pytest.mark.parametrize("stop_on_error", [True, False])
def test_schema_violation_with_validate_records_is_a_rejected_record(
    stop_on_error: bool, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "validate_records": True,
        "stop_on_error": stop_on_error,
    }
    strict = schema()
    strict["schema"]["properties"]["first_name"] = {"type": ["integer", "null"]}
    bad = {**contact(2), "first_name": "Jane.Doe@Example.com"}
    messages = [
        strict,
        record(**{**contact(1), "first_name": None}),
        record(**bad),
        record(**{**contact(3), "first_name": 7}),
        state({"position": 3}),
    ]
    run = run_target(config, messages, tmp_path)  # checks: no raw email in the log

    _no_traceback(run.stderr)
    assert "record 2" in run.stderr
    assert "does not match the tap's schema (type: ['integer', 'null'])" in run.stderr
    rejected = _stopped_or_set_aside(run, emulator, config, stop_on_error=stop_on_error)
    if rejected is not None:
        assert rejected["record_number"] == 2
        assert rejected["field"] == "name"


def test_failing_stream_map_is_one_line_naming_the_input_line(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **base_config,
        "column_mapping": MAPPING,
        "stream_maps": {"contacts": {"first_name": "first_name.upper()"}},
    }
    messages = [
        schema(),
        record(**contact(1)),
        record(**{**contact(2), "first_name": None}),
        state({"position": 2}),
    ]
    run = run_target(config, messages, tmp_path)

    assert run.returncode == 1
    _no_traceback(run.stderr)
    said = "Input line 3 (stream 'contacts'), a RECORD message, cannot be processed"
    assert said in run.stderr
    assert "MapExpressionError" in run.stderr


def test_unknown_message_type_is_one_line(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    messages = [schema(), {"type": "FOO", "stream": "contacts"}]
    run = run_target({**base_config, "column_mapping": MAPPING}, messages, tmp_path)
    assert run.returncode == 1
    _no_traceback(run.stderr)
    assert "Input line 2: unknown Singer message type 'FOO'" in run.stderr


OUTPUTS = ["rejected_records_path", "run_summary_path", "pacing_state_path", "ledger_url"]


@pytest.mark.parametrize("setting", [*OUTPUTS, "job_journal_path", "dry_run_output_path"])
@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_unwritable_output_paths_fail_before_anything_is_read(
    setting: str,
    where: str,
    emulator: DengageEmulator,
    base_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    path = tmp_path / "a-dir" if where == "a directory" else tmp_path / "a-file" / "out.json"
    config = {**base_config, "column_mapping": MAPPING}
    if setting == "ledger_url":
        config.update(change_detection=True, ledger_url=f"sqlite:///{path}")
    else:
        config[setting] = str(path)
    if setting == "job_journal_path":
        config["mode"] = "async"
    if setting == "dry_run_output_path":
        config["dry_run"] = True
    if setting == "run_summary_path":
        config["run_summary_path"] = str(path)
    run = run_target(config, [schema(), record(**contact(1)), state({"p": 1})], tmp_path)

    assert run.returncode != 0
    _no_traceback(run.stderr)
    assert f"{setting}: '{path}' cannot be written" in run.stderr
    assert emulator.request_log() == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("request_interval_seconds", 10**20),
        ("request_timeout_seconds", 10**20),
        ("poll_interval_seconds", 10**20),
        ("job_timeout_seconds", 10**20),
        ("progress_interval_seconds", 10**20),
        ("max_retries", 10**9),
        ("ledger_max_age_days", 10**20),
    ],
)
def test_absurd_settings_are_config_errors(
    setting: str, value: int, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, "column_mapping": MAPPING, setting: value}
    run = run_target(config, [schema(), record(**contact(1))], tmp_path)
    assert run.returncode != 0
    _no_traceback(run.stderr)
    assert setting in run.stderr
    assert emulator.request_log() == []


def _cli(
    args: list[str], stdin: bytes, tmp_path: Path, *, close_stdout: bool = False
) -> tuple[int, str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), **NETWORK_GUARD}
    with subprocess.Popen(
        [*cli_command(), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    ) as proc:
        assert proc.stdout is not None
        if close_stdout:
            proc.stdout.close()  # as `| head -c 0` does
        _, err = proc.communicate(stdin, timeout=120)
    return proc.returncode, err.decode()


def test_input_file_line_numbers_are_right_for_invalid_utf8(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({**base_config, "column_mapping": MAPPING}))
    lines = [json.dumps(schema()).encode(), json.dumps(record(**contact(1))).encode()]
    lines.append(b'{"type": "RECORD", "stream": "contacts", "record": {"id": "c\xff"}}')
    (tmp_path / "input.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, stderr = _cli(
        ["--config", str(config_path), "--input", str(tmp_path / "input.jsonl")], b"", tmp_path
    )
    assert code == 1
    _no_traceback(stderr)
    assert "Input line 3 is not valid JSON" in stderr


def test_closed_stdout_ends_with_one_clear_line(
    emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({**base_config, "column_mapping": MAPPING}))
    messages = [schema(), record(**contact(1)), state({"position": 1})]
    stdin = "".join(json.dumps(m) + "\n" for m in messages).encode()
    code, stderr = _cli(["--config", str(config_path)], stdin, tmp_path, close_stdout=True)
    assert code != 0
    _no_traceback(stderr)
    assert "stdout was closed; no STATE could be written" in stderr
    assert "c1" in emulator.contacts()


@pytest.mark.parametrize("ipc", ["file", "stream"])
def test_arrow_batch_files_are_loaded(
    ipc: str, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    """singer-sdk 0.55 taps can write Arrow IPC batch files."""
    import pyarrow as pa

    table = pa.Table.from_pylist([contact(i) for i in range(1, 31)])
    path = tmp_path / f"part.{ipc}.arrow"
    with pa.OSFile(str(path), "wb") as sink:
        new = pa.ipc.new_file if ipc == "file" else pa.ipc.new_stream
        with new(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=7)
    batch = {
        "type": "BATCH",
        "stream": "contacts",
        "encoding": {"format": "arrow", "compression": "none"},
        "manifest": [path.as_uri()],
    }
    config = {**base_config, "column_mapping": MAPPING}
    run = run_target(config, [schema(), batch, state({"p": 1})], tmp_path)

    assert run.returncode == 0, run.stderr
    assert run.states == [{"p": 1}]
    assert set(emulator.contacts()) == _keys(1, 30)
