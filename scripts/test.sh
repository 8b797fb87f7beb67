#!/usr/bin/env bash
# The project's test command: installs everything, then lint, format check, types, tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
bin="$root/.venv/bin"
echo "== ruff check"; "$bin/ruff" check .
echo "== ruff format --check"; "$bin/ruff" format --check .
echo "== mypy"; "$bin/mypy"
echo "== pytest"; "$bin/pytest" "$@"
