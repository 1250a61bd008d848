"""Write a particle as a folder that plain transformers / peft load, atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from ..errors import ExpertError
from ..folders import MARKER, is_ours, mark
from .expert import Expert
from .loading import check_finite

if TYPE_CHECKING:
    from ..space import FlatSpace

# Non-weight files a model folder needs to load and to tokenise like the original.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
               "chat_template.jinja", "added_tokens.json")
# Adapter folders sometimes carry the tokenizer (e.g. with added tokens); keep it with the export.
ADAPTER_EXTRAS = tuple(n for n in MODEL_FILES if n not in ("config.json", "generation_config.json"))


class WeightPool(Protocol):
    """What an export needs of a pool whose particles are weights (pool/kinds.py)."""

    experts: list[Expert]
    template: Path  # the folder whose config and tokenizer files are copied
    export_files: tuple[str, ...]  # which of them

    def write_weights(self, folder: Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None: ...


def _prepare(pool: WeightPool, tensors: dict[str, torch.Tensor],
             dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """CPU copies with the pool's names, shapes and (unless `dtype`) dtypes, or ExpertError."""
    ref = pool.experts[0].tensors
    missing, extra = sorted(set(ref) - set(tensors)), sorted(set(tensors) - set(ref))
    if missing or extra:
        which = f"lacks tensor {missing[0]}" if missing else f"has extra tensor {extra[0]}"
        raise ExpertError(f"export: the state dict {which} (pool of {pool.experts[0].name}); "
                          "a loadable folder needs exactly the pool's tensors")
    out = {}
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(ref[name].shape):
            raise ExpertError(f"export: tensor {name} has shape {tuple(t.shape)} but the pool "
                              f"({pool.experts[0].name}) has {tuple(ref[name].shape)}")
        # clone every tensor: tied or sliced tensors share storage, which safetensors refuses
        out[name] = t.detach().to("cpu", dtype or ref[name].dtype).contiguous().clone()
    return out


def export_expert(pool: WeightPool, tensors: dict[str, torch.Tensor], folder: str | Path, *,
                  dtype: torch.dtype | None = None,
                  metadata: dict[str, str] | None = None) -> Path:
    """Export `tensors` (a full state dict of the pool's kind) to `folder`.

    The folder is written beside the target and renamed into place, so an interrupted export
    never leaves a half-written folder where a complete one is expected.
    """
    folder = Path(folder)
    inputs = {e.path.resolve(): e.name for e in pool.experts}
    if folder.resolve() in inputs:  # replacing the folder would destroy an input expert
        raise ExpertError(f"{folder}: is the folder of expert {inputs[folder.resolve()]}; "
                          "export to a new folder, input experts are never overwritten")
    if folder.is_dir() and any(folder.iterdir()) and not any(
            is_ours(f) for f in (folder, *folder.resolve().parents)):
        raise ExpertError(f"{folder}: exists and holds files modelswarms did not write (no "
                          f"{MARKER} marker); an export never replaces it: choose another "
                          "folder")
    out = _prepare(pool, tensors, dtype)
    check_finite(folder, out, "a non-finite model is never written")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()} | {"format": "pt"}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; an export is an ordinary model folder
        pool.write_weights(tmp, out, meta)
        mark(tmp)  # an export of ours: a later export or --overwrite may replace it
        for name in pool.export_files:
            if (pool.template / name).is_file():
                shutil.copy2(pool.template / name, tmp / name)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def export_vector(pool: WeightPool, space: FlatSpace, vector: torch.Tensor, folder: str | Path,
                  metadata: dict[str, str] | None = None) -> Path:
    """Write a point of `space` as a standard adapter / model folder: its searched tensors
    from `vector`, every frozen tensor as expert 0 has it."""
    tensors = dict(pool.experts[0].tensors)
    for name, value in space.unflatten(vector.detach().cpu()).items():
        tensors[name] = value.to(tensors[name].dtype)
    return export_expert(pool, tensors, folder, metadata=metadata)
