"""Generate the Meltano Hub definition and meltano.yml's loader settings from ``--about``.

``target-dengage --about --format=json`` is the one source of truth for the settings (name,
title, description, default, secret, JSON type, allowed values) and the capabilities. This
script writes:

- ``hub/target-dengage.yml``: the loader definition in Meltano Hub's format, which
  ``meltano add --plugin-type loader target-dengage --from-ref hub/target-dengage.yml``
  consumes;
- the ``capabilities``, ``settings_group_validation`` and ``settings`` of the target-dengage
  loader in ``meltano.yml``, between the ``generated:begin``/``generated:end`` comments (the
  rest of meltano.yml is edited by hand and left as it is).

Run ``python scripts/hub_definition.py`` after changing a setting or a capability; with
``--check`` it only reports whether the files are up to date (the test suite runs that).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli comes with the dev tools (pytest, mypy)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
HUB_FILE = ROOT / "hub" / "target-dengage.yml"
MELTANO_YML = ROOT / "meltano.yml"
BEGIN = "# generated:begin (scripts/hub_definition.py, from target-dengage --about)"
END = "# generated:end"

#: Either credential pair is enough; the target checks the same at start-up.
SETTINGS_GROUP_VALIDATION = [["userkey", "password"], ["access_token"]]
KEYWORDS = ["meltano_sdk", "dengage", "reverse_etl", "crm", "marketing_automation"]
LABEL = "D·engage"
#: The Hub's variant is, by convention, the owner of the source repository: taken from
#: ``[project.urls] Repository`` in pyproject.toml when it is there, this until then.
DEFAULT_VARIANT = "target-dengage"

#: JSON Schema type → Meltano setting kind (Meltano has ``decimal`` for JSON numbers).
KINDS = {
    "string": "string",
    "integer": "integer",
    "boolean": "boolean",
    "number": "decimal",
    "object": "object",
    "array": "array",
}

_WORDS = {"api": "API", "url": "URL", "id": "ID"}
_UNITS = {"seconds", "days", "rows"}


class _Dumper(yaml.SafeDumper):
    """Block style with indented sequences, as Meltano writes meltano.yml."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


class _Flow(list[str]):
    """A short list written on one line: ``[userkey, password]``."""


_Dumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100, indent=2)


def about() -> dict[str, Any]:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("target-dengage")), "--about", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def label_of(name: str, prop: dict[str, Any]) -> str:
    """The setting's title, or its name in words: ``request_interval_seconds`` →
    ``Request interval (seconds)``, ``api_url`` → ``API URL``."""
    if prop.get("title"):
        return str(prop["title"])
    words = name.split("_")
    unit = words.pop() if len(words) > 1 and words[-1] in _UNITS else None
    text = " ".join(_WORDS.get(word, word) for word in words)
    text = text[:1].upper() + text[1:]
    return f"{text} ({unit})" if unit else text


def kind_of(name: str, prop: dict[str, Any]) -> str:
    if prop.get("enum"):
        return "options"
    types = prop.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    types = [t for t in types if t != "null"]
    if len(types) != 1 or types[0] not in KINDS:
        raise SystemExit(f"setting {name!r}: no Meltano kind for JSON type {prop.get('type')!r}")
    return KINDS[types[0]]


def setting(name: str, prop: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "kind": kind_of(name, prop),
        "label": label_of(name, prop),
        "description": " ".join(str(prop.get("description", "")).split()),
    }
    if prop.get("enum"):
        entry["options"] = [
            {"label": str(value).replace("-", " ").title(), "value": value}
            for value in prop["enum"]
            if value is not None
        ]
    if "default" in prop and prop["default"] is not None:
        entry["value"] = prop["default"]
    if prop.get("secret"):
        entry["sensitive"] = True
    return entry


def settings(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [setting(name, prop) for name, prop in info["settings"]["properties"].items()]


def project() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    result: dict[str, Any] = data["project"]
    return result


def hub_definition(info: dict[str, Any]) -> dict[str, Any]:
    meta = project()
    repo = meta.get("urls", {}).get("Repository")
    owner = urlparse(repo).path.strip("/").split("/")[0] if repo else ""
    names = set(info["settings"]["properties"])
    for group in SETTINGS_GROUP_VALIDATION:
        missing = set(group) - names
        if missing:
            raise SystemExit(f"settings_group_validation names unknown settings: {missing}")
    definition: dict[str, Any] = {
        "name": info["name"],
        "namespace": info["name"].replace("-", "_"),
        "variant": owner.lower() or DEFAULT_VARIANT,
        "label": LABEL,
        "description": info["description"],
    }
    if repo:
        definition["repo"] = repo
    definition.update(
        {
            "pip_url": meta["name"],
            "executable": info["name"],
            "capabilities": list(info["capabilities"]),
            "keywords": KEYWORDS,
            "maintenance_status": "active",
            "settings_group_validation": [_Flow(group) for group in SETTINGS_GROUP_VALIDATION],
            "settings": settings(info),
        }
    )
    return definition


def hub_text(info: dict[str, Any]) -> str:
    header = (
        "# Meltano Hub loader definition, generated by scripts/hub_definition.py from\n"
        "# `target-dengage --about --format=json`. Do not edit by hand.\n"
    )
    return header + dump(hub_definition(info))


def meltano_block(info: dict[str, Any], indent: str) -> str:
    definition = hub_definition(info)
    body = dump(
        {key: definition[key] for key in ("capabilities", "settings_group_validation", "settings")}
    )
    lines = [BEGIN, *body.splitlines(), END]
    return "".join(f"{indent}{line}\n" if line else "\n" for line in lines)


_REGION = re.compile(
    rf"^(?P<indent>[ ]*){re.escape(BEGIN)}\n.*?^[ ]*{re.escape(END)}\n", re.MULTILINE | re.DOTALL
)


def render_meltano_yml(current: str, info: dict[str, Any]) -> str:
    match = _REGION.search(current)
    if match is None:
        raise SystemExit(f"meltano.yml has no '{BEGIN}' … '{END}' region")
    block = meltano_block(info, match["indent"])
    return current[: match.start()] + block + current[match.end() :]


def main() -> int:
    info = about()
    wanted = {
        HUB_FILE: hub_text(info),
        MELTANO_YML: render_meltano_yml(MELTANO_YML.read_text(encoding="utf-8"), info),
    }
    stale = [
        path
        for path, text in wanted.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    if "--check" in sys.argv:
        for path in stale:
            print(
                f"{path.relative_to(ROOT)} is stale: run python scripts/hub_definition.py",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
