"""Load experts from folders (or hub ids): safetensors only, never pickle. The pool they
make is pool/kinds.py's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import ExpertError
from ..models import EMBEDDED, adapter_base, embedded_path
from .expert import Expert
from .validate import check_adapter_config

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name, never a relative path like ./x
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _fetch(source: str) -> Path:
    """A local folder for `source`, downloading a hub id's safetensors and configs if needed."""
    if source in EMBEDDED:
        return embedded_path(source)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ExpertError(f"{path}: an expert must be a folder, not a file")
        return path
    if not HUB_ID.fullmatch(source):
        raise ExpertError(f"{source}: expert folder not found")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=[
            "*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"]))
    except Exception as err:  # offline, unknown repo, gated...
        raise ExpertError(
            f"{source}: neither a local folder nor downloadable from the Hugging Face hub "
            f"(machine offline or no such repository: {type(err).__name__})"
        ) from None


def read_json(path: Path) -> dict[str, Any]:
    """An expert's JSON file (adapter or model config, shard index) as an object; anything
    else is an ExpertError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON and bytes that are not UTF-8
        raise ExpertError(f"{path}: unreadable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ExpertError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ExpertError(f"{path}: unreadable safetensors file, truncated or corrupt ({err})") \
            from None


def check_finite(folder: Path, tensors: dict[str, torch.Tensor],
                 what: str = "a non-finite expert is refused") -> None:
    """Refuse weights with a NaN or infinite value: scored, they look like any model (a NaN
    expert became a run's "best expert" and its export), and any merge with them is NaN."""
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ExpertError(f"{folder}: tensor {name} holds {bad} NaN or infinite values of "
                              f"{t.numel()}; {what}")


def _weight_files(folder: Path) -> list[Path]:
    # A single model.safetensors or the index wins over a glob: hub repos may also carry
    # other safetensors files (e.g. consolidated.safetensors) with different key names.
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ExpertError(f"{folder}: shard {missing[0]} named in {index.name} is missing")
        return [folder / s for s in shards]
    return sorted(folder.glob("*.safetensors"))


def _refuse_pickles(folder: Path) -> None:
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    raise ExpertError(
        f"{folder}: no safetensors weights" + (f", only {', '.join(sorted(pickles))}" if pickles
                                               else "") +
        ". Pickle files (.bin, .pt) are never loaded because unpickling can run arbitrary code;"
        " convert the expert to safetensors first."
    )


def load_expert(source: str | Path, name: str | None = None) -> tuple[str, Expert]:
    """(kind, expert) for one folder."""
    folder = _fetch(str(source))
    # a hub snapshot folder is named by its commit hash; the repo name says more
    local = folder == Path(source).expanduser()
    name = name or ((folder.name or folder.resolve().name) if local
                    else str(source).rsplit("/", 1)[-1])
    if (folder / ADAPTER_CONFIG).is_file():
        if not (folder / ADAPTER_WEIGHTS).is_file():
            _refuse_pickles(folder)
        config = read_json(folder / ADAPTER_CONFIG)
        # an export names the hub id for plain peft; its note says which base was really used
        config["base_model_name_or_path"] = adapter_base(folder, config)
        tensors = _read_safetensors(folder / ADAPTER_WEIGHTS)
        check_adapter_config(folder, config, tensors)
        check_finite(folder, tensors)
        return "lora", Expert(name, folder, tensors, config)
    if (folder / "config.json").is_file():
        files = _weight_files(folder)
        if not files:
            _refuse_pickles(folder)
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            tensors.update(_read_safetensors(f))
        check_finite(folder, tensors)
        return "full", Expert(name, folder, tensors, read_json(folder / "config.json"))
    if any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
        _refuse_pickles(folder)
    raise ExpertError(
        f"{folder}: not an expert: expected a PEFT adapter ({ADAPTER_CONFIG} + "
        f"{ADAPTER_WEIGHTS}) or a model folder (config.json + *.safetensors)"
    )


def unique_names(experts: list[Expert], explicit: bool) -> list[Expert]:
    """Experts with distinct names: folder names repeat across parents (a/expert, b/expert)."""
    names = [e.name for e in experts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes and explicit:
        raise ExpertError(f"expert name {dupes[0]!r} is given twice; names must be unique")
    taken, out = set(names), []
    for i, e in enumerate(experts):
        name = e.name
        if name in dupes and names.index(name) != i:
            k = i
            while f"{e.name}-{k}" in taken:
                k += 1
            name = f"{e.name}-{k}"
            taken.add(name)
        out.append(Expert(name, e.path, e.tensors, e.config))
    return out
