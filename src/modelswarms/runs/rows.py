"""The rows of `modelswarms compare`, one registry: a reference row (base, experts, votes,
ensembles) is a function registered here; every merge method of merge/ and every weight-space
strategy of search/ is a row by its own registration, so a new merge or strategy appears in
compare without a line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..merge import MERGE_METHODS, merge_vectors
from ..merge.base import base_vector, need_base
from ..search import strategy_names, strategy_spec
from ..stats import pack_scores
from .ensemble import majority_vote
from .runner import run
from .session import Session


@dataclass
class RowContext:
    cfg: RunConfig
    session: Session
    out: Path           # the comparison's folder (searches run in out/runs/<method>/seed_<n>)
    seed: int
    expert_dev: list[float]
    show_progress: bool = False
    view: Callable[..., Any] | None = None  # what a search row's loop reports to


@dataclass(frozen=True)
class RowSpec:
    name: str
    label: str
    kind: str  # "reference", "merge" or "search" (searches get intervals and per-seed lines)
    seeded: bool  # run once per seed of compare.seeds
    rows: Callable[[RowContext], list[dict[str, Any]]]
    # what a reference row costs for the ETA, in dev evaluations, given the number of experts
    # and test items per dev item (merges and searches: compare.row_cost)
    cost: Callable[[int, float], float] = lambda n, r: 1 + r


REFERENCE_ROWS: dict[str, RowSpec] = {}


def reference_row(name: str, label: str,
                  cost: Callable[[int, float], float] = lambda n, r: 1 + r) -> Callable:
    def deco(fn: Callable[[RowContext], list[dict[str, Any]]]):
        REFERENCE_ROWS[name] = RowSpec(name, label, "reference", False, fn, cost)
        return fn
    return deco


def row_spec(method: str) -> RowSpec:
    """What `method` in compare.methods names: a reference row, a merge or a search."""
    if method in REFERENCE_ROWS:
        return REFERENCE_ROWS[method]
    if method in MERGE_METHODS:
        return RowSpec(method, method, "merge", MERGE_METHODS[method].stochastic,
                       lambda ctx: merge_row(ctx, method))
    if method in strategy_names() and strategy_spec(method).weights:
        return RowSpec(method, strategy_spec(method).label, "search", True,
                       lambda ctx: search_row(ctx, method))
    known = sorted([*REFERENCE_ROWS, *MERGE_METHODS,
                    *(s for s in strategy_names() if strategy_spec(s).weights)])
    raise ConfigError(f"compare.methods: unknown method {method!r}; known: {', '.join(known)}")


def is_search(method: str) -> bool:
    try:
        return row_spec(method).kind == "search"
    except ConfigError:
        return False


def _test(session: Session, vec: torch.Tensor | None) -> dict[str, Any]:
    if not session.test:
        return {"test": None}
    result = session.score(vec, session.test)
    return {"test": result.value, "test_scores": pack_scores(result.scores)}


def _scores(session: Session, vec: torch.Tensor | None) -> dict[str, Any]:
    return {"dev": session.score(vec, session.dev).value, **_test(session, vec)}


@reference_row("base", "base model")
def base_row(ctx: RowContext) -> list[dict[str, Any]]:
    if ctx.session.pool.kind != "lora":
        raise ConfigError("the base model row needs a LoRA pool")
    return [{"name": "base model", **_scores(ctx.session, None)}]


@reference_row("experts", "experts", cost=lambda n, r: n * r)  # dev: scored at the start
def expert_rows(ctx: RowContext) -> list[dict[str, Any]]:
    s = ctx.session
    return [{"name": f"expert: {n}", "dev": d, **_test(s, s.experts[i])}
            for i, (n, d) in enumerate(zip(s.pool.names, ctx.expert_dev, strict=True))]


@reference_row("best_expert", "best expert", cost=lambda n, r: r)
def best_expert_row(ctx: RowContext) -> list[dict[str, Any]]:
    s, names = ctx.session, ctx.session.pool.names
    i = max(range(len(names)), key=lambda j: ctx.expert_dev[j])
    return [{"name": f"best expert ({names[i]})", **_scores(s, s.experts[i])}]


@reference_row("expert_vote", "top-k experts, majority vote", cost=lambda n, r: r)
def expert_vote_row(ctx: RowContext) -> list[dict[str, Any]]:
    s, names = ctx.session, ctx.session.pool.names
    k = min(ctx.cfg.output.top_k, len(names))
    top = sorted(range(len(names)), key=lambda j: -ctx.expert_dev[j])[:k]
    row: dict[str, Any] = {"name": f"top-{k} experts, majority vote"}
    for split, items in (("dev", s.dev), ("test", s.test)):
        if items:
            voters = [s.score(s.experts[j], items) for j in top]
            vote = majority_vote(voters, [ctx.expert_dev[j] for j in top])
            row[split] = vote.value
            if split == "test":
                row["test_scores"] = pack_scores(vote.scores)
    return [row]


@reference_row("logit_average", "experts, logit average", cost=lambda n, r: n * (1 + r))
def logit_average_row(ctx: RowContext) -> list[dict[str, Any]]:
    s = ctx.session
    if s.pool.kind == "mixture":  # the uniform mixture: logit averaging generalised
        return [{"name": "experts, uniform mixture",
                 **_scores(s, torch.ones(len(s.pool.names), device=s.experts.device))}]
    # every log-likelihood scoring reads the averaged distribution; generation does not
    if not (s.cfg.utility.type == "multiple_choice" and s.cfg.utility.scoring != "generate"):
        raise ConfigError("logit averaging needs the log-likelihood multiple_choice utility")
    if not hasattr(s.evaluator, "score_ensemble"):
        raise ConfigError("logit averaging: this evaluator cannot run experts side by side")
    row: dict[str, Any] = {"name": "experts, logit average", "test": None}
    for split, items in (("dev", s.dev), ("test", s.test)):
        if items:
            scored = s.evaluator.score_ensemble(  # type: ignore[attr-defined]
                s.experts, items, s.utility)
            row[split] = scored.value
            if split == "test":
                row["test_scores"] = pack_scores(scored.scores)
    return [row]


def merge_row(ctx: RowContext, method: str) -> list[dict[str, Any]]:
    s = ctx.session
    if s.pool.kind == "mixture":
        raise ConfigError("a merge adds weights of one architecture; this pool is a mixture "
                          "(experts.compose: mixture)")
    base = None
    if MERGE_METHODS[method].needs_base:
        base = need_base(method, base_vector(s.pool, s.space, s.experts.device,
                                             s.experts.dtype))
    assert ctx.cfg.compare is not None
    vec = merge_vectors(method, s.experts, base, s.space,
                        params=ctx.cfg.compare.merge_params.get(method), seed=ctx.seed)
    return [{"name": method, **_scores(s, vec)}]


def search_row(ctx: RowContext, method: str) -> list[dict[str, Any]]:
    """A search strategy at the comparison's budget, in its own resumable run folder."""
    cfg = ctx.cfg
    assert cfg.compare is not None
    run_dir = ctx.out / "runs" / method / f"seed_{ctx.seed}"
    views = {"view": ctx.view} if ctx.view is not None else {}
    if (run_dir / "config.yaml").exists():
        report = run(resume=run_dir, show_progress=ctx.show_progress, session=ctx.session,
                     **views)
    else:
        sub = cfg.model_copy(update={
            "strategy": method, "seed": ctx.seed, "budget": cfg.compare.budget,
            "compare": None, "output": cfg.output.model_copy(update={
                # every row's trackers in the comparison's folder, each named by its path
                "dir": str(run_dir), "tracking_dir": cfg.output.tracking_dir or str(ctx.out)})})
        # a folder without config.yaml holds only what a kill left mid-start: start over
        report = run(sub, show_progress=ctx.show_progress, session=ctx.session, overwrite=True,
                     **views)
    label = strategy_spec(method).label
    if ctx.session.pool.kind == "mixture":  # a token swarm: the particles are mixing weights
        label += " over mixing weights"
    row = {"name": label, "dev": report["best_dev"],
           "test": report["best_test"], "test_scores": report.get("best_test_scores"),
           "evaluations": report["evaluations"], "seconds": report["search_seconds"],
           "correctness_emergence": report["correctness_emergence"]}
    if report.get("weak_to_strong") is not None:
        row["weak_to_strong"] = report["weak_to_strong"]
    return [row]
