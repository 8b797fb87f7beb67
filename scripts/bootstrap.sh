#!/usr/bin/env bash
# Creates .venv (once) and installs target-dengage into it with its dev tools.
# With --with-meltano, also .venv-meltano with Meltano, for the end-to-end tests (Meltano
# gets a virtualenv of its own so its dependencies never constrain the target's).
# With --sdk-pre, .venv-sdk-pre instead: the target with the newest singer-sdk pre-release.
# Safe to run again: pip skips what is already there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
pip_quiet=(--quiet --disable-pip-version-check)

install_target() {  # venv folder, then extra pip arguments for singer-sdk
  local venv="$1"
  shift
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install "${pip_quiet[@]}" --upgrade pip
  "$venv/bin/python" -m pip install "${pip_quiet[@]}" -e "$root[dev]"
  if [ $# -gt 0 ]; then
    "$venv/bin/python" -m pip install "${pip_quiet[@]}" "$@"
  fi
}

if [ "${1:-}" = "--sdk-pre" ]; then
  install_target "$root/.venv-sdk-pre" --pre --upgrade "singer-sdk[msgspec]<0.56"
  exit 0
fi
install_target "$root/.venv"
if [ "${1:-}" = "--with-meltano" ]; then
  if [ ! -x "$root/.venv-meltano/bin/python" ]; then
    "$python" -m venv "$root/.venv-meltano"
  fi
  "$root/.venv-meltano/bin/python" -m pip install "${pip_quiet[@]}" "meltano~=4.4"
fi
