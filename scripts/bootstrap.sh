#!/usr/bin/env bash
# Creates .venv (once) and installs target-dengage into it with its dev tools.
# With --with-meltano, also .venv-meltano with Meltano, for the end-to-end tests (Meltano
# gets a virtualenv of its own so its dependencies never constrain the target's).
# Safe to run again: pip skips what is already there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
pip_quiet=(--quiet --disable-pip-version-check)
if [ ! -x "$root/.venv/bin/python" ]; then
  "$python" -m venv "$root/.venv"
fi
"$root/.venv/bin/python" -m pip install "${pip_quiet[@]}" --upgrade pip
"$root/.venv/bin/python" -m pip install "${pip_quiet[@]}" -e "$root[dev]"
if [ "${1:-}" = "--with-meltano" ]; then
  if [ ! -x "$root/.venv-meltano/bin/python" ]; then
    "$python" -m venv "$root/.venv-meltano"
  fi
  "$root/.venv-meltano/bin/python" -m pip install "${pip_quiet[@]}" "meltano~=4.4"
fi
