"""The point task vectors are measured from is the pool's (`Pool.base_vector`: no adapter for
LoRA pools, the base model's weights for full-weight pools); a method that needs it and finds
none says how to give it."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def need_base(method: str, base: torch.Tensor | None) -> torch.Tensor:
    if base is None:
        raise ConfigError(f"{method} measures task vectors from the base model: set "
                          "experts.base_model to the full pool's base checkpoint")
    return base
