#!/usr/bin/env bash
# The system packages the tests need, installed when missing (scripts/test.sh runs this):
#   - a PostgreSQL server: the tests start a throwaway one (tests/pgserver.py finds it);
#   - wal2json, the logical-decoding plugin tap-postgres's LOG_BASED replication reads, built
#     for that server's major version and placed where that server loads plugins from.
# Debian/Ubuntu packages (postgresql, postgresql-<major>-wal2json) through apt-get, as root or
# with sudo. Without either, it names the packages to install: the tests that need them are
# then skipped locally and fail in CI (tests/conftest.py).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
[ -x "$python" ] || python="${PYTHON:-python3}"

server_initdb() {  # the initdb of the server the tests use: tests/pgserver.py decides
  "$python" -c 'import sys; sys.path.insert(0, sys.argv[1]); from pgserver import find_bin
print(find_bin("initdb") or "")' "$root/tests"
}

server_major() {  # "initdb (PostgreSQL) 15.18" -> 15
  "$1" --version | awk '{print $3}' | cut -d. -f1
}

server_pkglibdir() {  # where that server loads plugins from: pg_config --pkglibdir beside it
  local bindir
  bindir="$(dirname "$(readlink -f "$1")")"
  if [ -x "$bindir/pg_config" ]; then
    "$bindir/pg_config" --pkglibdir
  fi
}

default_major() {  # the PostgreSQL major version Debian's "postgresql" package installs
  if command -v apt-cache >/dev/null; then
    apt-cache depends postgresql 2>/dev/null | sed -n 's/.*Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -n 1
  fi
}

sudo=()
can_install=yes
if ! command -v apt-get >/dev/null; then
  can_install=no
elif [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then sudo=(sudo); else can_install=no; fi
fi

updated=no
apt_install() {
  echo "== apt-get install $*"
  if [ "$updated" = no ]; then
    "${sudo[@]}" apt-get update -q
    updated=yes
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@"
}

cannot_install() {  # packages...
  echo "The tests need these system packages: $* (Debian/Ubuntu names)." >&2
  echo "Install them, e.g. sudo apt-get install $*, or run scripts/test.sh as root." >&2
  echo "(Elsewhere: a PostgreSQL server with wal2json built for its major version.)" >&2
  echo "Until then the tests that need them are skipped (and fail when CI is set)." >&2
  if [ -n "${CI:-}" ]; then exit 1; fi
  exit 0
}

initdb="$(server_initdb)"
if [ -z "$initdb" ]; then
  major="$(default_major)"
  wanted=(postgresql "postgresql-${major:-<major>}-wal2json")
  [ "$can_install" = yes ] && [ -n "$major" ] || cannot_install "${wanted[@]}"
  apt_install "${wanted[@]}"
  initdb="$(server_initdb)"
  if [ -z "$initdb" ]; then
    echo "PostgreSQL was installed, but tests/pgserver.py finds no initdb" >&2
    exit 1
  fi
fi

major="$(server_major "$initdb")"
pkglibdir="$(server_pkglibdir "$initdb")"
if [ -z "$pkglibdir" ]; then
  echo "No pg_config beside $(readlink -f "$initdb"): cannot tell where that server loads plugins from" >&2
  exit 1
fi
if [ ! -e "$pkglibdir/wal2json.so" ]; then
  [ "$can_install" = yes ] || cannot_install "postgresql-$major-wal2json"
  apt_install "postgresql-$major-wal2json"
  if [ ! -e "$pkglibdir/wal2json.so" ]; then
    echo "postgresql-$major-wal2json is installed, but the server the tests use" >&2
    echo "($initdb -> $(readlink -f "$initdb")) loads plugins from $pkglibdir, where" >&2
    echo "there is no wal2json.so; put that server's bin directory first on PATH, or" >&2
    echo "Debian's (/usr/lib/postgresql/$major/bin)." >&2
    exit 1
  fi
fi
echo "== PostgreSQL $major ($initdb), wal2json in $pkglibdir"
