"""Heterogeneous Swarms: multi-LLM systems (DAGs of experts) whose roles and weights are
searched together (ALGORITHMS.md section 2)."""

from .graph import Dag, chain, decode, star
from .run import hswarm
from .search import HeteroSwarm, jfk_scores
from .system import System, SystemScorer

__all__ = ["Dag", "HeteroSwarm", "System", "SystemScorer", "chain", "decode", "hswarm",
           "jfk_scores", "star"]
