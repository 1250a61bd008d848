"""Output folders: what a command may write, delete and share with another process.

Every folder a command of ours makes (a run, a comparison, a merge, a trained expert) holds a
marker file, `.modelswarms`. Only a folder with the marker is ever emptied (`--overwrite`, a
run that could not start): a folder without it may hold anything of the user's, and is
refused. An output folder that is, holds or lies inside an input (the config, the data, an
expert, the base model) is refused before anything is touched, whatever the flags.

A run folder has one writer: the marker is also an OS lock (`fcntl.flock`), taken before
anything in the folder changes and held until the command ends. The kernel drops it when the
process dies, so a killed run never leaves a stale lock behind; a second process gets one
line naming the folder and the holder's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import RunError
from .io import check_writable

MARKER = ".modelswarms"

Inputs = Iterable[tuple[str, str | Path | None]]  # (what it is, its path)


def is_ours(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def _entries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name != MARKER] if folder.is_dir() else []


def _local(path: str | Path | None) -> Path | None:
    """An input's resolved local path; None for a hub id, a built-in name or a missing path
    (which its loader reports)."""
    if not path:
        return None
    p = Path(path).expanduser()
    return p.resolve() if p.exists() else None


def refuse_overlap(out: str | Path, inputs: Inputs, key: str = "output.dir") -> None:
    """Refuse an output folder that is, holds or lies inside one of `inputs`: writing it
    (let alone replacing it) would destroy what the user gave."""
    target = Path(out).expanduser().resolve()
    for what, path in inputs:
        p = _local(path)
        if p is None:
            continue
        if p == target:
            how = "is"
        elif target in p.parents:
            how = "holds"
        elif p in target.parents:
            how = "lies inside"
        else:
            continue
        raise RunError(f"{key}: {out} {how} the {what} {path}; an output folder never "
                       "shares its place with an input (nothing was touched): choose another "
                       f"{key}")


def config_inputs(cfg: Any) -> list[tuple[str, str | Path | None]]:
    """What a run config reads: its file, the data, each expert and the base model (also
    the one an adapter's config names)."""
    inputs: list[tuple[str, str | Path | None]] = [("config", getattr(cfg, "source", None))]
    if cfg.data is not None:
        inputs += [("data", cfg.data.path), ("data", cfg.data.test_path),
                   ("data", cfg.data.root), *(("data", p) for p in cfg.data.tasks.values())]
        if cfg.data.hf is not None:
            inputs.append(("data", cfg.data.hf.path))
    for p in cfg.experts.paths:
        inputs.append(("expert", p))
        inputs.append(("base model", _adapter_base(p)))
    inputs.append(("base model", cfg.experts.base_model))
    return inputs


def _adapter_base(expert: str | Path) -> str | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        base = json.loads((Path(expert) / "adapter_config.json").read_text())
        base = base.get("base_model_name_or_path")
        return base if isinstance(base, str) else None
    return None


class FolderLock:
    """The one-writer lock of a folder (its marker file, flock'ed); `release` or the end of
    the process frees it."""

    def __init__(self, folder: Path, key: str = "output.dir"):
        self.folder = Path(folder)
        self.key = key
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        path = self.folder / MARKER
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_pid(self.folder)
            os.close(fd)
            who = f"pid {holder}" if holder else "a process that has not yet written its pid"
            raise RunError(f"{self.key}: {self.folder} is in use by another modelswarms "
                           f"process ({who}); wait for it to end or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"made_by": "modelswarms", "pid": os.getpid()}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


PROC_LOCKS = Path("/proc/locks")


def probe_lock(folder: Path) -> tuple[bool, int | None] | None:
    """Whether a process holds `folder`'s lock, and its pid, read from the kernel's table of
    locks (Linux's /proc/locks) without taking the lock: even a probe that takes and drops it
    would make a writer starting that instant fail. None: no marker, or no such table (not
    Linux), so it cannot be told. Only this host's locks are listed."""
    try:
        st = (Path(folder) / MARKER).stat()
        table = PROC_LOCKS.read_text()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    written = holder_pid(folder)
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 2306 fe:00:2159039 0 EOF"; "1: -> FLOCK ..." waits
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        pid, where = fields[4], fields[5]
        # a stacked file system (overlayfs) may list another device: the inode and the pid
        # the holder wrote into the marker then say it is ours
        if where == dev or (where.rsplit(":", 1)[-1] == str(st.st_ino)
                            and pid == str(written)):
            return True, int(pid) if pid.lstrip("-").isdigit() and int(pid) > 0 else written
    return False, None


def holder_pid(folder: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        return int(json.loads((Path(folder) / MARKER).read_text())["pid"])
    return None


class Claim(FolderLock):
    """An output folder claimed by this process: locked, and emptied or made by it."""

    created: bool = False

    def abandon(self) -> None:
        """Undo the claim of a command that could not start: what it made goes, a folder
        the user had made (empty) stays, empty."""
        self.release()
        if self.created:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            clear(self.folder, keep_marker=False)


def clear(folder: Path, keep_marker: bool = True) -> None:
    """Empty a folder of ours (never one without the marker)."""
    if not is_ours(folder):
        raise RunError(f"{folder}: not made by modelswarms (no {MARKER} file); nothing deleted")
    for p in _entries(folder) + ([] if keep_marker else [folder / MARKER]):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def check_output(out: str | Path, *, inputs: Inputs = (), overwrite: bool = False,
                 key: str = "output.dir", exists_hint: str = "pass --overwrite to replace it",
                 what: str = "folder") -> bool:
    """Refuse, touching nothing, an output folder that cannot be made, shares its place with
    an input, or exists with files in it (without `overwrite`, or not ours). Returns whether
    it holds files (of ours) that the command will replace."""
    out = Path(out)
    check_writable(out, key)
    refuse_overlap(out, inputs, key)
    filled = bool(_entries(out))
    if filled and not is_ours(out):
        raise RunError(f"{key}: {out} exists and holds files modelswarms did not write (no "
                       f"{MARKER} marker); nothing was touched: choose another {key}, or "
                       "move the folder away")
    if filled and not overwrite:
        raise RunError(f"{key}: {out}: {what} exists and is not empty; {exists_hint}")
    return filled


def claim(out: str | Path, *, inputs: Inputs = (), overwrite: bool = False,
          key: str = "output.dir", exists_hint: str = "pass --overwrite to replace it",
          what: str = "folder") -> Claim:
    """`check_output`, then lock the folder (made if need be) and empty it: held by this
    process until the caller releases or abandons the claim."""
    out = Path(out)
    check_output(out, inputs=inputs, overwrite=overwrite, key=key, exists_hint=exists_hint,
                 what=what)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    held = Claim(out, key)
    held.created = created
    held.acquire()  # refused: the folder is another process's, left as it is
    try:
        # checked again under the lock: another process may have written it meanwhile
        check_output(out, overwrite=overwrite, key=key, exists_hint=exists_hint, what=what)
    except BaseException:
        held.release()
        raise
    clear(out)
    return held


def mark(folder: str | Path) -> None:
    """Mark a folder a command wrote without a lock (a merge, a trained expert) as ours."""
    path = Path(folder) / MARKER
    if not path.is_file():
        path.write_text(json.dumps({"made_by": "modelswarms"}))


def lock_existing(folder: str | Path, key: str = "--resume") -> FolderLock:
    """The lock of a folder being resumed (a folder written before markers existed gets
    one)."""
    return FolderLock(Path(folder), key).acquire()
