"""Expert pools: the Pool protocol and its registry of kinds (base.py); loading, validation
and export of experts' files (loading.py, validate.py, export.py). The kinds whose particles
are weights (LoraPool, FullPool, load_pool) are pool/kinds.py, which sits above the engine
that scores them and so is not imported here."""

from .base import POOL_KINDS, Pool, open_pool, pool_kind, register_pool
from .expert import Expert
from .export import export_expert, export_vector

__all__ = ["POOL_KINDS", "Expert", "Pool", "export_expert", "export_vector", "open_pool",
           "pool_kind", "register_pool"]
