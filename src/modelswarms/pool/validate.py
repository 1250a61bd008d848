"""A pool is searchable only if every expert has the same tensors as the first one.

Each check stops at the first difference with a message naming the expert and the tensor, so
the user can fix the one thing at fault.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ExpertError
from .expert import Expert

# adapter_config keys that change what the A and B factors mean. The base model is compared
# even when the user overrides it: the override replaces a common value, it cannot reconcile
# adapters trained on different bases.
LORA_KEYS = ("base_model_name_or_path", "r", "lora_alpha", "target_modules", "use_dora",
             "use_rslora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern",
             "layers_to_transform", "lora_bias")
FULL_KEYS = ("model_type", "architectures")


def _norm(key: str, value: object) -> object:
    # module lists are sets to peft; their order in the JSON depends on how they were given
    if key in ("target_modules", "modules_to_save") and isinstance(value, list):
        return sorted(set(value))
    return value


def validate_pool(kinds: Sequence[str], experts: Sequence[Expert]) -> None:
    """Raise ExpertError at the first way an expert differs from the first one."""
    if len(experts) < 2:
        where = f" ({experts[0].name} at {experts[0].path})" if experts else ""
        raise ExpertError(f"a pool needs at least 2 experts, got {len(experts)}{where}")
    first = experts[0]
    for kind, e in zip(kinds, experts, strict=True):
        if kind != kinds[0]:
            raise ExpertError(f"{e.path}: expert {e.name} is a {kind} checkpoint but "
                              f"{first.name} is a {kinds[0]} one; a pool holds one kind")
    keys = LORA_KEYS if kinds[0] == "lora" else FULL_KEYS
    for e in experts[1:]:
        for key in keys:
            a, b = _norm(key, first.config.get(key)), _norm(key, e.config.get(key))
            if a != b:
                raise ExpertError(f"{e.path}: expert {e.name} has {key}={b!r} but "
                                  f"{first.name} has {key}={a!r}")
        _same_tensors(first, e)


def _same_tensors(first: Expert, e: Expert) -> None:
    missing = sorted(set(first.tensors) - set(e.tensors))
    if missing:
        raise ExpertError(f"{e.path}: expert {e.name} lacks tensor {missing[0]} "
                          f"(which {first.name} has)")
    extra = sorted(set(e.tensors) - set(first.tensors))
    if extra:
        raise ExpertError(f"{e.path}: expert {e.name} has tensor {extra[0]} "
                          f"that {first.name} lacks")
    for name, t in first.tensors.items():
        u = e.tensors[name]
        if u.shape != t.shape:
            raise ExpertError(f"{e.path}: expert {e.name} tensor {name} has shape "
                              f"{tuple(u.shape)} but {first.name} has {tuple(t.shape)}")
        if u.dtype != t.dtype:
            raise ExpertError(f"{e.path}: expert {e.name} tensor {name} is {u.dtype} "
                              f"but {first.name} has {t.dtype}")


def check_adapter_config(folder: Path, config: dict[str, Any],
                         tensors: dict[str, torch.Tensor]) -> None:
    """An adapter config that disagrees with its own tensors (a rank, target modules or
    alpha that the weights do not have) is refused by name here, not deep inside peft."""
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ExpertError(f"{folder}: adapter_config.json r={r!r} is not a positive integer")
    if alpha is not None and (not isinstance(alpha, int | float) or isinstance(alpha, bool)
                              or not math.isfinite(alpha)):
        raise ExpertError(f"{folder}: adapter_config.json lora_alpha={alpha!r} is not a "
                          "finite number")
    targets = config.get("target_modules")
    exact = not (config.get("rank_pattern") or {})
    for name, t in tensors.items():
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        module = name.split(".lora_")[0]
        if isinstance(targets, list) and not any(
                isinstance(x, str) and (module == x or module.endswith("." + x))
                for x in targets):  # peft matches a target by the module path's end
            raise ExpertError(f"{folder}: tensor {name} adapts a module that "
                              f"adapter_config.json target_modules {targets} leaves out")
        if t.dim() != 2:
            continue  # not a linear layer's factor; validate_pool compares shapes
        rank = t.shape[0] if ".lora_A." in name else t.shape[-1]
        if exact and rank != r:
            raise ExpertError(f"{folder}: tensor {name} has rank {rank} but "
                              f"adapter_config.json says r={r}")
