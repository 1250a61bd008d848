"""Uncertainty of test-score differences: paired bootstrap over items, seed averaging, the
compact per-item encoding of results.jsonl, and where a swarm's top particles started.

Two models scored on the same test items differ item by item; resampling the items (the
same draw for both) keeps that pairing, so the interval reflects how much the difference
would move on another test set of the same size from the same distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

# Most (resample x item) indices drawn at once: bounds memory on a 1000-item test set.
_CHUNK = 1 << 22


def verdict(low: float, high: float) -> str:
    """The word for an interval of a - b: wins or loses only when it excludes 0."""
    if low > 0:
        return "wins"
    if high < 0:
        return "loses"
    return "tie"


def _resample_means(d: torch.Tensor, resamples: int, gen: torch.Generator) -> torch.Tensor:
    n = d.numel()
    # Centre on one item: a constant difference then resamples to exactly itself (no
    # summation rounding), and the sums stay small.
    centre = d[0]
    shifted = d - centre
    rows = max(1, _CHUNK // n)
    means = []
    for start in range(0, resamples, rows):
        idx = torch.randint(n, (min(rows, resamples - start), n), generator=gen)
        means.append(shifted[idx].mean(dim=1) + centre)
    return torch.cat(means)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 10000,
                     seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Mean of a - b over items and its percentile bootstrap interval.

    `a` and `b` are per-item scores of two models on the same items, in the same order.
    Items are resampled with replacement `resamples` times from a generator seeded with
    `seed` (so the interval is reproducible); the interval holds the central `level` of the
    resampled means (linear interpolation between order statistics). Items where either
    score is NaN (left out by the utility) are dropped from both.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same items: {len(a)} against {len(b)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    x = torch.tensor([float(v) for v in a], dtype=torch.float64)
    y = torch.tensor([float(v) for v in b], dtype=torch.float64)
    keep = ~(torch.isnan(x) | torch.isnan(y))
    d = (x - y)[keep]
    if d.numel() == 0:
        raise ValueError("paired bootstrap: no item has both scores")
    gen = torch.Generator().manual_seed(seed)
    means = _resample_means(d, resamples, gen)
    tail = (1.0 - level) / 2.0
    qs = torch.tensor([tail, 1.0 - tail], dtype=torch.float64)
    low, high = (float(q) for q in torch.quantile(means, qs))
    centre = d[0]
    mean = float((d - centre).mean() + centre)
    return {"mean": mean, "low": low, "high": high, "level": level, "n": int(d.numel()),
            "resamples": resamples, "verdict": verdict(low, high)}


def seed_averaged_gain(runs: Sequence[Sequence[float]], reference: Sequence[float], *,
                       resamples: int = 10000, seed: int = 0,
                       level: float = 0.95) -> dict[str, Any]:
    """Gain of a search over `reference` across its seeds: the per-item score averaged over
    the seeds' final models (`runs`, one per-item list per seed), minus the reference's,
    with the paired item bootstrap of `paired_bootstrap`.

    Why items and not seeds: with a few hundred test items and three seeds, which items
    happen to be in the test set moves the difference far more than the seed does, and three
    seeds are too few to resample. Averaging the seeds per item removes their variance from
    the estimate (it is a gain of the search, not of one lucky seed) and keeps the pairing
    with the reference on each item, which the bootstrap then resamples.
    """
    if not runs:
        raise ValueError("seed_averaged_gain: no seed given")
    lengths = {len(r) for r in runs}
    if len(lengths) != 1:
        raise ValueError(f"every seed must score the same items; lengths {sorted(lengths)}")
    avg = torch.tensor([[float(v) for v in r] for r in runs], dtype=torch.float64).mean(0)
    out = paired_bootstrap(avg.tolist(), reference, resamples=resamples, seed=seed,
                           level=level)
    return {**out, "seeds": len(runs)}


def pack_scores(scores: Sequence[float] | None) -> str | list[float] | None:
    """Per-item scores as stored in results.jsonl: "0110..." when every score is 0 or 1
    (accuracy: one character an item), else the list of floats."""
    if scores is None:
        return None
    if all(s == 0.0 or s == 1.0 for s in scores):
        return "".join("1" if s == 1.0 else "0" for s in scores)
    return [float(s) for s in scores]


def unpack_scores(packed: str | list[float] | None) -> list[float] | None:
    """Inverse of `pack_scores`; None (a line written before per-item scores) stays None."""
    if packed is None:
        return None
    if isinstance(packed, str):
        if set(packed) - {"0", "1"}:
            raise ValueError(f"packed scores hold only 0 and 1, got {packed[:20]!r}")
        return [1.0 if c == "1" else 0.0 for c in packed]
    return [float(v) for v in packed]


def dev_ranks(dev: Sequence[float]) -> list[int]:
    """Rank of each value, 1 = best; equal values share the better rank."""
    return [1 + sum(1 for other in dev if other > v) for v in dev]


def weak_to_strong(particles: Sequence[int], particle_dev: Sequence[float],
                   expert_names: Sequence[str],
                   expert_dev: Sequence[float]) -> list[dict[str, Any]]:
    """Where the final top particles started: for each (best first), the expert it was at
    iteration 0 and that expert's dev rank among the experts, or "grown" for a particle that
    population growth added. Model Swarms' particles 0..n_experts-1 are the experts in pool
    order and grown children come after them, so the index alone says where one started."""
    if len(expert_names) != len(expert_dev):
        raise ValueError("one dev score per expert")
    ranks = dev_ranks(expert_dev)
    out = []
    for final_rank, (i, dev) in enumerate(zip(particles, particle_dev, strict=True), 1):
        expert = i < len(expert_names)
        out.append({"particle": int(i), "started_as": expert_names[i] if expert else "grown",
                    "start_rank": ranks[i] if expert else None, "final_rank": final_rank,
                    "dev": None if dev is None or math.isnan(dev) else float(dev)})
    return out
