"""Model Swarms (Feng et al., 2024, arXiv 2410.11163): particle swarm search in weight space.

The state of the whole swarm is a handful of (particles x parameters) tensors on the model's
device. The random numbers come from one seeded CPU generator, so a run is reproducible
across devices and resumes bit-exactly from a checkpoint.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from ..config import RunConfig, StrictModel, register_section
from ..space import FlatSpace
from .registry import register_strategy

_DTYPES = {
    "float32": torch.float32, "float64": torch.float64,
    "bfloat16": torch.bfloat16, "float16": torch.float16,
}


class SwarmConfig(StrictModel):
    particles: int | None = Field(None, ge=2, description="grow the population to this size")
    inertia: float = Field(0.4, ge=0)
    cognitive: float = Field(0.3, ge=0)
    social: float = Field(0.3, ge=0)
    repel: float = Field(0.3, ge=0)
    use_repel: bool = True
    random_factors: bool = True
    step_length: float = Field(1.0, gt=0)
    step_decay: float = Field(0.95, gt=0, le=1)
    min_step: float = Field(0.1, ge=0)
    start_velocity: Literal["random", "zero", "best"] = "random"
    restart_patience: float = Field(0.5, gt=0, description="fraction of `patience`")
    restart_cooldown: int = Field(
        0, ge=0, description="extra iterations a restarted particle waits before it can restart")
    patience: int = Field(10, ge=1)
    max_iterations: int = Field(200, ge=0)
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _coefficients(self) -> SwarmConfig:
        total = self.inertia + self.cognitive + self.social + (self.repel if self.use_repel else 0)
        if total <= 0:
            raise ValueError("inertia + cognitive + social (+ repel) must be > 0")
        return self


register_section("search", SwarmConfig)


def coefficients(
    cfg: SwarmConfig, r: torch.Tensor
) -> tuple[float, float, float, float]:
    """Normalised (inertia, cognitive, social, repel) weights from four random factors."""
    a = float(r[0]) * cfg.inertia
    b = float(r[1]) * cfg.cognitive
    c = float(r[2]) * cfg.social
    d = float(r[3]) * cfg.repel if cfg.use_repel else 0.0
    total = a + b + c + d
    if total <= 0.0:
        # Every drawn factor that matters was exactly 0: use the configured weights as they are.
        return coefficients(cfg, torch.ones(4))
    return a / total, b / total, c / total, d / total


class ModelSwarm:
    """Ask / tell PSO over the rows of `experts` (one row per expert, flattened weights)."""

    label = "Model Swarms"
    starts_at_experts = True  # its first particles are the rows it was given, scored first

    def __init__(
        self, experts: torch.Tensor, cfg: SwarmConfig, seed: int = 0,
        device: torch.device | str | None = None, budget: int | None = None,
        per_coordinate: bool = False,
    ):
        if experts.ndim != 2 or experts.shape[0] < 2:
            raise ValueError("a swarm needs at least 2 experts as rows of a 2-D tensor")
        self.cfg, self.budget = cfg, budget
        # Random factors drawn per coordinate instead of per particle: for small spaces of
        # coefficients (layer_swarm.py), where one factor per particle would make the search
        # the image of the weight-space swarm under a linear map, that is, the same search.
        self.per_coordinate = per_coordinate
        self.n_experts = experts.shape[0]
        self.gen = torch.Generator().manual_seed(seed)
        dtype = _DTYPES[cfg.dtype]
        device = experts.device if device is None else torch.device(device)
        self.x = self._grow(experts.to(device=device, dtype=dtype))
        n = self.x.shape[0]
        self.v = torch.zeros_like(self.x)
        if cfg.start_velocity == "random":
            for i in range(n):
                j = int(torch.randint(n - 1, (1,), generator=self.gen))
                j += j >= i  # a random j != i
                self.v[i] = self.x[j] - self.x[i]
        self.p = self.x.clone()
        self.p_util = torch.full((n,), -math.inf, dtype=torch.float64)
        self.util = torch.full((n,), -math.inf, dtype=torch.float64)
        self.g = self.x[0].clone()
        self.w = self.x[0].clone()
        self.g_util, self.w_util = -math.inf, math.inf
        # Iterations since p_i last improved; a restart sets it to -restart_cooldown.
        self.stall = torch.zeros(n, dtype=torch.int64)
        self.step = cfg.step_length
        self.iteration = 0  # 0 = the evaluation of the initial particles
        self.since_best = 0
        self.evaluations = 0
        self.restarted: list[int] = []
        # Particles told NaN (not scored this round, e.g. a model Heterogeneous Swarms never
        # drew): they keep position, velocity and personal best through the next step.
        self.skipped = torch.zeros(n, dtype=torch.bool)
        self.started = False

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def _grow(self, x: torch.Tensor) -> torch.Tensor:
        target = self.cfg.particles or x.shape[0]
        rows = list(x)
        while len(rows) < target:
            i, j = torch.randperm(len(rows), generator=self.gen)[:2].tolist()
            t = float(torch.rand((), generator=self.gen)) * 2.0  # t ~ U(0, 2)
            rows.append(t * rows[i] + (1.0 - t) * rows[j])
        return torch.stack(rows)

    @property
    def done(self) -> bool:
        if self.budget is not None and self.evaluations + self.n > self.budget:
            return True  # a whole iteration no longer fits in the evaluation budget
        if not self.started:
            return False
        return self.iteration >= self.cfg.max_iterations or self.since_best >= self.cfg.patience

    def ask(self) -> torch.Tensor:
        if not self.started:
            return self.x
        cfg = self.cfg
        if self.per_coordinate and cfg.random_factors:
            self._move_per_coordinate()
            return self.x
        r = (torch.rand(self.n, 4, generator=self.gen) if cfg.random_factors
             else torch.ones(self.n, 4))
        for i in range(self.n):
            if self.skipped[i]:
                continue
            a, b, c, d = coefficients(cfg, r[i])
            # v = a v + b (p - x) + c (g - x) + d (x - w), regrouped so no temporary is made
            self.v[i].mul_(a).add_(self.p[i], alpha=b).add_(self.g, alpha=c)
            self.v[i].add_(self.w, alpha=-d).add_(self.x[i], alpha=d - b - c)
            self.x[i].add_(self.v[i], alpha=self.step)
        return self.x

    def _move_per_coordinate(self) -> None:
        """The same update with its four weights drawn for every coordinate."""
        cfg, dim = self.cfg, self.x.shape[1]
        scale = torch.tensor([cfg.inertia, cfg.cognitive, cfg.social,
                              cfg.repel if cfg.use_repel else 0.0], dtype=torch.float64)
        for i in range(self.n):
            if self.skipped[i]:
                continue
            r = torch.rand(4, dim, generator=self.gen, dtype=torch.float64) * scale[:, None]
            total = r.sum(0)
            r = torch.where(total > 0, r / total.clamp_min(1e-300),
                            (scale / scale.sum())[:, None]).to(self.x)
            a, b, c, d = r
            self.v[i] = (a * self.v[i] + b * (self.p[i] - self.x[i]) + c * (self.g - self.x[i])
                         + d * (self.x[i] - self.w))
            self.x[i].add_(self.v[i], alpha=self.step)

    def tell(self, utilities: list[float]) -> None:
        u = torch.tensor(utilities, dtype=torch.float64)
        if u.shape != (self.n,):
            raise ValueError(f"expected {self.n} utilities, got {len(utilities)}")
        self.evaluations += self.n
        self.util = u.clone()
        self.skipped = torch.isnan(u)
        if bool(self.skipped.all()):
            raise ValueError("every particle was told NaN: nothing was scored")
        improved = u > self.p_util  # False for NaN
        self.p[improved] = self.x[improved]
        self.p_util = torch.where(improved, u, self.p_util)
        self.stall = torch.where(improved, 0, self.stall + (~self.skipped).long())
        best = int(torch.argmax(torch.where(self.skipped, -math.inf, u)))
        worst = int(torch.argmin(torch.where(self.skipped, math.inf, u)))
        if float(u[best]) > self.g_util:
            self.g.copy_(self.x[best])
            self.g_util = float(u[best])
            self.since_best = 0
        else:
            self.since_best += 1
        if float(u[worst]) < self.w_util:
            self.w.copy_(self.x[worst])
            self.w_util = float(u[worst])
        if not self.started:
            self.started = True
            self.stall.zero_()
            if self.cfg.start_velocity == "best":
                self.v.copy_(self.g - self.x)
        else:
            self.iteration += 1
            self.step = max(self.step * self.cfg.step_decay, self.cfg.min_step)
            self._restart()

    def _restart(self) -> None:
        """Send stalled particles back to their personal best with zero velocity."""
        threshold = self.cfg.restart_patience * self.cfg.patience
        stalled = self.stall >= threshold
        self.restarted = stalled.nonzero().flatten().tolist()
        for i in self.restarted:
            self.x[i].copy_(self.p[i])
            self.v[i].zero_()
        # The stall count starts over (minus a cool-down): without it a stalled particle would
        # restart every iteration, as in the reference code.
        self.stall[stalled] = -self.cfg.restart_cooldown

    def best(self) -> tuple[torch.Tensor, float]:
        return self.g, self.g_util

    def top(self, k: int) -> list[tuple[torch.Tensor, float]]:
        """The k best personal bests, best first."""
        return [(self.p[i], float(self.p_util[i])) for i in self.top_indices(k)]

    def top_indices(self, k: int) -> list[int]:
        """Particle indices of `top(k)`, in its order: index i < n_experts started as expert
        i, later ones were grown (weak-to-strong reports read this)."""
        return torch.argsort(self.p_util, descending=True, stable=True)[:k].tolist()

    def record(self) -> dict[str, Any]:
        return {"global_best": self.g_util, "global_worst": self.w_util,
                "utilities": self.util.tolist(), "personal_best": self.p_util.tolist(),
                "step": self.step, "restarted": self.restarted}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {
            "x": self.x, "v": self.v, "p": self.p, "g": self.g, "w": self.w,
            "p_util": self.p_util, "util": self.util, "stall": self.stall,
            "skipped": self.skipped, "rng": self.gen.get_state(),
        }
        meta = {
            "g_util": self.g_util, "w_util": self.w_util, "step": self.step,
            "iteration": self.iteration, "since_best": self.since_best,
            "evaluations": self.evaluations, "started": self.started,
            "restarted": self.restarted,
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if self.x.shape != tensors["x"].shape:
            raise ValueError("checkpoint holds a swarm of a different shape")
        for name in ("x", "v", "p", "g", "w"):
            getattr(self, name).copy_(tensors[name])
        self.p_util = tensors["p_util"].clone()
        self.util = tensors["util"].clone()
        self.stall = tensors["stall"].clone()
        self.skipped = tensors["skipped"].clone()
        self.gen.set_state(tensors["rng"])
        for key, value in meta.items():
            setattr(self, key, value)


@register_strategy("swarm", label=ModelSwarm.label,
                   iterations=lambda cfg: cfg.search.max_iterations)
def build(cfg: RunConfig, experts: torch.Tensor, space: FlatSpace) -> ModelSwarm:
    return ModelSwarm(experts, cfg.search, seed=cfg.seed, budget=cfg.budget)
