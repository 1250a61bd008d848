"""`modelswarms hswarm`: a Heterogeneous Swarms run in a run folder like a swarm run's.

The folder holds config.yaml, an atomic checkpoint after every round, history.jsonl (one line a
round), baselines.jsonl (each finished baseline row, so a killed run does not redo them),
report.json / report.md / utility_curves.png, and system/: the best system, exported.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..config import HSwarmConfig, RunConfig, load_config
from ..errors import ConfigError, RunError
from ..runs.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from ..runs.progress import Progress
from ..runs.report import plot_history
from ..runs.runner import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    logging_to,
    prepare_run_dir,
    read_jsonl,
    remove_torn_writes,
)
from ..runs.session import Session
from .export import export_system
from .graph import Dag, chain, decode, random_adjacency, star
from .search import HeteroSwarm
from .system import SystemEvaluator

log = logging.getLogger("modelswarms")
BASELINES = "baselines.jsonl"


def hswarm(cfg: RunConfig | None = None, *, resume: str | Path | None = None,
           overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) Heterogeneous Swarms and return its report."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG).is_file():
            raise RunError(f"{run_dir}: not a run folder (no {CONFIG})")
        cfg = load_config(run_dir / CONFIG)
    else:
        assert cfg is not None
        if cfg.hswarm is None:  # the defaults of every hswarm knob
            cfg = cfg.model_copy(update={"hswarm": HSwarmConfig()})
        run_dir = prepare_run_dir(cfg, overwrite)
    if len(cfg.experts.paths) < 2:
        raise ConfigError("hswarm: a multi-LLM system needs at least 2 experts")
    with logging_to(run_dir):
        remove_torn_writes(run_dir)
        session = Session.open(cfg, need_test=cfg.output.evaluate_test)
        evaluator = SystemEvaluator(session, cfg.hswarm)
        search = search_in(run_dir, cfg, evaluator, show_progress)
        return _report(run_dir, cfg, session, evaluator, search, show_progress)


def search_in(run_dir: Path, cfg: RunConfig, evaluator: SystemEvaluator,
              show_progress: bool = False) -> HeteroSwarm:
    """The search loop, checkpointed after every round; resumes from the folder's checkpoint."""
    session = evaluator.session
    search = HeteroSwarm(session.experts, cfg)
    ckpt, wall, history = run_dir / CHECKPOINT, 0.0, []
    if ckpt.exists():
        tensors, meta = load_checkpoint(ckpt)
        search.load_state_dict(tensors, meta["search"])
        wall = meta["wall_time"]
        history = [r for r in read_jsonl(run_dir / HISTORY) if r["round"] <= search.round]
        log.info("resumed at round %d (%d systems evaluated)", search.round, search.evaluations)
    atomic_write_text(run_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in history))
    log.info("%s: %d experts, steps %s, %d graphs x %d trials a round; device %s",
             search.label, search.n, cfg.hswarm.steps, cfg.hswarm.graphs, cfg.hswarm.trials,
             session.backend.device)

    def evaluate(dag: Dag, assignment: list[int], models: torch.Tensor) -> float:
        return evaluator.evaluate(dag, assignment, models, session.dev).value

    with Progress(cfg.hswarm.max_rounds, search.label, enabled=show_progress) as progress:
        for rec in history:
            progress.update(_progress_view(rec))
        while not search.done:
            start = time.perf_counter()
            rec = search.run_round(evaluate)
            elapsed = time.perf_counter() - start
            wall += elapsed
            rec.update(seconds=round(elapsed, 4), wall_time=round(wall, 4))
            with open(run_dir / HISTORY, "a") as f:
                f.write(json.dumps(rec) + "\n")
            tensors, meta = search.state_dict()
            save_checkpoint(ckpt, tensors, {"search": meta, "wall_time": wall})
            history.append(rec)
            progress.update(_progress_view(rec))
            log.info("round %d: best system %.4f, %d systems evaluated (%.2f s)",
                     search.round, search.best_util, search.evaluations, elapsed)
    search.history = history
    return search


def _progress_view(rec: dict[str, Any]) -> dict[str, Any]:
    utilities = rec.get("graph_utilities", []) + rec.get("trial_utilities", [])
    return {"iteration": rec["round"], "utilities": utilities, "global_best": rec["best"],
            "evaluations": rec["evaluations"], "seconds": rec["seconds"],
            "wall_time": rec["wall_time"]}


def _row(name: str, dev: float | None, test: float | None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "dev": dev, "test": test, **extra}


def _baselines(run_dir: Path, cfg: RunConfig, session: Session, ev: SystemEvaluator,
               search: HeteroSwarm, singles: list[float]) -> list[dict[str, Any]]:
    """The rows a user weighs the search against, each recorded in baselines.jsonl once done
    (a resumed run does not redo them)."""
    assert cfg.hswarm is not None
    records = read_jsonl(run_dir / BASELINES)
    # rewritten whole: a line torn by a kill must not swallow the next record appended
    atomic_write_text(run_dir / BASELINES, "".join(json.dumps(r) + "\n" for r in records))
    done = {r["key"]: r for r in records}
    names, n, x0 = session.pool.names, len(session.pool.names), session.experts
    identity = list(range(n))
    best_single = max(range(n), key=singles.__getitem__)
    rows = []
    for key in cfg.hswarm.baselines:
        if key in done:
            rows.append(done[key])
            continue
        extra: dict[str, Any] = {}
        dev = None
        models = x0
        if key == "best_expert":
            label, dag, assignment = (f"best single expert ({names[best_single]})",
                                      Dag(1, 0, ()), [best_single])
            dev = singles[best_single]
        elif key == "chain":
            label, dag, assignment = "chain of all experts", chain(n), identity
        elif key == "star":
            label, dag, assignment = (f"star of all experts into {names[best_single]}",
                                      star(n, best_single), identity)
        elif key == "random_dags":
            # as many random graphs as the search evaluated systems, experts on own nodes
            gen = torch.Generator().manual_seed(cfg.seed + 3)
            dags = [decode(a, "argmax") for a in
                    random_adjacency(max(search.evaluations, 1), n, gen)]
            utils = [ev.evaluate(d, identity, x0, session.dev).value for d in dags]
            i = max(range(len(dags)), key=utils.__getitem__)
            label, dag, assignment, dev = (f"best of {len(dags)} random DAGs", dags[i],
                                           identity, utils[i])
            extra["systems"] = len(dags)
        else:  # a whole search with one of the two steps, same budget and seed
            steps = "role" if key == "role_only" else "weight"
            sub = cfg.model_copy(update={
                "hswarm": cfg.hswarm.model_copy(update={"steps": steps, "baselines": []})})
            folder = run_dir / "baselines" / key
            folder.mkdir(parents=True, exist_ok=True)
            s = search_in(folder, sub, ev)
            assert s.best_dag is not None
            label = "role-step only (weights frozen)" if steps == "role" else \
                "weight-step only (chain graph)"
            dag, assignment, models, dev = s.best_dag, s.best_assignment, s.best_models, \
                s.best_util
            extra["systems"] = s.evaluations
        if dev is None:
            dev = ev.evaluate(dag, assignment, models, session.dev).value
        test = ev.evaluate(dag, assignment, models, session.test).value if session.test \
            else None
        done[key] = {"key": key, **_row(label, dev, test, graph=dag.to_json(),
                                        assignment=[names[m] for m in assignment], **extra)}
        with open(run_dir / BASELINES, "a") as f:
            f.write(json.dumps(done[key]) + "\n")
        rows.append(done[key])
    return rows


def _report(run_dir: Path, cfg: RunConfig, session: Session, ev: SystemEvaluator,
            search: HeteroSwarm, show_progress: bool) -> dict[str, Any]:
    names, test = session.pool.names, session.test
    if search.best_dag is None:
        raise RunError(f"{run_dir}: the search evaluated no system (budget {cfg.budget} is "
                       f"below one round's {search.round_cost} systems)")
    singles = session.dev_utilities(session.experts)
    expert_test = session.score_many(session.experts, test) if test else None
    rows = [_row(f"expert: {name}", u, expert_test[i].value if expert_test else None)
            for i, (name, u) in enumerate(zip(names, singles, strict=True))]
    rows += _baselines(run_dir, cfg, session, ev, search, singles)
    best = ev.evaluate(search.best_dag, search.best_assignment, search.best_models, test) \
        if test else None
    rows.append(_row(f"{search.label}: best system", search.best_util,
                     best.value if best else None, systems=search.evaluations))
    emergence = None
    if best is not None and expert_test is not None:
        emergence = sum(1 for j in range(len(test)) if best.scores[j] > 0
                        and all(t.scores[j] <= 0 for t in expert_test))
    meta = {"run": str(run_dir), "seed": str(cfg.seed), "dev_utility": f"{search.best_util:.4f}"}
    folder = export_system(session, search.best_dag, search.best_assignment, search.best_models,
                           run_dir / "system", meta)
    report = {
        "method": "hswarm", "utility": cfg.utility.type, "dataset": cfg.data.name,
        "dev_items": len(session.dev), "test_items": len(test) if test else 0,
        "experts": len(names), "rounds": search.round, "systems": search.evaluations,
        "search_seconds": search.history[-1]["wall_time"] if search.history else 0.0,
        "best_dev": search.best_util, "best_test": best.value if best else None,
        "graph": search.best_dag.to_json(),
        "assignment": [names[m] for m in search.best_assignment],
        "correctness_emergence": emergence, "rows": rows, "export": str(folder),
        "events": dict(sorted(session.counts.items())),
    }
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    atomic_write_text(run_dir / "report.md", render_markdown(report))
    if search.history:
        plot_history([{"iteration": r["round"], "utilities": _progress_view(r)["utilities"],
                       "global_best": r["best"]} for r in search.history],
                     run_dir / "utility_curves.png")
    log.info("done: best system dev %.4f; exported to %s", search.best_util, folder)
    return report


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    g = report["graph"]
    names = [f"node {i} ({m})" for i, m in enumerate(report["assignment"])]
    edges = ", ".join(f"{names[a]} -> {names[b]}" for a, b in g["edges"]) or "(one node)"
    lines = ["# Heterogeneous Swarms run", "",
             f"{report['experts']} experts, {report['dataset']} ({report['dev_items']} dev / "
             f"{report['test_items']} test items), utility {report['utility']}; "
             f"{report['rounds']} rounds, {report['systems']} systems evaluated in "
             f"{report['search_seconds']:.0f} s.", "",
             "| system | dev | test |", "|---|---|---|"]
    lines += [f"| {r['name']} | {_fmt(r['dev'])} | {_fmt(r['test'])} |" for r in report["rows"]]
    lines += ["", f"Best system: end {names[g['end']]}; edges {edges}."]
    if report["correctness_emergence"] is not None:
        lines += ["", f"Correctness emergence: {report['correctness_emergence']} test items "
                  "every single expert got wrong are right in the best system."]
    lines += ["", f"Exported to `{report['export']}` (experts/, graph.json, graph.png, "
              "answer.py).", ""]
    return "\n".join(lines)
