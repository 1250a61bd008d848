"""The strategy registry: a new search is one file that declares itself here.

`@register_strategy(name, label=..., iterations=...)` on a build function `(cfg, experts,
space) -> SearchStrategy` makes `strategy: name` available to `run`, `compare` and the Python
API. A strategy whose candidates are not rows of the weight space (Heterogeneous Swarms asks
for multi-LLM systems) also names how its candidates are scored and reported; the run loop
(runs/runner.py) reads those hooks and is otherwise the same for every strategy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ..config import RunConfig
    from ..space import FlatSpace
    from .base import SearchStrategy

Build = Callable[["RunConfig", "torch.Tensor", "FlatSpace"], "SearchStrategy"]


@dataclass(frozen=True)
class StrategySpec:
    name: str
    label: str
    build: Build
    iterations: Callable[[RunConfig], int]  # the progress bar's length
    # Checks a config before a run folder is made, and fills the strategy's defaults.
    prepare: Callable[[RunConfig], RunConfig] | None = None
    # For candidates other than weight rows: session -> (candidates -> dev utilities), and
    # (session, strategy, history, run_dir) -> the report. None: the weight-space defaults.
    scorer: Callable[[Any], Callable[[Any], list[float]]] | None = None
    report: Callable[..., dict[str, Any]] | None = None
    weights: bool = True  # ask() gives rows of the weight space (compare can run it)


STRATEGIES: dict[str, StrategySpec] = {}
# Strategies outside search/ that register themselves when imported.
PLUGINS = ("modelswarms.hetero.search",)


def register_strategy(name: str, *, label: str, iterations: Callable[[RunConfig], int],
                      **hooks: Any) -> Callable[[Build], Build]:
    """`@register_strategy("mine", label=..., iterations=...)` on a builder
    build(cfg, experts, space) of an ask/tell search makes `strategy: mine` available."""

    def deco(build: Build) -> Build:
        STRATEGIES[name] = StrategySpec(name, label, build, iterations, **hooks)
        return build
    return deco


def strategy_spec(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        for module in PLUGINS:
            importlib.import_module(module)
    if name not in STRATEGIES:
        raise ConfigError(f"strategy: unknown strategy {name!r}; registered: "
                          f"{', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def strategy_names() -> list[str]:
    for module in PLUGINS:
        importlib.import_module(module)
    return sorted(STRATEGIES)


def build_strategy(cfg: RunConfig, experts: torch.Tensor, space: FlatSpace) -> SearchStrategy:
    """The strategy `cfg.strategy` names, over the rows of `experts`, seeded by `cfg.seed`."""
    return strategy_spec(cfg.strategy).build(cfg, experts, space)
