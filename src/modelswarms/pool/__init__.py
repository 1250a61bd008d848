"""Expert pools: loading, validation and export of LoRA adapters and full checkpoints."""

from .export import export_expert
from .loading import Expert, ExpertPool, load_pool

__all__ = ["Expert", "ExpertPool", "export_expert", "load_pool"]
