"""Baseline search strategies: CMA-ES, random search and greedy soup, on the same engine and
the same evaluation budget as Model Swarms; resumable bit-exactly."""

from __future__ import annotations

import pytest
import torch

from modelswarms.config import parse_config
from modelswarms.runs import runner
from modelswarms.search import CMAES, GreedySoup, ModelSwarm, RandomSearch
from modelswarms.search.coefficients import CoefficientMap, CoefficientSearchConfig, layer_groups
from modelswarms.search.swarm import SwarmConfig
from modelswarms.space import FlatSpace

SPACE = FlatSpace(["model.layers.0.q.lora_A", "model.layers.1.q.lora_A", "lm_head.x"],
                  [(2, 3), (4,), (2,)])


def experts(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, SPACE.dim, generator=torch.Generator().manual_seed(seed))


def utility(x: torch.Tensor) -> float:
    """A smooth toy objective with its peak away from every expert."""
    return -float(((x - 0.3) ** 2).sum())


def drive(strategy, steps: int | None = None) -> list[list[float]]:
    told = []
    while not strategy.done and (steps is None or len(told) < steps):
        u = [utility(x) for x in strategy.ask()]
        strategy.tell(u)
        told.append(u)
    return told


def test_coefficient_map_layers_and_weights():
    index, groups = layer_groups(SPACE, per_layer=True)
    assert groups == ["layer 0", "layer 1", "other"]
    assert index.tolist() == [0] * 6 + [1] * 4 + [2] * 2
    e = experts()
    cmap = CoefficientMap(e, SPACE, per_layer=True)
    assert cmap.dim == 9
    torch.testing.assert_close(cmap.weights(cmap.uniform()), e.mean(0))
    c = torch.zeros(9, dtype=torch.float64)
    c[0 * 3 + 0] = 1.0   # expert 0 for layer 0
    c[1 * 3 + 1] = 2.0   # expert 1 twice for layer 1
    w = cmap.weights(c)
    torch.testing.assert_close(w[:6], e[0, :6])
    torch.testing.assert_close(w[6:10], 2 * e[1, 6:10])
    assert w[10:].abs().sum() == 0


@pytest.mark.parametrize("cls", [CMAES, RandomSearch])
def test_coefficient_searches_improve_keep_the_budget_and_resume_exactly(cls):
    cfg = CoefficientSearchConfig(max_iterations=50)
    e = experts()
    a = cls(CoefficientMap(e, SPACE, False), cfg, seed=3, budget=60)
    told = drive(a, steps=3)
    tensors, meta = a.state_dict()
    b = cls(CoefficientMap(e, SPACE, False), cfg, seed=3, budget=60)
    b.load_state_dict(tensors, meta)
    drive(a)
    drive(b)
    assert a.evaluations <= 60 and a.evaluations == b.evaluations
    assert a.best()[1] == b.best()[1]
    torch.testing.assert_close(a.best()[0], b.best()[0])
    assert a.best()[1] >= max(told[0])
    assert a.best()[1] > max(utility(x) for x in e)  # the mix beats every expert here
    top = a.top(3)
    assert [u for _, u in top] == sorted((u for _, u in top), reverse=True)
    assert top[0][1] == a.best()[1]


def test_cmaes_is_deterministic_for_a_seed_and_differs_across_seeds():
    cfg = CoefficientSearchConfig(max_iterations=4)
    e = experts()
    runs = [drive(CMAES(CoefficientMap(e, SPACE, False), cfg, seed=s)) for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_greedy_soup_adds_experts_best_first_while_not_worse():
    e = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    space = FlatSpace(["w"], [(1,)])
    assert space.dim == 1
    soup = GreedySoup(e)
    target = 1.5

    def u(x):
        return -abs(float(x[0]) - target)

    while not soup.done:
        soup.tell([u(x) for x in soup.ask()])
    # ranking: 1 (0.5 away) and 2 (0.5 away) tie; sorted() keeps 1 first. soup [1] -> try
    # mean(1, 2) = 1.5 (better: kept) -> mean(1, 2, 0) = 1.0 (worse) -> mean(1, 2, 10) (worse)
    assert soup.soup == [1, 2]
    assert soup.best()[1] == 0.0 and float(soup.best()[0]) == 1.5
    assert soup.evaluations == 4 + 3


@pytest.mark.parametrize("budget", [7, 10, 23])
def test_every_strategy_stays_within_the_budget(budget):
    e = experts(4)
    strategies = [
        ModelSwarm(e, SwarmConfig(max_iterations=100, patience=100), seed=0, budget=budget),
        CMAES(CoefficientMap(e, SPACE, False), CoefficientSearchConfig(), budget=budget),
        RandomSearch(CoefficientMap(e, SPACE, False), CoefficientSearchConfig(),
                     budget=budget),
        GreedySoup(e, budget=budget),
    ]
    for s in strategies:
        drive(s)
        assert s.evaluations <= budget, type(s).__name__
    assert strategies[2].evaluations == budget  # random search spends it exactly


@pytest.mark.parametrize("strategy", ["cmaes", "random", "greedy_soup"])
def test_strategies_run_end_to_end_and_resume(tmp_path, lora_experts, mc_data, strategy):
    def cfg(out):
        return parse_config({
            "experts": {"paths": [str(p) for p in lora_experts]},
            "data": {"path": str(mc_data), "max_dev": 8, "max_test": 8},
            "model": {"batch_size": 8},
            "strategy": strategy, "budget": 12,
            "coefficients": {"population": 4},
            "output": {"dir": str(tmp_path / out), "top_k": 2},
        })

    full = runner.run(cfg("full"), show_progress=False)
    assert full["strategy"] == strategy and full["evaluations"] <= 12
    names = [r["name"] for r in full["rows"]]
    label = {"cmaes": "CMA-ES", "random": "random search", "greedy_soup": "greedy soup"}
    assert f"{label[strategy]}: global best" in names
    # a run stopped after its first iteration resumes to the same end
    first = cfg("part")
    runner.run(first.model_copy(update={"budget": 4 if strategy != "greedy_soup" else 3}),
               show_progress=False)
    (tmp_path / "part" / "report.json").unlink()
    import yaml

    path = tmp_path / "part" / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data["budget"] = 12
    path.write_text(yaml.safe_dump(data))
    resumed = runner.run(resume=tmp_path / "part", show_progress=False)
    assert resumed["rows"] == full["rows"] and resumed["best_dev"] == full["best_dev"]


def test_layer_swarm_starts_at_the_experts_and_searches_per_layer_coefficients(
        tmp_path, lora_experts, mc_data):
    import modelswarms as ms
    from modelswarms.runs.session import Session
    from modelswarms.search import LayerSwarm

    cfg = ms.config(experts=lora_experts, data=mc_data, strategy="layer_swarm", budget=16,
                    search={"particles": 4})
    session = Session.open(cfg, need_test=False)
    search = LayerSwarm.over(session.experts, session.space, cfg)
    first = search.ask()
    assert torch.equal(first[: len(lora_experts)], session.experts.to(first.dtype))
    groups = search.cmap.groups
    assert len(groups) >= 2 and search.swarm.x.shape == (4, len(lora_experts) * len(groups))
    report = ms.search(cfg, run_dir=tmp_path / "run").report
    coef = report["best_coefficients"]
    assert coef["groups"] == groups and len(coef["coefficients"]) == len(lora_experts)
    assert report["best_dev"] >= max(r["dev"] for r in report["rows"]
                                     if r["name"].startswith("expert:"))
    assert report["evaluations"] <= 16 and report["weak_to_strong"]


@pytest.mark.parametrize("strategy", ["layer_swarm", "cmaes", "random", "greedy_soup"])
def test_coefficient_results_of_full_models_are_written_as_a_mergekit_config(
        tmp_path, full_experts, mc_data, strategy):
    """mergekit's linear merge with per-layer filters, read as mergekit reads it (the first
    filter that is a substring of the tensor's name, else the fallback), gives the exported
    best exactly. bench/mergekit_parity.py runs the same config through mergekit itself."""
    import yaml
    from safetensors.torch import load_file

    import modelswarms as ms

    cfg = ms.config(experts=full_experts, data=mc_data, strategy=strategy, budget=12,
                    search={"particles": 4}, coefficients={"per_layer": True, "population": 4})
    report = ms.search(cfg, run_dir=tmp_path / "run").report
    mk = yaml.safe_load((tmp_path / "run" / "best" / "mergekit.yaml").read_text())
    assert mk["merge_method"] == "linear" and mk["parameters"] == {"normalize": False}
    experts = [load_file(next((p).glob("*.safetensors"))) for p in full_experts]
    best = load_file(tmp_path / "run" / "best" / "model.safetensors")

    def weight(entry, name):
        w = entry["parameters"]["weight"]
        if not isinstance(w, list):
            return w
        return next(c["value"] for c in w if "filter" not in c or c["filter"] in name)

    for name, value in best.items():
        merged = sum(weight(e, name) * x[name].double()
                     for e, x in zip(mk["models"], experts, strict=True))
        torch.testing.assert_close(merged.to(value.dtype), value, rtol=1e-5, atol=1e-6)
    assert report["exports"]["mergekit"].endswith("mergekit.yaml")


def test_layer_swarm_needs_its_own_random_factors_to_be_another_search(lora_experts, mc_data):
    """With one random factor per particle, PSO over coefficient matrices decodes, move for
    move, to the weight-space swarm (moves are scalar combinations of particles, decoding is
    linear); per-coordinate factors make the layer-wise search a search of its own."""
    import modelswarms as ms
    from modelswarms.runs.session import Session
    from modelswarms.search import LayerSwarm, ModelSwarm
    from modelswarms.search.swarm import SwarmConfig

    cfg = ms.config(experts=lora_experts, data=mc_data, strategy="layer_swarm",
                    search={"particles": 4})
    session = Session.open(cfg, need_test=False)
    knobs = SwarmConfig(particles=4, dtype="float64")
    weights = ModelSwarm(session.experts.double(), knobs, seed=0)
    layered = LayerSwarm.over(session.experts.double(), session.space,
                              cfg.model_copy(update={"search": knobs}))
    start = torch.eye(len(lora_experts), dtype=torch.float64).repeat_interleave(
        len(layered.cmap.groups), dim=1)
    scalar = LayerSwarm(layered.cmap, ModelSwarm(start, knobs, seed=0))
    fake = [0.1, 0.4, 0.3, 0.2]
    for _ in range(3):
        w, s, lw = weights.ask(), scalar.ask(), layered.ask()
        torch.testing.assert_close(s, w)  # the same search
        for strategy in (weights, scalar, layered):
            strategy.tell(fake)
    assert not torch.allclose(lw, w)  # per-coordinate factors: another search
