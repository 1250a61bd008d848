"""The evidence run behind docs/BENCHMARKS.md, in one command sized for one GPU session.

Stages, each writing its results as it finishes and skipped when they are there (rerunning the
command resumes it); `--deadline` (seconds) stops starting new stages:

1. modes: the base model's dev accuracy in every multiple-choice scoring mode on every
   multiple-choice task of ../shared/data/eval and on the demo task, with standard errors
   (docs/scoring_modes.json and .md, the table of docs/OBJECTIVES.md);
2. targets: HellaSwag, the demo task, and the two other tasks whose base dev accuracy in the
   chosen mode is furthest above chance (z >= 2), chance being the larger of uniform guessing
   and the most common right answer text. Chosen on dev, before any expert is trained;
3. pool: the starter pool rebuilt without the targets' data, its recipe chosen among a few by
   the experts' mean dev accuracy on the targets (docs/pool_sweep.json), written to
   experts/smollm2 with those dev scores in every data card;
4. bench: bench/benchmark_table.py on the targets (docs/bench/<task>/, docs/BENCHMARKS.md);
5. knobs: Model Swarms with the authors' swept settings on HellaSwag, chosen on dev only
   (docs/bench_knobs.json).

Run:  python bench/evidence.py [--device cuda] [--deadline 540]
      python bench/evidence.py --smoke --device cpu    # every stage on a tiny model, seconds
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
MC_TASKS = ["hellaswag", "mmlu", "truthfulqa", "scifact", "medqa", "hearsay",
            "citation_prediction_classification"]
MODES = ["letter", "cloze", "cloze_norm", "permuted", "generate"]
# cheap modes everywhere first, so a run stopped early has them for every task
SWEEPS = [["letter", "cloze", "cloze_norm"], ["permuted"], ["generate"]]
CHOSEN = "cloze_norm"
# HellaSwag's question is a sentence start its options complete (bench/benchmark_table.py)
PROMPTS = {"hellaswag": "{question}"}
# The recipes tried for the pool (sources.POOL_RECIPE keys). All keep rank-4/8 adapters on
# the top 16 layers, so the pool stays a few MB.
RECIPES = [
    {"lr": 1e-3, "rank": 4, "alpha": 8, "epochs": 2.0, "batch_size": 16},
    {"lr": 3e-4, "rank": 8, "alpha": 16, "epochs": 2.0, "batch_size": 16},
    {"lr": 3e-3, "rank": 4, "alpha": 8, "epochs": 1.0, "batch_size": 16},
]
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


def task_file(task: str, eval_dir: Path) -> Path:
    return ROOT / "examples" / "capitals.json" if task == "capitals" else \
        eval_dir / f"{task}.json"


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
    from modelswarms.evaluation.utilities import per_character, pick_options

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
    from modelswarms.evaluation.backend import (
        load_causal_lm,
        load_tokenizer,
        pick_device,
        pick_dtype,
    )
    from modelswarms.evaluation.generation import Batching, batching
    from modelswarms.evaluation.utilities import build_utility
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


def select_targets(table: dict[str, Any], mode: str = CHOSEN, extra: int = 2) -> list[str]:
    """HellaSwag, the demo task, and the `extra` shared tasks furthest above chance in `mode`
    (z >= 2), on dev."""
    z = {}
    for r in table["rows"]:
        if r["mode"] == mode and r["task"] not in ("hellaswag", "capitals"):
            z[r["task"]] = (r["accuracy"] - r["chance"]) / max(r["se"], 1e-9)
    picked = [t for t in sorted(z, key=lambda t: -z[t]) if z[t] >= 2][:extra]
    return ["hellaswag", *picked, "capitals"]


# ---------------------------------------------------------------- stage 3: the pool

def pool_dev_scores(pool: Path, targets: dict[str, Path], n: int, device: str,
                    base_model: str, batch_size: int, max_tokens: int) -> dict[str, Any]:
    """Every expert's and the base model's dev accuracy on each target, in the chosen mode."""
    from modelswarms.config import parse_config
    from modelswarms.runs.session import Session

    experts = sorted(p for p in pool.iterdir() if (p / "adapter_config.json").is_file())
    scores: dict[str, Any] = {"experts": [p.name for p in experts], "targets": {}}
    for task, path in targets.items():
        cfg = parse_config({
            "experts": {"base_model": base_model, "paths": [str(p) for p in experts]},
            "data": {"path": str(path), "max_dev": n},
            "utility": {"scoring": CHOSEN, "prompt": PROMPTS.get(task),
                        "batch_size": batch_size, "max_batch_tokens": max_tokens},
            "model": {"device": device, "particles_per_forward": len(experts)
                      if device != "cpu" else 1}})
        session = Session.open(cfg, need_test=False)
        values = [r.value for r in session.score_many(session.experts, session.dev)]
        scores["targets"][task] = {"items": len(session.dev), "experts": values,
                                   "base": session.score(None, session.dev).value}
        log(f"pool {pool.name} on {task}: base {scores['targets'][task]['base']:.3f}, experts "
            + " ".join(f"{v:.3f}" for v in values))
    return scores


def pool_quality(scores: dict[str, Any]) -> float:
    """Mean over targets of the experts' mean dev accuracy: the pool a swarm starts from."""
    per = [sum(t["experts"]) / len(t["experts"]) for t in scores["targets"].values()]
    return sum(per) / len(per)


def build_pools(targets: list[str], eval_dir: Path, work: Path, args) -> dict[str, Any]:
    from modelswarms.experts import sources

    sweep_path = args.docs / "pool_sweep.json"
    sweep = json.loads(sweep_path.read_text()) if sweep_path.exists() else {"recipes": []}
    if sweep.get("chosen") is not None:
        return sweep
    forbidden = [t for t in targets if t != "capitals"]
    for i, recipe in enumerate(RECIPES[: args.recipes]):
        if i < len(sweep["recipes"]):
            continue
        if i and time_left(args) < args.reserve_for_bench:
            log("pool sweep: no time for more recipes")
            break
        folder = work / "pools" / f"recipe_{i}"
        start = time.perf_counter()
        sources.build_pool(folder, shared=eval_dir, base_model=args.base, device=args.device,
                           forbidden=forbidden, log=log, **{**recipe, **args.recipe_override})
        seconds = time.perf_counter() - start
        scores = pool_dev_scores(folder, {t: task_file(t, eval_dir) for t in targets},
                                 args.dev, args.device, args.base, args.batch_size,
                                 args.max_batch_tokens)
        sweep["recipes"].append({"recipe": recipe, "build_seconds": round(seconds, 1),
                                 "quality": pool_quality(scores), "scores": scores,
                                 "folder": str(folder)})
        sweep_path.write_text(json.dumps(sweep, indent=1))
        log(f"recipe {i} {recipe}: quality {pool_quality(scores):.4f}, built in {seconds:.0f} s")
    best = max(range(len(sweep["recipes"])), key=lambda i: sweep["recipes"][i]["quality"])
    sweep["chosen"] = best
    sweep["rule"] = ("the recipe whose experts have the highest mean dev accuracy over the "
                     f"targets ({CHOSEN}); dev only")
    chosen = sweep["recipes"][best]
    install_pool(Path(chosen["folder"]), args.pool, chosen["scores"], args.device)
    sweep_path.write_text(json.dumps(sweep, indent=1))
    return sweep


def install_pool(folder: Path, pool: Path, scores: dict[str, Any], device: str) -> None:
    """Replace the shipped pool by `folder`, with each expert's target dev scores carded."""
    from modelswarms.experts.sources import write_pool_index
    from modelswarms.experts.train import write_card_scores

    if pool.exists():
        shutil.rmtree(pool)
    shutil.copytree(folder, pool)
    note = (f"first {next(iter(scores['targets'].values()))['items']} dev items of each target "
            f"(the demo task: all), scoring {CHOSEN}, measured by bench/evidence.py on "
            f"{machine(device)}")
    for i, name in enumerate(scores["experts"]):
        write_card_scores(pool / name, {
            task: {"scoring": CHOSEN, "items": t["items"], "accuracy": t["experts"][i],
                   "base_accuracy": t["base"]} for task, t in scores["targets"].items()}, note)
    write_pool_index(pool)


# ---------------------------------------------------------------- stage 4 and 5

def run_bench(targets: list[str], args) -> None:
    for task in targets:
        if (args.docs / "bench" / task / "compare.json").exists():
            continue
        left = time_left(args)
        if left < 30:
            log(f"bench: no time left for {task}")
            return
        cmd = [sys.executable, str(ROOT / "bench" / "benchmark_table.py"), "--tasks", task,
               "--device", args.device, "--pool", str(args.pool), "--max-dev", str(args.dev),
               "--max-test", str(args.test), "--budget", str(args.budget), "--seeds",
               *map(str, args.seeds), "--batch-size", str(args.batch_size),
               "--max-batch-tokens", str(args.max_batch_tokens), "--particles-per-forward",
               str(args.per_forward), "--out", str(args.work / "bench")]
        log("bench: " + " ".join(cmd[1:]))
        try:
            subprocess.run(cmd, check=True, timeout=left)
        except subprocess.TimeoutExpired:
            log(f"bench: {task} stopped at the deadline")
            return
        except subprocess.CalledProcessError as err:
            log(f"bench: {task} failed ({err.returncode})")


def run_knobs(args, task: str = "hellaswag", data: Path | None = None) -> None:
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
                "utility": {"scoring": CHOSEN, "prompt": PROMPTS.get(task),
                            "batch_size": args.batch_size,
                            "max_batch_tokens": args.max_batch_tokens},
                "search": {"particles": 10, "patience": 10, **knobs},
                "budget": args.knob_budget, "seed": seed,
                "model": {"device": args.device, "particles_per_forward": args.per_forward},
                "output": {"dir": str(args.work / "knobs" / f"{len(have)}_{seed}")}})
            report = run(cfg, overwrite=True)
            done["runs"].append({"name": name, "seed": seed, "knobs": knobs,
                                 "dev": report["best_dev"], "test": report["best_test"],
                                 "evaluations": report["evaluations"],
                                 "iterations": report["iterations"],
                                 "test_scores": report.get("best_test_scores")})
            have.add((name, seed))
            path.write_text(json.dumps(done, indent=1))
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
    log(f"smoke modes: {[round(r['accuracy'], 3) for r in table['rows']]}; "
        f"targets {select_targets(table)}")
    built = tmp / "built"
    sources.build_pool(built, names=["hearsay", "citation_prediction_classification", "gsm8k"],
                       shared=args.eval, base_model=base, device=args.device, log=log,
                       epochs=None, steps=2, max_length=64, batch_size=4, layers=(0, 1))
    scores = pool_dev_scores(built, {"arith": data}, 8, args.device, base, 8, 4096)
    args.pool = tmp / "pool"
    install_pool(built, args.pool, scores, args.device)
    experts = sorted(p for p in args.pool.iterdir() if (p / "adapter_config.json").is_file())
    cfg = parse_config({
        "experts": {"base_model": base, "paths": [str(p) for p in experts]},
        "data": {"path": str(data)},
        "utility": {"scoring": CHOSEN, "batch_size": 8},
        "search": {"particles": 4},
        "coefficients": {"population": 4},
        "model": {"device": args.device, "particles_per_forward": 4},
        "compare": {"methods": ["base", "experts", "best_expert", "expert_vote",
                                "logit_average", "linear", "ties", "dare_ties", "greedy_soup",
                                "random", "cmaes", "swarm"], "seeds": [0, 1], "budget": 12},
        "output": {"dir": str(tmp / "compare"), "top_k": 2}})
    compare(cfg)
    print((tmp / "compare" / "compare.md").read_text())
    args.dev, args.test, args.knob_budget, args.seeds = 8, 8, 40, [0]
    args.batch_size, args.max_batch_tokens, args.per_forward = 8, 4096, "4"
    run_knobs(args, "arith", data)
    log(f"smoke: every stage ran ({tmp})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--deadline", type=float, default=math.inf, help="seconds for the run")
    ap.add_argument("--stages", nargs="+", default=["modes", "pool", "bench", "knobs"])
    ap.add_argument("--targets", nargs="+", help="skip the selection: these targets")
    ap.add_argument("--dev", type=int, default=200)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--knob-budget", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", type=int, default=len(RECIPES))
    ap.add_argument("--recipe-override", type=json.loads, default={},
                    help="JSON of recipe keys forced on every recipe (tests: {\"steps\": 2})")
    ap.add_argument("--reserve-for-bench", type=float, default=300,
                    help="seconds the benchmark needs: no further recipe is tried below it")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--max-batch-tokens", type=int, default=131072)
    ap.add_argument("--per-forward", default="10")
    ap.add_argument("--base", default="smollm2")
    ap.add_argument("--pool", type=Path, default=POOL)
    ap.add_argument("--eval", type=Path, default=EVAL)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "evidence")
    ap.add_argument("--docs", type=Path, default=DOCS)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        smoke(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    tasks = {t: task_file(t, args.eval) for t in [*MC_TASKS, "capitals"]}
    table_path = args.docs / "scoring_modes.json"
    table = json.loads(table_path.read_text()) if table_path.exists() else None
    if "modes" in args.stages:
        table = modes_table(args.base, tasks, args.dev, args.device, table_path,
                            args.batch_size, args.max_batch_tokens, modes=SWEEPS)
    targets = args.targets or select_targets(table)
    log(f"targets: {targets}")
    (args.docs / "bench_targets.json").write_text(json.dumps({"targets": targets, "rule": (
        f"hellaswag, the demo task, and the two shared tasks furthest above chance in "
        f"{CHOSEN} on dev (z >= 2)")}, indent=1))
    if "pool" in args.stages:
        build_pools(targets, args.eval, args.work, args)
    if "bench" in args.stages:
        run_bench(targets, args)
    if "knobs" in args.stages:
        run_knobs(args)
    log("done")


if __name__ == "__main__":
    main()
