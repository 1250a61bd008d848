"""Fitness from fewer items (`utility.estimate`): candidates are scored on a few anchor items
of dev and their full-dev utility is estimated from those, as tinyBenchmarks (Maia Polo et
al. 2024) does with anchor items chosen by clustering correctness patterns.

The response matrix comes free: the first candidates a search asks for (Model Swarms: the
experts and its grown particles) and the experts are scored on the whole dev set. Items are
clustered by their per-item scores across those candidates (k-means); anchors are drawn from
every cluster in proportion to its size, and a candidate's estimate is the cluster-size
weighted mean of its anchor scores (a stratified sample, so it is unbiased for items whose
behaviour their cluster shares). The search only ever sees estimates after the first batch;
the reported best and top-k are re-scored on full dev (`rescore`), and the report says how many
item-evaluations the run spent.

IRT estimators (tinyBenchmarks' IRT, MERGE3's mp-IRT) fit a discrimination and difficulty
per item; they borrow those from hundreds of leaderboard models. A run here has a few experts
and particles, too few rows to fit two parameters per item, so they are not offered.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import EstimateConfig
from ..errors import ConfigError
from ..evaluation.objectives.utilities import ItemScores
from .scorer import fingerprints
from .session import Session

KMEANS_STEPS = 50


def cluster_items(patterns: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means (k-means++ start) of the columns of `patterns` (candidates x items): a cluster
    label per item. Fewer than k clusters when there are fewer distinct patterns."""
    x = patterns.t().to(torch.float64)  # items x candidates
    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    centres = [x[first]]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).min(1).values ** 2
        if float(d2.sum()) == 0.0:  # every distinct pattern is a centre already
            break
        centres.append(x[int(torch.multinomial(d2, 1, generator=gen))])
    c = torch.stack(centres)
    labels = torch.cdist(x, c).argmin(1)
    for _ in range(KMEANS_STEPS):
        c = torch.stack([x[labels == j].mean(0) if bool((labels == j).any()) else c[j]
                         for j in range(c.shape[0])])
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return torch.unique(labels, return_inverse=True)[1]


def allocate(sizes: list[int], total: int) -> list[int]:
    """`total` draws over clusters of `sizes`: one each, the rest in proportion to size
    (largest remainder), never more than a cluster holds."""
    take = [1] * len(sizes)
    left = total - len(sizes)
    while left > 0:
        n = sum(sizes)
        want = [s * total / n - t for s, t in zip(sizes, take, strict=True)]
        room = [j for j in range(len(sizes)) if take[j] < sizes[j]]
        j = max(room, key=lambda j: (want[j], -j))
        take[j] += 1
        left -= 1
    return take


def choose_anchors(patterns: torch.Tensor, cfg: EstimateConfig, seed: int
                   ) -> tuple[list[int], list[float]]:
    """Anchor item indices and their weights (summing to 1) from per-item scores of the
    candidates scored on full dev (rows of `patterns`)."""
    n = patterns.shape[1]
    gen = torch.Generator().manual_seed(seed)
    if cfg.method == "random":
        anchors = sorted(torch.randperm(n, generator=gen)[: cfg.items].tolist())
        return anchors, [1.0 / len(anchors)] * len(anchors)
    labels = cluster_items(patterns, cfg.items, gen)
    members = [torch.nonzero(labels == j).flatten().tolist()
               for j in range(int(labels.max()) + 1)]
    take = allocate([len(m) for m in members], cfg.items)
    picked: list[tuple[int, float]] = []
    for m, t in zip(members, take, strict=True):
        order = torch.randperm(len(m), generator=gen)[:t].tolist()
        picked += [(m[i], len(m) / (n * t)) for i in order]
    picked.sort()
    return [i for i, _ in picked], [w for _, w in picked]


class FewItems:
    """The loop's scorer under `utility.estimate`: the first batch of candidates (and the
    experts) on full dev, which fixes the anchors; every later candidate on the anchors."""

    def __init__(self, session: Session, cfg: EstimateConfig, seed: int):
        self.session, self.cfg, self.seed = session, cfg, seed
        n = len(session.dev)
        if cfg.items >= n:
            raise ConfigError(f"utility.estimate.items: {cfg.items} is not fewer than the {n} "
                              "dev items; lower it or remove utility.estimate")
        self.anchors: list[int] | None = None
        self.weights: list[float] = []
        self.item_evaluations = 0  # items scored for the search, every request counted
        self.fitted_on = 0

    def __call__(self, vectors: torch.Tensor) -> list[float]:
        s = self.session
        if self.anchors is None:
            full = s.score_many(vectors, s.dev)
            # the experts too, where the batch is not them (their dev scores are the report's
            # anyway, but they are work this run does)
            asked = set(fingerprints(vectors))
            extra = sum(f not in asked for f in set(fingerprints(s.experts)))
            self.item_evaluations += (len(vectors) + extra) * len(s.dev)
            self.fit(full + s.score_many(s.experts, s.dev))
            return [r.value for r in full]
        self.item_evaluations += len(vectors) * len(self.anchors)
        return [r.value if not math.isfinite(r.value) else self.estimate(r.scores)
                for r in s.score_many(vectors, self.anchor_items)]

    @property
    def anchor_items(self) -> list[dict]:
        assert self.anchors is not None
        return [self.session.dev[i] for i in self.anchors]

    def fit(self, rows: list[ItemScores]) -> None:
        rows = [r for r in rows if math.isfinite(r.value)]
        if not rows:
            raise ConfigError("utility.estimate: no candidate of the first batch could be "
                              "scored on full dev, so there is nothing to choose anchors from")
        for r in rows:
            if abs(r.value - sum(r.scores) / len(r.scores)) > 1e-9:
                raise ConfigError(
                    f"utility.estimate: utility {self.session.utility.name}'s value "
                    f"({r.value}) is not the mean of its per-item scores, so it cannot be "
                    "estimated from a subset of items; remove utility.estimate")
        patterns = torch.unique(torch.tensor([r.scores for r in rows], dtype=torch.float64),
                                dim=0)
        self.fitted_on = patterns.shape[0]
        self.anchors, self.weights = choose_anchors(patterns, self.cfg, self.seed)

    def estimate(self, anchor_scores: list[float]) -> float:
        """Full-dev utility from the per-item scores on the anchors, in anchor order (an
        invalid candidate keeps the value utility.on_invalid gave it, in __call__)."""
        return math.fsum(w * x for w, x in zip(self.weights, anchor_scores, strict=True))

    def state(self) -> dict[str, Any]:
        return {"anchors": None if self.anchors is None else list(self.anchors),
                "weights": list(self.weights), "item_evaluations": self.item_evaluations,
                "fitted_on": self.fitted_on}

    def load(self, state: dict[str, Any]) -> None:
        self.anchors = state["anchors"]
        self.weights = state["weights"]
        self.item_evaluations = state["item_evaluations"]
        self.fitted_on = state["fitted_on"]

    def rescore(self, search: Any, top_k: int) -> Rescored:
        """`search` with its global best and top-k re-scored on full dev. The best stays the
        search's (merge-coefficient exports describe that point), with its full-dev value."""
        s = self.session
        g, estimated = search.best()
        top = search.top(top_k)
        vectors = torch.stack([g] + [v for v, _ in top])
        full = [r.value for r in s.score_many(vectors, s.dev)]
        self.item_evaluations += len(vectors) * len(s.dev)
        summary = {"method": self.cfg.method, "items": len(self.anchors or []),
                   "dev_items": len(s.dev), "fitted_on": self.fitted_on,
                   "item_evaluations": self.item_evaluations, "estimated_best": estimated,
                   "rescored": len(vectors)}
        return Rescored(search, (g, full[0]),
                        [(v, full[i + 1]) for i, (v, _) in enumerate(top)], summary)


class Rescored:
    """A finished search whose best and top-k carry full-dev utilities (the order of `top` is
    the search's, so `top_indices` still matches it)."""

    def __init__(self, search: Any, best: tuple[torch.Tensor, float],
                 top: list[tuple[torch.Tensor, float]], summary: dict[str, Any]):
        self._search, self._best, self._top, self.estimate = search, best, top, summary

    def __getattr__(self, name: str) -> Any:
        return getattr(self._search, name)

    def best(self) -> tuple[torch.Tensor, float]:
        return self._best

    def top(self, k: int) -> list[tuple[torch.Tensor, float]]:
        return self._top[:k]
