"""Pools whose particles are weights of one architecture: LoRA adapters over one base model,
or full checkpoints (`experts.compose: weights`, the default). `load_pool` reads the folders
and picks the kind from what they hold. These kinds build their evaluator, one resident model
(evaluation/evaluator.py), so this module sits above the engine in the layers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors.torch import save_file

from ..errors import ConfigError, ExpertError
from ..evaluation.evaluator import ResidentEvaluator
from ..models import BASE_NOTE, exported_base, resolve_model
from .base import PoolDefaults, register_pool
from .expert import Expert
from .export import ADAPTER_EXTRAS, MODEL_FILES, export_vector
from .loading import load_expert, unique_names
from .validate import validate_pool

if TYPE_CHECKING:
    from ..config import ExpertsConfig, ModelConfig
    from ..space import FlatSpace

# peft's file names of the factors; the live parameter adds the adapter's name ("default")
LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B")


@register_pool("weights")
@dataclass(frozen=True)
class WeightPool(PoolDefaults):
    """Experts that are points of one weight space: a particle is their weights, scored by
    one resident model (evaluation/evaluator.py) and written as a folder of that model's
    kind."""

    kind: ClassVar[str]
    weights_file: ClassVar[str]
    export_files: ClassVar[tuple[str, ...]]

    experts: list[Expert]
    base_model: str | None
    template: Path

    @property
    def tensor_names(self) -> list[str]:
        return sorted(self.experts[0].tensors)

    @property
    def model_source(self) -> str:
        """The folder or hub id of the model the resident evaluator loads."""
        return str(self.experts[0].path)

    @property
    def adapter(self) -> Path | None:
        """The adapter folder the resident model wears over `model_source`, if any."""
        return None

    def live_name(self, name: str) -> str:
        """The loaded model's parameter that holds the stored tensor `name`."""
        return name

    def write_weights(self, folder: Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
        save_file(tensors, folder / self.weights_file, metadata=metadata)

    def export(self, space: FlatSpace, vector: torch.Tensor, folder: str | Path,
               metadata: dict[str, str] | None = None) -> Path:
        return export_vector(self, space, vector, folder, metadata)

    def evaluator(self, space: FlatSpace, experts: ExpertsConfig, model: ModelConfig) -> Any:
        return ResidentEvaluator(self, space, model, trust_remote_code=experts.trust_remote_code)

    def base_vector(self, space: FlatSpace, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> torch.Tensor | None:
        raise NotImplementedError

    @classmethod
    def open(cls, experts: ExpertsConfig) -> WeightPool:
        """LoRA adapters or full checkpoints, whichever the folders hold."""
        return load_pool(experts.paths, base_model=experts.base_model)

    @classmethod
    def build(cls, experts: list[Expert], base_model: str | None) -> WeightPool:
        """The pool of validated experts of this kind."""
        return cls(experts, base_model, experts[0].path)


@dataclass(frozen=True)
class LoraPool(WeightPool):
    """PEFT LoRA adapters over one base model: the base model is a candidate (the adapters
    switched off) and the origin of task vectors, and several particles share a forward."""

    kind: ClassVar[str] = "lora"
    scores_base: ClassVar[bool] = True
    batches_particles: ClassVar[bool] = True
    weights_file: ClassVar[str] = "adapter_model.safetensors"
    export_files: ClassVar[tuple[str, ...]] = ADAPTER_EXTRAS

    adapter_config: dict[str, Any] | None = None

    @classmethod
    def build(cls, experts: list[Expert], base_model: str | None) -> LoraPool:
        base = base_model or experts[0].config.get("base_model_name_or_path")
        if not base:
            raise ExpertError(f"{experts[0].path}: adapter {experts[0].name} names no base "
                              "model; set experts.base_model")
        return cls(experts, base, experts[0].path, dict(experts[0].config))

    @property
    def model_source(self) -> str:
        return resolve_model(self.base_model or "")

    @property
    def adapter(self) -> Path | None:
        return self.experts[0].path

    def live_name(self, name: str) -> str:
        for part in LORA_PARTS:
            if part in name:
                head, tail = name.rsplit(".", 1)
                return f"{head}.default.{tail}" if part.endswith(".") else f"{name}.default"
        return name

    def write_weights(self, folder: Path, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
        super().write_weights(folder, tensors, metadata)
        config = dict(self.adapter_config or {})
        base, note = exported_base(self.base_model)
        config["base_model_name_or_path"] = base
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
        if note is not None:
            (folder / BASE_NOTE).write_text(json.dumps(note, indent=2))

    def base_vector(self, space: FlatSpace, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """No adapter: the origin."""
        return torch.zeros(space.dim, dtype=dtype or torch.float32, device=device)


@dataclass(frozen=True)
class FullPool(WeightPool):
    """Full checkpoints of one architecture; task vectors start at `experts.base_model`."""

    kind: ClassVar[str] = "full"
    mergekit: ClassVar[bool] = True
    weights_file: ClassVar[str] = "model.safetensors"
    export_files: ClassVar[tuple[str, ...]] = MODEL_FILES

    def base_vector(self, space: FlatSpace, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """The base model's weights, or None without `experts.base_model`."""
        if not self.base_model:
            return None
        kind, base = load_expert(resolve_model(self.base_model), name="base model")
        if kind != self.kind:
            raise ConfigError(f"experts.base_model: {self.base_model} is not a full model "
                              "folder")
        for slot in space.slots:
            t = base.tensors.get(slot.name)
            if t is None or tuple(t.shape) != tuple(slot.shape):
                raise ExpertError(f"{self.base_model}: base model tensor {slot.name} is "
                                  f"{'missing' if t is None else f'of shape {tuple(t.shape)}'}"
                                  f", the experts' is {tuple(slot.shape)}")
        return space.flatten(base.tensors).to(device=device, dtype=dtype or torch.float32)


KINDS: dict[str, type[WeightPool]] = {k.kind: k for k in (LoraPool, FullPool)}


def load_pool(sources: Sequence[str | Path], *, base_model: str | None = None,
              names: Sequence[str] | None = None) -> WeightPool:
    """Load and validate a pool: every expert must match the first one exactly."""
    if isinstance(sources, str | Path):
        sources = [sources]  # a lone path would otherwise be iterated character by character
    if names is not None and len(names) != len(sources):
        raise ExpertError(f"{len(names)} names given for {len(sources)} experts")
    loaded = [load_expert(s, names[i] if names else None) for i, s in enumerate(sources)]
    kinds = [k for k, _ in loaded]
    experts = unique_names([e for _, e in loaded], explicit=names is not None)
    validate_pool(kinds, experts)
    return KINDS[kinds[0]].build(experts, base_model)

