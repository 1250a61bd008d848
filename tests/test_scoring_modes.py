"""Multiple-choice scoring modes (letter, cloze, cloze_norm, permuted) against hand
computations on tiny real models: one full forward per (prompt + option), no cache."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelswarms.config import RunConfig, utility_config
from modelswarms.errors import ConfigError
from modelswarms.evaluation.data.prompts import cloze_continuation, cloze_prompt
from modelswarms.evaluation.engine import generation
from modelswarms.testing import make_tiny_llama, make_utility

from .conftest import make_mc_items


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", seed=7)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(
        folder)


def hand_logprob(model, prompt: list[int], option: list[int]) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + option])).logits[0], -1)
    return sum(float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(option))


HEAD = list(range(20, 40))
PROMPTS = [[1, 20, 30, 40, 50, 60, 70], [1, 25], [1, 33, 44, 55], [1, 9, 8, 7, 6, 5, 4, 3]]
OPTIONS = [[[3, 4], [5], [6, 7, 8, 9]], [[6, 7, 8]], [[9], [10, 11], [12]],
           [[12, 13], [14, 15], [16], [17, 18, 19, 20, 21]]]


@pytest.mark.parametrize("prompts", [PROMPTS, [HEAD + p for p in PROMPTS]],
                         ids=["no shared head", "shared head"])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_option_logprobs_equal_one_forward_per_option(tiny, prompts, batch_size):
    model, _ = tiny
    got = generation.option_logprobs(model, prompts, OPTIONS, pad_id=0,
                                     batch_size=batch_size)[0]
    for p, opts, values in zip(prompts, OPTIONS, got, strict=True):
        assert values == pytest.approx([hand_logprob(model, p, o) for o in opts], abs=1e-4)


def test_option_logprobs_of_one_token_options(tiny):
    model, _ = tiny
    opts = [[[3], [4]], [[5], [6], [7]], [[8], [9]], [[10], [11]]]
    got = generation.option_logprobs(model, PROMPTS, opts, pad_id=0, batch_size=8)[0]
    for p, o, values in zip(PROMPTS, opts, got, strict=True):
        assert values == pytest.approx([hand_logprob(model, p, x) for x in o], abs=1e-4)


def _items():
    items = make_mc_items(6, 11)
    # options of different lengths and counts, as HellaSwag and TruthfulQA have
    items[0]["choices"] = {"A": "one", "B": "twenty two", "C": "a much longer option text"}
    items[0]["answer"] = "B"
    items[1]["choices"] = {"A": "x", "B": "yy"}
    items[1]["answer"] = "A"
    return items


@pytest.mark.parametrize("norm", [False, True])
def test_cloze_scoring_matches_hand_computation(tiny, norm):
    model, tok = tiny
    items = _items()
    mode = "cloze_norm" if norm else "cloze"
    result = make_utility(scoring=mode, batch_size=5).score(model, tok, items)
    for it, pred, score in zip(items, result.predictions, result.scores, strict=True):
        prompt = tok(cloze_prompt(it))["input_ids"]
        values = {}
        for letter, text in it["choices"].items():
            lp = hand_logprob(model, prompt, tok.encode(cloze_continuation(text),
                                                        add_special_tokens=False))
            values[letter] = lp / len(text) if norm else lp
        assert pred == max(values, key=values.get)
        assert score == float(pred == it["answer"])


def test_cloze_prompt_template_is_used(tiny):
    model, tok = tiny
    items = _items()
    result = make_utility(scoring="cloze", prompt="{question}", batch_size=8).score(
        model, tok, items)
    for it, pred in zip(items, result.predictions, strict=True):
        prompt = tok(it["question"])["input_ids"]
        values = {k: hand_logprob(model, prompt, tok.encode(" " + v, add_special_tokens=False))
                  for k, v in it["choices"].items()}
        assert pred == max(values, key=values.get)


def test_permuted_scoring_averages_every_rotation(tiny):
    model, tok = tiny
    items = _items()
    result = make_utility(scoring="permuted", batch_size=4).score(
        model, tok, items)
    letter = make_utility(scoring="letter", batch_size=4)
    for it, pred in zip(items, result.predictions, strict=True):
        keys, texts = list(it["choices"]), list(it["choices"].values())
        n = len(keys)
        total = dict.fromkeys(texts, 0.0)
        for r in range(n):
            shown = {keys[t]: texts[(t + r) % n] for t in range(n)}
            prompt = letter._letter_prompt(tok, {**it, "choices": shown}, False)
            ids = letter._letter_ids(tok, keys)
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1],
                                         -1)
            for t in range(n):
                total[shown[keys[t]]] += float(logp[ids[t]])
        best_text = max(texts, key=lambda x: total[x])
        assert pred == keys[texts.index(best_text)]


def test_permuted_scoring_does_not_depend_on_where_the_answer_is_shown(tiny):
    """Letter scoring rewards a letter prior: the same items with the answer shown under
    another letter score differently. Rotating the options cancels it: every cyclic shift of
    an item's options scores the same."""
    model, tok = tiny
    items = make_mc_items(8, 3)

    def shifted(it, k):
        keys, texts = list(it["choices"]), list(it["choices"].values())
        order = texts[k:] + texts[:k]
        answer = keys[order.index(it["choices"][it["answer"]])]
        return {**it, "choices": dict(zip(keys, order, strict=True)), "answer": answer}

    def by_shift(mode):
        util = make_utility(scoring=mode, batch_size=16)
        return [util.score(model, tok, [shifted(it, k) for it in items]).value
                for k in range(4)]

    assert len(set(by_shift("letter"))) > 1  # the tiny model has a letter prior
    assert len(set(by_shift("permuted"))) == 1


def test_scoring_modes_with_several_particles_per_forward(lora_experts, mc_data):
    from modelswarms.runs.session import Session

    def session(k, mode):
        cfg = RunConfig.model_validate({
            "experts": {"paths": [str(p) for p in lora_experts]},
            "data": {"path": str(mc_data), "max_dev": 8},
            "utility": {"scoring": mode},
            "model": {"particles_per_forward": k, "batch_size": 6},
        })
        return Session.open(cfg, need_test=False)

    gen = torch.Generator().manual_seed(4)
    for mode in ("cloze", "cloze_norm", "permuted"):
        one, three = session(1, mode), session(3, mode)
        vectors = one.experts.repeat(2, 1)[:5] + 0.2 * torch.randn(5, one.space.dim,
                                                                   generator=gen)
        a = one.score_many(vectors, one.dev)
        b = three.score_many(vectors, three.dev)
        assert [r.predictions for r in a] == [r.predictions for r in b], mode
        assert [r.value for r in a] == [r.value for r in b], mode


def test_an_unknown_scoring_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="scoring"):
        utility_config(scoring="loglik")  # the letter mode's name before the cloze modes


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "two passes"])
def test_option_logprobs_ways_agree_in_small_head_tiles(tiny, monkeypatch, packed):
    """The packed way's LM head runs in tiles of rows x vocabulary entries with a running
    log-sum-exp: tiles far smaller than the vocabulary, and rows split across tiles, give
    the full softmax's values; so does the two-pass way (a GPU's)."""
    model, _ = tiny
    monkeypatch.setattr(generation, "HEAD_ROWS", 3)
    monkeypatch.setattr(generation, "HEAD_VOCAB", 7)
    got = generation.option_logprobs(model, PROMPTS, OPTIONS, pad_id=0, batch_size=2,
                                     packed=packed)[0]
    for p, opts, values in zip(PROMPTS, OPTIONS, got, strict=True):
        assert values == pytest.approx([hand_logprob(model, p, o) for o in opts], abs=1e-4)
