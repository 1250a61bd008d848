"""One expert as loaded: its name, folder and tensors (below loading.py and validate.py,
which both use it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Expert:
    """One expert; `config` (an addition to the contract) is its adapter or model config."""

    name: str
    path: Path
    tensors: dict[str, torch.Tensor] = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # adapter or model config
