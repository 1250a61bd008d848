"""Expert pools: the Pool protocol and its registry of kinds (base.py); loading, validation
and export of LoRA adapters and full checkpoints (kinds.py, loading.py, validate.py,
export.py)."""

from .base import POOL_KINDS, Pool, open_pool, pool_kind, register_pool
from .export import export_expert, export_vector
from .kinds import FullPool, LoraPool, WeightPool, load_pool
from .loading import Expert

__all__ = ["POOL_KINDS", "Expert", "FullPool", "LoraPool", "Pool", "WeightPool",
           "export_expert", "export_vector", "load_pool", "open_pool", "pool_kind",
           "register_pool"]
