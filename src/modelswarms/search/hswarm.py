"""Heterogeneous Swarms (Feng et al., 2025, arXiv 2502.04510): roles and weights in turn.

Each round has a role-step, one PSO iteration over K continuous adjacency matrices (each
decoded into a DAG and scored as a system with model i on node i), and a weight-step: T random
model-to-node assignments on the round's best graph give each model a JFK-score, the mean
utility of the systems it sat in, and one Model Swarms update of the models' weights uses
those scores. Both PSOs are `ModelSwarm`s, so their restarts, cool-downs and checkpoints are
the ones a weight-space search has.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..hetero.graph import Dag, chain, decode, random_adjacency
from ..hetero.system import HSwarmConfig, System
from ..pool import pool_kind
from ..space import FlatSpace
from .registry import register_strategy
from .swarm import ModelSwarm


def jfk_scores(assignments: list[list[int]], utilities: list[float], n_models: int
               ) -> list[float]:
    """Model m's mean system utility over every (trial, node) pair where m sat on the node;
    NaN for a model never drawn (it gets no update, not a division by zero)."""
    total, count = [0.0] * n_models, [0] * n_models
    for assignment, u in zip(assignments, utilities, strict=True):
        for m in assignment:
            total[m] += u
            count[m] += 1
    return [t / c if c else math.nan for t, c in zip(total, count, strict=True)]


class HeteroSwarm:
    """Ask / tell: a round asks twice, first for the role-step's systems (the K decoded
    graphs, model i on node i), then for the weight-step's (T random assignments on the
    round's best graph, the models after one PSO move). A checkpoint may fall between the
    two; `record()` is None until a round is complete."""

    label = "Heterogeneous Swarms"

    def __init__(self, models: torch.Tensor, cfg: RunConfig):
        h = cfg.hswarm
        assert h is not None
        self.cfg, self.h, self.n = cfg, h, models.shape[0]
        self.gen = torch.Generator().manual_seed(cfg.seed)
        n = self.n
        adjacency = random_adjacency(h.graphs, n, self.gen).flatten(1)
        # The diagonal starts at zero in every matrix and velocity, so PSO keeps it there.
        self.roles = ModelSwarm(adjacency, h.role_search, seed=cfg.seed + 1, device="cpu")
        self.weights = ModelSwarm(models, cfg.search, seed=cfg.seed + 2)
        self.round = 0
        self.evaluations = 0
        self.since_best = 0
        self.best_util = -math.inf
        self.best_dag: Dag | None = None
        self.best_assignment: list[int] = []
        self.best_models = models.detach().clone()
        # Within a round: which step asks next, what the round has so far, what was asked.
        self.phase = "role"
        self._rec: dict[str, Any] = {}
        self._improved = False
        self._graph: Dag | None = None
        self._asked: list[System] = []
        self._done_round: dict[str, Any] | None = None

    @property
    def iteration(self) -> int:
        return self.round

    @property
    def round_cost(self) -> int:
        return (self.h.graphs if self.h.steps != "weight" else 0) + \
            (self.h.trials if self.h.steps != "role" else 0)

    @property
    def done(self) -> bool:
        if self.phase != "role":
            return False  # a round once begun is finished
        budget = self.cfg.budget
        if budget is not None and self.evaluations + self.round_cost > budget:
            return True
        return self.round >= self.h.max_rounds or self.since_best >= self.h.patience

    def _consider(self, u: float, dag: Dag, assignment: tuple[int, ...] | list[int],
                  models: torch.Tensor) -> bool:
        if u > self.best_util:
            self.best_util, self.best_dag = u, dag
            self.best_assignment = list(assignment)
            self.best_models.copy_(models)
            return True
        return False

    def ask(self) -> list[System]:
        """The systems to score next."""
        self._done_round = None
        if self.phase == "role" and self.h.steps == "weight":
            self._begin_round(chain(self.n))
        if self.phase == "role":
            identity = tuple(range(self.n))
            models = self.weights.x
            dags = [decode(a.view(self.n, self.n), self.h.decode, self.h.top_p, self.gen)
                    for a in self.roles.ask()]
            self._asked = [System(d, identity, models) for d in dags]
        else:
            models = self.weights.ask()
            trials = [tuple(torch.randint(self.n, (self.n,), generator=self.gen).tolist())
                      for _ in range(self.h.trials)]
            assert self._graph is not None
            self._asked = [System(self._graph, a, models) for a in trials]
        return self._asked

    def _begin_round(self, graph: Dag) -> None:
        self._graph = graph
        self._rec["graph"] = graph.to_json()
        self.phase = "weight"

    def tell(self, utilities: list[float]) -> None:
        asked = self._asked
        if len(utilities) != len(asked):
            raise ValueError(f"expected {len(asked)} utilities, got {len(utilities)}")
        self.evaluations += len(asked)
        for system, u in zip(asked, utilities, strict=True):
            self._improved |= self._consider(u, system.dag, system.assignment, system.models)
        if self.phase == "role":
            self.roles.tell(utilities)
            best = max(range(len(asked)), key=utilities.__getitem__)
            self._rec.update(graph_utilities=list(utilities),
                             restarted_graphs=self.roles.restarted)
            self._begin_round(asked[best].dag)
            if self.h.steps == "role":
                self._end_round()
            return
        jfk = jfk_scores([list(s.assignment) for s in asked], utilities, self.n)
        self.weights.tell(jfk)
        self._rec.update(trial_utilities=list(utilities),
                         jfk=[None if math.isnan(x) else x for x in jfk],
                         step=self.weights.step)
        self._end_round()

    def _end_round(self) -> None:
        self.round += 1
        self.since_best = 0 if self._improved else self.since_best + 1
        rec = {"round": self.round, **self._rec, "best": self.best_util,
               "evaluations": self.evaluations}
        # what every strategy's record carries (the progress display and curves read them)
        rec.update(global_best=self.best_util,
                   utilities=rec.get("graph_utilities", []) + rec.get("trial_utilities", []))
        self._done_round = rec
        self._rec, self._improved, self.phase = {}, False, "role"

    def record(self) -> dict[str, Any] | None:
        """The round just completed (None in the middle of a round)."""
        return self._done_round

    def best(self) -> tuple[System, float]:
        """The best system seen (before any is scored: the chain of the initial models)."""
        dag = self.best_dag or chain(self.n)
        assignment = tuple(self.best_assignment) or tuple(range(self.n))
        return System(dag, assignment, self.best_models), self.best_util

    def top(self, k: int) -> list[tuple[System, float]]:
        return [self.best()][:k]

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        rt, rm = self.roles.state_dict()
        wt, wm = self.weights.state_dict()
        tensors = {**{f"roles.{k}": v for k, v in rt.items()},
                   **{f"weights.{k}": v for k, v in wt.items()},
                   "rng": self.gen.get_state(), "best_models": self.best_models}
        meta = {"roles": rm, "weights": wm, "round": self.round,
                "evaluations": self.evaluations, "since_best": self.since_best,
                "best_util": self.best_util, "best_assignment": self.best_assignment,
                "best_dag": self.best_dag.to_json() if self.best_dag else None,
                "phase": self.phase, "round_record": self._rec, "improved": self._improved,
                "graph": self._graph.to_json() if self._graph else None}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.roles.load_state_dict(part("roles."), meta["roles"])
        self.weights.load_state_dict(part("weights."), meta["weights"])
        self.gen.set_state(tensors["rng"])
        self.best_models.copy_(tensors["best_models"])
        self.round, self.evaluations = meta["round"], meta["evaluations"]
        self.since_best, self.best_util = meta["since_best"], meta["best_util"]
        self.best_assignment = meta["best_assignment"]
        self.best_dag = Dag.from_json(meta["best_dag"]) if meta["best_dag"] else None
        self.phase = meta["phase"]
        self._rec, self._improved = meta["round_record"], meta["improved"]
        self._graph = Dag.from_json(meta["graph"]) if meta["graph"] else None


def prepare(cfg: RunConfig) -> RunConfig:
    """The config with hswarm's defaults filled in, refused where a system cannot be built."""
    if cfg.hswarm is None:  # the defaults of every hswarm knob
        cfg = cfg.model_copy(update={"hswarm": HSwarmConfig()})
    if len(cfg.experts.paths) < 2:
        raise ConfigError("hswarm: a multi-LLM system needs at least 2 experts")
    if not pool_kind(cfg.experts.compose).adds_weights:
        raise ConfigError("hswarm: experts.compose must be weights (its nodes are experts of "
                          "one architecture)")
    if cfg.utility.brings_documents:  # its items are lm-eval requests, not questions
        raise ConfigError(f"hswarm: utility {cfg.utility.type} is not supported (a node "
                          "passes its answer on in the next node's question; the utility's "
                          "tasks build their own prompts)")
    if cfg.search.particles not in (None, len(cfg.experts.paths)):
        raise ConfigError("search.particles: the weight-step's particles are the experts (the "
                          "nodes' models); leave it unset for hswarm")
    return cfg


@register_strategy("hswarm", label=HeteroSwarm.label,
                   iterations=lambda cfg: (cfg.hswarm or HSwarmConfig()).max_rounds,
                   prepare=prepare, candidate=System)
def build(cfg: RunConfig, experts: torch.Tensor, space: FlatSpace) -> HeteroSwarm:
    return HeteroSwarm(experts, prepare(cfg))
