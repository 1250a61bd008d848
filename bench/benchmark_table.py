"""The benchmark table of docs/BENCHMARKS.md: every row of `modelswarms compare` on target
tasks of the Model Swarms data, with SmolLM2-135M-Instruct and the shipped starter pool.

For each task a comparison config is written to bench/out/<task>.yaml and run (resumable:
rerunning the script continues where it stopped); then the tables, correctness-emergence
counts, wall times and a plot per task go into docs/BENCHMARKS.md.

Then the Heterogeneous Swarms rows of each task (bench/hswarm_table.py) go beside it.
The hand-written analysis at the end of docs/BENCHMARKS.md is kept when the tables are redone.

Run:  python bench/benchmark_table.py [--tasks mmlu truthfulqa hellaswag] [--max-dev 32]
      [--max-test 100] [--budget 30] [--seeds 0 1 2] [--sizes hellaswag=16:60] [--hswarm-seeds 0]
      [--hswarm-tasks mmlu]
      [--no-hswarm]
On 2 CPU cores one MMLU dev evaluation of 32 items takes ~5 s: budget 30 x 3 searches x 3 seeds
plus the greedy soup is ~300 evaluations; with the fixed rows (experts, merges, test sets) about
40 minutes for MMLU, 30 for TruthfulQA and 70 for HellaSwag (longer items). A GPU makes it
minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import hswarm_table
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "data" / "eval"
POOL = ROOT / "experts" / "smollm2"
METHODS = ["base", "experts", "best_expert", "expert_vote", "logit_average", "linear",
           "task_arithmetic", "ties", "dare_ties", "breadcrumbs", "karcher", "model_stock",
           "greedy_soup", "random", "cmaes", "swarm"]


def sizes(task: str, args: argparse.Namespace) -> tuple[int, int]:
    """(dev items, test items) of `task`: --sizes TASK=DEV:TEST, else --max-dev / --max-test."""
    for spec in args.sizes:
        name, _, dims = spec.partition("=")
        if name == task:
            dev, _, test = dims.partition(":")
            return int(dev), int(test)
    return args.max_dev, args.max_test


def config(task: str, args: argparse.Namespace, out: Path) -> Path:
    max_dev, max_test = sizes(task, args)
    cfg = {
        "experts": {"base_model": "smollm2",
                    "paths": [str(p) for p in sorted(POOL.iterdir()) if p.is_dir()]},
        "data": {"path": str(EVAL / f"{task}.json"), "max_dev": max_dev,
                 "max_test": max_test},
        "utility": {"type": "multiple_choice", "batch_size": 32},
        "search": {"patience": 10},
        "compare": {"methods": METHODS, "seeds": args.seeds, "budget": args.budget},
        "output": {"dir": str(out / task), "top_k": 3},
    }
    path = out / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


ANALYSIS = "<!-- analysis: written by hand, kept when the tables are regenerated -->"


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def hswarm_section(task: str, reports: list[dict], args: argparse.Namespace) -> list[str]:
    """The Heterogeneous Swarms rows of one task: the search and its baselines, over seeds."""
    first = reports[0]
    experts = ", ".join(Path(r["name"].removeprefix("expert: ")).name for r in first["rows"]
                        if r["name"].startswith("expert: "))
    lines = [f"### {task}: Heterogeneous Swarms", "",
             f"Experts: the {first['experts']} best of the pool by dev ({experts}); nodes pass "
             "on the option they pick (`node_answers: choice`); "
             f"{first['systems']} systems evaluated (budget {args.budget}); seeds "
             f"{len(reports)}; search "
             f"{statistics.mean(r['search_seconds'] for r in reports):.0f} s a seed.", "",
             "| system | dev | test |", "| --- | ---: | ---: |"]
    for i, row in enumerate(first["rows"]):
        if row["name"].startswith("expert: "):
            continue
        name = row["name"].split(" (")[0] if "random" not in row["name"] else row["name"]
        dev = [r["rows"][i]["dev"] for r in reports]
        test = [r["rows"][i]["test"] for r in reports]
        lines.append(f"| {name} | {_mean_std(dev)} | {_mean_std(test)} |")
    emergence = [r["correctness_emergence"] for r in reports]
    lines += ["", f"Correctness emergence of the best system (test items every one of its "
              f"experts got wrong): {emergence}.", "",
              f"![{task} system](benchmark_{task}_system.png)", ""]
    png = Path(first["export"]) / "graph.png"
    if png.exists():
        (ROOT / "docs" / f"benchmark_{task}_system.png").write_bytes(png.read_bytes())
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["mmlu", "truthfulqa", "hellaswag"])
    ap.add_argument("--max-dev", type=int, default=32)
    ap.add_argument("--max-test", type=int, default=100)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", nargs="+", default=[], metavar="TASK=DEV:TEST",
                    help="dev / test items of one task, e.g. hellaswag=16:60")
    ap.add_argument("--no-hswarm", action="store_true", help="leave out Heterogeneous Swarms")
    ap.add_argument("--hswarm-tasks", nargs="+", help="tasks with Heterogeneous Swarms rows "
                    "(default: all)")
    hswarm_table.add_arguments(ap)
    args = ap.parse_args()
    if not EVAL.exists():
        sys.exit(f"needs {EVAL} (the shared task data)")
    from modelswarms.config import load_config
    from modelswarms.runs.compare import compare, render_markdown

    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for task in args.tasks:
        path = config(task, args, out)
        folder = out / task
        if (folder / "config.yaml").exists():
            report = compare(resume=folder)
        else:
            report = compare(load_config(path))
        emergence = {r["name"]: r["correctness_emergence"] for r in report["rows"]
                     if "correctness_emergence" in r}
        png = ROOT / "docs" / f"benchmark_{task}.png"
        png.write_bytes((folder / "compare.png").read_bytes())
        sections += [render_markdown(report).replace("# Comparison:", f"## {task}:"),
                     f"Correctness emergence (test items every expert got wrong, right in "
                     f"the search's best, per seed): {json.dumps(emergence)}", "",
                     f"![{task}](benchmark_{task}.png)", ""]
        if not args.no_hswarm and task in (args.hswarm_tasks or args.tasks):
            sections += hswarm_section(task, hswarm_table.run_task(task, args), args)
    machine = (torch.cuda.get_device_name() if torch.cuda.is_available() else
               f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
               "CPU threads")
    target = ROOT / "docs" / "BENCHMARKS.md"
    kept = target.read_text().partition(ANALYSIS)[2] if target.exists() else ""
    text = "\n".join([
        "# Benchmarks", "",
        f"`python bench/benchmark_table.py --tasks {' '.join(args.tasks)} --max-dev "
        f"{args.max_dev} --max-test {args.max_test} --budget {args.budget} --seeds "
        f"{' '.join(map(str, args.seeds))}"
        + (f" --sizes {' '.join(args.sizes)}" if args.sizes else "")
        + (f" --hswarm-tasks {' '.join(args.hswarm_tasks)}" if args.hswarm_tasks else "")
        + (" --no-hswarm" if args.no_hswarm else "")
        + f"` on {machine}, torch {torch.__version__}. "
        "SmolLM2-135M-Instruct with the 10 experts of experts/smollm2, multiple choice by "
        "log-likelihood.", "", *sections, ANALYSIS])
    target.write_text(text + (kept or "\n"))
    print(text)


if __name__ == "__main__":
    main()
