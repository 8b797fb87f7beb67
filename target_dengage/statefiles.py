"""Small JSON files that outlive a run (pacing times, the async job journal).

Each is one JSON object keyed by account, rewritten whole through a temporary file and an
atomic rename, so a crash leaves either the old file or the new one, never half of one.
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


def default_state_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "target-dengage"


def unwritable(path: Path, *, replaced: bool = False) -> str | None:
    """Why the run could not write ``path``, or None. Checked before the run reads a line,
    so a bad path fails at once, not after hours of loading. The folder is created; the
    file is opened for appending (and removed again if that created it); for a file that is
    ``replaced`` whole, a temporary file must be possible beside it too."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with path.open("ab"):
            pass
        if not existed:
            path.unlink()
        if replaced:
            with tempfile.TemporaryFile(dir=path.parent):
                pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None
