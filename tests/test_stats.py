"""Paired bootstrap, seed averaging, the per-item encoding and weak-to-strong, against hand
computations."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from modelswarms.search.swarm import ModelSwarm, SwarmConfig
from modelswarms.stats import (
    dev_ranks,
    pack_scores,
    paired_bootstrap,
    seed_averaged_gain,
    unpack_scores,
    verdict,
    weak_to_strong,
)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's and torch's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def test_identical_scores_give_a_zero_interval():
    a = [1.0, 0.0, 1.0, 1.0, 0.0]
    ci = paired_bootstrap(a, list(a))
    assert (ci["mean"], ci["low"], ci["high"]) == (0.0, 0.0, 0.0)
    assert ci["verdict"] == "tie" and ci["n"] == 5 and ci["resamples"] == 10000


def test_a_constant_shift_is_exactly_that_shift():
    b = [0.0, 0.5, 1.0, 0.25, 0.75]
    up = paired_bootstrap([x + 0.25 for x in b], b, resamples=500)
    assert (up["mean"], up["low"], up["high"], up["verdict"]) == (0.25, 0.25, 0.25, "wins")
    down = paired_bootstrap(b, [x + 0.25 for x in b], resamples=500)
    assert (down["mean"], down["low"], down["high"], down["verdict"]) == \
        (-0.25, -0.25, -0.25, "loses")
    # a shift not exact in binary: equal up to rounding of the per-item differences
    odd = paired_bootstrap([x + 0.1 for x in b], b, resamples=500)
    for key in ("mean", "low", "high"):
        assert odd[key] == pytest.approx(0.1, abs=1e-12)


def test_interval_matches_a_plain_loop_over_the_same_draws():
    rng = random.Random(3)
    a = [float(rng.random() < 0.6) for _ in range(9)]
    b = [float(rng.random() < 0.4) for _ in range(9)]
    resamples, seed = 300, 7
    got = paired_bootstrap(a, b, resamples=resamples, seed=seed, level=0.9)
    # the documented draw: one (resamples x items) matrix of indices from a seeded generator
    idx = torch.randint(len(a), (resamples, len(a)),
                        generator=torch.Generator().manual_seed(seed)).tolist()
    d = [x - y for x, y in zip(a, b, strict=True)]
    means = sorted(sum(d[j] for j in row) / len(d) for row in idx)
    assert got["mean"] == pytest.approx(sum(d) / len(d), abs=1e-12)
    assert got["low"] == pytest.approx(_percentile(means, 0.05), abs=1e-12)
    assert got["high"] == pytest.approx(_percentile(means, 0.95), abs=1e-12)


def test_interval_matches_the_exact_bootstrap_distribution():
    a, b = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]  # differences 1, 0, 0, 0
    d = [x - y for x, y in zip(a, b, strict=True)]
    # every one of the 4^4 equally likely resamples, by hand
    means = sorted(sum(d[j] for j in pick) / 4 for pick in itertools.product(range(4),
                                                                              repeat=4))

    def quantile(q: float) -> float:  # the smallest mean whose CDF reaches q
        return means[math.ceil(q * len(means)) - 1]

    assert (quantile(0.025), quantile(0.975)) == (0.0, 0.75)
    ci = paired_bootstrap(a, b, resamples=20000, seed=1)
    assert (ci["mean"], ci["low"], ci["high"], ci["verdict"]) == (0.25, 0.0, 0.75, "tie")


def test_deterministic_per_seed():
    rng = random.Random(0)
    a = [rng.random() for _ in range(30)]
    b = [rng.random() for _ in range(30)]
    assert paired_bootstrap(a, b, seed=4) == paired_bootstrap(a, b, seed=4)
    assert paired_bootstrap(a, b, seed=4)["low"] != paired_bootstrap(a, b, seed=5)["low"]


def test_bad_inputs_and_left_out_items():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="no item"):
        paired_bootstrap([math.nan], [1.0])
    ci = paired_bootstrap([1.0, math.nan, 1.0], [0.0, 1.0, 0.0], resamples=50)
    assert ci["n"] == 2 and ci["mean"] == 1.0


def test_seed_averaged_gain_bootstraps_the_per_item_mean_over_seeds():
    runs = [[1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0, 1.0]]
    ref = [0.0, 0.0, 1.0, 0.0, 0.0]
    got = seed_averaged_gain(runs, ref, resamples=400, seed=2)
    hand = paired_bootstrap([1.0, 0.5, 0.5, 0.0, 1.0], ref, resamples=400, seed=2)
    assert got == {**hand, "seeds": 2}
    one = seed_averaged_gain(runs[:1], ref, resamples=400, seed=2)
    assert one == {**paired_bootstrap(runs[0], ref, resamples=400, seed=2), "seeds": 1}
    with pytest.raises(ValueError, match="same items"):
        seed_averaged_gain([[1.0], [1.0, 0.0]], [0.0])


def test_verdict_only_where_the_interval_excludes_zero():
    assert verdict(0.01, 0.2) == "wins"
    assert verdict(-0.2, -0.01) == "loses"
    assert verdict(0.0, 0.2) == verdict(-0.1, 0.1) == verdict(-0.1, 0.0) == "tie"


def test_per_item_scores_pack_and_unpack():
    assert pack_scores([1.0, 0.0, 0.0, 1.0]) == "1001"
    assert unpack_scores("1001") == [1.0, 0.0, 0.0, 1.0]
    assert pack_scores([0.5, 1.0]) == [0.5, 1.0]
    assert unpack_scores([0.5, 1.0]) == [0.5, 1.0]
    assert pack_scores(None) is None and unpack_scores(None) is None
    assert pack_scores([]) == "" and unpack_scores("") == []
    with pytest.raises(ValueError, match="only 0 and 1"):
        unpack_scores("0121")


def test_weak_to_strong_ranks_the_starting_experts_by_dev():
    assert dev_ranks([0.2, 0.5, 0.3]) == [3, 1, 2]
    assert dev_ranks([0.5, 0.5, 0.1]) == [1, 1, 3]  # ties share the better rank
    got = weak_to_strong([2, 4, 0], [0.6, 0.55, 0.5], ["a", "b", "c"], [0.2, 0.5, 0.3])
    assert got == [
        {"particle": 2, "started_as": "c", "start_rank": 2, "final_rank": 1, "dev": 0.6},
        {"particle": 4, "started_as": "grown", "start_rank": None, "final_rank": 2,
         "dev": 0.55},
        {"particle": 0, "started_as": "a", "start_rank": 3, "final_rank": 3, "dev": 0.5},
    ]


def test_swarm_top_indices_are_the_particles_of_top():
    swarm = ModelSwarm(torch.randn(3, 6, generator=torch.Generator().manual_seed(0)),
                       SwarmConfig(particles=5), seed=0)
    assert swarm.n == 5 and swarm.n_experts == 3
    swarm.tell([0.1, 0.7, 0.3, 0.9, 0.5])
    assert swarm.top_indices(3) == [3, 1, 4]
    for i, (vec, util) in zip(swarm.top_indices(3), swarm.top(3), strict=True):
        assert torch.equal(vec, swarm.p[i]) and util == float(swarm.p_util[i])
