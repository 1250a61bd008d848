"""Files written whole or not at all: a reader (a resumed run, `modelswarms status`, a second
process) sees the previous complete file or the new one, never a torn one; and output
folders checked for writability before any work."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import RunError


def fsync_dir(folder: Path) -> None:
    # Directory fsync is not supported everywhere (some network file systems); the rename is
    # still atomic there, only its durability across a power cut is weaker.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable(folder: Path, key: str = "output.dir") -> None:
    """Refuse, before any work, an output folder that cannot be made: under a file, on a
    read-only file system, without permission. Nothing is created here."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{key}: {folder} is a file, not a folder")
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunError(f"{key}: {folder} cannot be made: {ancestor} is a file")
    probe = folder if folder.exists() else ancestor
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"{key}: {folder} cannot be made: {probe} is not writable")
    try:  # root passes os.access everywhere; a read-only file system (/proc, a mount) does not
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as err:
        raise RunError(f"{key}: {folder} cannot be made: {probe} is not writable "
                       f"({err.strerror})") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file up to its first torn line (a kill mid-write)."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records
