#!/usr/bin/env bash
# The project's test command: installs everything, then lint, format check, types, tests.
# "Everything" is .venv (the target and its dev tools), .venv-meltano (Meltano), and the
# system packages the tests need: a PostgreSQL server and its wal2json plugin
# (scripts/system_packages.sh: apt-get as root or with sudo, otherwise a message naming the
# packages). The tests include end-to-end runs with real Meltano and that server. Run with no
# arguments (as CI does), the suite then runs a second time against the newest singer-sdk
# pre-release, in a venv of its own (.venv-sdk-pre), without the Meltano tests (Meltano
# installs the target with the SDK pinned in pyproject.toml). Any argument goes to pytest and
# skips that second pass, e.g. the quick loop: bash scripts/test.sh -m "not meltano"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh" --with-meltano
bash "$root/scripts/system_packages.sh"
cd "$root"
bin="$root/.venv/bin"
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
echo "== ruff check"; "$bin/ruff" check .
echo "== ruff format --check"; "$bin/ruff" format --check .
echo "== mypy"; "$bin/mypy"
echo "== pip check"; "$bin/python" -m pip check
echo "== pytest"; "$bin/pytest" "$@"
if [ $# -eq 0 ]; then
  bash "$root/scripts/bootstrap.sh" --sdk-pre
  pre="$root/.venv-sdk-pre/bin"
  echo "== pytest on singer-sdk $("$pre/python" -c 'import importlib.metadata as m; print(m.version("singer-sdk"))')"
  "$pre/pytest" -m "not meltano"
fi
