#!/usr/bin/env bash
# The benchmark (bench/run.py): installs what it needs, then prints the figures.
#   bash scripts/bench.sh              # N = 100,000
#   bash scripts/bench.sh --million    # also N = 1,000,000 (about ten minutes)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/python" "$root/bench/run.py" "$@"
