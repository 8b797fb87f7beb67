"""A throwaway PostgreSQL server for the tests: its own data directory, loopback only.

It uses the machine's PostgreSQL binaries (``.ci/run`` installs them on a clean machine).
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    database: str
    psql: str
    socket_dir: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def sql(self, statements: str) -> str:
        """Run SQL through psql over the server's socket; returns psql's output."""
        result = subprocess.run(
            [
                self.psql,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.socket_dir,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                self.database,
                "-At",
            ],
            input=statements,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def postgres_server(settings: Mapping[str, str] | None = None) -> Iterator[Server]:
    """Start a server in a fresh directory of its own (the postgres user must be able to
    reach it, which pytest's per-user temporary folders do not allow), and remove it after.

    ``settings`` are extra server settings (``-c name=value``), such as
    ``{"wal_level": "logical"}`` for logical replication."""
    directory = Path(tempfile.mkdtemp(prefix="target-dengage-pg-"))
    try:
        with _running(directory, settings or {}) as server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def _running(directory: Path, settings: Mapping[str, str]) -> Iterator[Server]:
    initdb, pg_ctl, psql = find_bin("initdb"), find_bin("pg_ctl"), find_bin("psql")
    if not (initdb and pg_ctl and psql):
        raise RuntimeError("PostgreSQL binaries not found; .ci/run installs them (apt postgresql)")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    directory.mkdir(parents=True, exist_ok=True)
    data, sockets = directory / "data", directory / "sockets"
    sockets.mkdir(exist_ok=True)
    if as_root:
        shutil.chown(directory, "postgres")
        shutil.chown(sockets, "postgres")
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"], **run
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off"
    options += "".join(f" -c {name}={value}" for name, value in settings.items())
    subprocess.run(
        [
            *prefix,
            pg_ctl,
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(directory / "log"),
            "-w",
            "start",
        ],
        **run,
    )
    try:
        server = Server("127.0.0.1", port, "postgres", "postgres", psql, str(sockets))
        deadline = time.monotonic() + 30
        while True:
            try:
                server.sql("select 1;")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], **run)
