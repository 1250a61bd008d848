"""Multi-LLM systems: DAGs of experts (graph.py), run and scored node by node (system.py),
exported with a standalone runner (export.py). Heterogeneous Swarms, the search over them, is
the strategy `hswarm` (search/hswarm.py); its runs and reports are the loop's
(runs/systems.py)."""

from .graph import Dag, chain, decode, star
from .system import System, SystemScorer

__all__ = ["Dag", "System", "SystemScorer", "chain", "decode", "star"]
