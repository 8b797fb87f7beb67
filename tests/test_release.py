"""Release-ready: the package, the Meltano Hub definition, the README's commands, the workflow.

The quick checks read files and ``target-dengage --about``. The ``meltano``-marked ones build
the sdist and the wheel, install the wheel in a clean venv, add the Hub definition to a fresh
Meltano project, and run the README's Meltano walkthrough as written, the wheel standing in
for the PyPI release.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import NETWORK_GUARD, assert_clean_log, unavailable
from pgserver import Server

import target_dengage

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
HUB_FILE = ROOT / "hub" / "target-dengage.yml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: Meltano's kind for each JSON Schema type (Meltano has no "number": it calls it decimal).
KINDS = {
    "string": "string",
    "integer": "integer",
    "boolean": "boolean",
    "number": "decimal",
    "object": "object",
    "array": "array",
}
HUB_FIELDS = [
    "name",
    "namespace",
    "variant",
    "label",
    "description",
    "pip_url",
    "executable",
    "capabilities",
    "keywords",
    "maintenance_status",
    "settings_group_validation",
    "settings",
]
#: sha256 of the Apache License 2.0 as the Apache Software Foundation publishes it.
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
#: Bounds for the slow steps: a hang fails the test instead of the suite.
INSTALL_TIMEOUT = 900


def _about() -> dict[str, Any]:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("target-dengage")), "--about", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture(scope="module")
def about() -> dict[str, Any]:
    return _about()


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _loader(meltano_yml: Any, name: str = "target-dengage") -> dict[str, Any]:
    loaders = [p for p in meltano_yml["plugins"]["loaders"] if p["name"] == name]
    assert len(loaders) == 1, loaders
    result: dict[str, Any] = loaders[0]
    return result


def _fenced_blocks(markdown: str, heading: str) -> list[str]:
    """The fenced ```bash blocks of one README section (up to the next heading)."""
    start = markdown.index(f"{heading}\n")
    rest = markdown[start + len(heading) + 1 :]
    following = re.search(r"^#{2,3} ", rest, re.MULTILINE)
    section = rest[: following.start()] if following else rest
    return re.findall(r"^```bash\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


# --- The Hub definition, meltano.yml and the README table: one source, --about -------------


def test_hub_definition_and_meltano_yml_are_generated_from_about() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "hub_definition.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_hub_definition_is_a_loader_in_the_hubs_format(about: dict[str, Any]) -> None:
    hub = _yaml(HUB_FILE)
    missing = [field for field in HUB_FIELDS if not hub.get(field)]
    assert not missing, missing
    assert hub["name"] == about["name"] == PYPROJECT["project"]["name"]
    assert hub["namespace"] == "target_dengage" == target_dengage.__name__
    assert hub["pip_url"] == PYPROJECT["project"]["name"]
    assert hub["executable"] in PYPROJECT["project"]["scripts"]
    assert hub["maintenance_status"] == "active"
    repository = PYPROJECT["project"].get("urls", {}).get("Repository")
    assert hub.get("repo") == repository  # both absent until the repository's URL is set
    assert hub["capabilities"] == about["capabilities"]
    groups = hub["settings_group_validation"]
    names = set(about["settings"]["properties"])
    assert all(set(group) <= names for group in groups)
    assert ["userkey", "password"] in groups
    assert ["access_token"] in groups


def test_every_setting_of_about_is_in_the_hub_definition(about: dict[str, Any]) -> None:
    properties = about["settings"]["properties"]
    settings = _yaml(HUB_FILE)["settings"]
    assert [s["name"] for s in settings] == list(properties)
    for entry in settings:
        prop = properties[entry["name"]]
        types = [t for t in prop["type"] if t != "null"]
        if prop.get("enum"):
            assert entry["kind"] == "options", entry
            assert [o["value"] for o in entry["options"]] == [
                v for v in prop["enum"] if v is not None
            ]
        else:
            assert entry["kind"] == KINDS[types[0]], entry
        assert entry["kind"] not in ("password", "hidden"), entry  # deprecated kinds
        assert entry["label"] == prop.get("title", entry["label"])
        assert entry["label"].strip(), entry
        assert entry["description"] == " ".join(prop["description"].split())
        if prop.get("default") is not None:
            assert entry["value"] == prop["default"], entry
        else:
            assert "value" not in entry, entry
        assert entry.get("sensitive", False) is bool(prop.get("secret")), entry
    sensitive = {s["name"] for s in settings if s.get("sensitive")}
    assert {"password", "access_token"} <= sensitive


def test_meltano_yml_has_the_hub_definitions_settings() -> None:
    hub = _yaml(HUB_FILE)
    loader = _loader(_yaml(ROOT / "meltano.yml"))
    for field in ("capabilities", "settings_group_validation", "settings"):
        assert loader[field] == hub[field], field
    assert "kind: password" not in (ROOT / "meltano.yml").read_text(encoding="utf-8")


def test_readme_table_names_every_setting(about: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- settings:begin", 1)[1].split("<!-- settings:end -->", 1)[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    top_level = [name for name in rows[1:] if "." not in name]  # a.b rows are inside a
    assert top_level == list(about["settings"]["properties"])
    assert top_level == [s["name"] for s in _yaml(HUB_FILE)["settings"]]


# --- The version, the licence, the changelog, the release workflow ---------------------------


def test_the_version_comes_from_one_place() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project
    assert project["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "target_dengage/__init__.py"
    version = target_dengage.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?", version)
    out = subprocess.run(
        [str(Path(sys.executable).with_name("target-dengage")), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert f"target-dengage v{version}," in out


def test_license_is_the_apache_2_text_pyproject_declares() -> None:
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256
    assert PYPROJECT["project"]["license"] == "Apache-2.0"


def test_changelog_keeps_a_changelog_and_names_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "\n## [Unreleased]\n" in text
    releases = re.findall(r"^## \[(\d[^\]]*)\] - (\d{4}-\d{2}-\d{2})$", text, re.MULTILINE)
    assert releases, "no released version"
    assert releases[0][0] == target_dengage.__version__
    first = text.split(f"## [{releases[0][0]}]", 1)[1].split("\n## [", 1)[0]
    assert "### Added" in first
    for thing in ("async", "change detection", "dengage-emulator", "hub/target-dengage.yml"):
        assert thing.lower() in first.lower(), thing


def test_release_workflow_publishes_version_tags_through_trusted_publishing() -> None:
    workflow = _yaml(ROOT / ".github" / "workflows" / "release.yml")
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(trigger) == {"push"}, trigger
    assert set(trigger["push"]) == {"tags"}, trigger
    assert all(tag.startswith("v") for tag in trigger["push"]["tags"])
    jobs = workflow["jobs"]
    publishing = [
        (name, job)
        for name, job in jobs.items()
        if any(
            str(step.get("uses", "")).startswith("pypa/gh-action-pypi-publish@")
            for step in job["steps"]
        )
    ]
    assert len(publishing) == 1, list(jobs)
    _, publish = publishing[0]
    assert publish["permissions"] == {"id-token": "write"}
    environment = publish["environment"]
    assert (environment if isinstance(environment, str) else environment["name"]) == "pypi"
    step = next(s for s in publish["steps"] if "gh-action-pypi-publish" in str(s.get("uses")))
    assert not {"password", "user"} & set(step.get("with") or {})  # no token: trusted publishing
    build = jobs[publish["needs"]] if isinstance(publish["needs"], str) else None
    assert build is not None, "publish needs the build job"
    commands = "\n".join(str(s.get("run", "")) for s in build["steps"])
    assert "python -m build" in commands
    assert "twine check --strict" in commands
    assert "id-token" not in (build.get("permissions") or {})  # only publish gets the token
    assert "id-token" not in (workflow.get("permissions") or {})


# --- The test command installs PostgreSQL and wal2json ---------------------------------------


def test_ci_only_calls_the_readme_test_command() -> None:
    lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[-1] == "exec bash scripts/test.sh"
    assert "apt-get" not in "\n".join(lines)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bash scripts/test.sh" in _fenced_blocks(readme, "## Quick start")[0]
    test_sh = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    assert 'bash "$root/scripts/system_packages.sh"' in test_sh


def test_the_tests_postgres_server_loads_wal2json(postgres: Server) -> None:
    """scripts/system_packages.sh put wal2json where this very server loads plugins from."""
    try:
        postgres.sql("LOAD 'wal2json';")
    except subprocess.CalledProcessError as error:
        if "could not access file" in error.stderr:
            unavailable("wal2json (postgresql-<major>-wal2json)")
        raise


# --- The real package: build, check, install ------------------------------------------------


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, and the wheel built from it, as `python -m build` makes them."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=INSTALL_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("target_dengage-*.whl")
    return wheel


@pytest.mark.meltano
def test_sdist_and_wheel_pass_twine_check_strict(dist: Path) -> None:
    version = target_dengage.__version__
    sdist = dist / f"target_dengage-{version}.tar.gz"
    wheel = dist / f"target_dengage-{version}-py3-none-any.whl"
    assert sdist.is_file()
    assert wheel.is_file()
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"target_dengage-{version}.dist-info/METADATA").decode()
    assert {name.split("/")[0] for name in names} == {
        "target_dengage",
        f"target_dengage-{version}.dist-info",
    }
    assert f"target_dengage-{version}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata
    assert "Description-Content-Type: text/markdown" in metadata
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for wanted in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"):
        assert wanted in members, wanted
    assert "hub/target-dengage.yml" in members
    assert "target_dengage/__init__.py" in members
    assert not any(m.startswith((".import_linter_cache", "bench/", ".venv")) for m in members)


_OWNERS = """
import collections, importlib.metadata as md, json
owners = collections.defaultdict(set)
for dist in md.distributions():
    for f in dist.files or []:
        top = f.parts[0] if f.parts else ""
        if not top or top == ".." or top.endswith((".dist-info", ".egg-info", ".pth")):
            continue
        if len(f.parts) == 1:
            if not top.endswith((".py", ".so", ".pyd")):
                continue
            top = top.split(".")[0]
        if top == "__pycache__":
            continue
        owners[top].add(dist.metadata["Name"])
print(json.dumps({k: sorted(v) for k, v in owners.items() if len(v) > 1}))
"""


@pytest.mark.meltano
def test_the_wheel_installs_and_runs_in_a_clean_venv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    # The README's `pip install target-dengage`, with this build's wheel for PyPI's.
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(_wheel(dist))],
        capture_output=True,
        text=True,
        check=False,
        timeout=INSTALL_TIMEOUT,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"  # no checkout around: cwd, PYTHONPATH and PATH
    elsewhere.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
        )

    check = run(str(python), "-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    shared = run(str(python), "-c", _OWNERS)
    assert shared.returncode == 0, shared.stderr
    assert json.loads(shared.stdout) == {}, f"modules owned by two distributions: {shared.stdout}"
    where = run(str(python), "-c", "import target_dengage; print(target_dengage.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    # The README's Install block, as written.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = _fenced_blocks(readme, "## Install")
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    commands = [command for command in commands if command]
    assert commands[0] == "pip install target-dengage"
    assert "target-dengage --version" in commands
    assert "target-dengage --about" in commands
    for command in commands[1:]:
        result = run("bash", "-c", command)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        if command == "target-dengage --version":
            assert f"target-dengage v{target_dengage.__version__}," in result.stdout
    about = run("target-dengage", "--about", "--format=json")
    assert about.returncode == 0, about.stderr
    assert json.loads(about.stdout) == _about()  # the installed wheel says what the tree says
    for script in ("dengage-emulator", "target-dengage-ledger"):
        assert run(script, "--help").returncode == 0, script


# --- Real Meltano: the Hub definition and the README walkthrough ----------------------------


def _meltano_bin() -> str:
    candidates = [
        os.environ.get("MELTANO_BIN"),
        str(ROOT / ".venv-meltano" / "bin" / "meltano"),
        shutil.which("meltano"),
    ]
    found = next((c for c in candidates if c and Path(c).exists()), None)
    if found is None:
        unavailable("Meltano")
    assert found is not None
    return found


def _meltano_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TARGET_DENGAGE_", "TAP_SPREADSHEETS_", "MELTANO_"))
    }
    env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["PATH"] = f"{Path(_meltano_bin()).parent}{os.pathsep}{env.get('PATH', '')}"
    # The target's pacing file goes under the test's folder; the package caches stay shared.
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env.setdefault("UV_CACHE_DIR", str(cache / "uv"))
    env.setdefault("PIP_CACHE_DIR", str(cache / "pip"))
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return env


def _meltano(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_meltano_bin(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=INSTALL_TIMEOUT,
    )


@pytest.mark.meltano
def test_meltano_adds_the_hub_definition_and_keeps_secrets_in_env(
    tmp_path: Path, about: dict[str, Any]
) -> None:
    env = _meltano_env(tmp_path)
    init = _meltano(["init", "project"], tmp_path, env)
    assert init.returncode == 0, init.stderr
    project = tmp_path / "project"
    # Meltano 4's form: `meltano add loader target-dengage` would read `loader` as a second
    # plugin name and add the definition once more, as a utility.
    add = _meltano(
        [
            "add",
            "--plugin-type",
            "loader",
            "target-dengage",
            "--from-ref",
            str(HUB_FILE),
            "--no-install",
        ],
        project,
        env,
    )
    assert add.returncode == 0, add.stderr
    plugins = _yaml(project / "meltano.yml")["plugins"]
    assert list(plugins) == ["loaders"], plugins.keys()
    loader = _loader({"plugins": plugins})
    hub = _yaml(HUB_FILE)
    assert loader["settings"] == hub["settings"]
    assert loader["capabilities"] == about["capabilities"]

    listed = _meltano(["config", "list", "target-dengage", "--all"], project, env)
    assert listed.returncode == 0, listed.stderr
    shown = set(
        re.findall(
            r"^(\w+) (?:\(required by group \d\) )?\[env: TARGET_DENGAGE_\w+\]",
            listed.stdout,
            re.MULTILINE,
        )
    )
    assert shown == set(about["settings"]["properties"])
    assert "Group 1: password, userkey" in listed.stdout
    assert "Group 2: access_token" in listed.stdout

    secret = "not-in-meltano-yml-5e1f"
    set_password = _meltano(["config", "set", "target-dengage", "password", secret], project, env)
    assert set_password.returncode == 0, set_password.stderr
    assert "set in `.env`" in set_password.stdout
    assert f"TARGET_DENGAGE_PASSWORD='{secret}'" in (project / ".env").read_text()
    assert secret not in (project / "meltano.yml").read_text()
    set_userkey = _meltano(["config", "set", "target-dengage", "userkey", "someone"], project, env)
    assert "set in `meltano.yml`" in set_userkey.stdout
    listed = _meltano(["config", "list", "target-dengage"], project, env)
    assert secret not in listed.stdout + listed.stderr
    assert re.search(r"^password .*current value: \(redacted\)", listed.stdout, re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.meltano
def test_readme_meltano_walkthrough_runs_as_written(dist: Path, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = _fenced_blocks(readme, "### With Meltano")
    assert blocks, "the README's Meltano section shows no commands"
    script = "\n".join(blocks)
    for command in ("meltano init", "meltano add", "meltano config set", "meltano config list"):
        assert command in script, command
    assert "meltano run " in script
    assert "meltano config target-dengage" not in readme  # Meltano 3's form; 4 refuses it
    # The placeholders: the clone, and the emulator's port (8765 may be taken on this machine).
    port = _free_port()
    script = script.replace("/path/to/target-dengage", str(ROOT))
    script = script.replace("127.0.0.1:8765", f"127.0.0.1:{port}")
    script = script.replace("--port 8765", f"--port {port}")
    # The network guard (as every test run has) from `meltano run` on; the installs before it
    # need PyPI for the dependencies.
    guard = "export " + " ".join(f"{k}={v}" for k, v in NETWORK_GUARD.items())
    script = script.replace("\nmeltano run ", f"\n{guard}\nmeltano run ", 1)
    wrapper = f"set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}\n"

    env = _meltano_env(tmp_path)
    # `meltano add` installs target-dengage "from PyPI": this build's wheel stands in for it.
    env["UV_FIND_LINKS"] = str(dist)
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [os.environ.get("PIP_FIND_LINKS"), str(dist)]))
    result = subprocess.run(
        ["bash", "-c", wrapper],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=INSTALL_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert_clean_log(result.stderr, {"password": "demo-password"})

    project = tmp_path / "dengage-demo"
    installed = list(project.glob(".meltano/loaders/target-dengage/venv/lib/python*/site-packages"))
    assert len(installed) == 1
    assert (installed[0] / "target_dengage" / "__init__.py").is_file()  # the wheel, not -e
    assert "TARGET_DENGAGE_PASSWORD='demo-password'" in (project / ".env").read_text()
    assert "demo-password" not in (project / "meltano.yml").read_text()

    rows = (ROOT / "examples" / "contacts.csv").read_text(encoding="utf-8").count("\n") - 1
    summary = json.loads((project / "output" / "run-summary.json").read_text())
    assert summary["status"] == "succeeded", summary
    assert summary["records_read"] == rows
    contacts = summary["contacts"]
    assert contacts["confirmed"] > 0
    assert contacts["unconfirmed"] == 0
    rejected = (project / "output" / "rejected-contacts.jsonl").read_text().splitlines()
    assert len(rejected) == contacts["rejected"]
    assert summary["last_state_printed"]  # the STATE Meltano stored
    assert '"status": "succeeded"' in result.stdout  # `cat output/run-summary.json`
