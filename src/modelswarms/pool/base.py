"""The Pool protocol: what a run needs of its experts, whatever kind they are.

Every kind answers the same questions (how a particle is written out, which evaluator scores
it, where task vectors start, what a candidate of `None` means), so code above the pool asks
the pool instead of comparing its kind. A kind is one class that declares itself with
`@register_pool(compose)`; `experts.compose` in a config picks it (`weights`: LoRA adapters or
full checkpoints, pool/kinds.py; `mixture`: experts of any architecture, mixture/pool.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ..config import POOL_KINDS as COMPOSE_NAMES
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ..config import ExpertsConfig, ModelConfig
    from ..space import FlatSpace
    from .expert import Expert


@runtime_checkable
class Pool(Protocol):
    kind: ClassVar[str]  # a name for logs and reports, never compared
    compose: ClassVar[str]  # the `experts.compose` that opens it (set by register_pool)
    experts: list[Expert]
    base_model: str | None
    template: Path  # the folder whose config and tokenizer files an export copies
    # A candidate of None is the base model (the experts without their adapters).
    scores_base: ClassVar[bool]
    # Several particles can share one forward (evaluation/multiplex.py).
    batches_particles: ClassVar[bool]
    # Particles are weights of one architecture: merges and task vectors apply.
    adds_weights: ClassVar[bool]
    # What a particle's coordinates are, for labels ("" for model weights).
    coordinates: ClassVar[str]
    # mergekit computes the same coefficient merges of these folders (a report's export).
    mergekit: ClassVar[bool]

    @property
    def names(self) -> list[str]: ...

    @property
    def tensor_names(self) -> list[str]: ...

    def base_vector(self, space: FlatSpace, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """Where task vectors start, in the pool's weight space; None where there is none."""
        ...

    def export(self, space: FlatSpace, vector: torch.Tensor, folder: str | Path,
               metadata: dict[str, str] | None = None) -> Path:
        """Write the particle `vector` as a folder that loads without modelswarms."""
        ...

    def evaluator(self, space: FlatSpace, experts: ExpertsConfig, model: ModelConfig) -> Any:
        """The evaluator (evaluation/evaluator.py's seam) that scores this pool's particles."""
        ...

    def identity(self, index: int) -> bytes | None:
        """What makes expert `index` the same as another, where its weights row does not
        say it (None: compare the rows)."""
        ...

    def uniform_ensemble(self, experts: torch.Tensor) -> torch.Tensor | None:
        """The one particle that is every expert at once, where the space has one."""
        ...


class PoolDefaults:
    """What a pool kind supports unless it says otherwise, and what every kind derives from
    its experts the same way (a kind's class subclasses this and overrides what differs)."""

    scores_base: ClassVar[bool] = False
    batches_particles: ClassVar[bool] = False
    adds_weights: ClassVar[bool] = True
    coordinates: ClassVar[str] = ""
    mergekit: ClassVar[bool] = False

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.experts]  # type: ignore[attr-defined]

    def identity(self, index: int) -> bytes | None:
        return None

    def uniform_ensemble(self, experts: torch.Tensor) -> torch.Tensor | None:
        return None


POOL_KINDS: dict[str, Any] = {}  # compose -> a Pool class with open(ExpertsConfig)


def register_pool(compose: str) -> Callable[[type], type]:
    """`@register_pool("name")` on a Pool class with a classmethod `open(experts_config)`
    makes `experts.compose: name` open it."""
    def deco(cls: type) -> type:
        cls.compose = compose  # type: ignore[attr-defined]
        POOL_KINDS[compose] = cls
        if compose not in COMPOSE_NAMES:
            COMPOSE_NAMES.append(compose)
        return cls
    return deco


def pool_kind(compose: str) -> Any:
    """The Pool class `experts.compose` names (its class attributes say what it supports
    before anything is loaded)."""
    if compose not in POOL_KINDS:
        raise ConfigError(f"experts.compose: no pool kind {compose!r} is registered "
                          f"(registered: {', '.join(sorted(POOL_KINDS))})")
    return POOL_KINDS[compose]


def open_pool(experts: ExpertsConfig) -> Pool:
    """The pool `experts.compose` names, loaded and checked."""
    return pool_kind(experts.compose).open(experts)
