"""The end of a Heterogeneous Swarms run: test scores, baselines, correctness emergence, the
exported system, report.json / report.md and the utility curves."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import RunError
from ..io import atomic_write_text
from ..runs.report import plot_history
from ..runs.session import Session
from .baselines import baselines, row
from .export import export_system
from .search import HeteroSwarm
from .system import SystemScorer

log = logging.getLogger("modelswarms")


def final_report(run_dir: Path, cfg: RunConfig, session: Session, search: HeteroSwarm
                 ) -> dict[str, Any]:
    names, test = session.pool.names, session.test
    if search.best_dag is None:
        raise RunError(f"{run_dir}: the search evaluated no system (budget {cfg.budget} is "
                       f"below one round's {search.round_cost} systems)")
    ev = SystemScorer(session.scorer, cfg.hswarm, cfg.utility)
    singles = session.dev_utilities(session.experts)
    expert_test = session.score_many(session.experts, test) if test else None
    rows = [row(f"expert: {name}", u, expert_test[i].value if expert_test else None)
            for i, (name, u) in enumerate(zip(names, singles, strict=True))]
    rows += baselines(run_dir, cfg, session, ev, search, singles)
    best = ev.evaluate(search.best_dag, search.best_assignment, search.best_models, test) \
        if test else None
    rows.append(row(f"{search.label}: best system", search.best_util,
                     best.value if best else None, systems=search.evaluations))
    emergence = None
    if best is not None and expert_test is not None:
        emergence = sum(1 for j in range(len(test)) if best.scores[j] > 0
                        and all(t.scores[j] <= 0 for t in expert_test))
    meta = {"run": str(run_dir), "seed": str(cfg.seed), "dev_utility": f"{search.best_util:.4f}"}
    folder = export_system(session, search.best_dag, search.best_assignment, search.best_models,
                           run_dir / "system", meta)
    report = {
        "method": "hswarm", "utility": cfg.utility.type, "dataset": cfg.data_name,
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
        plot_history(search.history, run_dir / "utility_curves.png")
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
