"""The rows of `modelswarms compare`, one registry: a reference row (base, experts, votes,
ensembles, multi-LLM systems) is a function registered here; every merge method of merge/ and
every weight-space strategy of search/ is a row by its own registration, so a new merge or
strategy appears in compare without a line here. The system rows (a chain or star of the
experts, random DAGs, Heterogeneous Swarms with one of its two steps) are also the baselines
of a Heterogeneous Swarms report (runs/systems.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..hetero.graph import Dag, chain, decode, random_adjacency, star
from ..hetero.system import SystemScorer
from ..merge import MERGE_METHODS, merge_vectors
from ..merge.base import need_base
from ..search import HeteroSwarm, SearchStrategy, strategy_names, strategy_spec
from ..search.hswarm import prepare as prepare_hswarm
from ..stats import pack_scores
from .ensemble import majority_vote
from .session import Session

# runner.search_loop: (cfg, run_dir or None, session) -> (strategy, history)
SearchLoop = Callable[[RunConfig, Path | None, Session],
                      tuple[SearchStrategy, list[dict[str, Any]]]]


@dataclass
class RowContext:
    cfg: RunConfig
    session: Session
    out: Path | None    # the comparison's or run's folder (None: in memory)
    seed: int
    expert_dev: list[float]
    show_progress: bool = False
    view: Callable[..., Any] | None = None  # what a search row's loop reports to
    # The loop's two entries, given by the caller (the loop's module reaches this one):
    # search_loop for the searches of the role / weight-only rows, runner.run for search rows
    loop: SearchLoop | None = None
    run: Callable[..., dict[str, Any]] | None = None
    # where a row's searches run: searches/<method>[/seed_<n>] (None: in memory)
    searches: Path | None = None
    seed_dirs: bool = True
    systems: int | None = None  # random DAGs drawn (default: the comparison's budget)

    def search_dir(self, method: str) -> Path | None:
        if self.searches is None:
            return None
        folder = self.searches / method
        return folder / f"seed_{self.seed}" if self.seed_dirs else folder


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
                  cost: Callable[[int, float], float] = lambda n, r: 1 + r,
                  seeded: bool = False) -> Callable:
    def deco(fn: Callable[[RowContext], list[dict[str, Any]]]):
        REFERENCE_ROWS[name] = RowSpec(name, label, "reference", seeded, fn, cost)
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
    if not ctx.session.pool.scores_base:
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
    if (uniform := s.pool.uniform_ensemble(s.experts)) is not None:
        return [{"name": f"experts, uniform {s.pool.kind}", **_scores(s, uniform)}]
    # every log-likelihood scoring reads the averaged distribution; generation does not
    if not s.cfg.utility.log_likelihood:
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
    if not s.pool.adds_weights:
        raise ConfigError(f"a merge adds weights of one architecture; this pool is a "
                          f"{s.pool.kind} (experts.compose: {ctx.cfg.experts.compose})")
    base = None
    if MERGE_METHODS[method].needs_base:
        base = need_base(method, s.pool.base_vector(s.space, s.experts.device,
                                                    s.experts.dtype))
    assert ctx.cfg.compare is not None
    vec = merge_vectors(method, s.experts, base, s.space,
                        params=ctx.cfg.compare.merge_params.get(method), seed=ctx.seed)
    return [{"name": method, **_scores(s, vec)}]


def search_row(ctx: RowContext, method: str) -> list[dict[str, Any]]:
    """A search strategy at the comparison's budget, in its own resumable run folder."""
    cfg, run, run_dir = ctx.cfg, ctx.run, ctx.search_dir(method)
    # compare gives the runner and its folder
    assert cfg.compare is not None and run is not None and run_dir is not None
    assert ctx.out is not None
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
    if ctx.session.pool.coordinates:  # a token swarm: the particles are mixing weights
        label += f" over {ctx.session.pool.coordinates}"
    row = {"name": label, "dev": report["best_dev"],
           "test": report["best_test"], "test_scores": report.get("best_test_scores"),
           "evaluations": report["evaluations"], "seconds": report["search_seconds"],
           "correctness_emergence": report["correctness_emergence"]}
    if report.get("weak_to_strong") is not None:
        row["weak_to_strong"] = report["weak_to_strong"]
    return [row]


# Multi-LLM systems of the experts (hetero/). A Heterogeneous Swarms report shows the rows its
# `hswarm.baselines` name; its `best_expert` is the best expert as a one-node system.
BEST_SINGLE_SYSTEM = "best_single_system"


def system_row_name(baseline: str) -> str:
    """The row of an `hswarm.baselines` entry."""
    return BEST_SINGLE_SYSTEM if baseline == "best_expert" else baseline


def _systems_cfg(ctx: RowContext) -> RunConfig:
    """The config systems are built and scored with: the comparison's (its `hswarm:` knobs,
    else their defaults), at this row's seed."""
    cfg = ctx.cfg
    if ctx.cfg.compare is not None:  # the weight-step's particles are the experts
        cfg = cfg.model_copy(update={
            "search": cfg.search.model_copy(update={"particles": None}), "seed": ctx.seed,
            "budget": cfg.compare.budget, "compare": None})
    return prepare_hswarm(cfg)


def _system_row(ctx: RowContext, label: str, dag: Dag, assignment: list[int],
                models: torch.Tensor | None = None, dev: float | None = None,
                **extra: Any) -> list[dict[str, Any]]:
    """A system's row: dev (unless known), test and its per-item scores, graph, assignment."""
    cfg, s = _systems_cfg(ctx), ctx.session
    ev = SystemScorer(s.scorer, cfg.hswarm, cfg.utility)
    models = s.experts if models is None else models
    if dev is None:
        dev = ev.evaluate(dag, assignment, models, s.dev).value
    test = ev.evaluate(dag, assignment, models, s.test) if s.test else None
    return [{"name": label, "dev": dev, "test": test.value if test else None,
             "test_scores": pack_scores(test.scores) if test else None,
             "graph": dag.to_json(), "assignment": [s.pool.names[m] for m in assignment],
             **extra}]


def _best_single(ctx: RowContext) -> int:
    return max(range(len(ctx.expert_dev)), key=ctx.expert_dev.__getitem__)


@reference_row(BEST_SINGLE_SYSTEM, "best expert, as a one-node system", cost=lambda n, r: r)
def best_single_system_row(ctx: RowContext) -> list[dict[str, Any]]:
    best = _best_single(ctx)
    return _system_row(ctx, f"best single expert ({ctx.session.pool.names[best]})",
                       Dag(1, 0, ()), [best], dev=ctx.expert_dev[best])


@reference_row("chain", "chain of all experts", cost=lambda n, r: n * (1 + r))
def chain_row(ctx: RowContext) -> list[dict[str, Any]]:
    n = len(ctx.session.pool.names)
    return _system_row(ctx, "chain of all experts", chain(n), list(range(n)))


@reference_row("star", "star of all experts into the best", cost=lambda n, r: n * (1 + r))
def star_row(ctx: RowContext) -> list[dict[str, Any]]:
    names, best = ctx.session.pool.names, _best_single(ctx)
    return _system_row(ctx, f"star of all experts into {names[best]}", star(len(names), best),
                       list(range(len(names))))


@reference_row("random_dags", "best of random DAGs", seeded=True)
def random_dags_row(ctx: RowContext) -> list[dict[str, Any]]:
    """The best by dev of as many random graphs (experts on their own nodes) as the search
    evaluates systems."""
    cfg, s = _systems_cfg(ctx), ctx.session
    n = len(s.pool.names)
    count = ctx.systems if ctx.systems is not None else cfg.budget or 1
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    dags = [decode(a, "argmax") for a in random_adjacency(count, n, gen)]
    ev = SystemScorer(s.scorer, cfg.hswarm, cfg.utility)
    identity = list(range(n))
    utils = [ev.evaluate(d, identity, s.experts, s.dev).value for d in dags]
    i = max(range(len(dags)), key=utils.__getitem__)
    return _system_row(ctx, f"best of {len(dags)} random DAGs", dags[i], identity,
                       dev=utils[i], systems=len(dags))


def _one_step_row(ctx: RowContext, steps: str, key: str) -> list[dict[str, Any]]:
    """Heterogeneous Swarms with one of its steps, at the same budget and seed."""
    if ctx.loop is None:
        raise ConfigError(f"{key}: this row runs a search; compare or an hswarm run runs it")
    cfg = _systems_cfg(ctx)
    assert cfg.hswarm is not None
    sub = cfg.model_copy(update={
        "strategy": "hswarm",
        "hswarm": cfg.hswarm.model_copy(update={"steps": steps, "baselines": []})})
    folder = ctx.search_dir(key)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    s, _ = ctx.loop(sub, folder, ctx.session)
    assert isinstance(s, HeteroSwarm)
    system, dev = s.best()
    label = "role-step only (weights frozen)" if steps == "role" else \
        "weight-step only (chain graph)"
    return _system_row(ctx, label, system.dag, list(system.assignment), system.models,
                       dev=dev, systems=s.evaluations)


@reference_row("role_only", "Heterogeneous Swarms, role-step only", seeded=True)
def role_only_row(ctx: RowContext) -> list[dict[str, Any]]:
    return _one_step_row(ctx, "role", "role_only")


@reference_row("weight_only", "Heterogeneous Swarms, weight-step only", seeded=True)
def weight_only_row(ctx: RowContext) -> list[dict[str, Any]]:
    return _one_step_row(ctx, "weight", "weight_only")
