"""CMA-ES over merge coefficients (the approach of evolutionary model merging and
mergekit-evolve), with the `cma` package, as an ask / tell strategy.

The state is the seed and every generation's utilities: `cma` draws its samples from a
generator we seed, so replaying the tells rebuilds the optimiser bit for bit, and the
checkpoint holds no pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
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


class CMAES(ArchivedCoefficients):
    label = "CMA-ES"

    def __init__(self, cmap: CoefficientMap, cfg: CoefficientSearchConfig, seed: int = 0,
                 budget: int | None = None):
        self.cmap, self.cfg, self.seed, self.budget = cmap, cfg, seed, budget
        self._reset()

    def _reset(self) -> None:
        import cma

        rng = np.random.default_rng(self.seed)
        opts = {"seed": self.seed + 1, "verbose": -9, "verb_log": 0, "verb_disp": 0,
                "randn": lambda *shape: rng.standard_normal(shape)}
        if self.cfg.population:
            opts["popsize"] = self.cfg.population
        self.es = cma.CMAEvolutionStrategy(self.cmap.uniform().numpy(),
                                           self.cfg.sigma / self.cmap.n, opts)
        self.told: list[list[float]] = []
        self.evaluations = 0
        self.iteration = 0
        self.archive = CoefficientArchive(self.cmap)
        self._asked: np.ndarray | None = None

    @property
    def population(self) -> int:
        return int(self.es.popsize)

    @property
    def done(self) -> bool:
        if self.budget is not None and self.evaluations + self.population > self.budget:
            return True
        return self.iteration >= self.cfg.max_iterations

    def ask(self) -> torch.Tensor:
        self._asked = np.asarray(self.es.ask())
        return torch.stack([self.cmap.weights(torch.from_numpy(c)) for c in self._asked])

    def tell(self, utilities: list[float]) -> None:
        assert self._asked is not None and len(utilities) == len(self._asked)
        self.es.tell(list(self._asked), [-u for u in utilities])  # cma minimises
        self.told.append(list(utilities))
        self.archive.add(torch.from_numpy(self._asked.copy()), utilities)
        self.evaluations += len(utilities)
        self.iteration += 1
        self.last = list(utilities)
        self._asked = None

    def record(self) -> dict[str, Any]:
        return {"global_best": self.archive.best_util, "utilities": self.last,
                "sigma": float(self.es.sigma),
                "best": self.cmap.describe(self.archive.best_c)}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        # replaying the tells rebuilds the optimiser and the archive alike
        return {}, {"seed": self.seed, "told": self.told}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.seed = meta["seed"]
        self._reset()
        for utilities in meta["told"]:
            self.ask()
            self.tell(utilities)


@register_strategy("cmaes", label=CMAES.label,
                   iterations=lambda cfg: cfg.coefficients.max_iterations)
def build(cfg: RunConfig, experts: torch.Tensor, space: FlatSpace) -> CMAES:
    cmap = CoefficientMap(experts, space, cfg.coefficients.per_layer)
    return CMAES(cmap, cfg.coefficients, seed=cfg.seed, budget=cfg.budget)
