"""Random search over merge coefficients: the floor every smarter search must clear.

Each round draws `ROUND` coefficient vectors c_i ~ U(0, (1 + spread) / n) (the uniform soup
is the mean draw) from a seeded generator whose state the checkpoint keeps.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import CoefficientSearchConfig
from .coefficients import CoefficientMap

ROUND = 10


class RandomSearch:
    label = "random search"

    def __init__(self, cmap: CoefficientMap, cfg: CoefficientSearchConfig, seed: int = 0,
                 budget: int | None = None):
        self.cmap, self.cfg, self.budget = cmap, cfg, budget
        self.gen = torch.Generator().manual_seed(seed)
        self.evaluations = self.iteration = 0
        self.best_c, self.best_util = cmap.uniform(), -math.inf
        self.seen_c = torch.empty(0, cmap.dim, dtype=torch.float64)
        self.seen_u = torch.empty(0, dtype=torch.float64)
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
        u = torch.tensor(utilities, dtype=torch.float64)
        self.seen_c = torch.cat([self.seen_c, self._asked])
        self.seen_u = torch.cat([self.seen_u, u])
        i = int(torch.argmax(u))
        if float(u[i]) > self.best_util:
            self.best_util, self.best_c = float(u[i]), self._asked[i].clone()
        self.evaluations += len(utilities)
        self.iteration += 1
        self.last = list(utilities)
        self._asked = None

    def best(self) -> tuple[torch.Tensor, float]:
        return self.cmap.weights(self.best_c), self.best_util

    def top(self, k: int) -> list[tuple[torch.Tensor, float]]:
        order = torch.argsort(self.seen_u, descending=True, stable=True)[:k].tolist()
        return [(self.cmap.weights(self.seen_c[i]), float(self.seen_u[i])) for i in order]

    def record(self) -> dict[str, Any]:
        return {"global_best": self.best_util, "utilities": self.last,
                "best": self.cmap.describe(self.best_c)}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return ({"best_c": self.best_c, "seen_c": self.seen_c, "seen_u": self.seen_u,
                 "rng": self.gen.get_state()},
                {"best_util": self.best_util, "evaluations": self.evaluations,
                 "iteration": self.iteration, "last": self.last})

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.best_c, self.seen_c = tensors["best_c"].clone(), tensors["seen_c"].clone()
        self.seen_u = tensors["seen_u"].clone()
        self.gen.set_state(tensors["rng"])
        for key, value in meta.items():
            setattr(self, key, value)
