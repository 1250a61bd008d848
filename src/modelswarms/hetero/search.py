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
from ..search.swarm import ModelSwarm
from .graph import Dag, chain, decode, random_adjacency


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
        self.history: list[dict[str, Any]] = []  # the run's round records (runner fills it)

    @property
    def round_cost(self) -> int:
        return (self.h.graphs if self.h.steps != "weight" else 0) + \
            (self.h.trials if self.h.steps != "role" else 0)

    @property
    def done(self) -> bool:
        budget = self.cfg.budget
        if budget is not None and self.evaluations + self.round_cost > budget:
            return True
        return self.round >= self.h.max_rounds or self.since_best >= self.h.patience

    def _consider(self, u: float, dag: Dag, assignment: list[int], models: torch.Tensor
                  ) -> bool:
        if u > self.best_util:
            self.best_util, self.best_dag = u, dag
            self.best_assignment = list(assignment)
            self.best_models.copy_(models)
            return True
        return False

    def run_round(self, evaluate) -> dict[str, Any]:
        """One role-step and one weight-step. `evaluate(dag, assignment, models)` returns a
        system's utility."""
        improved = False
        identity = list(range(self.n))
        rec: dict[str, Any] = {"round": self.round + 1}
        models = self.weights.x
        if self.h.steps == "weight":
            graph = chain(self.n)
        else:
            dags = [decode(a.view(self.n, self.n), self.h.decode, self.h.top_p, self.gen)
                    for a in self.roles.ask()]
            utils = [evaluate(d, identity, models) for d in dags]
            self.evaluations += len(dags)
            self.roles.tell(utils)
            for d, u in zip(dags, utils, strict=True):
                improved |= self._consider(u, d, identity, models)
            graph = dags[max(range(len(dags)), key=utils.__getitem__)]
            rec.update(graph_utilities=utils, restarted_graphs=self.roles.restarted)
        rec["graph"] = graph.to_json()
        if self.h.steps != "role":
            models = self.weights.ask()
            trials = [torch.randint(self.n, (self.n,), generator=self.gen).tolist()
                      for _ in range(self.h.trials)]
            utils = [evaluate(graph, a, models) for a in trials]
            self.evaluations += len(trials)
            for a, u in zip(trials, utils, strict=True):
                improved |= self._consider(u, graph, a, models)
            jfk = jfk_scores(trials, utils, self.n)
            self.weights.tell(jfk)
            rec.update(trial_utilities=utils, jfk=[None if math.isnan(x) else x for x in jfk],
                       step=self.weights.step)
        self.round += 1
        self.since_best = 0 if improved else self.since_best + 1
        rec.update(best=self.best_util, evaluations=self.evaluations)
        return rec

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        rt, rm = self.roles.state_dict()
        wt, wm = self.weights.state_dict()
        tensors = {**{f"roles.{k}": v for k, v in rt.items()},
                   **{f"weights.{k}": v for k, v in wt.items()},
                   "rng": self.gen.get_state(), "best_models": self.best_models}
        meta = {"roles": rm, "weights": wm, "round": self.round,
                "evaluations": self.evaluations, "since_best": self.since_best,
                "best_util": self.best_util, "best_assignment": self.best_assignment,
                "best_dag": self.best_dag.to_json() if self.best_dag else None}
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
