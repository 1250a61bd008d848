"""Fitness from fewer items (`utility.estimate`, runs/estimate.py), measured: how well the
estimate tracks true dev accuracy on candidates it was not fitted on, and what it does to Model
Swarms' final test accuracy at the same number of evaluations and at the same wall time.

    python bench/fitness_estimate.py                       # the demo task, minutes per seed
    python bench/fitness_estimate.py --data ../shared/data/eval/arc_easy.json \\
        --pool experts/NEW_POOL --max-dev 200 --max-test 500 --items 40

Per seed, in one process on one resident model, each run with a fresh score cache:
- A: Model Swarms on full dev for --iterations iterations (every candidate's per-item dev
  scores are kept);
- held-out error: anchors fitted, as a run would, on A's first batch and the experts; every
  later candidate of A (never fitted on) is estimated from its anchor items and compared with
  its true dev accuracy (mean and largest absolute error, Spearman rank correlation), for
  `anchor` and the `random`-subset baseline at each of --error-items;
- B: the same search with `utility.estimate: {items: --items}` for the same iterations (the
  same number of evaluations);
- C: the same with as many iterations as fit in A's wall time (B's measured seconds per
  estimated iteration; the walls are printed).
Test accuracy of every run's reported best (re-scored on full dev, as runs report it) goes
into paired bootstrap intervals over seeds x test items (stats.py).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def ranks(xs: list[float]) -> list[float]:
    """Ranks with ties averaged (Spearman's)."""
    order = sorted(range(len(xs)), key=xs.__getitem__)
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float:
    rx, ry = ranks(xs), ranks(ys)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return float("nan")
    return statistics.correlation(rx, ry)


def base_config(args: argparse.Namespace):
    from modelswarms.config import load_config, parse_config

    raw = json.loads(load_config(args.config).model_dump_json())
    if args.data:
        raw["data"] = {"path": str(Path(args.data).resolve())}
    if args.max_dev:
        raw["data"]["max_dev"] = args.max_dev
    if args.max_test:
        raw["data"]["max_test"] = args.max_test
    if args.pool:
        raw["experts"]["paths"] = [str(p) for p in sorted(Path(args.pool).resolve().iterdir())
                                   if (p / "adapter_config.json").is_file()
                                   or (p / "config.json").is_file()]
    raw["search"]["particles"] = args.particles
    raw["output"]["evaluate_test"] = True
    raw["budget"] = None
    return parse_config(raw)


def variant(cfg, *, seed: int, iterations: int, items: int | None):
    from modelswarms.config import parse_config

    raw = json.loads(cfg.model_dump_json())
    raw["seed"] = seed
    raw["search"].update(max_iterations=iterations, patience=iterations + 1)
    raw["utility"]["estimate"] = None if items is None else {"items": items}
    return parse_config(raw)


def search(session, cfg, record: dict | None = None) -> dict[str, Any]:
    """One in-memory search with a fresh score cache; `record` collects the full-dev per-item
    scores of every candidate (fingerprint -> ItemScores)."""
    from modelswarms.runs.runner import search_loop
    from modelswarms.runs.scorer import Scorer, fingerprints

    session.cfg = cfg
    scorer = Scorer(session.evaluator, session.scorer.utility, cfg.utility.on_invalid)
    if record is not None:
        plain = scorer.score_many

        def recording(vectors, items, utility=None):
            out = plain(vectors, items, utility)
            if items is session.dev and vectors is not None:
                record.update(zip(fingerprints(vectors), out, strict=True))
            return out

        scorer.score_many = recording
    session.scorer = scorer
    start = time.perf_counter()
    strategy, history = search_loop(cfg, None, session)
    wall = time.perf_counter() - start
    best, best_dev = strategy.best()
    test = session.score(best, session.test)
    estimate = getattr(strategy, "estimate", None)
    return {"wall": wall, "history": history, "best_dev": best_dev, "test": test.scores,
            "test_acc": test.value, "evaluations": strategy.evaluations,
            "iterations": strategy.iteration,
            "item_evaluations": (estimate["item_evaluations"] if estimate
                                 else strategy.evaluations * len(session.dev))}


def held_out_errors(session, cfg, seed: int, record: dict, items: list[int]) -> list[dict]:
    """Estimates of the candidates of a full-dev run that the anchors were not fitted on."""
    from modelswarms.config import EstimateConfig
    from modelswarms.runs.estimate import FewItems
    from modelswarms.runs.scorer import fingerprints
    from modelswarms.search import strategy_spec

    first = strategy_spec("swarm").build(cfg, session.experts, session.space).ask()
    fitted = set(fingerprints(first)) | set(fingerprints(session.experts))
    fit_rows = [record[f] for f in fingerprints(first)] + \
        [r for f, r in record.items() if f in set(fingerprints(session.experts))]
    held = [r for f, r in record.items() if f not in fitted and math.isfinite(r.value)]
    out = []
    for k in items:
        for method in ("anchor", "random"):
            est = FewItems(session, EstimateConfig(items=k, method=method), seed)
            est.fit(fit_rows)
            guess = [est.estimate([r.scores[i] for i in est.anchors]) for r in held]
            truth = [r.value for r in held]
            err = [abs(g - t) for g, t in zip(guess, truth, strict=True)]
            out.append({"seed": seed, "items": k, "method": method, "held_out": len(held),
                        "fitted_on": est.fitted_on, "mae": statistics.fmean(err),
                        "max_err": max(err), "spearman": spearman(guess, truth)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "demo.yaml"),
                    help="model, pool, data and utility (default: the demo)")
    ap.add_argument("--data", help="dev/test JSON instead of the config's")
    ap.add_argument("--pool", help="a folder of expert folders instead of the config's")
    ap.add_argument("--max-dev", type=int)
    ap.add_argument("--max-test", type=int)
    ap.add_argument("--items", type=int, default=20, help="anchor items of runs B and C")
    ap.add_argument("--error-items", type=int, nargs="+", default=None,
                    help="anchor counts for the held-out error (default: --items)")
    ap.add_argument("--particles", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=4, help="iterations of runs A and B")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_fitness_estimate.md"))
    args = ap.parse_args()
    from modelswarms.runs.session import Session
    from modelswarms.stats import paired_bootstrap

    cfg = base_config(args)
    session = Session.open(cfg, need_test=True)
    n_dev, n_test = len(session.dev), len(session.test)
    print(f"{cfg.data_name}: {n_dev} dev / {n_test} test items, {len(session.pool.names)} "
          f"experts, {args.particles} particles; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    session.score_many(session.experts, session.dev)  # warm the engine's caches for every run
    errors, runs = [], []
    for seed in args.seeds:
        record: dict = {}
        a = search(session, variant(cfg, seed=seed, iterations=args.iterations, items=None),
                   record)
        errors += held_out_errors(session, variant(cfg, seed=seed, iterations=1, items=None),
                                  seed, record, args.error_items or [args.items])
        b = search(session, variant(cfg, seed=seed, iterations=args.iterations,
                                    items=args.items))
        per_iter = statistics.fmean(h["seconds"] for h in b["history"][1:])
        extra = max(0, math.floor((a["wall"] - b["wall"]) / per_iter))
        c = search(session, variant(cfg, seed=seed, iterations=args.iterations + extra,
                                    items=args.items))
        runs.append({"seed": seed, "A": a, "B": b, "C": c})
        for name, r in (("A", a), ("B", b), ("C", c)):
            print(f"seed {seed} {name}: {r['iterations']} iterations, {r['evaluations']} "
                  f"evaluations, {r['item_evaluations']} item-evaluations, {r['wall']:.1f} s, "
                  f"best dev {r['best_dev']:.4f}, test {r['test_acc']:.4f}", flush=True)
    write(args, cfg, n_dev, n_test, errors, runs, paired_bootstrap)


def write(args, cfg, n_dev, n_test, errors, runs, paired_bootstrap) -> None:
    def concat(name: str) -> list[float]:
        return [x for r in runs for x in r[name]["test"]]

    gains = {name: paired_bootstrap(concat(name), concat("A"), seed=0) for name in ("B", "C")}
    lines = [
        "# Fitness from fewer items (bench/fitness_estimate.py)", "",
        f"`{cfg.data_name}`, {n_dev} dev / {n_test} test items, {len(cfg.experts.paths)} "
        f"experts, Model Swarms with {args.particles} particles, seeds {args.seeds}; "
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        "one process, runs side by side (timings on a shared machine are noisy).", "",
        "Command: `python bench/fitness_estimate.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v is not None and k not in ("config", "out"))
        + "`", "",
        "## Estimate against true dev accuracy, on held-out candidates", "",
        "Anchors fitted on the first batch and the experts (scored on full dev); the held-out "
        "candidates are every later particle of the full-dev run A.", "",
        "| seed | items | method | fitted on | held-out | mean abs error | max abs error | "
        "Spearman |", "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {e['seed']} | {e['items']} | {e['method']} | {e['fitted_on']} | "
              f"{e['held_out']} | {e['mae']:.4f} | {e['max_err']:.4f} | {e['spearman']:+.3f} |"
              for e in errors]
    lines += ["", "## Model Swarms with and without the estimate", "",
              f"A: full dev; B: `utility.estimate: {{items: {args.items}}}`, same iterations "
              "(same evaluations); C: the same estimate, as many iterations as fit in A's wall "
              "time. Best dev is the reported best's full-dev accuracy.", "",
              "| seed | run | iterations | evaluations | item-evaluations | wall s | best dev | "
              "test |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        for name in ("A", "B", "C"):
            x = r[name]
            lines.append(f"| {r['seed']} | {name} | {x['iterations']} | {x['evaluations']} | "
                         f"{x['item_evaluations']} | {x['wall']:.1f} | {x['best_dev']:.4f} | "
                         f"{x['test_acc']:.4f} |")
    lines.append("")
    for name, what in (("B", "same evaluations"), ("C", "same wall time")):
        g = gains[name]
        lines.append(f"Test accuracy, {name} - A ({what}): {g['mean']:+.4f}, 95% interval "
                     f"[{g['low']:+.4f}, {g['high']:+.4f}] (paired bootstrap over {g['n']} "
                     f"seed x test items): {g['verdict']}.")
    lines.append("")
    out = Path(args.out)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(
        {"errors": errors, "runs": [{"seed": r["seed"], **{n: {k: v for k, v in r[n].items()
                                                               if k != "history"}
                                                          for n in "ABC"}} for r in runs],
         "gains": gains}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
