"""Search strategies: Model Swarms, Heterogeneous Swarms and the baselines they are compared
with, all ask / tell.
Each declares itself in the registry (registry.py); importing this package registers them."""

from .base import SearchStrategy, WeightSearch
from .cmaes import CMAES
from .greedy_soup import GreedySoup
from .hswarm import HeteroSwarm, jfk_scores
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

__all__ = ["CMAES", "STRATEGIES", "GreedySoup", "HeteroSwarm", "LayerSwarm", "ModelSwarm",
           "RandomSearch", "SearchStrategy", "StrategySpec", "WeightSearch", "build_strategy",
           "jfk_scores", "register_strategy", "strategy_names", "strategy_spec"]
