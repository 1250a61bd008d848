from .base import SearchStrategy
from .swarm import ModelSwarm

__all__ = ["ModelSwarm", "SearchStrategy"]
