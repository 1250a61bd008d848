"""Expert pools: loading, validation and export of LoRA adapters and full checkpoints."""

from .expert import Expert
from .export import export_expert, export_vector
from .loading import ExpertPool, load_pool

__all__ = ["Expert", "ExpertPool", "export_expert", "export_vector", "load_pool"]
