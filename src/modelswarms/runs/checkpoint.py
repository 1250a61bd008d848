"""Atomic checkpoints: the whole search state in one safetensors file.

The file is written beside its final name, flushed to disk, then renamed over the old one, so
at every instant the path holds either the previous complete checkpoint or the new one.
Scalars travel as JSON in the safetensors metadata; nothing is ever pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import RunError
from ..io import fsync_dir


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            tmp,
            metadata={"meta": json.dumps(meta)},
        )
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # disk full, quota, permissions: the last checkpoint is intact
        Path(tmp).unlink(missing_ok=True)
        kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint yet"
        raise RunError(f"{path}: cannot write the checkpoint ({err.strerror or err}); "
                       f"{kept}; free space and resume with --resume") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class CheckpointWriter:
    """Writes each checkpoint on a background thread while the next iteration is scored.

    The write (serialise, fsync, rename) is the largest part of the driver's serial work per
    iteration at 7B-pool sizes, seconds where scoring on N GPUs takes about as long
    (docs/bench_ray.md). `submit` copies the state into buffers kept from the last time (a
    copy into memory already touched runs ~5x faster than a fresh clone) and returns; the
    next `submit` first waits for the write in flight, so at most one is, and the buffers are
    free again. A kill loses at most the checkpoint in flight: the file on disk is the
    previous complete one (the write is still atomic), and a resume redoes that iteration
    to the same result. An error of the write (a full disk) is raised by the next `wait`.
    """

    def __init__(self, path: Path, save: Callable[..., None] = save_checkpoint):
        self.path, self._save = path, save
        self._buffers: dict[str, torch.Tensor] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.wait()
        snapshot = {}
        for name, value in tensors.items():
            value = value.detach()
            buf = self._buffers.get(name)
            if buf is None or buf.shape != value.shape or buf.dtype != value.dtype:
                buf = self._buffers[name] = torch.empty(value.shape, dtype=value.dtype)
            snapshot[name] = buf.copy_(value)
        meta = json.loads(json.dumps(meta))  # the caller's dict may change while this writes
        self._thread = threading.Thread(target=self._write, args=(snapshot, meta),
                                        name="modelswarms-checkpoint", daemon=True)
        self._thread.start()

    def _write(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            self._save(self.path, tensors, meta)
        except BaseException as err:  # raised in the caller's thread by wait()
            self._error = err

    def wait(self) -> None:
        """Returns once the checkpoint submitted last is on disk; raises its error if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["meta"])
        tensors = load_file(str(path))
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as err:
        raise RunError(f"{path}: checkpoint unreadable ({err})") from None
    return tensors, meta
