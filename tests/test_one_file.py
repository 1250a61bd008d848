"""Adding a utility or a pool kind is one file. A utility's file holds its config and its code,
registered together; `utility:` in a config is then checked against its config class like a
built-in utility's, and a search runs with it. A pool kind's file holds one class, and
`experts.compose` accepts its name."""

from __future__ import annotations

import importlib
import json
import textwrap

import pytest
import yaml

import modelswarms as ms
from modelswarms.config import RunConfig, load_config
from modelswarms.errors import ConfigError
from modelswarms.evaluation.objectives import utilities

config_module = importlib.import_module("modelswarms.config")  # ms.config is the function

UTILITY_FILE = '''
"""The log-probability of one token after each question: a utility in one file."""

from typing import Literal

import torch
from pydantic import Field

from modelswarms import register_utility
from modelswarms.config import UtilityBase
from modelswarms.evaluation.objectives.utilities import ItemScores


class NextTokenConfig(UtilityBase):
    type: Literal["next_token"]
    token: int = Field(ge=0, description="the token whose log-probability is maximised")


@register_utility("next_token", config=NextTokenConfig)
class NextToken:
    required_fields = ("question",)

    def __init__(self, cfg: NextTokenConfig):
        self.cfg = cfg

    def score(self, model, tokenizer, items):
        scores = []
        with torch.no_grad():
            for it in items:
                ids = torch.tensor([tokenizer.encode(it["question"])], device=model.device)
                logits = model(input_ids=ids).logits[0, -1].float()
                scores.append(float(logits.log_softmax(-1)[self.cfg.token]))
        return ItemScores(sum(scores) / len(scores), scores, [""] * len(scores))
'''


@pytest.fixture
def next_token(tmp_path, monkeypatch):
    """The user's file, imported; the registries restored afterwards."""
    monkeypatch.setattr(utilities, "UTILITIES", dict(utilities.UTILITIES))
    monkeypatch.setattr(config_module, "UTILITY_CONFIGS", dict(config_module.UTILITY_CONFIGS))
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "next_token_utility.py").write_text(textwrap.dedent(UTILITY_FILE))
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    yield importlib.import_module("next_token_utility")
    monkeypatch.delitem(__import__("sys").modules, "next_token_utility")


def write_config(folder, lora_experts, mc_data, utility) -> object:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({
        "experts": {"paths": [str(p) for p in lora_experts]}, "data": {"path": str(mc_data)},
        "utility": utility, "budget": 16, "search": {"max_iterations": 3},
        "output": {"evaluate_test": False}}))
    return path


def test_a_utility_from_one_file_is_checked_and_searched(tmp_path, lora_experts, mc_data,
                                                         next_token, monkeypatch):
    path = write_config(tmp_path, lora_experts, mc_data, {"type": "next_token", "token": 5})
    cfg = load_config(path)
    assert isinstance(cfg.utility, next_token.NextTokenConfig) and cfg.utility.token == 5

    # its keys are checked like a built-in utility's, with the same messages
    for utility, message in (
            ({"type": "next_token", "token": 5, "topic": "x"},
             "utility.topic: unknown key for utility type next_token"),
            ({"type": "next_token"}, "utility.token: required for utility type next_token"),
            ({"type": "next_token", "token": -1}, "utility.token: Input should be greater")):
        with pytest.raises(ConfigError, match=message):
            load_config(write_config(tmp_path, lora_experts, mc_data, utility))
    schema = RunConfig.model_json_schema()
    assert "NextTokenConfig" in schema["$defs"] and "MultipleChoiceConfig" in schema["$defs"]

    monkeypatch.chdir(tmp_path)
    result = ms.search(cfg)
    experts = [r["dev"] for r in result.report["rows"] if r["name"].startswith("expert:")]
    assert len(experts) == len(lora_experts) and result.best_dev >= max(experts)
    # the score is the file's own computation: the exported adapter, loaded without
    # modelswarms, gives the same value
    from modelswarms.evaluation.engine.backend import load_standalone

    model, tok = load_standalone(str(result.save(tmp_path / "adapted")))
    again = next_token.NextToken(cfg.utility).score(model, tok, result.session.dev)
    assert again.value == pytest.approx(result.best_dev, abs=1e-4)


def test_without_the_file_the_type_is_a_custom_utility(lora_experts, mc_data, tmp_path):
    """Before its file is imported, `next_token` is only a name: its keys are not known, and
    the run says the utility is not registered."""
    path = write_config(tmp_path, lora_experts, mc_data, {"type": "next_token", "token": 5})
    with pytest.raises(ConfigError, match="utility.token: unknown key for utility type custom"):
        load_config(path)


POOL_FILE = '''
"""LoRA adapters named by their position in the config: a pool kind in one class."""

from modelswarms.pool import register_pool
from modelswarms.pool.kinds import LoraPool, load_pool


@register_pool("numbered")
class NumberedPool(LoraPool):
    @classmethod
    def open(cls, experts):
        names = [f"no. {i}" for i in range(len(experts.paths))]
        pool = load_pool(experts.paths, base_model=experts.base_model, names=names)
        return cls(pool.experts, pool.base_model, pool.template, pool.adapter_config)
'''


def test_a_pool_kind_from_one_file_is_a_compose_value(tmp_path, lora_experts, mc_data,
                                                      monkeypatch):
    from modelswarms.pool import base

    monkeypatch.setattr(base, "POOL_KINDS", dict(base.POOL_KINDS))
    monkeypatch.setattr(base, "COMPOSE_NAMES", list(base.COMPOSE_NAMES))
    monkeypatch.setattr(config_module, "POOL_KINDS", base.COMPOSE_NAMES)
    experts = {"paths": [str(p) for p in lora_experts], "compose": "numbered"}
    with pytest.raises(ConfigError, match="experts.compose: .*unknown pool kind 'numbered'"):
        ms.config(experts=experts, data=mc_data)
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "numbered_pool.py").write_text(textwrap.dedent(POOL_FILE))
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    importlib.import_module("numbered_pool")
    monkeypatch.delitem(__import__("sys").modules, "numbered_pool")

    monkeypatch.chdir(tmp_path)
    cfg = ms.config(experts=experts, data=mc_data, budget=8, search={"max_iterations": 1},
                    output={"evaluate_test": False})
    result = ms.search(cfg)
    rows = [r["name"] for r in result.report["rows"]]
    assert "expert: no. 0" in rows and "base model" in rows  # a LoRA pool: the base is scored


STRATEGY_FILE = '''
"""Hill climbing from the best expert: a strategy and its own config section in one file."""

import math

import torch
from pydantic import Field

from modelswarms.config import StrictModel, register_section
from modelswarms.search import register_strategy


class HillConfig(StrictModel):
    step: float = Field(0.5, gt=0, description="step, in units of a difference of two experts")
    tries: int = Field(3, ge=1, description="candidates per round")
    rounds: int = Field(3, ge=1, description="rounds after the experts' own")


register_section("hill", HillConfig)


class Hill:
    label = "hill climbing"

    def __init__(self, experts, cfg, seed, budget):
        self.experts, self.cfg, self.budget = experts, cfg, budget
        self.gen = torch.Generator().manual_seed(seed)
        self.evaluations = self.iteration = 0
        self.best_x, self.best_u, self.last = experts[0], -math.inf, []

    @property
    def done(self):
        over = self.budget is not None and self.evaluations + self.cfg.tries > self.budget
        return self.iteration > self.cfg.rounds or (self.iteration > 0 and over)

    def ask(self):
        if self.iteration == 0:  # the experts themselves first
            self.asked = self.experts.clone()
            return self.asked
        n = len(self.experts)
        i = torch.randint(n, (self.cfg.tries,), generator=self.gen)
        j = (i + 1 + torch.randint(n - 1, (self.cfg.tries,), generator=self.gen)) % n
        self.asked = self.best_x + self.cfg.step * (self.experts[i] - self.experts[j])
        return self.asked

    def tell(self, utilities):
        k = max(range(len(utilities)), key=utilities.__getitem__)
        if utilities[k] > self.best_u:
            self.best_x, self.best_u = self.asked[k].clone(), utilities[k]
        self.evaluations += len(utilities)
        self.iteration += 1
        self.last = list(utilities)

    def best(self):
        return self.best_x, self.best_u

    def top(self, k):
        return [(self.best_x, self.best_u)]

    def record(self):
        return {"global_best": self.best_u, "utilities": self.last}

    def state_dict(self):
        return ({"best": self.best_x, "rng": self.gen.get_state()},
                {"best_u": self.best_u, "evaluations": self.evaluations,
                 "iteration": self.iteration, "last": self.last})

    def load_state_dict(self, tensors, meta):
        self.best_x, self.best_u = tensors["best"], meta["best_u"]
        self.gen.set_state(tensors["rng"])
        self.evaluations, self.iteration = meta["evaluations"], meta["iteration"]
        self.last = meta["last"]


@register_strategy("hill", label=Hill.label,
                   iterations=lambda cfg: cfg.settings("hill").rounds + 1)
def build(cfg, experts, space):
    return Hill(experts, cfg.settings("hill"), cfg.seed, cfg.budget)
'''


def test_a_strategy_with_its_own_section_is_one_file(tmp_path, lora_experts, mc_data,
                                                     monkeypatch):
    """`hill:` is an unknown key until the strategy's file registers it; then it is checked
    like a built-in section, defaults when left out, is written into the run folder's config
    and read back on resume: RunConfig needs no line for it."""

    def write(**extra):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({
            "experts": {"paths": [str(p) for p in lora_experts]},
            "data": {"path": str(mc_data)}, "strategy": "hill",
            "output": {"evaluate_test": False}, **extra}))
        return path

    with pytest.raises(ConfigError, match="hill: unknown key"):
        load_config(write(hill={"rounds": 2}))

    module = importlib.import_module("modelswarms.search.registry")
    monkeypatch.setattr(module, "STRATEGIES", dict(module.STRATEGIES))
    monkeypatch.setattr(config_module, "SECTIONS", dict(config_module.SECTIONS))
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "hill_strategy.py").write_text(textwrap.dedent(STRATEGY_FILE))
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    plugin = importlib.import_module("hill_strategy")
    monkeypatch.delitem(__import__("sys").modules, "hill_strategy")

    for given, message in (({"rounds": 2, "pace": 1}, "hill.pace: unknown key"),
                           ({"step": 0}, "hill.step: Input should be greater than 0")):
        with pytest.raises(ConfigError, match=message):
            load_config(write(hill=given))
    assert load_config(write()).settings("hill") == plugin.HillConfig()  # its defaults
    cfg = load_config(write(hill={"rounds": 2, "tries": 2}))
    assert cfg.settings("hill").rounds == 2 and "hill" in ms.strategies()

    monkeypatch.chdir(tmp_path)
    result = ms.search(cfg, run_dir=tmp_path / "run")
    experts = [r["dev"] for r in result.report["rows"] if r["name"].startswith("expert:")]
    assert result.best_dev >= max(experts)
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text()
               .splitlines()]
    assert [h["evaluations"] for h in history] == [3, 5, 7]  # 3 experts, then 2 rounds of 2
    # the folder's config carries the section; a resume reads it back as the same config
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.settings("hill") == cfg.settings("hill")
    again = ms.search(run_dir=tmp_path / "run", resume=True)
    assert again.best_dev == result.best_dev
