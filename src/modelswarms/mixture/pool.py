"""A pool of experts composed at their output (`experts.compose: mixture`).

Experts may differ in architecture and tokenizer: each is a model folder, or an adapter folder
over its own base. In the run's weight space an expert is its one-hot row of mixing weights
(one tensor, `mixture_weights`), so the search loop, the strategies, the reports and compare
treat a mixture pool as any other; the evaluator (evaluator.py) loads the models.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import ExpertError
from ..evaluation.engine.backend import load_standalone
from ..io import atomic_write_text
from ..models import EMBEDDED, cache_dir, embedded_path
from ..pool import Expert, register_pool
from ..pool.base import PoolDefaults
from ..pool.loading import read_json
from .evaluator import MixtureEvaluator, mixing_weights
from .model import MixtureLM

if TYPE_CHECKING:
    from ..config import ExpertsConfig, ModelConfig
    from ..space import FlatSpace

WEIGHTS = "mixture_weights"
MIXTURE_FILE = "mixture.json"


def _check(path: Path) -> dict:
    if not path.exists():
        raise ExpertError(f"{path}: expert folder not found")
    if not path.is_dir():
        raise ExpertError(f"{path}: an expert must be a folder, not a file")
    for name in ("adapter_config.json", "config.json"):
        if (path / name).is_file():
            return {"kind": "adapter" if name.startswith("adapter") else "model",
                    **read_json(path / name)}
    raise ExpertError(f"{path}: neither an adapter folder (adapter_config.json) nor a model "
                      "folder (config.json)")


def _path(source: str | Path) -> Path:
    """An expert's folder: an embedded model's name (models.EMBEDDED: smollm2, gemma3-270m)
    is that model's cached folder."""
    return embedded_path(str(source)) if str(source) in EMBEDDED else Path(source).expanduser()


@register_pool("mixture")
@dataclass(frozen=True)
class MixturePool(PoolDefaults):
    """Experts composed at their output: a particle is a row of mixing weights (one per
    expert), scored by a MixtureLM of the experts' own models and exported as mixture.json.
    Weights of different architectures do not add, so there are no merges and no base."""

    kind: ClassVar[str] = "mixture"
    adds_weights: ClassVar[bool] = False
    coordinates: ClassVar[str] = "mixing weights"

    experts: list[Expert]
    template: Path
    base_model: str | None = None

    @classmethod
    def open(cls, experts: ExpertsConfig) -> MixturePool:
        return load_mixture_pool(experts.paths)

    @property
    def tensor_names(self) -> list[str]:
        return [WEIGHTS]

    def base_vector(self, space: FlatSpace, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> torch.Tensor | None:
        return None

    def export(self, space: FlatSpace, vector: torch.Tensor, folder: str | Path,
               metadata: dict[str, str] | None = None) -> Path:
        return write_mixture(self, vector, folder, metadata)

    def evaluator(self, space: FlatSpace, experts: ExpertsConfig, model: ModelConfig) -> Any:
        return MixtureEvaluator.open(self, model)

    def identity(self, index: int) -> bytes | None:
        # every expert's row is one-hot, so rows never repeat; its folder says what it is
        return str(self.experts[index].path.resolve()).encode()

    def uniform_ensemble(self, experts: torch.Tensor) -> torch.Tensor | None:
        """The uniform mixture: logit averaging generalised to any architectures."""
        return torch.ones(len(self.experts), device=experts.device)


def load_mixture_pool(sources: Sequence[str | Path]) -> MixturePool:
    """The experts of a mixture (checked, not loaded: the evaluator loads the models). An
    embedded model's name (models.EMBEDDED: smollm2, gemma3-270m) is that model's folder."""
    paths = [_path(s) for s in sources]
    seen: dict[str, int] = {}
    experts = []
    n = len(paths)
    for i, path in enumerate(paths):
        config = _check(path)
        name = str(sources[i]) if str(sources[i]) in EMBEDDED else path.name or f"expert_{i}"
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}_{seen[name]}"
        onehot = torch.zeros(n)
        onehot[i] = 1.0
        experts.append(Expert(name, path, {WEIGHTS: onehot}, config))
    return MixturePool(experts, paths[0])


def _source(expert: Expert) -> str:
    """An expert's path as mixture.json names it: an embedded model by its name, so the
    export does not depend on this machine's cache folder."""
    spec = EMBEDDED.get(expert.name)
    if spec is not None and Path(expert.path) == cache_dir() / spec.folder:
        return spec.name
    return str(expert.path)


def write_mixture(pool: MixturePool, weights: torch.Tensor, folder: str | Path,
                  metadata: dict[str, str] | None = None) -> Path:
    """A mixture's export: mixture.json naming each expert's folder and its weight."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w = mixing_weights(weights).tolist()
    spec = {"experts": [{"name": e.name, "path": _source(e), "weight": x}
                        for e, x in zip(pool.experts, w, strict=True)],
            "combination": "next-token distributions mixed in the union vocabulary; "
                           "sequence likelihoods mixed for log-likelihood scoring",
            **({"metadata": metadata} if metadata else {})}
    atomic_write_text(folder / MIXTURE_FILE, json.dumps(spec, indent=2))
    return folder


def load_mixture(folder: str | Path, *, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16):
    """The MixtureLM a mixture.json describes (a token swarm's export), ready to score."""
    path = Path(folder) / MIXTURE_FILE
    try:
        spec = json.loads(path.read_text())
        experts = [(e["name"], _path(e["path"]), float(e["weight"])) for e in spec["experts"]]
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ExpertError(f"{path}: not a mixture description ({err})") from None
    weights = [w for _, _, w in experts]
    if not experts or not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights):
        raise ExpertError(f"{path}: the experts' weights must be finite, non-negative and not "
                          f"all zero (found {weights})")
    for _, p, _ in experts:
        _check(p)
    mixture = MixtureLM([(name, *load_standalone(str(p), device=device, dtype=dtype))
                         for name, p, _ in experts], batch_size=batch_size)
    mixture.set_weights([w for _, _, w in experts])
    return mixture
