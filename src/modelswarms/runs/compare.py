"""`modelswarms compare`: every method a user weighs against Model Swarms, on one engine, one
utility and one evaluation budget, over several seeds, in one table.

One session (resident model, data, score cache) serves every row, so the experts are scored
once for all of them. Finished rows are appended to `results.jsonl` and searches run in their
own run folders, so a killed comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, dump_config, load_config
from ..errors import ConfigError, RunError
from ..merge import MERGE_METHODS, merge_vectors
from ..merge.base import base_vector, need_base
from ..search import STRATEGIES
from .checkpoint import atomic_write_text
from .ensemble import majority_vote
from .runner import logging_to, read_jsonl, run
from .session import Session

log = logging.getLogger("modelswarms")
REFERENCES = ("base", "experts", "best_expert", "expert_vote", "logit_average")
RANDOM_MERGES = ("dare_linear", "dare_ties")
LABELS = {"swarm": "Model Swarms", "cmaes": "CMA-ES", "random": "random search",
          "greedy_soup": "greedy soup", "best_expert": "best expert", "base": "base model",
          "expert_vote": "top-k experts, majority vote", "logit_average": "experts, logit average"}


def _check_methods(cfg: RunConfig) -> list[str]:
    assert cfg.compare is not None
    known = set(REFERENCES) | set(STRATEGIES) | set(MERGE_METHODS)
    for m in cfg.compare.methods:
        if m not in known:
            raise ConfigError(f"compare.methods: unknown method {m!r}; known: "
                              f"{', '.join(sorted(known))}")
    for m in cfg.compare.merge_params:
        if m not in MERGE_METHODS:
            raise ConfigError(f"compare.merge_params: {m!r} is not a merge method")
    return cfg.compare.methods


def compare(cfg: RunConfig | None = None, *, resume: str | Path | None = None,
            overwrite: bool = False, show_progress: bool = False) -> dict[str, Any]:
    if resume is not None:
        out = Path(resume)
        if not (out / "config.yaml").is_file():
            raise RunError(f"{out}: not a comparison folder (no config.yaml)")
        cfg = load_config(out / "config.yaml")
    else:
        assert cfg is not None
        out = Path(cfg.output.dir)
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise RunError(f"{out}: folder exists; resume it with `modelswarms compare "
                               f"--resume {out}`, or pass --overwrite")
            import shutil

            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_config(cfg))
    if cfg.compare is None:
        raise ConfigError("compare: the config has no `compare:` section")
    methods = _check_methods(cfg)
    with logging_to(out):
        return _compare(cfg, out, methods, show_progress)


def _compare(cfg: RunConfig, out: Path, methods: list[str], show_progress: bool):
    session = Session.open(cfg)
    results_path = out / "results.jsonl"
    # a torn last line (a kill mid-write) is dropped: that row runs again
    done = {(rec["method"], rec["seed"]): rec for rec in read_jsonl(results_path)}
    lines = [json.dumps(r) for r in done.values()]
    atomic_write_text(results_path, "".join(x + "\n" for x in lines))

    def record(rec: dict[str, Any]) -> None:
        done[(rec["method"], rec["seed"])] = rec
        with open(results_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    expert_dev = [r.value for r in session.score_many(session.experts, session.dev)]
    for method in methods:
        seeds = cfg.compare.seeds if (method in STRATEGIES or method in RANDOM_MERGES) else [0]
        for seed in seeds:
            if (method, seed) in done:
                continue
            start = time.perf_counter()
            before = session.evaluations
            try:
                rows = _method_rows(cfg, session, out, method, seed, expert_dev, show_progress)
            except ConfigError as err:  # e.g. slerp with more than two experts
                log.warning("compare: %s skipped: %s", method, err)
                rows = [{"name": LABELS.get(method, method), "skipped": str(err)}]
            for row in rows:
                row.setdefault("evaluations", session.evaluations - before)
                row.setdefault("seconds", round(time.perf_counter() - start, 2))
            record({"method": method, "seed": seed, "rows": rows})
            log.info("compare: %s seed %d done", method, seed)
    report = _table(cfg, methods, done)
    atomic_write_text(out / "compare.json", json.dumps(report, indent=2))
    atomic_write_text(out / "compare.md", render_markdown(report))
    plot(report, out / "compare.png")
    return report


def _scores(session: Session, vec: torch.Tensor | None) -> tuple[float, float | None]:
    dev = session.score(vec, session.dev).value
    test = session.score(vec, session.test).value if session.test else None
    return dev, test


def _method_rows(cfg: RunConfig, session: Session, out: Path, method: str, seed: int,
                 expert_dev: list[float], show_progress: bool) -> list[dict[str, Any]]:
    names = session.pool.names
    if method == "base":
        if session.pool.kind != "lora":
            raise ConfigError("the base model row needs a LoRA pool")
        dev, test = _scores(session, None)
        return [{"name": "base model", "dev": dev, "test": test}]
    if method == "experts":
        return [{"name": f"expert: {n}", "dev": d,
                 "test": session.score(session.experts[i], session.test).value
                 if session.test else None}
                for i, (n, d) in enumerate(zip(names, expert_dev, strict=True))]
    if method == "best_expert":
        i = max(range(len(names)), key=lambda j: expert_dev[j])
        dev, test = _scores(session, session.experts[i])
        return [{"name": f"best expert ({names[i]})", "dev": dev, "test": test}]
    if method == "expert_vote":
        k = min(cfg.output.top_k, len(names))
        top = sorted(range(len(names)), key=lambda j: -expert_dev[j])[:k]
        row = {"name": f"top-{k} experts, majority vote"}
        for split, items in (("dev", session.dev), ("test", session.test)):
            if items:
                voters = [session.score(session.experts[j], items) for j in top]
                row[split] = majority_vote(voters, [expert_dev[j] for j in top]).value
        return [row]
    if method == "logit_average":
        return [{"name": "experts, logit average", **_logit_average(session)}]
    if method in MERGE_METHODS:
        spec = MERGE_METHODS[method]
        base = None
        if spec.needs_base:
            base = need_base(method, base_vector(session.pool, session.space,
                                                 session.experts.device,
                                                 session.experts.dtype))
        vec = merge_vectors(method, session.experts, base, session.space,
                            params=cfg.compare.merge_params.get(method), seed=seed)
        dev, test = _scores(session, vec)
        return [{"name": method, "dev": dev, "test": test}]
    # a search strategy, in its own resumable run folder
    run_dir = out / "runs" / method / f"seed_{seed}"
    if (run_dir / "config.yaml").exists():
        report = run(resume=run_dir, show_progress=show_progress, session=session)
    else:
        sub = cfg.model_copy(update={
            "strategy": method, "seed": seed, "budget": cfg.compare.budget, "compare": None,
            "output": cfg.output.model_copy(update={"dir": str(run_dir)})})
        # a folder without config.yaml holds only what a kill left mid-start: start over
        report = run(sub, show_progress=show_progress, session=session, overwrite=True)
    return [{"name": LABELS[method], "dev": report["best_dev"], "test": report["best_test"],
             "evaluations": report["evaluations"], "seconds": report["search_seconds"],
             "correctness_emergence": report["correctness_emergence"]}]


def _logit_average(session: Session) -> dict[str, float | None]:
    from ..evaluation.multiplex import LogitAverage, ParticleBatch

    if session.pool.kind != "lora":
        raise ConfigError("logit averaging runs the experts side by side: LoRA pools only")
    if not (session.cfg.utility.type == "multiple_choice"
            and session.cfg.utility.scoring == "loglik"):
        raise ConfigError("logit averaging needs the log-likelihood multiple_choice utility")
    n = len(session.pool.names)
    batch = ParticleBatch(session.backend, n)
    batch.load(session.experts)
    result: dict[str, float | None] = {"test": None}
    with batch.active(n) as model:
        ensemble = LogitAverage(model, n)
        for split, items in (("dev", session.dev), ("test", session.test)):
            if items:
                result[split] = session.utility.score(ensemble, session.backend.tokenizer,
                                                      items).value
    return result


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _table(cfg: RunConfig, methods: list[str], done: dict) -> dict[str, Any]:
    rows = []
    for method in methods:
        recs = [r for (m, _), r in sorted(done.items()) if m == method]
        by_name: dict[str, list[dict[str, Any]]] = {}
        for rec in recs:
            for row in rec["rows"]:
                by_name.setdefault(row["name"], []).append(row)
        for name, runs in by_name.items():
            if "skipped" in runs[0]:
                rows.append({"method": method, "name": name, "skipped": runs[0]["skipped"]})
                continue
            row = {"method": method, "name": name, "seeds": len(runs),
                   "evaluations": statistics.fmean(r["evaluations"] for r in runs),
                   "seconds": statistics.fmean(r["seconds"] for r in runs)}
            for split in ("dev", "test"):
                values = [r[split] for r in runs if r.get(split) is not None]
                row[split] = values
                row[f"{split}_mean"], row[f"{split}_std"] = _stats(values) if values else \
                    (None, None)
            if runs[0].get("correctness_emergence") is not None:
                row["correctness_emergence"] = [r["correctness_emergence"] for r in runs]
            rows.append(row)
    return {"utility": cfg.utility.type, "dataset": cfg.data.name,
            "budget": cfg.compare.budget, "seeds": cfg.compare.seeds, "rows": rows}


def _pm(row: dict[str, Any], split: str) -> str:
    mean = row.get(f"{split}_mean")
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {row[f'{split}_std']:.4f}" if row["seeds"] > 1 else "")


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Comparison: `{report['utility']}` on `{report['dataset']}`", "",
             f"Searches get {report['budget']} utility evaluations each; seeds "
             f"{report['seeds']} (mean ± standard deviation where a row has several).", "",
             "| method | dev | test | evaluations | seconds |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['name']} | skipped: {row['skipped']} | | | |")
        else:
            lines.append(f"| {row['name']} | {_pm(row, 'dev')} | {_pm(row, 'test')} | "
                         f"{row['evaluations']:.0f} | {row['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "skipped" not in r and r.get("test_mean") is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    ys = range(len(rows))
    ax.barh(ys, [r["test_mean"] for r in rows], xerr=[r["test_std"] for r in rows],
            color="#4c72b0", label="test")
    ax.scatter([r["dev_mean"] for r in rows], ys, color="#dd8452", zorder=3, label="dev")
    ax.set_yticks(list(ys), [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{report['utility']} utility")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
