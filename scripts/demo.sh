#!/usr/bin/env bash
# Demo: a sample contacts CSV → target-dengage → a local D·engage emulator. No credentials.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/python" "$root/scripts/demo.py" "$@"
