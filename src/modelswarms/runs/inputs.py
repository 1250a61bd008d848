"""What a run read when it started, so that a resume notices inputs that changed since.

A run folder keeps `inputs.json`: a digest of each data file, of each expert's (and the base
model's) weight and config files, and the run's config key by key. A resume whose inputs
differ stops with the list of what changed, unless told to go on (`--accept-changes`):
resumed on other data or other experts, the search would mix two runs' results and still
claim to be one.

Files up to HASHED_BYTES are hashed; larger ones (a 7B expert's shards) are known by size and
modification time, since hashing them at every start and resume would take minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..io import atomic_write_text

log = logging.getLogger("modelswarms")

INPUTS = "inputs.json"
HASHED_BYTES = 64 << 20
EXPERT_FILES = (".safetensors", ".json")
# Config keys a resume may change freely: when to stop (a run stopped at a budget goes on with
# a larger one to the end an unstopped run reaches), what is written, and where and in what
# batches it runs. Anything else changes what the iterations done so far mean.
FREE_KEYS = ("budget", "search.max_iterations", "search.patience",
             "coefficients.max_iterations", "hswarm.max_rounds", "output.",
             "model.batch_size", "model.max_batch_tokens", "model.particles_per_forward",
             "model.reuse_frozen_layers", "model.workers", "model.device")


def _file_digest(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > HASHED_BYTES:
        return f"size {stat.st_size}, modified {stat.st_mtime_ns}"
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _path_digest(path: str | Path | None) -> dict[str, str]:
    """{file: digest} of a data file, or of an expert / model folder's weights and configs;
    empty for a hub id or a path that is not there (its loader reports it)."""
    if not path:
        return {}
    p = Path(path).expanduser()
    if p.is_file():
        return {str(p): _file_digest(p)}
    if p.is_dir():
        return {str(f): _file_digest(f) for f in sorted(p.iterdir())
                if f.is_file() and f.suffix in EXPERT_FILES}
    return {}


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(node, sort_keys=True)}


def snapshot(cfg: Any) -> dict[str, Any]:
    """The digests of what a run of `cfg` reads, and its config key by key."""
    files: dict[str, str] = {}
    data = cfg.data
    if data is not None:
        for p in (data.path, data.test_path, *data.tasks.values()):
            files.update(_path_digest(p))
    for p in (*cfg.experts.paths, cfg.experts.base_model):
        files.update(_path_digest(p))
    return {"files": files, "config": _flat(cfg.model_dump(mode="json"))}


def record(run_dir: Path, cfg: Any) -> None:
    atomic_write_text(run_dir / INPUTS, json.dumps(snapshot(cfg), indent=1))


def changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs, as short phrases naming the file or the config key."""
    out = []
    old, new = before.get("files", {}), now["files"]
    for f in sorted(old.keys() | new.keys()):
        if f not in new:
            out.append(f"{f} is no longer read or gone")
        elif f not in old:
            out.append(f"{f} is new")
        elif old[f] != new[f]:
            out.append(f"{f} changed")
    old, new = before.get("config", {}), now["config"]
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)
                  and not k.startswith(FREE_KEYS))
    if keys:
        out.append(f"config.yaml: {', '.join(keys)}")
    return out


def free_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The config keys changed that a resume may change (FREE_KEYS), as 'key: old -> new'."""
    old, new = before.get("config", {}), now["config"]
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and k.startswith(FREE_KEYS)]


def check_resume(run_dir: Path, cfg: Any, accept_changes: bool) -> None:
    """Stop a resume whose inputs changed since the run started (folders from before this
    check have no record: theirs is made now)."""
    path = run_dir / INPUTS
    now = snapshot(cfg)
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = {}  # torn or edited by hand: nothing to compare with, recorded anew
        diff = changes(before, now) if isinstance(before, dict) and before else []
        if diff and not accept_changes:
            raise RunError(f"--resume {run_dir}: inputs changed since the run started: "
                           f"{'; '.join(diff)}. Resuming would mix results of different "
                           "inputs; start a new run, or pass --accept-changes to go on")
        if diff:
            log.warning("resumed with changed inputs (--accept-changes): %s", "; ".join(diff))
        if isinstance(before, dict) and (free := free_changes(before, now)):
            log.info("resumed with %s", "; ".join(free))
    atomic_write_text(path, json.dumps(now, indent=1))
