"""Model Swarms over layer-wise merge coefficients (Unconstrained Model Merging's
fine-grained merging, searched by the swarm; ALGORITHMS.md section 3).

A particle is an (experts x layer groups) coefficient matrix, flattened; it stands for the
weights sum_i c[i, group(t)] * expert_i for every tensor t, as the per-layer coefficients of
CMA-ES and random search (coefficients.py) are decoded. The swarm starts at one expert each
(c = 1 for that expert in every group, 0 elsewhere: exactly that expert's weights) and grows
as a weight-space swarm does. The search moves n x groups numbers instead of every weight:
a far smaller space than the full swarm's, a richer one than one coefficient per expert.

Its random factors are drawn per coefficient. With one factor per particle, as the weight-space
swarm draws them, every PSO move is a combination of particles with scalar weights, and
decoding coefficients to weights is linear: the layer-wise search would be the weight-space
swarm, move for move (the first benchmark run showed identical rows; a test keeps the proof).
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import RunConfig
from ..space import FlatSpace
from .coefficients import CoefficientMap
from .registry import register_strategy
from .swarm import ModelSwarm


class LayerSwarm:
    label = "Model Swarms, layer-wise coefficients"
    starts_at_experts = True  # the one-hot matrices decode to the experts, scored first

    def __init__(self, cmap: CoefficientMap, swarm: ModelSwarm):
        self.cmap, self.swarm = cmap, swarm

    @classmethod
    def over(cls, experts: torch.Tensor, space: FlatSpace, cfg: RunConfig) -> LayerSwarm:
        cmap = CoefficientMap(experts, space, per_layer=True)
        groups = len(cmap.groups)
        start = torch.eye(cmap.n, dtype=torch.float64).repeat_interleave(groups, dim=1)
        swarm = ModelSwarm(start, cfg.search, seed=cfg.seed, device="cpu", budget=cfg.budget,
                           per_coordinate=True)
        return cls(cmap, swarm)

    @property
    def iteration(self) -> int:
        return self.swarm.iteration

    @property
    def evaluations(self) -> int:
        return self.swarm.evaluations

    @property
    def n(self) -> int:
        return self.swarm.x.shape[0]

    @property
    def done(self) -> bool:
        return self.swarm.done

    def _decode(self, coefficients: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.cmap.weights(c) for c in coefficients])

    def ask(self) -> torch.Tensor:
        return self._decode(self.swarm.ask())

    def tell(self, utilities: list[float]) -> None:
        self.swarm.tell(utilities)

    def best(self) -> tuple[torch.Tensor, float]:
        g, u = self.swarm.best()
        return self.cmap.weights(g), u

    def top(self, k: int) -> list[tuple[torch.Tensor, float]]:
        return [(self.cmap.weights(c), u) for c, u in self.swarm.top(k)]

    def top_indices(self, k: int) -> list[int]:
        return self.swarm.top_indices(k)

    def best_coefficients(self) -> dict[str, Any]:
        """The global best's coefficients per expert and layer group (for exports)."""
        return self.cmap.describe(self.swarm.best()[0])

    def record(self) -> dict[str, Any]:
        return self.swarm.record()

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.swarm.state_dict()

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.swarm.load_state_dict(tensors, meta)


@register_strategy("layer_swarm", label=LayerSwarm.label,
                   iterations=lambda cfg: cfg.search.max_iterations)
def build(cfg: RunConfig, experts: torch.Tensor, space: FlatSpace) -> LayerSwarm:
    return LayerSwarm.over(experts, space, cfg)
