"""Search strategies: Model Swarms and the baselines it is compared with, all ask / tell.
Each declares itself in the registry (registry.py); importing this package registers them."""

from .base import SearchStrategy
from .cmaes import CMAES
from .greedy_soup import GreedySoup
from .layer_swarm import LayerSwarm
from .random_search import RandomSearch
from .registry import (
    STRATEGIES,
    StrategySpec,
    build_strategy,
    register_strategy,
    strategy_names,
    strategy_spec,
)
from .swarm import ModelSwarm

__all__ = ["CMAES", "STRATEGIES", "GreedySoup", "LayerSwarm", "ModelSwarm", "RandomSearch",
           "SearchStrategy", "StrategySpec", "build_strategy", "register_strategy",
           "strategy_names", "strategy_spec"]
