"""Fitness from fewer items (utility.estimate): anchors, estimates, the full-dev re-score of
the best, item-evaluation counts, resume, every weight-space strategy, bad configs."""

from __future__ import annotations

import json

import pytest
import torch

import modelswarms as ms
from modelswarms.config import EstimateConfig, load_config, parse_config
from modelswarms.errors import ConfigError
from modelswarms.evaluation.objectives.utilities import ItemScores
from modelswarms.runs import runner
from modelswarms.runs.estimate import allocate, choose_anchors

from .test_run import read_history, write_config


def estimated_config(tmp_path, experts, data, items=4, method="anchor", strategy="swarm",
                     **search):
    cfg = load_config(write_config(tmp_path, experts, data, **search))
    raw = json.loads(cfg.model_dump_json())
    raw["utility"]["estimate"] = {"items": items, "method": method}
    raw["strategy"] = strategy
    if strategy != "swarm":
        raw["search"] = {}
        raw["budget"] = 24
    return parse_config(raw)


def not_a_mean(model, tokenizer, items) -> ItemScores:
    return ItemScores(float(len(items)), [0.0] * len(items), [""] * len(items))


def test_allocate_gives_every_cluster_one_and_the_rest_by_size():
    assert allocate([10, 5, 1], 8) == [5, 2, 1]
    assert sum(allocate([3, 3, 3, 3], 7)) == 7
    assert allocate([1, 1, 30], 5) == [1, 1, 3]
    assert all(t <= s for t, s in zip(allocate([2, 1, 1], 4), [2, 1, 1], strict=True))


@pytest.mark.parametrize("method", ["anchor", "random"])
def test_anchors_are_distinct_items_whose_weights_sum_to_one(method):
    patterns = (torch.rand(6, 50, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    anchors, weights = choose_anchors(patterns, EstimateConfig(items=9, method=method), 3)
    assert len(anchors) == len(set(anchors)) == 9 and anchors == sorted(anchors)
    assert all(0 <= i < 50 for i in anchors)
    assert sum(weights) == pytest.approx(1.0)
    assert (anchors, weights) == choose_anchors(patterns, EstimateConfig(items=9, method=method),
                                                3)


def test_anchor_estimates_are_exact_where_clusters_share_one_pattern():
    # 4 distinct correctness patterns over 5 candidates, spread unevenly over 40 items: one
    # anchor per pattern, weighted by its count, gives every fitted candidate's exact mean
    kinds = torch.tensor([[1, 0, 1, 0, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]],
                         dtype=torch.float64).t()
    which = torch.tensor([0] * 3 + [1] * 7 + [2] * 20 + [3] * 10)
    patterns = kinds[:, which]
    anchors, weights = choose_anchors(patterns, EstimateConfig(items=4), 0)
    assert len(anchors) == 4 and sorted(which[anchors].tolist()) == [0, 1, 2, 3]
    est = (patterns[:, anchors] * torch.tensor(weights, dtype=torch.float64)).sum(1)
    torch.testing.assert_close(est, patterns.mean(1))
    # a uniform random subset of the same size is off for some candidate
    anchors, weights = choose_anchors(patterns, EstimateConfig(items=4, method="random"), 0)
    est = (patterns[:, anchors] * torch.tensor(weights, dtype=torch.float64)).sum(1)
    assert not torch.allclose(est, patterns.mean(1))


def test_a_swarm_on_estimates_reports_its_best_on_full_dev(tmp_path, lora_experts, mc_data):
    cfg = estimated_config(tmp_path, lora_experts, mc_data, items=4)
    result = ms.search(cfg)
    s, dev = result.session, result.session.dev
    # the reported best is the search's global best, scored on all 12 dev items
    assert result.best_dev == s.score(result.best, dev).value
    e = result.report["estimate"]
    assert e["items"] == 4 and e["dev_items"] == 12 and e["rescored"] == 1 + 2
    history = result.history
    assert result.report["best_dev"] == result.best_dev
    # iteration 0 on full dev (4 particles, the 3 experts among them); then 4 items each
    assert history[0]["utilities"][:3] == [s.score(x, dev).value for x in s.experts]
    steps = len(history) - 1
    assert e["item_evaluations"] == 4 * 12 + steps * 4 * 4 + 3 * 12
    assert [h["item_evaluations"] for h in history] == [48 + i * 16 for i in range(len(history))]
    # later utilities are estimates: multiples of 1/12 weighted over 4 anchor items
    assert all(u * 12 == pytest.approx(round(u * 12)) for h in history for u in h["utilities"])


def test_an_estimated_run_folder_says_so_and_resumes_exactly(tmp_path, lora_experts, mc_data,
                                                            checkpoint_dies):
    def config(name):
        raw = json.loads(estimated_config(tmp_path / name, lora_experts, mc_data)
                         .model_dump_json())
        raw["output"]["dir"] = str(tmp_path / name / "run")
        return parse_config(raw)

    ref = runner.run(config("ref"), show_progress=False)
    assert "Fitness estimated from 4 of 12 dev items" in \
        (tmp_path / "ref" / "run" / "report.md").read_text()
    checkpoint_dies(3)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config("cut"), show_progress=False)
    checkpoint_dies(None)
    resumed = runner.run(resume=tmp_path / "cut" / "run", show_progress=False)
    assert resumed["rows"] == ref["rows"] and resumed["estimate"] == ref["estimate"]
    strip = [{k: v for k, v in h.items() if k not in ("seconds", "wall_time")}
             for h in read_history(tmp_path / "cut" / "run")]
    assert strip == [{k: v for k, v in h.items() if k not in ("seconds", "wall_time")}
                     for h in read_history(tmp_path / "ref" / "run")]


@pytest.mark.parametrize("strategy", ["random", "cmaes", "greedy_soup", "layer_swarm"])
def test_every_weight_strategy_runs_on_estimates(tmp_path, lora_experts, mc_data, strategy):
    cfg = estimated_config(tmp_path, lora_experts, mc_data, strategy=strategy)
    result = ms.search(cfg)
    assert result.best_dev == result.session.score(result.best, result.session.dev).value
    e, first = result.report["estimate"], len(result.history[0]["utilities"])
    # the first batch on 12 items (with the experts, where it is not them), every later
    # candidate on 4, the re-scored on 12
    experts = 0 if strategy in ("greedy_soup", "layer_swarm") else 3  # they start at them
    assert e["item_evaluations"] == (first + experts) * 12 + \
        (result.report["evaluations"] - first) * 4 + e["rescored"] * 12


def test_bad_estimate_configs_are_refused_by_name(tmp_path, lora_experts, mc_data):
    with pytest.raises(ConfigError, match=r"utility.estimate.items: 12 is not fewer than the "
                                          r"12 dev items"):
        ms.search(estimated_config(tmp_path, lora_experts, mc_data, items=12))
    raw = json.loads(estimated_config(tmp_path, lora_experts, mc_data).model_dump_json())
    raw["utility"]["estimate"]["anchors"] = 3
    with pytest.raises(ConfigError, match="anchors"):
        parse_config(raw)
    raw["utility"]["estimate"] = {"items": 4, "method": "irt"}
    with pytest.raises(ConfigError, match="method"):
        parse_config(raw)
    raw["utility"] = {"type": "python", "function": "tests.test_estimate:not_a_mean",
                      "estimate": {"items": 4}}
    with pytest.raises(ConfigError, match="not the mean of its per-item scores"):
        ms.search(parse_config(raw))
