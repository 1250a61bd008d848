"""Evaluation on tiny real models: batched equals one-at-a-time equals a hand computation."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelswarms.errors import ConfigError, DataError, UtilityError
from modelswarms.evaluation.data.items import load_items
from modelswarms.evaluation.data.prompts import multiple_choice_prompt
from modelswarms.evaluation.engine import batching, generation
from modelswarms.evaluation.objectives.extract import extract_letter, extract_number
from modelswarms.evaluation.objectives.utilities import ItemScores, register_utility
from modelswarms.testing import make_tiny_llama, make_utility

from .conftest import make_mc_items


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", seed=3)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(
        folder)


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("c") / "tiny", seed=4, chat_template=True)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(
        folder)


PROMPTS = [[1, 20, 30, 40, 50, 60, 70], [1, 25], [1, 33, 44, 55], [1, 9, 8, 7, 6, 5, 4, 3, 2, 1]]


def test_next_token_logprobs_batched_equals_hand_computation(tiny):
    model, _ = tiny
    ids = [5, 17, 42]
    batched = generation.next_token_logprobs(model, PROMPTS, ids, pad_id=0, batch_size=3)[0]
    single = generation.next_token_logprobs(model, PROMPTS, ids, pad_id=0, batch_size=1)[0]
    for p, b, s in zip(PROMPTS, batched, single, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p])).logits[0, -1], -1)
        assert b == pytest.approx(logp[ids].tolist(), abs=1e-4)
        assert s == pytest.approx(b, abs=1e-4)


def test_continuation_logprobs_equals_hand_computation(tiny):
    model, _ = tiny
    conts = [[[3, 4], [5]], [[6, 7, 8]], [[9], [10, 11]], [[12, 13]]]
    batched = generation.continuation_logprobs(model, PROMPTS, conts, pad_id=0, batch_size=4)[0]
    for p, cs, got in zip(PROMPTS, conts, batched, strict=True):
        for c, value in zip(cs, got, strict=True):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0], -1)
            hand = sum(float(logp[len(p) - 1 + t, tok]) for t, tok in enumerate(c))
            assert value == pytest.approx(hand, abs=1e-4)


HEAD = list(range(20, 40))  # a 20-token head shared by every prompt: computed once
SHARED = [HEAD + tail for tail in ([5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15])]


def test_shared_prefix_changes_no_log_probability(tiny):
    model, _ = tiny
    prefix = generation.SharedPrefix(model, SHARED, 100, 1)
    assert prefix.length == len(HEAD) + 0  # the tails differ at their first token
    ids = [5, 17, 42]
    shared = generation.next_token_logprobs(model, SHARED, ids, pad_id=0, batch_size=3)[0]
    plain = generation.next_token_logprobs(model, SHARED, ids, pad_id=0, batch_size=3,
                                           share_prefix=False)[0]
    for p, a, b in zip(SHARED, shared, plain, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p])).logits[0, -1], -1)
        assert a == pytest.approx(logp[ids].tolist(), abs=1e-4)
        assert a == pytest.approx(b, abs=1e-4)
    conts = [[[3, 4], [5]], [[6, 7, 8]], [[9], [10, 11]], [[12, 13]]]
    shared = generation.continuation_logprobs(model, SHARED, conts, pad_id=0, batch_size=2)[0]
    for p, cs, got in zip(SHARED, conts, shared, strict=True):
        for c, value in zip(cs, got, strict=True):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0], -1)
            assert value == pytest.approx(
                sum(float(logp[len(p) - 1 + t, tok]) for t, tok in enumerate(c)), abs=1e-4)


def test_shared_prefix_needs_a_long_common_head(tiny):
    model, _ = tiny
    assert generation.SharedPrefix(model, PROMPTS, 100, 1).length == 0  # heads of 1 token
    assert generation.SharedPrefix(model, [HEAD + [1], HEAD + [2]], 5, 1).length == 0  # limit
    assert generation.SharedPrefix(model, [HEAD, HEAD], len(HEAD) - 1, 1).length == 19


def test_generate_batched_equals_manual_greedy_loop(tiny):
    model, _ = tiny
    batched = generation.generate(model, PROMPTS, max_new_tokens=6, pad_id=0, eos_id=None,
                                  batch_size=4)[0]
    for p, got in zip(PROMPTS, batched, strict=True):
        seq = list(p)
        with torch.no_grad():
            for _ in range(6):
                seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
        assert got == seq[len(p):]


def test_token_budget_batches_keep_every_item_once():
    lengths = [378, 257, 250, 173, 170, 130, 129, 99, 20]
    batches = batching.batches(lengths, batch_size=4, max_tokens=600)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = lengths[b[0]]
        assert len(b) <= 4 and (len(b) == 1 or len(b) * longest <= 600)
        assert all(4 * lengths[i] >= 3 * longest for i in b)


def test_multiple_choice_matches_direct_argmax(tiny):
    model, tok = tiny
    items = make_mc_items(10, 5)
    result = make_utility(type="multiple_choice", batch_size=3).score(
        model, tok, items)
    letter_ids = [tok.convert_tokens_to_ids(x) for x in "ABCD"]  # " A" is two characters here
    for item, pred, score in zip(items, result.predictions, result.scores, strict=True):
        text = multiple_choice_prompt(item) + "\nThe answer is"
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tok(text)["input_ids"]])).logits[0, -1]
        assert pred == "ABCD"[int(logits[letter_ids].argmax())]
        assert score == float(pred == item["answer"])
    assert result.value == pytest.approx(sum(result.scores) / 10)


def test_multiple_choice_with_different_option_sets(tiny, monkeypatch):
    """TruthfulQA-like items (2 to 6 options) are read from one forward each, and each item's
    prediction is the argmax over its own letters only."""
    model, tok = tiny
    items = make_mc_items(8, 6)
    for n, item in zip([2, 3, 4, 5, 6, 2, 6, 3], items, strict=True):
        item["choices"] = {x: f"option {x}" for x in "ABCDEF"[:n]}
        item["answer"] = "ABCDEF"[n - 1]
    monkeypatch.setattr(generation, "continuation_logprobs", None)  # must not be needed
    result = make_utility(type="multiple_choice", batch_size=3).score(
        model, tok, items)
    for item, pred in zip(items, result.predictions, strict=True):
        letters = list(item["choices"])
        ids = [tok.convert_tokens_to_ids(x) for x in letters]
        text = multiple_choice_prompt(item) + "\nThe answer is"
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tok(text)["input_ids"]])).logits[0, -1]
        assert pred == letters[int(logits[ids].argmax())]
    assert {len(item["choices"]) for item in items} == {2, 3, 4, 5, 6}


def test_multiple_choice_uses_the_chat_template(tiny_chat):
    model, tok = tiny_chat
    items = make_mc_items(4, 6)
    u = make_utility(type="multiple_choice")
    plain = make_utility(type="multiple_choice", chat_template=False)
    a, b = u.score(model, tok, items), plain.score(model, tok, items)
    assert len(a.predictions) == 4 and set(a.predictions) <= set("ABCD")
    assert a.predictions != b.predictions or a.value == b.value  # both valid; runs both paths


def test_exact_match_against_greedy_output(tiny):
    model, tok = tiny
    u = make_utility(type="exact_match", max_new_tokens=5, batch_size=2)
    items = [{"question": q, "answer": "zzz"} for q in ("one", "two", "three", "four")]
    first = u.score(model, tok, items)
    # make the gold of half the items what greedy decoding says: those and only those score
    gold = [{"question": it["question"], "answer": p if i % 2 == 0 else "never said"}
            for i, (it, p) in enumerate(zip(items, first.predictions, strict=True))]
    second = u.score(model, tok, gold)
    assert second.scores == [float(i % 2 == 0 and bool(gold[i]["answer"])) for i in range(4)]


def test_exact_match_compares_numbers(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(generation, "generate", lambda *a, **k: [[
        tok.encode("so the answer is 1,234.0 apples", add_special_tokens=False),
        tok.encode("#### 7", add_special_tokens=False)]])
    u = make_utility(type="exact_match")
    r = u.score(model, tok, [{"question": "a", "answer": "1234"}, {"question": "b",
                                                                  "answer": "8"}])
    assert r.scores == [1.0, 0.0] and r.predictions == ["1234", "7"]


def test_multiple_choice_generate_and_parse(tiny, monkeypatch):
    model, tok = tiny
    items = [{"question": f"q{i}", "choices": {"A": "x", "B": "y", "C": "z", "D": "w"},
              "answer": "C"} for i in range(4)]
    said = ["Answer: C", " B: y", "(C) because", "no idea"]
    seen = {}

    def fake_generate(model, prompts, **kw):
        seen["prompts"] = prompts
        return [[tok.encode(t, add_special_tokens=False) for t in said]]

    monkeypatch.setattr(generation, "generate", fake_generate)
    u = make_utility(type="multiple_choice", scoring="generate")
    r = u.score(model, tok, items)
    assert r.predictions == ["C", "B", "C", ""] and r.scores == [1.0, 0.0, 1.0, 0.0]
    assert r.counts == {"mc_unparsed": 1}
    assert tok.decode(seen["prompts"][0]).endswith("The answer is")


def test_multiple_choice_generate_mode_runs_for_real(tiny):
    model, tok = tiny
    items = [{"question": f"q{i}", "choices": {"A": "x", "B": "y"}, "answer": "A"}
             for i in range(3)]
    u = make_utility(type="multiple_choice", scoring="generate",
                                    max_new_tokens=4, batch_size=2)
    r = u.score(model, tok, items)
    texts = [tok.decode(o) for o in generation.generate(
        model, [tok(multiple_choice_prompt(it) + "\nThe answer is")["input_ids"]
                for it in items], max_new_tokens=4, pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id, batch_size=1)[0]]
    assert r.predictions == [extract_letter(t, "AB") or "" for t in texts]


@pytest.mark.parametrize("text,letter", [
    ("Answer: C", "C"), ("The answer is (B).", "B"), ("D: Paris", "D"), ("(A) because", "A"),
    ("I think option b is right", "B"), ("A good guess is C", "C"), ("nothing here", None),
    ("Answer: the answer is D", "D"),
])
def test_extract_letter(text, letter):
    assert extract_letter(text, "ABCD") == letter


@pytest.mark.parametrize("text,number", [
    ("so 3 + 4 = 7. The answer is 7", "7"), ("#### 1,234", "1234"), ("costs $18.00.", "18"),
    ("first 5 then 12", "12"), ("-3 degrees", "-3"), ("2.5 hours", "2.5"), ("none", None),
])
def test_extract_number(text, number):
    assert extract_number(text) == number


def test_python_utility(tmp_path, tiny, monkeypatch):
    model, tok = tiny
    (tmp_path / "myutil.py").write_text(
        "import math\n"
        "def length(model, tokenizer, items):\n    return [len(i['q']) / 10 for i in items]\n"
        "def bad(model, tokenizer, items):\n    return math.nan\n"
        "def boom(model, tokenizer, items):\n    raise RuntimeError('judge offline')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    items = [{"q": "abc"}, {"q": "abcde"}]
    r = make_utility(type="python", function="myutil:length").score(
        model, tok, items)
    assert r.scores == [0.3, 0.5] and math.isclose(r.value, 0.4)
    with pytest.raises(UtilityError, match="myutil:bad returned nan"):
        make_utility(type="python", function="myutil:bad").score(model, tok, items)
    with pytest.raises(UtilityError, match="judge offline"):
        make_utility(type="python", function="myutil:boom").score(
            model, tok, items)
    with pytest.raises(ConfigError, match="cannot import myutil:nope"):
        make_utility(type="python", function="myutil:nope")
    sys.modules.pop("myutil", None)


def test_registry_takes_user_utilities_and_names_the_known_ones():
    @register_utility("always_half")
    class Half:
        required_fields = ()

        def __init__(self, cfg):
            pass

        def score(self, model, tokenizer, items):
            return ItemScores(0.5, [0.5] * len(items), [""] * len(items))

    assert make_utility(type="always_half").score(None, None, [{}]).value == 0.5
    with pytest.raises(ConfigError, match="registered: .*multiple_choice"):
        make_utility(type="nope")


def test_load_items_formats_and_errors(tmp_path):
    good = {"question": "q", "choices": {"A": "x", "B": "y"}, "answer": "A"}
    js = tmp_path / "d.json"
    js.write_text(json.dumps({"dev": [good, {**good, "id": 7}], "test": [good]}))
    assert len(load_items(js, "dev", required=("answer",))) == 2
    assert len(load_items(js, "dev", limit=1)) == 1
    with pytest.raises(DataError, match=r"d\.json: no split 'train' \(splits: dev, test\)"):
        load_items(js, "train")
    js.write_text(json.dumps({"dev": [good, {"id": "x9", "question": "q"}]}))
    with pytest.raises(DataError, match=r"item 1 \(id 'x9'\) of 'dev' has no field 'choices'"):
        load_items(js, "dev", required=("question", "choices"))
    js.write_text(json.dumps({"dev": []}))
    with pytest.raises(DataError, match="has no items"):
        load_items(js, "dev")
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({**good, "split": "dev"}) + "\n" + json.dumps(
        {**good, "split": "test"}) + "\n\n")
    assert len(load_items(jl, "test")) == 1
    jl.write_text(json.dumps(good) + "\n{broken\n")
    with pytest.raises(DataError, match=r"d\.jsonl: line 2 is not valid JSON"):
        load_items(jl, "dev")
    with pytest.raises(DataError, match="not found"):
        load_items(tmp_path / "missing.json", "dev")
