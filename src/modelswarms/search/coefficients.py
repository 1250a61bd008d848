"""Merge coefficients as a search space: the ground of CMA-ES and random-search baselines.

A candidate is x = sum_i c_i * expert_i, with one coefficient per expert, or one per expert
and layer (`per_layer`: tensors are grouped by their "layers.N." index, everything else in one
more group), as evolutionary model merging and mergekit-evolve search merge weights. For LoRA
pools the experts' factors are combined, the same space the uniform soup lives in.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from pydantic import Field

from ..config import StrictModel, register_section
from ..space import FlatSpace

_LAYER = re.compile(r"\.layers\.(\d+)\.")


class CoefficientSearchConfig(StrictModel):
    """CMA-ES and random search over merge coefficients: a candidate is sum_i c_i * expert_i
    (one c per expert, or per expert and layer), started at the uniform soup c_i = 1/n."""

    per_layer: bool = Field(False, description="one coefficient per expert and layer")
    sigma: float = Field(0.5, gt=0, description="CMA-ES step size, in units of 1/n")
    population: int | None = Field(None, ge=2, description="CMA-ES population (default: "
                                   "cma's 4 + 3 ln(dimension))")
    spread: float = Field(1.0, gt=0, description="random search: c_i ~ U(0, (1 + spread) / n)")
    max_iterations: int = Field(200, ge=1, description="generations / rounds of 10 draws")


register_section("coefficients", CoefficientSearchConfig)


def layer_groups(space: FlatSpace, per_layer: bool) -> tuple[torch.Tensor, list[str]]:
    """(group index of every flat position, group names)."""
    if not per_layer:
        return torch.zeros(space.dim, dtype=torch.long), ["all"]
    names: list[str] = []
    index = torch.empty(space.dim, dtype=torch.long)
    for slot in space.slots:
        m = _LAYER.search(slot.name)
        name = f"layer {int(m.group(1))}" if m else "other"
        if name not in names:
            names.append(name)
        index[slot.offset : slot.offset + slot.numel] = names.index(name)
    return index, names


class CoefficientMap:
    """Maps coefficient vectors (experts x groups, flattened) to weight vectors."""

    def __init__(self, experts: torch.Tensor, space: FlatSpace, per_layer: bool):
        self.experts = experts
        index, self.groups = layer_groups(space, per_layer)
        self.index = index.to(experts.device)
        self.n = experts.shape[0]
        self.dim = self.n * len(self.groups)

    def uniform(self) -> torch.Tensor:
        return torch.full((self.dim,), 1.0 / self.n, dtype=torch.float64)

    def weights(self, c: torch.Tensor) -> torch.Tensor:
        coef = c.view(self.n, len(self.groups)).to(self.experts.device, self.experts.dtype)
        out = torch.zeros_like(self.experts[0])
        for i in range(self.n):  # one expert at a time: no (experts x parameters) temporary
            out.add_(coef[i][self.index] * self.experts[i])
        return out

    def describe(self, c: torch.Tensor) -> dict[str, Any]:
        coef = c.view(self.n, len(self.groups)).tolist()
        return {"groups": self.groups, "coefficients": coef}


class CoefficientArchive:
    """Every coefficient vector told so far with its utility: the best (the first to reach
    the highest utility) and the top k, for the coefficient searches."""

    def __init__(self, cmap: CoefficientMap):
        self.cmap = cmap
        self.coefs = torch.empty(0, cmap.dim, dtype=torch.float64)
        self.utils = torch.empty(0, dtype=torch.float64)
        self.best_c, self.best_util = cmap.uniform(), -math.inf

    def add(self, coefs: torch.Tensor, utilities: list[float]) -> None:
        u = torch.tensor(utilities, dtype=torch.float64)
        self.coefs = torch.cat([self.coefs, coefs.to(torch.float64)])
        self.utils = torch.cat([self.utils, u])
        i = int(torch.argmax(u))  # the first of equal maxima
        if float(u[i]) > self.best_util:
            self.best_util, self.best_c = float(u[i]), coefs[i].to(torch.float64).clone()

    def best(self) -> tuple[torch.Tensor, float]:
        return self.cmap.weights(self.best_c), self.best_util

    def top(self, k: int) -> list[tuple[torch.Tensor, float]]:
        order = torch.argsort(self.utils, descending=True, stable=True)[:k].tolist()
        return [(self.cmap.weights(self.coefs[i]), float(self.utils[i])) for i in order]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return ({"best_c": self.best_c, "seen_c": self.coefs, "seen_u": self.utils},
                {"best_util": self.best_util})

    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.best_c, self.coefs = tensors["best_c"].clone(), tensors["seen_c"].clone()
        self.utils, self.best_util = tensors["seen_u"].clone(), meta["best_util"]


class ArchivedCoefficients:
    """What a search over merge coefficients that keeps a `CoefficientArchive` (`archive`) and
    decodes with a `CoefficientMap` (`cmap`) answers the loop and the exports with."""

    archive: CoefficientArchive
    cmap: CoefficientMap

    def best(self) -> tuple[torch.Tensor, float]:
        return self.archive.best()

    def top(self, k: int) -> list[tuple[torch.Tensor, float]]:
        return self.archive.top(k)

    def best_coefficients(self) -> dict[str, Any]:
        """The best's merge coefficients per expert and group (for exports)."""
        return self.cmap.describe(self.archive.best_c)
