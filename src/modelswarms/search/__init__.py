"""Search strategies: Model Swarms and the baselines it is compared with, all ask / tell."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import SearchStrategy
from .cmaes import CMAES
from .coefficients import CoefficientMap
from .greedy_soup import GreedySoup
from .random_search import RandomSearch
from .swarm import ModelSwarm

if TYPE_CHECKING:
    import torch

    from ..config import RunConfig
    from ..space import FlatSpace

STRATEGIES = ("swarm", "cmaes", "random", "greedy_soup")


def build_strategy(cfg: RunConfig, experts: torch.Tensor, space: FlatSpace) -> SearchStrategy:
    """The strategy `cfg.strategy` names, over the rows of `experts`, seeded by `cfg.seed`."""
    if cfg.strategy == "swarm":
        return ModelSwarm(experts, cfg.search, seed=cfg.seed, budget=cfg.budget)
    if cfg.strategy == "greedy_soup":
        return GreedySoup(experts, budget=cfg.budget)
    cmap = CoefficientMap(experts, space, cfg.coefficients.per_layer)
    cls = CMAES if cfg.strategy == "cmaes" else RandomSearch
    return cls(cmap, cfg.coefficients, seed=cfg.seed, budget=cfg.budget)


__all__ = ["CMAES", "STRATEGIES", "GreedySoup", "ModelSwarm", "RandomSearch",
           "SearchStrategy", "build_strategy"]
