"""The benchmark table of docs/BENCHMARKS.md: every row of `modelswarms compare` on target
tasks of the Model Swarms data, with SmolLM2-135M-Instruct and the shipped starter pool.

For each task a comparison config is written to bench/out/<task>.yaml and run (resumable:
rerunning the script continues where it stopped); then the tables, correctness-emergence
counts, wall times and a plot per task go into docs/BENCHMARKS.md.

Run:  python bench/benchmark_table.py [--tasks mmlu truthfulqa hellaswag] [--max-dev 100]
      [--max-test 200] [--budget 30] [--seeds 0 1 2]
On 2 CPU cores one MMLU dev evaluation of 100 items takes ~15 s: budget 30 x 4 searches x 3
seeds is ~360 evaluations, about 1.5 hours a task. A GPU makes it minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "data" / "eval"
POOL = ROOT / "experts" / "smollm2"
METHODS = ["base", "experts", "best_expert", "expert_vote", "logit_average", "linear",
           "task_arithmetic", "ties", "dare_ties", "breadcrumbs", "karcher", "model_stock",
           "greedy_soup", "random", "cmaes", "swarm"]


def config(task: str, args: argparse.Namespace, out: Path) -> Path:
    cfg = {
        "experts": {"base_model": "smollm2",
                    "paths": [str(p) for p in sorted(POOL.iterdir()) if p.is_dir()]},
        "data": {"path": str(EVAL / f"{task}.json"), "max_dev": args.max_dev,
                 "max_test": args.max_test},
        "utility": {"type": "multiple_choice", "batch_size": 32},
        "search": {"patience": 10},
        "compare": {"methods": METHODS, "seeds": args.seeds, "budget": args.budget},
        "output": {"dir": str(out / task), "top_k": 3},
    }
    path = out / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["mmlu", "truthfulqa", "hellaswag"])
    ap.add_argument("--max-dev", type=int, default=100)
    ap.add_argument("--max-test", type=int, default=200)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
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
        sections += [render_markdown(report).replace("# Comparison", f"## {task}:"),
                     f"Correctness emergence (test items every expert got wrong, right in "
                     f"the search's best, per seed): {json.dumps(emergence)}", "",
                     f"![{task}](benchmark_{task}.png)", ""]
    machine = (torch.cuda.get_device_name() if torch.cuda.is_available() else
               f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
               "CPU threads")
    text = "\n".join([
        "# Benchmarks", "",
        f"`python bench/benchmark_table.py --tasks {' '.join(args.tasks)} --max-dev "
        f"{args.max_dev} --max-test {args.max_test} --budget {args.budget} --seeds "
        f"{' '.join(map(str, args.seeds))}` on {machine}, torch {torch.__version__}. "
        "SmolLM2-135M-Instruct with the 10 experts of experts/smollm2, multiple choice by "
        "log-likelihood.", "", *sections])
    (ROOT / "docs" / "BENCHMARKS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
