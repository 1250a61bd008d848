"""`modelswarms compare`: every method a user weighs against Model Swarms, on one engine, one
utility and one evaluation budget, over several seeds, in one table.

One session (resident model, data, score cache) serves every row, so the experts are scored
once for all of them. Finished rows are appended to `results.jsonl` and searches run in their
own run folders, so a killed comparison resumes where it stopped.

Each row keeps its per-item test scores (`test_scores`, packed by `stats.pack_scores`), so a
search's test gain over the best expert and the best merge (both chosen by dev, never by
test) gets a paired bootstrap interval over the test items, per seed and seed-averaged.
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
from .stats import pack_scores, paired_bootstrap, seed_averaged_gain, unpack_scores

log = logging.getLogger("modelswarms")
REFERENCES = ("base", "experts", "best_expert", "expert_vote", "logit_average")
RANDOM_MERGES = ("dare_linear", "dare_ties")
LABELS = {"swarm": "Model Swarms", "cmaes": "CMA-ES", "random": "random search",
          "greedy_soup": "greedy soup", "best_expert": "best expert", "base": "base model",
          "expert_vote": "top-k experts, majority vote", "logit_average": "experts, logit average"}
LEVEL, RESAMPLES, BOOTSTRAP_SEED = 0.95, 10000, 0
REFERENCE_LABELS = {"best_expert": "best expert", "best_merge": "best merge"}


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
    items = {"dev": len(session.dev), "test": len(session.test) if session.test else 0}
    report = _table(cfg, methods, done, items)
    atomic_write_text(out / "compare.json", json.dumps(report, indent=2))
    atomic_write_text(out / "compare.md", render_markdown(report))
    plot(report, out / "compare.png")
    return report


def _test(session: Session, vec: torch.Tensor | None) -> dict[str, Any]:
    if not session.test:
        return {"test": None}
    result = session.score(vec, session.test)
    return {"test": result.value, "test_scores": pack_scores(result.scores)}


def _scores(session: Session, vec: torch.Tensor | None) -> dict[str, Any]:
    return {"dev": session.score(vec, session.dev).value, **_test(session, vec)}


def _method_rows(cfg: RunConfig, session: Session, out: Path, method: str, seed: int,
                 expert_dev: list[float], show_progress: bool) -> list[dict[str, Any]]:
    names = session.pool.names
    if method == "base":
        if session.pool.kind != "lora":
            raise ConfigError("the base model row needs a LoRA pool")
        return [{"name": "base model", **_scores(session, None)}]
    if method == "experts":
        return [{"name": f"expert: {n}", "dev": d, **_test(session, session.experts[i])}
                for i, (n, d) in enumerate(zip(names, expert_dev, strict=True))]
    if method == "best_expert":
        i = max(range(len(names)), key=lambda j: expert_dev[j])
        return [{"name": f"best expert ({names[i]})", **_scores(session, session.experts[i])}]
    if method == "expert_vote":
        k = min(cfg.output.top_k, len(names))
        top = sorted(range(len(names)), key=lambda j: -expert_dev[j])[:k]
        row = {"name": f"top-{k} experts, majority vote"}
        for split, items in (("dev", session.dev), ("test", session.test)):
            if items:
                voters = [session.score(session.experts[j], items) for j in top]
                vote = majority_vote(voters, [expert_dev[j] for j in top])
                row[split] = vote.value
                if split == "test":
                    row["test_scores"] = pack_scores(vote.scores)
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
        return [{"name": method, **_scores(session, vec)}]
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
    row = {"name": LABELS[method], "dev": report["best_dev"], "test": report["best_test"],
           "test_scores": report.get("best_test_scores"),
           "evaluations": report["evaluations"], "seconds": report["search_seconds"],
           "correctness_emergence": report["correctness_emergence"]}
    if report.get("weak_to_strong") is not None:
        row["weak_to_strong"] = report["weak_to_strong"]
    return [row]


def _logit_average(session: Session) -> dict[str, Any]:
    from ..evaluation.multiplex import LogitAverage, ParticleBatch

    if session.pool.kind != "lora":
        raise ConfigError("logit averaging runs the experts side by side: LoRA pools only")
    # every log-likelihood scoring reads the averaged distribution; generation does not
    if not (session.cfg.utility.type == "multiple_choice"
            and session.cfg.utility.scoring != "generate"):
        raise ConfigError("logit averaging needs the log-likelihood multiple_choice utility")
    n = len(session.pool.names)
    batch = ParticleBatch(session.backend, n)
    batch.load(session.experts)
    result: dict[str, Any] = {"test": None}
    with batch.active(n) as model:
        ensemble = LogitAverage(model, n)
        for split, items in (("dev", session.dev), ("test", session.test)):
            if items:
                scored = session.utility.score(ensemble, session.backend.tokenizer, items)
                result[split] = scored.value
                if split == "test":
                    result["test_scores"] = pack_scores(scored.scores)
    return result


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# Per row of the table: one per-item test score list per seed (None: a line written before
# results.jsonl kept them).
PerItem = list[list[float] | None]


def _table(cfg: RunConfig, methods: list[str], done: dict,
           items: dict[str, int] | None = None) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    per_item: list[PerItem] = []
    for method in methods:
        recs = [r for (m, _), r in sorted(done.items()) if m == method]
        by_name: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for rec in recs:
            for row in rec["rows"]:
                by_name.setdefault(row["name"], []).append((rec["seed"], row))
        for name, seeded in by_name.items():
            runs = [r for _, r in seeded]
            if "skipped" in runs[0]:
                rows.append({"method": method, "name": name, "skipped": runs[0]["skipped"]})
                per_item.append([])
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
            if method in STRATEGIES:
                row["per_seed"] = [_seed_entry(seed, r) for seed, r in seeded]
            rows.append(row)
            per_item.append([unpack_scores(r.get("test_scores")) for r in runs])
    best_expert = _best_by_dev(rows, per_item, ("experts",))
    if best_expert[0] is None:
        best_expert = _best_by_dev(rows, per_item, ("best_expert",))
    references = {"best_expert": best_expert,
                  "best_merge": _best_by_dev(rows, per_item, tuple(MERGE_METHODS))}
    for row, seeds in zip(rows, per_item, strict=True):
        if row["method"] in STRATEGIES and "skipped" not in row:
            _intervals(row, seeds, references)
    return {"utility": cfg.utility.type, "dataset": cfg.data.name,
            "budget": cfg.compare.budget, "seeds": cfg.compare.seeds, "items": items,
            "level": LEVEL, "resamples": RESAMPLES,
            "references": {k: info for k, (info, _) in references.items()}, "rows": rows}


def _seed_entry(seed: int, run: dict[str, Any]) -> dict[str, Any]:
    entry = {"seed": seed, "dev": run.get("dev"), "test": run.get("test")}
    for key in ("correctness_emergence", "weak_to_strong"):
        if run.get(key) is not None:
            entry[key] = run[key]
    return entry


def _best_by_dev(rows: list[dict[str, Any]], per_item: list[PerItem], methods: tuple[str, ...]
                 ) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The row of `methods` with the best dev mean (the first in table order on a tie) and
    its per-item test scores averaged over its seeds. Chosen by dev only: choosing by test
    would pick the reference that the test set happens to favour."""
    found = [i for i, r in enumerate(rows) if r["method"] in methods and "skipped" not in r
             and r.get("dev_mean") is not None]
    if not found:
        return None, None
    i = max(found, key=lambda j: rows[j]["dev_mean"])
    row, seeds = rows[i], per_item[i]
    info = {"method": row["method"], "name": row["name"], "dev": row["dev_mean"],
            "test": row["test_mean"], "seeds": row["seeds"]}
    scores = None
    if seeds and all(s is not None for s in seeds) and len({len(s) for s in seeds}) == 1:
        scores = [statistics.fmean(col) for col in zip(*seeds, strict=True)]
    return info, scores


def _gain(scores: list[float] | None, ref: list[float] | None) -> dict[str, Any] | None:
    if scores is None or ref is None or len(scores) != len(ref) or not ref:
        return None
    return paired_bootstrap(scores, ref, resamples=RESAMPLES, seed=BOOTSTRAP_SEED, level=LEVEL)


def _intervals(row: dict[str, Any], seeds: PerItem,
               references: dict[str, tuple[dict[str, Any] | None, list[float] | None]]) -> None:
    for key, (_, ref) in references.items():
        field = f"vs_{key}"
        for entry, scores in zip(row["per_seed"], seeds, strict=True):
            entry[field] = _gain(scores, ref)
        scored = [s for s in seeds if s is not None]
        whole = None
        if ref is not None and all(entry[field] is not None for entry in row["per_seed"]):
            whole = seed_averaged_gain(scored, ref, resamples=RESAMPLES, seed=BOOTSTRAP_SEED,
                                       level=LEVEL)
        row[field] = whole


def _pm(row: dict[str, Any], split: str) -> str:
    mean = row.get(f"{split}_mean")
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {row[f'{split}_std']:.4f}" if row["seeds"] > 1 else "")


def _ci(ci: dict[str, Any] | None) -> str:
    if not ci:
        return "-"
    word = ci["verdict"] if ci["verdict"] == "tie" else f"**{ci['verdict']}**"
    return f"{ci['mean']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}] {word}"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _searches(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["rows"] if r["method"] in STRATEGIES and "skipped" not in r]


def verdict_sentence(report: dict[str, Any]) -> str:
    """Which searches win or lose against the references on test, seed-averaged: only where
    the interval excludes 0 (empty when the report has no intervals)."""
    level = round(100 * report.get("level", LEVEL))
    said, any_interval = [], False
    for row in _searches(report):
        for key, label in REFERENCE_LABELS.items():
            ci = row.get(f"vs_{key}")
            any_interval |= ci is not None
            if ci and ci["verdict"] != "tie":
                ref = (report.get("references") or {}).get(key) or {}
                said.append(f"{row['name']} {ci['verdict']} against the {label} "
                            f"({ref.get('name', '?')}): {_ci(ci).rsplit(' ', 1)[0]}")
    if said:
        return (f"Where the {level}% interval excludes 0 (seed-averaged): "
                + "; ".join(said) + ".")
    if any_interval:
        return (f"No search's test score differs from the best expert's or the best merge's "
                f"beyond its {level}% interval (seed-averaged): ties only.")
    return ""


def _reference_lines(report: dict[str, Any]) -> list[str]:
    refs = report.get("references")
    if not refs:
        return []
    named = [f"{label} = `{refs[key]['name']}` (dev {_fmt(refs[key]['dev'])}, test "
             f"{_fmt(refs[key]['test'])})" for key, label in REFERENCE_LABELS.items()
             if refs.get(key)]
    level = round(100 * report.get("level", LEVEL))
    return [f"References, chosen by dev (never by test): {'; '.join(named) or 'none'}. "
            "Δ test: a search's test score minus the reference's on the same test items, with "
            f"the {level}% percentile interval of a paired bootstrap over the items "
            f"({report.get('resamples', RESAMPLES)} resamples); a row with several seeds uses "
            "the per-item scores averaged over its seeds (each seed is below). **wins** / "
            "**loses** only where the interval excludes 0, tie otherwise.", ""]


def _per_seed_lines(report: dict[str, Any]) -> list[str]:
    rows = [r for r in _searches(report) if r.get("per_seed")]
    if not rows:
        return []
    lines = ["", "Per seed (correctness emergence: test items every expert got wrong that the "
             "search's best gets right):", "",
             "| search | seed | dev | test | Δ test vs best expert | Δ test vs best merge | "
             "correctness emergence |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        for e in row["per_seed"]:
            emergence = e.get("correctness_emergence")
            lines.append(f"| {row['name']} | {e['seed']} | {_fmt(e['dev'])} | "
                         f"{_fmt(e['test'])} | {_ci(e.get('vs_best_expert'))} | "
                         f"{_ci(e.get('vs_best_merge'))} | "
                         f"{'-' if emergence is None else emergence} |")
    return lines


def _weak_to_strong_lines(report: dict[str, Any]) -> list[str]:
    n = sum(1 for r in report["rows"] if r["method"] == "experts" and "skipped" not in r)
    lines: list[str] = []
    for row in _searches(report):
        entries = [e for e in row.get("per_seed", []) if e.get("weak_to_strong")]
        if not entries:
            continue
        lines += ["", f"Weak-to-strong ({row['name']}): the top personal bests at the end of "
                  "each seed, the expert each started as and that expert's dev rank among the "
                  + (f"{n} " if n else "") + "experts (1 = best; grown: a particle that "
                  "population growth added).", "",
                  "| seed | final rank | dev | started as | start rank |",
                  "| ---: | ---: | ---: | --- | ---: |"]
        for e in entries:
            lines += [f"| {e['seed']} | {w['final_rank']} | {_fmt(w['dev'])} | "
                      f"{w['started_as']} | {'-' if w['start_rank'] is None else w['start_rank']}"
                      " |" for w in e["weak_to_strong"]]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    items = report.get("items")
    level = round(100 * report.get("level", LEVEL))
    lines = [f"# Comparison: `{report['utility']}` on `{report['dataset']}`", "",
             f"Searches get {report['budget']} utility evaluations each; seeds "
             f"{report['seeds']} (mean ± standard deviation where a row has several)."
             + (f" {items['dev']} dev items, {items['test']} test items." if items else ""),
             "", *_reference_lines(report),
             f"| method | dev | test | Δ test vs best expert [{level}% CI] | "
             f"Δ test vs best merge [{level}% CI] | evaluations | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['name']} | skipped: {row['skipped']} | | | | | |")
            continue
        search = row.get("method") in STRATEGIES
        vs = [_ci(row.get(f"vs_{k}")) if search else "" for k in REFERENCE_LABELS]
        lines.append(f"| {row['name']} | {_pm(row, 'dev')} | {_pm(row, 'test')} | "
                     f"{vs[0]} | {vs[1]} | {row['evaluations']:.0f} | {row['seconds']:.1f} |")
    if sentence := verdict_sentence(report):
        lines += ["", sentence]
    lines += _per_seed_lines(report) + _weak_to_strong_lines(report)
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
