"""The strategy registry: a new search is one file that declares itself here.

`@register_strategy(name, label=..., iterations=...)` on a build function `(cfg, experts,
space) -> SearchStrategy` makes `strategy: name` available to `run`, `compare` and the Python
API. `candidate=` names the type of one candidate: a weight row (`torch.Tensor`, the default)
or another type, such as Heterogeneous Swarms' `System`; the run loop scores, reports and
saves each type through its own seam (runs/candidates.py) and is otherwise the same for
every strategy. Every strategy is a module of this package, imported by its __init__.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..space import FlatSpace
    from .base import SearchStrategy

Build = Callable[["RunConfig", torch.Tensor, "FlatSpace"], "SearchStrategy"]


@dataclass(frozen=True)
class StrategySpec:
    name: str
    label: str
    build: Build
    iterations: Callable[[RunConfig], int]  # the progress bar's length
    # Checks a config before a run folder is made, and fills the strategy's defaults.
    prepare: Callable[[RunConfig], RunConfig] = lambda cfg: cfg
    candidate: type = torch.Tensor  # one candidate's type: how the loop scores and saves it

    @property
    def weights(self) -> bool:
        """Its candidates are rows of the weight space (merge coefficients included)."""
        return self.candidate is torch.Tensor


STRATEGIES: dict[str, StrategySpec] = {}


def register_strategy(name: str, *, label: str, iterations: Callable[[RunConfig], int],
                      prepare: Callable[[RunConfig], RunConfig] = lambda cfg: cfg,
                      candidate: type = torch.Tensor) -> Callable[[Build], Build]:
    def deco(build: Build) -> Build:
        STRATEGIES[name] = StrategySpec(name, label, build, iterations, prepare, candidate)
        return build
    return deco


def strategy_spec(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        raise ConfigError(f"strategy: unknown strategy {name!r}; registered: "
                          f"{', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def strategy_names() -> list[str]:
    return sorted(STRATEGIES)


def build_strategy(cfg: RunConfig, experts: torch.Tensor, space: FlatSpace) -> SearchStrategy:
    """The strategy `cfg.strategy` names, over the rows of `experts`, seeded by `cfg.seed`."""
    return strategy_spec(cfg.strategy).build(cfg, experts, space)
