"""The Heterogeneous Swarms rows of docs/BENCHMARKS.md: `modelswarms hswarm` on the benchmark
tasks, with SmolLM2-135M-Instruct and the experts of the starter pool that score best on each
task's dev split (dev is what a user may select on; test is never looked at).

Each (task, seed) is a run folder under bench/out/hswarm/<task>/seed<k>; a finished one is
read back, an interrupted one resumes. benchmark_table.py calls `run_task` for every task and
puts the rows beside the compare table; run alone, this prints them.

Run:  python bench/hswarm_table.py [--tasks mmlu] [--hswarm-seeds 0] [--hswarm-experts 4]
      [--budget 30]   (the budget counts systems evaluated)
On 2 CPU cores, with `node_answers: choice` (a node passes on the option it picks, one scoring
pass per node instead of a generation), a seed of one task takes ~15 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "data" / "eval"
POOL = ROOT / "experts" / "smollm2"
OUT = ROOT / "bench" / "out" / "hswarm"


def pick_experts(task: str, k: int, max_dev: int) -> list[str]:
    """The k experts of the pool with the best dev utility on `task` (cached)."""
    cache = OUT / task / "expert_dev.json"
    if not cache.exists():
        from modelswarms.config import parse_config
        from modelswarms.runs.session import Session

        paths = [str(p) for p in sorted(POOL.iterdir()) if p.is_dir()]
        cfg = parse_config({"experts": {"base_model": "smollm2", "paths": paths},
                            "data": {"path": str(EVAL / f"{task}.json"), "max_dev": max_dev},
                            "utility": {"type": "multiple_choice"},
                            "model": {"batch_size": 32}})
        session = Session.open(cfg, need_test=False)
        scores = dict(zip(paths, session.dev_utilities(session.experts), strict=True))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(scores, indent=2))
    scores = json.loads(cache.read_text())
    return sorted(scores, key=lambda p: (-scores[p], p))[:k]


def config(task: str, seed: int, experts: list[str], args: argparse.Namespace) -> dict:
    return {
        "experts": {"base_model": "smollm2", "paths": experts},
        "data": {"path": str(EVAL / f"{task}.json"), "max_dev": args.max_dev,
                 "max_test": args.max_test},
        "utility": {"type": "multiple_choice"}, "model": {"batch_size": 32},
        "search": {"patience": 10},
        "hswarm": {"graphs": 4, "trials": 4, "max_rounds": 20, "patience": 4,
                   "node_answers": "choice",
                   "baselines": ["best_expert", "chain", "star", "random_dags"]},
        "budget": args.budget,
        "output": {"dir": str(OUT / task / f"seed{seed}")},
        "seed": seed,
    }


def run_task(task: str, args: argparse.Namespace) -> list[dict]:
    """One report per seed (run, resumed or read back)."""
    from modelswarms.config import load_config
    from modelswarms.runs.runner import run

    experts = pick_experts(task, args.hswarm_experts, args.max_dev)
    shown = not getattr(args, "quiet", False)  # benchmark_table's --quiet
    reports = []
    for seed in args.hswarm_seeds:
        folder = OUT / task / f"seed{seed}"
        if (folder / "report.json").exists():
            reports.append(json.loads((folder / "report.json").read_text()))
            continue
        if (folder / "config.yaml").exists():
            reports.append(run(resume=folder, show_progress=shown))
            continue
        path = OUT / task / f"seed{seed}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config(task, seed, experts, args), sort_keys=False))
        reports.append(run(load_config(path), show_progress=shown, strategy="hswarm"))
    return reports


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--hswarm-seeds", dest="hswarm_seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--hswarm-experts", dest="hswarm_experts", type=int, default=4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["mmlu"])
    ap.add_argument("--max-dev", type=int, default=32)
    ap.add_argument("--max-test", type=int, default=100)
    ap.add_argument("--budget", type=int, default=30)
    add_arguments(ap)
    args = ap.parse_args()
    if not EVAL.exists():
        sys.exit(f"needs {EVAL} (the shared task data)")
    for task in args.tasks:
        for report in run_task(task, args):
            print(f"## {task}: {report['export']}")
            for row in report["rows"]:
                print(f"{row['name']:45s} dev {row['dev']:.4f} test {row['test']:.4f}")


if __name__ == "__main__":
    main()
