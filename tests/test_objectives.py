"""The paper's other objectives on tiny real models, each against a hand computation:
multi-task harmonic mean, reward model (and its variants), AbstainQA, user utilities."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from modelswarms.config import DataConfig, parse_config
from modelswarms.errors import ConfigError
from modelswarms.evaluation.data.items import load_split
from modelswarms.evaluation.data.presets import PRESETS
from modelswarms.evaluation.data.prompts import multiple_choice_prompt
from modelswarms.evaluation.engine import generation
from modelswarms.evaluation.objectives.multitask import harmonic_mean
from modelswarms.evaluation.objectives.reward import RewardConfig, combine, normalise
from modelswarms.testing import make_tiny_llama, make_tiny_reward_model, make_utility

from .conftest import SHARED_EVAL, make_mc_items


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", seed=5)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(
        folder)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    return make_tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm", seed=2)


def _task_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"dev": make_mc_items(6, 10), "test": make_mc_items(4, 11)}))
    b.write_text(json.dumps({"dev": [{"question": f"q{i}", "answer": "7"} for i in range(5)],
                             "test": [{"question": "t", "answer": "1"}]}))
    return a, b


def test_multi_task_is_the_harmonic_mean_of_the_task_utilities(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    a, b = _task_files(tmp_path)
    data = DataConfig(tasks={"arith": str(a), "qa": str(b)})
    items = load_split(data, "dev")
    assert [it["task"] for it in items] == ["arith"] * 6 + ["qa"] * 5
    # exact match gives every other qa item the gold answer, so both tasks score above zero
    monkeypatch.setattr(generation, "generate", lambda m, prompts, **k: [[
        tok.encode("7" if i % 2 == 0 else "no", add_special_tokens=False)
        for i in range(len(prompts))]])
    r = make_utility(type="multi_task", batch_size=4).score(model, tok, items)
    mc = make_utility(batch_size=4).score(model, tok, items[:6])
    qa_value = 3 / 5
    if mc.value > 0:
        assert r.value == pytest.approx(2 / (1 / mc.value + 1 / qa_value))
    else:
        assert r.value == 0.0
    assert r.scores[:6] == mc.scores and r.scores[6:] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert harmonic_mean([0.5, 0.25]) == pytest.approx(1 / 3)
    assert harmonic_mean([0.9, 0.0]) == 0.0


def test_multi_task_config_needs_exactly_one_data_source(tmp_path):
    a, b = _task_files(tmp_path)
    with pytest.raises(ConfigError, match="exactly one of data.path, data.tasks"):
        parse_config({"experts": {"paths": ["x"]}, "data": {"path": str(a),
                                                           "tasks": {"b": str(b)}}})
    with pytest.raises(ConfigError, match="preset needs data.root"):
        parse_config({"experts": {"paths": ["x"]}, "data": {"preset": "legal"}})


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_EVAL / "mmlu.json").exists(),
                    reason="../shared/data/eval is not here (only developers' machines have it)")
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_load_two_tasks_from_the_shared_data(preset):
    data = DataConfig(preset=preset, root=str(SHARED_EVAL))
    items = load_split(data, "dev")
    tasks = {it["task"] for it in items}
    assert tasks == set(PRESETS[preset]) and len(tasks) == 2
    for name, (_, subjects) in PRESETS[preset].items():
        part = [it for it in items if it["task"] == name]
        assert part and all("choices" in it for it in part)
        if subjects:
            assert {it["domain"] for it in part} <= set(subjects)


def test_reward_model_utility_matches_a_hand_computation(tiny, reward_model):
    model, tok = tiny
    items = [{"prompt": p} for p in ("Tell me a joke.", "Why is the sky blue?", "Hi")]
    rcfg = RewardConfig(model=str(reward_model), low=-1.0, high=1.0)
    r = make_utility(type="reward_model", max_new_tokens=6, batch_size=2,
                     reward=rcfg).score(model, tok, items)
    outs = generation.generate(model, [tok(it["prompt"])["input_ids"] for it in items],
                               max_new_tokens=6, pad_id=tok.pad_token_id,
                               eos_id=tok.eos_token_id, batch_size=1)[0]
    rm = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    rtok = AutoTokenizer.from_pretrained(reward_model)
    expected = []
    for it, ids in zip(items, outs, strict=True):
        answer = tok.decode(ids, skip_special_tokens=True)
        with torch.no_grad():
            raw = rm(**rtok(f"{it['prompt']}\n\n{answer}", return_tensors="pt")).logits[0, 0]
        expected.append(normalise(float(raw), -1.0, 1.0))
    assert r.scores == pytest.approx(expected, abs=1e-5)
    assert r.value == pytest.approx(sum(expected) / 3, abs=1e-5)
    rev = make_utility(type="reward_model", max_new_tokens=6, batch_size=2,
                       reward=rcfg.model_copy(update={"variant": "reverse"})).score(
        model, tok, items)
    assert rev.scores == pytest.approx([1 - x for x in expected], abs=1e-5)


def test_reward_normalisation_and_length_variants():
    assert normalise(0.0, -5, 5) == 0.5 and normalise(9, -5, 5) == 1.0
    assert normalise(-9, -5, 5) == 0.0
    assert combine(0.8, 0.25, "concise", 0.5) == pytest.approx(0.4 + 0.375)
    assert combine(0.8, 0.25, "verbose", 0.5) == pytest.approx(0.4 + 0.125)
    assert combine(0.8, 0.25, "reverse", 0.5) == pytest.approx(0.2)
    assert combine(0.8, 0.25, "plain", 0.5) == 0.8
    with pytest.raises(ConfigError, match="utility.reward: required for utility type reward"):
        make_utility(type="reward_model")
    with pytest.raises(ValueError, match="greater than"):
        RewardConfig(model="x", low=1, high=1)


def test_abstain_qa_effective_reliability_by_hand(tiny):
    model, tok = tiny
    items = make_mc_items(8, 3)
    r = make_utility(type="abstain_qa", batch_size=3).score(model, tok, items)
    mc = make_utility(batch_size=3).score(model, tok, items)
    expected = []

    def logp(text: str, word: str) -> float:  # log p(word | text), token by token
        ids = tok(text + word, return_tensors="pt").input_ids
        n = len(tok.encode(word, add_special_tokens=False))
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        return float(sum(lp[ids.shape[1] - n - 1 + j, ids[0, ids.shape[1] - n + j]]
                         for j in range(n)))

    for it, letter, right in zip(items, mc.predictions, mc.scores, strict=True):
        text = (f"{multiple_choice_prompt(it)}\nProposed answer: {letter}: "
                f"{it['choices'][letter]}\nIs the proposed answer true or false?\n"
                "The proposed answer is")
        says_false = logp(text, " false") > logp(text, " true")
        expected.append(0.0 if says_false else (1.0 if right else -1.0))
    assert r.scores == expected
    assert r.value == pytest.approx(sum(expected) / len(items))
    assert r.counts["abstained"] == expected.count(0.0)


def test_user_utility_class_by_module_path(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    (tmp_path / "my_objectives.py").write_text(
        "from modelswarms import ItemScores\n"
        "class Longest:\n"
        "    required_fields = ('question',)\n"
        "    def __init__(self, cfg):\n"
        "        self.cfg = cfg\n"
        "    def score(self, model, tokenizer, items):\n"
        "        s = [float(len(it['question']) > 3) for it in items]\n"
        "        return ItemScores(sum(s) / len(s), s, [''] * len(s))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    u = make_utility(type="my_objectives:Longest")
    assert u.name == "my_objectives:Longest"
    assert u.score(model, tok, [{"question": "abcd"}, {"question": "a"}]).value == 0.5
    sys.modules.pop("my_objectives", None)
    with pytest.raises(ConfigError, match="cannot import my_objectives:Nope"):
        make_utility(type="my_objectives:Nope")
