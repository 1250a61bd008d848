"""How much of the benchmark's dev signal carries to test: reads the comparisons in bench/out
and prints, per task, the binomial noise of one dev evaluation, the dev-test correlation over
every scored model, and how far each method's dev score overstates its test score.

    python bench/noise.py [--tasks mmlu truthfulqa hellaswag]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "bench" / "out"


def pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sxy / (sx * sy) if sx and sy else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["mmlu", "truthfulqa", "hellaswag"])
    args = ap.parse_args()
    print("| task | dev items | SE of one dev score | dev-test r (n models) | "
          "dev - test: experts | dev - test: searches' best |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for task in args.tasks:
        results = OUT / task / "results.jsonl"
        if not results.exists():
            continue
        cfg = (OUT / task / "config.yaml").read_text()
        n_dev = int(next(line.split(":")[1] for line in cfg.splitlines()
                         if line.strip().startswith("max_dev")))
        pairs, gaps = [], defaultdict(list)
        for line in results.read_text().splitlines():
            rec = json.loads(line)
            for row in rec["rows"]:
                if row.get("dev") is None or row.get("test") is None:
                    continue
                if rec["method"] in ("best_expert",):
                    continue  # the same model as one of the expert rows
                pairs.append((row["dev"], row["test"]))
                kind = ("experts" if rec["method"] == "experts" else
                        "searches" if rec["method"] in ("swarm", "cmaes", "random",
                                                        "greedy_soup") else "other")
                gaps[kind].append(row["dev"] - row["test"])
        mean_acc = statistics.mean(d for d, _ in pairs)
        se = math.sqrt(mean_acc * (1 - mean_acc) / n_dev)
        r = pearson([d for d, _ in pairs], [t for _, t in pairs])
        gap = {k: f"{statistics.mean(v):+.3f}" if v else "-" for k, v in gaps.items()}
        print(f"| {task} | {n_dev} | {se:.3f} | {r:+.2f} ({len(pairs)}) | "
              f"{gap.get('experts', '-')} | {gap.get('searches', '-')} |")


if __name__ == "__main__":
    main()
