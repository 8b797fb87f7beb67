"""The private parts of singer-sdk that target_dengage/sdk.py relies on are still there.

A new SDK release may drop or rename any of them without notice. Each test names the piece
and what the target does with it, so a failure says exactly what to adapt in sdk.py.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import singer_sdk
from conftest import MAPPING, contact, record, run_target, schema, state
from singer_sdk import mapper, plugin_base
from singer_sdk.sinks import Sink
from singer_sdk.target_base import Target

from target_dengage.emulator import DengageEmulator
from target_dengage.sdk import SdkSink
from target_dengage.target import TargetDengage

SDK = f"singer-sdk {singer_sdk.__version__}" if hasattr(singer_sdk, "__version__") else "singer-sdk"

#: Private methods overridden in sdk.py, with the parameters the override expects.
METHODS = [
    (Target, "_process_schema_message", ["self", "message_dict"]),
    (Target, "_process_record_message", ["self", "message_dict"]),
    (Target, "_process_batch_message", ["self", "message_dict"]),
    (Target, "_process_activate_version_message", ["self", "message_dict"]),
    (Target, "_process_state_message", ["self", "message_dict"]),
    (Target, "_write_state_message", ["self", "state"]),
    (Target, "_handle_max_record_age", ["self"]),
    (Target, "_handle_termination", ["self", "signum", "frame"]),
    (Sink, "_singer_validate_message", ["self", "record"]),
    (Sink, "_remove_sdc_metadata_from_record", ["self", "record"]),
    (Sink, "_parse_timestamps_in_record", ["self", "record", "schema", "treatment"]),
]


@pytest.mark.parametrize(("owner", "name", "params"), METHODS, ids=[m[1] for m in METHODS])
def test_private_methods_sdk_py_overrides_are_still_there(
    owner: type, name: str, params: list[str]
) -> None:
    method = getattr(owner, name, None)
    assert method is not None, (
        f"{SDK} no longer has {owner.__name__}.{name}; target_dengage/sdk.py overrides it "
        "and must be adapted to the SDK's new hook."
    )
    found = list(inspect.signature(method).parameters)
    assert found == params, (
        f"{SDK} changed {owner.__name__}.{name}{tuple(found)}; target_dengage/sdk.py "
        f"overrides it as {tuple(params)}."
    )


def test_private_names_sdk_py_imports_are_still_there() -> None:
    assert hasattr(plugin_base, "_ConfigInput"), (
        f"{SDK} dropped plugin_base._ConfigInput, which SdkTarget.invoke builds the config "
        "from; adapt target_dengage/sdk.py."
    )
    assert "about_format" in inspect.signature(plugin_base.PluginBase.invoke).parameters, (
        f"{SDK} changed PluginBase.invoke, which SdkTarget.invoke calls for --about; adapt "
        "target_dengage/sdk.py."
    )
    transform = mapper.SameRecordTransform.__init__
    assert "flattening_options" in inspect.signature(transform).parameters, (
        f"{SDK} changed SameRecordTransform (flattening_options), which SdkTarget.plain_sink "
        "reads; adapt target_dengage/sdk.py."
    )


def test_private_attributes_of_a_live_target_and_sink_are_still_there(
    emulator: DengageEmulator, base_config: dict[str, Any]
) -> None:
    target = TargetDengage(config={**base_config, "validate_records": True})
    for name in ("_latest_state", "_sinks_active", "_sinks_to_clear"):
        assert hasattr(target, name), (
            f"{SDK} no longer gives a Target the attribute {name}; target_dengage/sdk.py reads it."
        )
    schema = {"type": "object", "properties": {"id": {"type": "string"}}}
    sink = target.get_sink("s", schema=schema, key_properties=["id"])
    assert sink in target.all_sinks()
    assert hasattr(sink, "_validator"), (
        f"{SDK} no longer gives a Sink the attribute _validator; SdkSink.schema_check reads it."
    )
    assert isinstance(sink, SdkSink)
    assert sink.schema_check is not None  # validate_records: the SDK made a validator


@pytest.mark.parametrize("plain", [True, False], ids=["plain-stream", "sdk-record-path"])
def test_record_count_metric_counts_each_record_once(
    plain: bool, emulator: DengageEmulator, base_config: dict[str, Any], tmp_path: Path
) -> None:
    """The plain-stream path bypasses the SDK's record loop, which counts records; the
    metric must still count every record once, whichever SDK version counts it where."""
    config = {**base_config, "column_mapping": MAPPING, "dry_run": True}
    if not plain:
        config["stream_maps"] = {"contacts": {"first_name": "first_name"}}
    messages = [schema(), *(record(**contact(i)) for i in range(1, 6)), state({"p": 1})]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    counts = [
        json.loads(line.split("METRIC: ", 1)[1])
        for line in run.stderr.splitlines()
        if "METRIC: " in line and '"record_count"' in line
    ]
    assert sum(metric["value"] for metric in counts) == 5, counts
