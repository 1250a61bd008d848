"""Greedy soup (Wortsman et al., 2022, arXiv 2203.05482): rank the experts by dev utility,
then add each, best first, to the running average when the soup does not get worse."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import RunConfig
from ..space import FlatSpace
from .registry import register_strategy


class GreedySoup:
    label = "greedy soup"

    def __init__(self, experts: torch.Tensor, budget: int | None = None):
        self.experts, self.budget = experts, budget
        self.n = experts.shape[0]
        self.order: list[int] = []      # experts by dev utility, best first
        self.soup: list[int] = []
        self.position = 0               # next index into `order` to try
        self.evaluations = self.iteration = 0
        self.best_util = -math.inf
        self.expert_utils: list[float] = []
        self.last: list[float] = []

    def _candidate(self) -> torch.Tensor:
        return self.experts[self.soup + [self.order[self.position]]].mean(0)

    @property
    def done(self) -> bool:
        started = bool(self.order)
        asked = self.n if not started else 1
        if self.budget is not None and self.evaluations + asked > self.budget:
            return True
        return started and self.position >= self.n

    def ask(self) -> torch.Tensor:
        return self.experts if not self.order else self._candidate()[None]

    def tell(self, utilities: list[float]) -> None:
        if not self.order:
            self.expert_utils = list(utilities)
            self.order = sorted(range(self.n), key=lambda i: -utilities[i])
            self.soup, self.position = [self.order[0]], 1
            self.best_util = utilities[self.order[0]]
        else:
            if utilities[0] >= self.best_util:
                self.soup.append(self.order[self.position])
                self.best_util = utilities[0]
            self.position += 1
        self.evaluations += len(utilities)
        self.iteration += 1
        self.last = list(utilities)

    def best(self) -> tuple[torch.Tensor, float]:
        return self.experts[self.soup].mean(0), self.best_util

    def top(self, k: int) -> list[tuple[torch.Tensor, float]]:
        return [self.best()]

    def best_coefficients(self) -> dict[str, Any]:
        """The soup as merge coefficients: 1/k for each of its k experts (for exports)."""
        share = 1.0 / len(self.soup) if self.soup else 0.0
        return {"groups": ["all"],
                "coefficients": [[share if i in self.soup else 0.0] for i in range(self.n)]}

    def record(self) -> dict[str, Any]:
        return {"global_best": self.best_util, "utilities": self.last, "soup": list(self.soup)}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {k: getattr(self, k) for k in ("order", "soup", "position", "evaluations",
                                                    "iteration", "best_util", "expert_utils",
                                                    "last")}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        for key, value in meta.items():
            setattr(self, key, value)


@register_strategy("greedy_soup", label=GreedySoup.label,
                   iterations=lambda cfg: len(cfg.experts.paths))
def build(cfg: RunConfig, experts: torch.Tensor, space: FlatSpace) -> GreedySoup:
    return GreedySoup(experts, budget=cfg.budget)
