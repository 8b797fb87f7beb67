"""Small JSON files that outlive a run (pacing times, the async job journal).

Each is one JSON object keyed by account, rewritten whole through a temporary file and an
atomic rename, so a crash leaves either the old file or the new one, never half of one, and
a reader needs no lock. Writers that read-modify-write lock first: see accountstate.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def read_json_object(path: Path) -> dict[str, Any]:
    """The file's object, or ``{}`` when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: dict[str, Any], *, durable: bool = True) -> None:
    """Replace the file whole. ``durable`` also syncs it to disk first, for what must survive
    a power cut, not just a crash of this process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    if durable:
        _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Sync the rename itself: until the folder is synced, a power cut may bring back the
    old file. Best effort (some file systems cannot open or sync a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_state_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "target-dengage"


def unwritable(path: Path, *, replaced: bool = False) -> str | None:
    """Why the run could not write ``path``, or None. Checked before the run reads a line,
    so a bad path fails at once, not after hours of loading. The folder is created; the
    file is opened for appending (and removed again if that created it); for a file that is
    ``replaced`` whole, a temporary file must be possible beside it too.

    Other runs may check or write the same file at the same moment (two runs on one HOME):
    the file is created exclusively, so only the run that created it removes it, and only
    while it is still that file, never a journal another run has just written there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            with path.open("ab"):
                pass
        else:
            try:
                created = os.fstat(fd)
                with contextlib.suppress(OSError):
                    now = path.stat()
                    if (now.st_dev, now.st_ino) == (created.st_dev, created.st_ino):
                        path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        if replaced:
            with tempfile.TemporaryFile(dir=path.parent):
                pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None
