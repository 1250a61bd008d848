"""A pool is searchable only if every expert has the same tensors as the first one.

Each check stops at the first difference with a message naming the expert and the tensor, so
the user can fix the one thing at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ExpertError

if TYPE_CHECKING:
    from .loading import Expert

# adapter_config keys that change what the A and B factors mean
LORA_KEYS = ("r", "lora_alpha", "target_modules", "use_dora", "use_rslora", "fan_in_fan_out",
             "modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform")
FULL_KEYS = ("model_type", "architectures")


def _norm(key: str, value: object) -> object:
    if key == "target_modules" and isinstance(value, list):
        return sorted(value)
    return value


def validate_pool(kinds: Sequence[str], experts: Sequence[Expert],
                  base_model: str | None = None) -> None:
    if len(experts) < 2:
        where = f" ({experts[0].path})" if experts else ""
        raise ExpertError(f"a pool needs at least 2 experts, got {len(experts)}{where}")
    first = experts[0]
    for kind, e in zip(kinds, experts, strict=True):
        if kind != kinds[0]:
            raise ExpertError(f"{e.path}: expert {e.name} is a {kind} checkpoint but "
                              f"{first.name} is a {kinds[0]} one; a pool holds one kind")
    keys = LORA_KEYS if kinds[0] == "lora" else FULL_KEYS
    if kinds[0] == "lora" and base_model is None:
        keys = ("base_model_name_or_path", *keys)
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
