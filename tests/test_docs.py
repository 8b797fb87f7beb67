"""The README and meltano.yml describe the settings the target really has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from target_dengage.target import TargetDengage

ROOT = Path(__file__).resolve().parent.parent


def _about() -> dict:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("target-dengage")), "--about", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_readme_settings_table_is_generated_from_about() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_settings.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_secrets_are_marked_secret() -> None:
    properties = _about()["settings"]["properties"]
    assert properties["password"]["secret"] is True
    assert properties["access_token"]["secret"] is True
    assert properties["batch_size_rows"]["maximum"] == 1000
    assert all(p.get("description") for name, p in properties.items())


def test_meltano_yml_lists_every_setting_of_the_target() -> None:
    text = (ROOT / "meltano.yml").read_text()
    for name in TargetDengage.config_jsonschema["properties"]:
        assert f"- name: {name}\n" in text, name
    for secret in ("password", "access_token"):
        block = text.split(f"- name: {secret}\n", 1)[1].split("- name:", 1)[0]
        assert "sensitive: true" in block
