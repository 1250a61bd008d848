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

from ..config import RunConfig, dump_config, load_config
from ..errors import ConfigError, ModelSwarmsError, RunError
from ..folders import FolderLock, claim, config_inputs, lock_existing
from ..io import atomic_write_text, read_jsonl
from ..merge import MERGE_METHODS
from ..stats import paired_bootstrap, seed_averaged_gain, unpack_scores
from ..trackers import check_trackers
from .inputs import check_resume
from .inputs import record as record_inputs
from .progress import CompareProgress
from .rows import RowContext, RowSpec, is_search, row_spec
from .runner import logging_to, remove_torn_writes, run, search_loop
from .session import Session

log = logging.getLogger("modelswarms")
LEVEL, RESAMPLES, BOOTSTRAP_SEED = 0.95, 10000, 0
REFERENCE_LABELS = {"best_expert": "best expert", "best_merge": "best merge"}


def _check_methods(cfg: RunConfig) -> list[str]:
    assert cfg.compare is not None
    for m in cfg.compare.methods:
        row_spec(m)  # an unknown method is an error that lists the known ones
    for m in cfg.compare.merge_params:
        if m not in MERGE_METHODS:
            raise ConfigError(f"compare.merge_params: {m!r} is not a merge method")
    return cfg.compare.methods


def compare(cfg: RunConfig | None = None, *, resume: str | Path | None = None,
            overwrite: bool = False, show_progress: bool = False,
            accept_changes: bool = False) -> dict[str, Any]:
    if resume is not None:
        out = Path(resume)
        if not (out / "config.yaml").is_file():
            raise RunError(f"{out}: not a comparison folder (no config.yaml)")
        held: FolderLock = lock_existing(out)
        try:
            cfg = load_config(out / "config.yaml")
            check_trackers(cfg.output.trackers)
            check_resume(out, cfg, accept_changes)
        except BaseException:
            held.release()
            raise
    else:
        assert cfg is not None
        # what can be checked without loading anything, before a folder is made
        if cfg.compare is None:
            raise ConfigError("compare: the config has no `compare:` section")
        cfg.need_data("compare")
        _check_methods(cfg)
        check_trackers(cfg.output.trackers)  # a missing package: before the folder is made
        out = Path(cfg.output.dir)
        held = claim(out, inputs=config_inputs(cfg), overwrite=overwrite,
                     exists_hint=f"resume it with `modelswarms compare --resume {out}`, or "
                     "pass --overwrite")
    try:
        if resume is None:
            atomic_write_text(out / "config.yaml", dump_config(cfg))
            record_inputs(out, cfg)
        if cfg.compare is None:
            raise ConfigError("compare: the config has no `compare:` section")
        methods = _check_methods(cfg)
        with logging_to(out):
            remove_torn_writes(out)  # a kill inside an atomic write (progress.json, tables)
            return _compare(cfg, out, methods, show_progress)
    except ModelSwarmsError:
        # as with a run: a comparison that could not start leaves no folder behind
        if resume is None and not read_jsonl(out / "results.jsonl") and not any(
                out.rglob("checkpoint.safetensors")):
            held.abandon()
        raise
    finally:
        held.release()


def row_cost(spec: RowSpec, cfg: RunConfig, n: int, r: float) -> float:
    """A row's estimated cost in dev evaluations (a test evaluation costs `r` of them), for
    the ETA only: a search its budget and the test scores of its report, a merge one of
    each, a reference row what its registration says."""
    assert cfg.compare is not None
    if spec.kind == "search":
        return cfg.compare.budget + (cfg.output.top_k + 1) * r
    if spec.kind == "merge":
        return 1 + r
    return spec.cost(n, r)


def _compare(cfg: RunConfig, out: Path, methods: list[str], show_progress: bool):
    assert cfg.compare is not None
    results_path = out / "results.jsonl"
    # a torn last line (a kill mid-write) is dropped: that row runs again
    done = {(rec["method"], rec["seed"]): rec for rec in read_jsonl(results_path)}
    lines = [json.dumps(r) for r in done.values()]
    atomic_write_text(results_path, "".join(x + "\n" for x in lines))
    units = [(method, seed) for method in methods
             for seed in (cfg.compare.seeds if row_spec(method).seeded else [0])]
    todo = [u for u in units if u not in done]
    n = len(cfg.experts.paths)
    # priced once the data's sizes are known (below); the view needs only how many there are
    watch = CompareProgress(out, [(f"{m} seed {s}", 0.0) for m, s in todo],
                            len(units) - len(todo), enabled=show_progress)
    with watch:
        session = Session.open(cfg)
        items = {"dev": len(session.dev), "test": len(session.test) if session.test else 0}
        ratio = items["test"] / max(items["dev"], 1)
        watch.units = [(label, row_cost(row_spec(m), cfg, n, ratio))
                       for (label, _), (m, _) in zip(watch.units, todo, strict=True)]
        watch.note(f"{items['dev']} dev / {items['test']} test items loaded; scoring the {n} "
                   "experts on dev")
        # in the blocks the evaluator forms anyway (the scores are the same), so that the
        # first ETA comes after the first block, not after all the experts
        k = max(1, getattr(session.evaluator, "group_size", n))
        expert_dev: list[float] = []
        for i in range(0, n, k):
            start = time.perf_counter()
            block = session.score_many(session.experts[i:i + k], session.dev)
            expert_dev += [x.value for x in block]
            watch.calibrate(time.perf_counter() - start, len(block),
                            f"experts {len(expert_dev)}/{n} scored on dev",
                            left=n - len(expert_dev))
        for method, seed in todo:
            spec = row_spec(method)
            label = spec.label + (f" (seed {seed})" if spec.seeded else "")
            watch.start_row(label)
            start = time.perf_counter()
            before = session.evaluations
            try:
                rows = spec.rows(RowContext(cfg, session, out, seed, expert_dev, show_progress,
                                            view=watch.search_view, loop=search_loop,
                                            run=run, searches=out / "runs"))
            except ConfigError as err:  # e.g. slerp with more than two experts
                log.warning("compare: %s skipped: %s", method, err)
                rows = [{"name": spec.label, "skipped": str(err)}]
            for row in rows:
                row.setdefault("evaluations", session.evaluations - before)
                row.setdefault("seconds", round(time.perf_counter() - start, 2))
            rec = {"method": method, "seed": seed, "rows": rows}
            done[(method, seed)] = rec
            with open(results_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            log.info("compare: %s seed %d done", method, seed)
            # the table so far, readable while the rest runs (or after a kill)
            write_tables(comparison_table(cfg, methods, done, items,
                                partial={"rows_done": len(done), "rows_total": len(units)}),
                         out)
            watch.finish_row(time.perf_counter() - start, _summary(rows))
        report = comparison_table(cfg, methods, done, items)
        write_tables(report, out)
        plot(report, out / "compare.png")
    return report


def write_tables(report: dict[str, Any], out: Path) -> None:
    atomic_write_text(out / "compare.json", json.dumps(report, indent=2))
    atomic_write_text(out / "compare.md", render_markdown(report))


def _summary(rows: list[dict[str, Any]]) -> str:
    """A finished row in a few words: its dev and test scores (the best of several rows)."""
    if "skipped" in rows[0]:
        return f"skipped ({rows[0]['skipped']})"
    scored = [r for r in rows if r.get("dev") is not None] or rows
    best = max(scored, key=lambda r: r.get("dev") or 0.0)
    what = f"{len(rows)} rows, best by dev {best['name']}: " if len(rows) > 1 else ""
    test = f", test {best['test']:.4f}" if best.get("test") is not None else ""
    dev = f"dev {best['dev']:.4f}" if best.get("dev") is not None else "dev -"
    return f"{what}{dev}{test} ({best['evaluations']} evaluations)"


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# Per row of the table: one per-item test score list per seed (None: a line written before
# results.jsonl kept them).
PerItem = list[list[float] | None]


def comparison_table(cfg: RunConfig, methods: list[str], done: dict,
           items: dict[str, int] | None = None,
           partial: dict[str, int] | None = None) -> dict[str, Any]:
    """The report of the rows in `done`; `partial` (rows done / rows in all) marks a table
    of a comparison that is still running or was stopped."""
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
            if is_search(method):
                row["per_seed"] = [_seed_entry(seed, r) for seed, r in seeded]
            rows.append(row)
            per_item.append([unpack_scores(r.get("test_scores")) for r in runs])
    best_expert = _best_by_dev(rows, per_item, ("experts",))
    if best_expert[0] is None:
        best_expert = _best_by_dev(rows, per_item, ("best_expert",))
    references = {"best_expert": best_expert,
                  "best_merge": _best_by_dev(rows, per_item, tuple(MERGE_METHODS))}
    for row, seeds in zip(rows, per_item, strict=True):
        if is_search(row["method"]) and "skipped" not in row:
            _intervals(row, seeds, references)
    report = {"utility": cfg.utility.type, "dataset": cfg.data_name,
              "budget": cfg.compare.budget, "seeds": cfg.compare.seeds, "items": items,
              "level": LEVEL, "resamples": RESAMPLES,
              "references": {k: info for k, (info, _) in references.items()}, "rows": rows}
    if partial is not None:
        report["partial"] = partial
    return report


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


def plus_minus(row: dict[str, Any], split: str) -> str:
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
    return [r for r in report["rows"] if is_search(r["method"]) and "skipped" not in r]


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


def _partial_lines(report: dict[str, Any]) -> list[str]:
    if not (p := report.get("partial")):
        return []
    return [f"**Partial table: {p['rows_done']} of {p['rows_total']} rows done.** The "
            "comparison is running or was stopped (`modelswarms status FOLDER` says which; "
            "`modelswarms compare --resume FOLDER` goes on); the references and intervals "
            "are those of the rows done so far and can change as rows are added.", ""]


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
             "", *_partial_lines(report), *_reference_lines(report),
             f"| method | dev | test | Δ test vs best expert [{level}% CI] | "
             f"Δ test vs best merge [{level}% CI] | evaluations | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['name']} | skipped: {row['skipped']} | | | | | |")
            continue
        search = is_search(row.get("method", ""))
        vs = [_ci(row.get(f"vs_{k}")) if search else "" for k in REFERENCE_LABELS]
        lines.append(f"| {row['name']} | {plus_minus(row, 'dev')} | {plus_minus(row, 'test')} | "
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
