"""modelswarms: adapt a pool of LLM experts to a task, reward or taste by searching their
weight space (Model Swarms, Heterogeneous Swarms, merges and other searches on one engine).

The Python API (see api.py): `config` / `load_config` / `RunConfig`, `load_pool`, `search`
(in memory, or in a run folder), `compare`, `merge`, `evaluate`, `distil`, `register_utility`,
`register_strategy`, `strategies`, and the result types `SearchResult` and `ItemScores`.
"""

# The subpackages `config`, `merge` and `search` share their names with API functions: they
# are imported first, so that the functions bound below are what `modelswarms.<name>` is
# (`from modelswarms.merge import ...` still reaches the subpackage).
# The built-in utilities and pool kinds register themselves (evaluation, mixture): loaded
# here, so a config is checked against all of them whichever module a user imports first.
from . import config as _config_module  # noqa: F401
from . import evaluation as _evaluation_package  # noqa: F401
from . import merge as _merge_package  # noqa: F401
from . import mixture as _mixture_package  # noqa: F401
from . import search as _search_package  # noqa: F401
from .config import RunConfig, load_config
from .evaluation.objectives.utilities import ItemScores, register_utility
from .pool.kinds import load_pool
from .search import register_strategy

from .api import (  # isort: skip
    SearchResult, compare, config, distil, evaluate, merge, search, strategies,
)

__all__ = ["ItemScores", "RunConfig", "SearchResult", "compare", "config", "distil", "evaluate",
           "load_config", "load_pool", "merge", "register_strategy", "register_utility",
           "search", "strategies"]
