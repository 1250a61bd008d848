"""The Python API: `import modelswarms` runs a search in memory with a function as utility."""

from __future__ import annotations

import pytest
import torch

import modelswarms as ms
from modelswarms.errors import ConfigError

PROMPT = torch.tensor([[1, 2, 3, 4]])


def likes_token_5(model, tokenizer, items):
    """A utility of the user's: how likely the model finds token 5 after a fixed prompt."""
    with torch.no_grad():
        logits = model(input_ids=PROMPT.to(model.device)).logits
    return float(logits[0, -1].log_softmax(-1)[5])


def test_the_package_exposes_a_small_api():
    assert 8 <= len(ms.__all__) <= 14
    assert {"swarm", "cmaes", "random", "greedy_soup", "hswarm"} <= set(ms.strategies())


def test_a_swarm_over_adapters_with_a_function_utility_in_memory(tmp_path, lora_experts,
                                                                  mc_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = ms.config(experts=lora_experts, data=mc_data, utility=likes_token_5, budget=24,
                    search={"max_iterations": 4}, output={"evaluate_test": False})
    result = ms.search(cfg)
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing written
    experts = [r for r in result.report["rows"] if r["name"].startswith("expert:")]
    assert len(experts) == len(lora_experts)
    assert result.best_dev >= max(r["dev"] for r in experts)  # the experts were particles
    assert len(result.history) >= 2 and result.report["evaluations"] <= 24
    # the export is a plain adapter: loaded by transformers + peft it scores the same
    folder = result.save(tmp_path / "adapted")
    from modelswarms.evaluation.engine.backend import load_standalone

    model, tok = load_standalone(str(folder))
    assert likes_token_5(model, tok, []) == pytest.approx(result.best_dev, abs=1e-5)
    assert ms.evaluate(folder, mc_data, utility=likes_token_5).value == pytest.approx(
        result.best_dev, abs=1e-5)


def test_config_in_code_is_validated_like_a_file(lora_experts, mc_data):
    with pytest.raises(ConfigError, match="utility.topic: unknown key for utility type"):
        ms.config(experts=lora_experts, data=mc_data,
                  utility={"type": "multiple_choice", "topic": "finance"})
    with pytest.raises(ConfigError, match="strategy: unknown strategy 'pso'"):
        ms.search(ms.config(experts=lora_experts, data=mc_data, strategy="pso"))


def test_a_search_in_a_run_folder_and_a_merge_without_data(tmp_path, lora_experts, mc_data):
    cfg = ms.config(experts=lora_experts, data=mc_data, strategy="random", budget=10)
    report = ms.search(cfg, run_dir=tmp_path / "run").report
    assert (tmp_path / "run" / "report.json").is_file() and report["evaluations"] <= 10
    merged = ms.merge(ms.config(experts=lora_experts, merge={"method": "linear"}),
                      out=tmp_path / "merged")
    assert (merged / "adapter_config.json").is_file()


class TopTwoMean:
    """A strategy of the user's, in one place: the experts, then the mean of the best two."""

    label = "top-two mean"

    def __init__(self, experts: torch.Tensor):
        self.experts, self.iteration, self.evaluations = experts, 0, 0
        self.scored: list[tuple[torch.Tensor, float]] = []
        self.asked: torch.Tensor | None = None
        self.last: list[float] = []

    @property
    def done(self) -> bool:
        return self.iteration >= 2

    def ask(self) -> torch.Tensor:
        if self.iteration == 0:
            self.asked = self.experts
        else:
            best = sorted(self.scored, key=lambda x: -x[1])[:2]
            self.asked = torch.stack([v for v, _ in best]).mean(0, keepdim=True)
        return self.asked

    def tell(self, utilities: list[float]) -> None:
        assert self.asked is not None
        self.scored += list(zip(self.asked.clone(), utilities, strict=True))
        self.evaluations += len(utilities)
        self.iteration += 1
        self.last = list(utilities)

    def best(self) -> tuple[torch.Tensor, float]:
        return self.top(1)[0]

    def top(self, k: int) -> list[tuple[torch.Tensor, float]]:
        return sorted(self.scored, key=lambda x: -x[1])[:k]

    def record(self) -> dict:
        return {"global_best": self.best()[1], "utilities": self.last}

    def state_dict(self):
        return {"scored": torch.stack([v for v, _ in self.scored])}, {
            "utilities": [u for _, u in self.scored], "iteration": self.iteration,
            "evaluations": self.evaluations}

    def load_state_dict(self, tensors, meta) -> None:
        self.scored = list(zip(tensors["scored"], meta["utilities"], strict=True))
        self.iteration, self.evaluations = meta["iteration"], meta["evaluations"]


@ms.register_strategy("top_two_mean", label=TopTwoMean.label, iterations=lambda cfg: 2)
def _build_top_two(cfg, experts, space):
    return TopTwoMean(experts)


def test_a_strategy_registered_in_one_place_runs_everywhere(tmp_path, lora_experts, mc_data):
    """Registration is all it takes: `strategy:`, the run folder, resume and compare rows."""
    assert "top_two_mean" in ms.strategies()
    cfg = ms.config(experts=lora_experts, data=mc_data, strategy="top_two_mean")
    result = ms.search(cfg)
    assert result.report["evaluations"] == len(lora_experts) + 1
    report = ms.search(cfg, run_dir=tmp_path / "run").report
    assert report["best_dev"] == result.best_dev
    assert ms.search(cfg, run_dir=tmp_path / "run", resume=True).best_dev == result.best_dev
    table = ms.compare(ms.config(experts=lora_experts, data=mc_data,
                                 compare={"methods": ["best_expert", "top_two_mean"],
                                          "seeds": [0], "budget": 10}),
                       out=tmp_path / "cmp")
    row = next(r for r in table["rows"] if r["method"] == "top_two_mean")
    assert row["name"] == "top-two mean" and row["dev_mean"] == result.best_dev
    assert "vs_best_expert" in row  # a search: it gets its interval column


def test_a_function_utility_is_named_so_a_run_resumes_elsewhere(lora_experts, mc_data):
    """A module-level function becomes `type: python` (importable by another process that
    resumes the run folder); a closure is registered for this process."""
    cfg = ms.config(experts=lora_experts, data=mc_data, utility=likes_token_5)
    assert (cfg.utility.type, cfg.utility.function) == ("python",
                                                        f"{__name__}:likes_token_5")

    def shifted(model, tokenizer, items):
        return likes_token_5(model, tokenizer, items) + 1.0

    local = ms.config(experts=lora_experts, data=mc_data, utility=shifted, budget=3)
    assert "<locals>" in local.utility.type
    plain = cfg.model_copy(update={"budget": 3})
    assert ms.search(local).best_dev == pytest.approx(ms.search(plain).best_dev + 1.0)


def test_config_takes_the_pool_load_pool_returns(lora_experts, full_experts, mc_data):
    """What `ms.load_pool` returns is what `ms.config` takes: the same experts, the same
    base model, as naming their folders."""
    pool = ms.load_pool(lora_experts)
    cfg = ms.config(experts=pool, data=mc_data)
    assert [str(p) for p in cfg.experts.paths] == [str(e.path) for e in pool.experts]
    assert cfg.experts.base_model == pool.base_model is not None
    assert ms.load_pool(cfg.experts.paths, base_model=cfg.experts.base_model).names == \
        pool.names
    full = ms.config(experts=ms.load_pool(full_experts), data=mc_data)
    assert full.experts.paths == [str(p) for p in full_experts] and \
        full.experts.base_model is None
