#!/usr/bin/env bash
# The project's test command: installs everything, then lint, format check, types, tests.
# The tests include end-to-end runs with real Meltano and a PostgreSQL server; for a quick
# loop without them: bash scripts/test.sh -m "not meltano"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh" --with-meltano
cd "$root"
bin="$root/.venv/bin"
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
echo "== ruff check"; "$bin/ruff" check .
echo "== ruff format --check"; "$bin/ruff" format --check .
echo "== mypy"; "$bin/mypy"
echo "== pytest"; "$bin/pytest" "$@"
