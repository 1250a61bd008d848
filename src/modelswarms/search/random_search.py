"""Random search over merge coefficients: the floor every smarter search must clear.

Each round draws `ROUND` coefficient vectors c_i ~ U(0, (1 + spread) / n) (the uniform soup
is the mean draw) from a seeded generator whose state the checkpoint keeps.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import RunConfig
from ..space import FlatSpace
from .coefficients import (
    ArchivedCoefficients,
    CoefficientArchive,
    CoefficientMap,
    CoefficientSearchConfig,
)
from .registry import register_strategy

ROUND = 10


class RandomSearch(ArchivedCoefficients):
    label = "random search"

    def __init__(self, cmap: CoefficientMap, cfg: CoefficientSearchConfig, seed: int = 0,
                 budget: int | None = None):
        self.cmap, self.cfg, self.budget = cmap, cfg, budget
        self.gen = torch.Generator().manual_seed(seed)
        self.evaluations = self.iteration = 0
        self.archive = CoefficientArchive(cmap)
        self._asked: torch.Tensor | None = None
        self.last: list[float] = []

    def _round(self) -> int:
        if self.budget is None:
            return ROUND
        return min(ROUND, self.budget - self.evaluations)

    @property
    def done(self) -> bool:
        return self._round() <= 0 or self.iteration >= self.cfg.max_iterations

    def ask(self) -> torch.Tensor:
        high = (1 + self.cfg.spread) / self.cmap.n
        self._asked = torch.rand(self._round(), self.cmap.dim, generator=self.gen,
                                 dtype=torch.float64) * high
        return torch.stack([self.cmap.weights(c) for c in self._asked])

    def tell(self, utilities: list[float]) -> None:
        assert self._asked is not None and len(utilities) == len(self._asked)
        self.archive.add(self._asked, utilities)
        self.evaluations += len(utilities)
        self.iteration += 1
        self.last = list(utilities)
        self._asked = None

    def record(self) -> dict[str, Any]:
        return {"global_best": self.archive.best_util, "utilities": self.last,
                "best": self.cmap.describe(self.archive.best_c)}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = self.archive.state()
        return ({**tensors, "rng": self.gen.get_state()},
                {**meta, "evaluations": self.evaluations, "iteration": self.iteration,
                 "last": self.last})

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.archive.load(tensors, meta)
        self.gen.set_state(tensors["rng"])
        self.evaluations, self.iteration = meta["evaluations"], meta["iteration"]
        self.last = meta["last"]


@register_strategy("random", label=RandomSearch.label,
                   iterations=lambda cfg: cfg.coefficients.max_iterations)
def build(cfg: RunConfig, experts: torch.Tensor, space: FlatSpace) -> RandomSearch:
    cmap = CoefficientMap(experts, space, cfg.coefficients.per_layer)
    return RandomSearch(cmap, cfg.coefficients, seed=cfg.seed, budget=cfg.budget)
