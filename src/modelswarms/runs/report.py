"""End of a run: test scores beside the base model and every expert, the top-k ensemble,
correctness emergence, exports, and report.json / report.md / a plot of the utility curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..io import atomic_write_text
from ..merge.mergekit import coefficients_config
from ..search import SearchStrategy
from ..stats import pack_scores, paired_bootstrap, weak_to_strong
from .ensemble import majority_vote
from .session import Session


def _row(name: str, dev: float | None, test: float | None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "dev": dev, "test": test, **extra}


def final_report(session: Session, search: SearchStrategy, history: list[dict[str, Any]],
                 run_dir: Path) -> dict[str, Any]:
    """Export the global best and the top-k to `run_dir`, then write report.json,
    report.md and the utility curves there."""
    cfg = session.cfg
    best_vec, best_dev = search.best()
    top = search.top(cfg.output.top_k)
    exports = {"best": str(run_dir / "best"), "top": []}
    meta = {"run": str(run_dir), "seed": str(cfg.seed), "strategy": cfg.strategy}
    session.export(best_vec, run_dir / "best",
                   {**meta, "particle": "global best", "dev_utility": repr(best_dev)})
    for rank, (vec, util) in enumerate(top, 1):
        folder = run_dir / "top" / f"rank_{rank}"
        session.export(vec, folder, {**meta, "particle": f"rank {rank}",
                                     "dev_utility": repr(util)})
        exports["top"].append(str(folder))
    report = summarize(session, search, history)
    if (mk := _mergekit_config(session, report)) is not None:
        path = run_dir / "best" / "mergekit.yaml"
        atomic_write_text(path, yaml.safe_dump(mk, sort_keys=False))
        exports["mergekit"] = str(path)
    report["exports"] = exports
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    atomic_write_text(run_dir / "report.md", render_markdown(report))
    plot_history(history, run_dir / "utility_curves.png")
    return report


def _mergekit_config(session: Session, report: dict[str, Any]) -> dict[str, Any] | None:
    """mergekit's config of the best, where mergekit computes the same point: coefficients
    over full models whose every tensor is searched (merge/mergekit.py)."""
    coef = report.get("best_coefficients")
    pool, space = session.pool, session.space
    if coef is None or not pool.mergekit or len(space.slots) != len(pool.tensor_names):
        return None
    return coefficients_config([str(e.path) for e in pool.experts], coef)


def summarize(session: Session, search: SearchStrategy, history: list[dict[str, Any]]
              ) -> dict[str, Any]:
    """The report of a finished search, computed in memory: dev and test scores beside the
    base model and every expert, the top-k vote, intervals, emergence, weak-to-strong."""
    cfg = session.cfg
    best_vec, best_dev = search.best()
    top = search.top(cfg.output.top_k)
    k = len(top)
    names = session.pool.names
    if getattr(search, "starts_at_experts", False):  # iteration 0 scored the experts first
        initial = history[0]["utilities"][: len(names)]
    else:
        initial = [r.value for r in session.score_many(session.experts, session.dev)]
    rows = []
    test = session.test
    expert_test = []
    if session.pool.scores_base:
        base_dev = session.score(None, session.dev).value
        base_test = session.score(None, test).value if test else None
        rows.append(_row("base model", base_dev, base_test))
    for i, name in enumerate(names):
        t = session.score(session.experts[i], test) if test else None
        expert_test.append(t)
        rows.append(_row(f"expert: {name}", initial[i], t.value if t else None))
    best_expert = max(range(len(names)), key=lambda i: initial[i])
    rows.append(_row(f"best expert ({names[best_expert]})", initial[best_expert],
                     expert_test[best_expert].value if test else None))
    best_test = session.score(best_vec, test) if test else None
    rows.append(_row(f"{search.label}: global best", best_dev,
                     best_test.value if best_test else None))
    emergence = None
    if test:
        if k > 1:
            voters = [session.score(vec, test) for vec, _ in top]
            vote = majority_vote(voters, [u for _, u in top])
            rows.append(_row(f"{search.label}: top-{k} majority vote", None, vote.value))
        emergence = sum(
            1 for j in range(len(test))
            if best_test.scores[j] > 0 and all(t.scores[j] <= 0 for t in expert_test)
        )
    gains = {}
    if test:
        # how sure the gain is: a paired bootstrap over the same test items
        refs = {"best expert": expert_test[best_expert].scores}
        if session.pool.scores_base:
            refs["base model"] = session.score(None, test).scores
        gains = {name: paired_bootstrap(best_test.scores, ref, seed=cfg.seed)
                 for name, ref in refs.items()}
    w2s = None
    if hasattr(search, "top_indices"):  # a population that started as the experts
        w2s = weak_to_strong(search.top_indices(cfg.output.top_k), [u for _, u in top],
                             names, initial)
    report = {
        "utility": cfg.utility.type, "dataset": cfg.data_name,
        "dev_items": len(session.dev), "test_items": len(test) if test else 0,
        "strategy": cfg.strategy, "experts": len(names),
        "particles": getattr(search, "n", None), "iterations": search.iteration,
        "evaluations": search.evaluations, "search_seconds": history[-1]["wall_time"],
        "best_dev": best_dev, "best_test": best_test.value if best_test else None,
        "correctness_emergence": emergence, "weak_to_strong": w2s, "test_gains": gains,
        # per test item, so a comparison can put intervals on differences (stats.py)
        "best_test_scores": pack_scores(best_test.scores) if best_test else None,
        "rows": rows, "events": dict(sorted(session.counts.items())),
    }
    if (estimate := getattr(search, "estimate", None)) is not None:
        report["estimate"] = estimate  # runs/estimate.py: the search saw estimates
    if hasattr(search, "best_coefficients"):  # searches in a space of merge coefficients
        report["best_coefficients"] = search.best_coefficients()
    return report


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Model Swarms run", "",
        f"Utility `{report['utility']}` on `{report['dataset']}` "
        f"({report['dev_items']} dev / {report['test_items']} test items). "
        f"Strategy `{report['strategy']}`, {report['experts']} experts, "
        + (f"{report['particles']} particles, " if report["particles"] else "")
        + f"{report['iterations']} iterations, {report['evaluations']} evaluations, "
        f"{report['search_seconds']:.1f} s of search.", "",
        "| model | dev | test |", "| --- | ---: | ---: |",
    ]
    lines += [f"| {r['name']} | {_fmt(r['dev'])} | {_fmt(r['test'])} |" for r in report["rows"]]
    if (e := report.get("estimate")) is not None:
        lines += ["", f"Fitness estimated from {e['items']} of {e['dev_items']} dev items "
                  f"(`{e['method']}`, chosen from the per-item scores of {e['fitted_on']} "
                  f"candidates scored on full dev): {e['item_evaluations']} item-evaluations "
                  f"in all, as many as {e['item_evaluations'] / e['dev_items']:.1f} full-dev "
                  f"evaluations. The global best and top-k were re-scored on full dev "
                  f"(the best's estimate was {e['estimated_best']:.4f})."]
    for ref, g in (report.get("test_gains") or {}).items():
        lines += ["", f"Test gain of the global best over the {ref}: {g['mean']:+.4f}, 95% "
                  f"interval [{g['low']:+.4f}, {g['high']:+.4f}] (paired bootstrap over the "
                  f"{g['n']} test items): {g['verdict']}."]
    if report["correctness_emergence"] is not None:
        lines += ["", f"Correctness emergence: {report['correctness_emergence']} test items that "
                  "every initial expert got wrong are right in the global best."]
    if report.get("weak_to_strong"):
        lines += ["", "Weak-to-strong: the top personal bests at the end, the expert each "
                  "started as and that expert's dev rank among the experts (1 = best):", "",
                  "| final rank | dev | started as | start rank |",
                  "| ---: | ---: | --- | ---: |"]
        lines += [f"| {w['final_rank']} | {_fmt(w['dev'])} | {w['started_as']} | "
                  f"{'-' if w['start_rank'] is None else w['start_rank']} |"
                  for w in report["weak_to_strong"]]
    if report.get("events"):
        lines += ["", "Events: " + ", ".join(f"{k} {v}" for k, v in report["events"].items())
                  + " (cache hits cost no forward pass; judge failures follow "
                  "`judge.on_failure`)."]
    if report.get("exports"):
        lines += ["", f"Global best exported to `{report['exports']['best']}`; top-k personal "
                  f"bests to `{Path(report['exports']['best']).parent / 'top'}`."]
    lines.append("")
    return "\n".join(lines)


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r["iteration"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    if len({len(r["utilities"]) for r in history}) == 1:  # one line per particle
        for series in zip(*[r["utilities"] for r in history], strict=True):
            ax.plot(its, series, color="0.8", linewidth=0.8)
    else:  # candidates change every round: show them as points
        for it, r in zip(its, history, strict=True):
            ax.scatter([it] * len(r["utilities"]), r["utilities"], color="0.7", s=6)
    ax.plot(its, [sum(r["utilities"]) / len(r["utilities"]) for r in history], label="mean")
    ax.plot(its, [r["global_best"] for r in history], label="global best", linewidth=2)
    if all("global_worst" in r for r in history):
        ax.plot(its, [r["global_worst"] for r in history], label="global worst",
                linestyle="--")
    ax.set_xlabel("iteration")
    ax.set_ylabel("dev utility")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
