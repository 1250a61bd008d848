"""The point task vectors are measured from: no adapter for LoRA pools, the base model's
weights for full-weight pools (`experts.base_model`)."""

from __future__ import annotations

import torch

from ..errors import ConfigError, ExpertError
from ..models import resolve_model
from ..pool import ExpertPool
from ..pool.loading import load_expert
from ..space import FlatSpace


def base_vector(pool: ExpertPool, space: FlatSpace, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The base in the pool's weight space, or None for a full pool without a base model."""
    if pool.kind == "lora":
        return torch.zeros(space.dim, dtype=dtype, device=device)
    if not pool.base_model:
        return None
    kind, base = load_expert(resolve_model(pool.base_model), name="base model")
    if kind != "full":
        raise ConfigError(f"experts.base_model: {pool.base_model} is not a full model folder")
    for slot in space.slots:
        t = base.tensors.get(slot.name)
        if t is None or tuple(t.shape) != tuple(slot.shape):
            raise ExpertError(f"{pool.base_model}: base model tensor {slot.name} is "
                              f"{'missing' if t is None else f'of shape {tuple(t.shape)}'}, "
                              f"the experts' is {tuple(slot.shape)}")
    return space.flatten(base.tensors).to(device=device, dtype=dtype)


def need_base(method: str, base: torch.Tensor | None) -> torch.Tensor:
    if base is None:
        raise ConfigError(f"{method} measures task vectors from the base model: set "
                          "experts.base_model to the full pool's base checkpoint")
    return base
