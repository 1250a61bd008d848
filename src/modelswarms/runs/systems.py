"""Multi-LLM systems as the loop's candidates (Heterogeneous Swarms): scored on dev node by
node (hetero/system.py), and at the end of a search the report: every expert, the baselines
of `hswarm.baselines` (compare rows of runs/rows.py, each recorded in baselines.jsonl once
done, so a killed run does not redo it), the best system's test score and correctness
emergence; in a run folder also report.json / report.md / utility_curves.png and system/, the
best system exported (hetero/export.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import RunError
from ..evaluation.objectives.utilities import ItemScores
from ..hetero.export import export_system
from ..hetero.system import System, SystemScorer
from ..io import atomic_write_text, read_jsonl
from ..search import HeteroSwarm
from .report import plot_history
from .rows import RowContext, SearchLoop, row_spec, system_row_name
from .session import Session

log = logging.getLogger("modelswarms")
BASELINES = "baselines.jsonl"


def row(name: str, dev: float | None, test: float | None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "dev": dev, "test": test, **extra}


class Systems:
    """The candidate kind of Heterogeneous Swarms (runs/candidates.py)."""

    fewer_items = False  # a system's utility comes from several nodes' answers

    def scorer(self, session: Session, cfg: RunConfig) -> Callable[[list[System]], list[float]]:
        systems = SystemScorer(session.scorer, cfg.hswarm, cfg.utility)
        return lambda candidates: systems.utilities(candidates, session.dev)

    def score(self, session: Session, system: System, items: list[dict]) -> ItemScores:
        ev = SystemScorer(session.scorer, session.cfg.hswarm, session.cfg.utility)
        return ev.evaluate(system.dag, system.assignment, system.models, items)

    def save(self, session: Session, system: System, folder: Path, meta: dict[str, str]
             ) -> Path:
        return export_system(system, session.pool.names, session.pool.base_model, session.cfg,
                             session.export, Path(folder), meta)

    def report(self, session: Session, search: HeteroSwarm, history: list[dict[str, Any]],
               run_dir: Path | None, loop: SearchLoop) -> dict[str, Any]:
        return final_report(run_dir, session.cfg, session, search, history, loop)


def baselines(run_dir: Path | None, cfg: RunConfig, session: Session, search: HeteroSwarm,
              singles: list[float], loop: SearchLoop) -> list[dict[str, Any]]:
    """The rows a user weighs the search against; in a run folder each is recorded in
    baselines.jsonl once done (a resumed run does not redo them)."""
    assert cfg.hswarm is not None
    done: dict[str, dict[str, Any]] = {}
    if run_dir is not None:
        records = read_jsonl(run_dir / BASELINES)
        # rewritten whole: a line torn by a kill must not swallow the next record appended
        atomic_write_text(run_dir / BASELINES, "".join(json.dumps(r) + "\n" for r in records))
        done = {r["key"]: r for r in records}
    # the compare rows of the same name, at this search's seed, budget and system count
    ctx = RowContext(cfg, session, run_dir, cfg.seed, singles, loop=loop,
                     searches=None if run_dir is None else run_dir / "baselines",
                     seed_dirs=False, systems=max(search.evaluations, 1))
    rows = []
    for key in cfg.hswarm.baselines:
        if key not in done:
            (found,) = row_spec(system_row_name(key)).rows(ctx)
            found.pop("test_scores", None)
            done[key] = {"key": key, **found}
            if run_dir is not None:
                with open(run_dir / BASELINES, "a") as f:
                    f.write(json.dumps(done[key]) + "\n")
        rows.append(done[key])
    return rows


def final_report(run_dir: Path | None, cfg: RunConfig, session: Session, search: HeteroSwarm,
                 history: list[dict[str, Any]], loop: SearchLoop) -> dict[str, Any]:
    names, test = session.pool.names, session.test
    if search.best_dag is None:
        raise RunError(f"{run_dir or 'hswarm'}: the search evaluated no system (budget "
                       f"{cfg.budget} is below one round's {search.round_cost} systems)")
    ev = SystemScorer(session.scorer, cfg.hswarm, cfg.utility)
    singles = session.dev_utilities(session.experts)
    expert_test = session.score_many(session.experts, test) if test else None
    rows = [row(f"expert: {name}", u, expert_test[i].value if expert_test else None)
            for i, (name, u) in enumerate(zip(names, singles, strict=True))]
    rows += baselines(run_dir, cfg, session, search, singles, loop)
    system, best_dev = search.best()
    best = ev.evaluate(system.dag, system.assignment, system.models, test) if test else None
    rows.append(row(f"{search.label}: best system", best_dev,
                    best.value if best else None, systems=search.evaluations))
    emergence = None
    if best is not None and expert_test is not None:
        emergence = sum(1 for j in range(len(test)) if best.scores[j] > 0
                        and all(t.scores[j] <= 0 for t in expert_test))
    report = {
        "method": "hswarm", "utility": cfg.utility.type, "dataset": cfg.data_name,
        "dev_items": len(session.dev), "test_items": len(test) if test else 0,
        "experts": len(names), "rounds": search.round, "systems": search.evaluations,
        "search_seconds": history[-1]["wall_time"] if history else 0.0,
        "best_dev": best_dev, "best_test": best.value if best else None,
        "graph": system.dag.to_json(),
        "assignment": [names[m] for m in system.assignment],
        "correctness_emergence": emergence, "rows": rows, "export": None,
        "events": dict(sorted(session.counts.items())),
    }
    if run_dir is None:  # in memory: nothing written
        return report
    meta = {"run": str(run_dir), "seed": str(cfg.seed), "dev_utility": f"{best_dev:.4f}"}
    report["export"] = str(Systems().save(session, system, run_dir / "system", meta))
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    atomic_write_text(run_dir / "report.md", render_markdown(report))
    if history:
        plot_history(history, run_dir / "utility_curves.png")
    log.info("done: best system dev %.4f; exported to %s", best_dev, report["export"])
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
