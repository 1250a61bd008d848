"""Why Model Swarms does not beat the best expert in docs/BENCHMARKS.md, and what the paper's
knobs change: Model Swarms runs on MMLU that differ from the benchmark's in one knob each.

    python bench/remedies.py [--variants dev128 step05] [--seed 0]

Each variant is a run folder under bench/out/remedies/<variant> (resumable); the table, with
the best expert chosen on the same dev set, goes to docs/bench_remedies.md.
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
OUT = ROOT / "bench" / "out" / "remedies"

# name -> (what it tests, config changes against the benchmark's swarm run)
VARIANTS = {
    "base32": ("the benchmark's setting: 32 dev items, budget 30", {}),
    "dev128": ("utility noise: 128 dev items instead of 32 (standard error 0.038, not 0.077)",
               {"data": {"max_dev": 128}}),
    "step05": ("step size: step_length 0.5, inertia 0.2 (smaller, steadier moves)",
               {"search": {"step_length": 0.5, "inertia": 0.2}}),
    "budget60": ("budget: 60 evaluations (5 iterations) instead of 30 (2)", {"budget": 60}),
}


def config(name: str, seed: int) -> dict:
    cfg = {
        "experts": {"base_model": "smollm2",
                    "paths": [str(p) for p in sorted(POOL.iterdir()) if p.is_dir()]},
        "data": {"path": str(EVAL / "mmlu.json"), "max_dev": 32, "max_test": 100},
        "utility": {"type": "multiple_choice"}, "model": {"batch_size": 32},
        "search": {"patience": 10},
        "budget": 30,
        "output": {"dir": str(OUT / name), "top_k": 1},
        "seed": seed,
    }
    for key, value in VARIANTS[name][1].items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["dev128", "step05"], choices=VARIANTS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not EVAL.exists():
        sys.exit(f"needs {EVAL} (the shared task data)")
    from modelswarms.config import load_config
    from modelswarms.runs.runner import run

    rows = []
    for name in args.variants:
        folder = OUT / name
        if (folder / "report.json").exists():
            report = json.loads((folder / "report.json").read_text())
        elif (folder / "config.yaml").exists():
            report = run(resume=folder)
        else:
            path = OUT / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(config(name, args.seed), sort_keys=False))
            report = run(load_config(path))
        by = {r["name"].split(" (")[0]: r for r in report["rows"]}
        best_expert = by["best expert"]
        swarm = by["Model Swarms: global best"]
        rows.append(f"| {name} | {VARIANTS[name][0]} | {report['dev_items']} | "
                    f"{report['iterations']} | {best_expert['dev']:.3f} / "
                    f"{best_expert['test']:.3f} | {swarm['dev']:.3f} / {swarm['test']:.3f} | "
                    f"{report['search_seconds']:.0f} |")
    machine = f"{platform.machine()}, {torch.get_num_threads()} CPU threads"
    text = "\n".join([
        "# Model Swarms on MMLU: one knob at a time", "",
        f"`python bench/remedies.py --variants {' '.join(args.variants)} --seed {args.seed}` on "
        f"{machine}. SmolLM2-135M-Instruct, the 10 starter experts, 100 test items; best "
        "expert chosen by the same dev set.", "",
        "| variant | what changes | dev items | iterations | best expert dev / test | "
        "Model Swarms dev / test | search s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |", *rows, ""])
    (ROOT / "docs" / "bench_remedies.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
