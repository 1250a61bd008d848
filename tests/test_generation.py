"""decode.py's greedy engine gives model.generate's answers (generation.generate_hf, the
engine before it): with and without the shared prompt head, with several particles per
forward, with eos and stop strings, on a Llama and a GPT-2, and in the static-shape step a
CUDA graph replays (run eagerly here)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelswarms.config import RunConfig
from modelswarms.evaluation.engine import decode, generation
from modelswarms.testing import make_tiny_gpt2, make_tiny_llama, make_tiny_lora_pool


def _sharpen(model, seed: int) -> None:
    """A tiny random model barely prefers any token; larger weights make its greedy answers
    differ from row to row and end at different steps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * 0.15)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def arch(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    maker = make_tiny_llama if request.param == "llama" else make_tiny_gpt2
    folder = maker(root / "base")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    _sharpen(model, 0)
    tok = AutoTokenizer.from_pretrained(folder)
    rng = random.Random(0)
    # a shared head of more than MIN_SHARED_PREFIX tokens, then tails of different lengths
    prompts = [tok(f"Question: what is {rng.randint(0, 99)} plus {rng.randint(0, 999)}? "
                   "Answer:" + "x" * rng.randint(0, 9))["input_ids"] for _ in range(9)]
    ref = generation.generate_hf(model, prompts, max_new_tokens=12, pad_id=tok.pad_token_id,
                                 eos_id=None, batch_size=4)[0]
    common = [t for t, _ in Counter(t for r in ref for t in r[1:]).most_common(2)]
    return request.param, root, folder, model, tok, prompts, common


def _both(model, tok, prompts, **kw):
    kw = {"max_new_tokens": 20, "pad_id": tok.pad_token_id, "batch_size": 4, **kw}
    share = kw.pop("share_prefix", True)
    return (generation.generate_hf(model, prompts, **kw),
            generation.generate(model, prompts, share_prefix=share, **kw))


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("eos", ["none", "one", "two"])
def test_greedy_answers_are_generates(arch, share, eos):
    _, _, _, model, tok, prompts, common = arch
    assert decode.supported(model) is None
    eos_id = {"none": None, "one": common[0], "two": common}[eos]
    decode.STATS.clear()
    expected, got = _both(model, tok, prompts, eos_id=eos_id, share_prefix=share)
    assert got == expected
    assert decode.STATS["hf_generate"] == 0 and decode.STATS["eager_steps"] > 0
    if eos != "none":  # the rows really end at different steps
        assert len({len(x) for x in expected[0]}) > 2


@pytest.mark.parametrize("share", [True, False])
def test_the_static_step_of_a_cuda_graph_gives_the_same_answers(arch, share, monkeypatch):
    """The step a CUDA graph captures (whole-length caches, a mask column opened per step,
    counters on the device), run eagerly on the CPU."""
    _, _, _, model, tok, prompts, common = arch
    run = decode._Batch.run
    monkeypatch.setattr(decode._Batch, "run", lambda self, graphs, static=False:
                        run(self, False, True))
    decode.STATS.clear()
    for eos_id in (None, common[0]):
        expected, got = _both(model, tok, prompts, eos_id=eos_id, share_prefix=share)
        assert got == expected
    assert decode.STATS["static_steps"] > 0 and decode.STATS["eager_steps"] == 0


def test_stop_strings_stop_where_generate_stops(arch):
    _, _, _, model, tok, prompts, common = arch
    texts = [tok.decode(x) for x in _both(model, tok, prompts, eos_id=None)[0][0]]
    # stop strings that occur in some answers, some of them mid-answer
    stops = [t[3:5] for t in texts if len(t) > 5][:2]
    for eos_id in (None, common[0]):
        expected, got = _both(model, tok, prompts, eos_id=eos_id, stop_strings=stops,
                              tokenizer=tok)
        assert got == expected
    assert any(len(x) < 20 for x in expected[0])


def test_one_token_and_no_prompts(arch):
    _, _, _, model, tok, prompts, common = arch
    expected, got = _both(model, tok, prompts, eos_id=common[0], max_new_tokens=1)
    assert got == expected
    assert generation.generate(model, [], max_new_tokens=3, pad_id=0, eos_id=None,
                               particles=2) == [[], []]


@pytest.mark.parametrize("share", [True, False])
def test_several_particles_per_forward_answer_as_each_alone(arch, share, mc_data):
    """k LoRA particles in one batched generation give each particle's own answers, which
    are model.generate's for that particle alone."""
    from modelswarms.evaluation.engine.multiplex import ParticleBatch
    from modelswarms.runs.session import Session

    name, root, folder, _, tok, prompts, _ = arch
    targets = ("q_proj", "v_proj") if name == "llama" else ("c_attn",)
    pool = root / "pool"
    experts = sorted(pool.glob("expert_*")) or make_tiny_lora_pool(
        folder, pool, n=3, target_modules=targets, scale=0.3)
    cfg = RunConfig.model_validate({"experts": {"paths": [str(p) for p in experts]},
                                    "data": {"path": str(mc_data)}})
    session = Session.open(cfg, need_test=False)
    backend = session.backend
    _sharpen(backend.model, 1)
    kw = {"max_new_tokens": 16, "pad_id": tok.pad_token_id}
    ref = generation.generate_hf(backend.model, prompts, eos_id=None, batch_size=4, **kw)[0]
    eos = Counter(t for r in ref for t in r[1:]).most_common(1)[0][0]
    gen = torch.Generator().manual_seed(3)
    vectors = session.experts + 0.2 * torch.randn(session.experts.shape, generator=gen)
    alone, alone_new = [], []
    for row in vectors:
        backend.load(row)
        alone += generation.generate_hf(backend.model, prompts, eos_id=eos, batch_size=4, **kw)
        alone_new += generation.generate(backend.model, prompts, eos_id=eos, batch_size=4,
                                         share_prefix=share, **kw)
    assert alone_new == alone
    assert len({tuple(map(tuple, a)) for a in alone}) == 3  # the particles answer differently
    batch = ParticleBatch(backend, 3)
    batch.load(vectors)
    with batch.active(3) as model:
        together = generation.generate(model, prompts, eos_id=eos, batch_size=12, particles=3,
                                       share_prefix=share, **kw)
    assert together == alone


def test_gpu_batches_fit_the_memory_share(arch, monkeypatch):
    """decode.plan on a (pretended) GPU: batches by memory, every item once, chunks that
    cover their batch; the same plan from the same device whatever is free."""
    _, _, _, model, _, prompts, _ = arch
    lengths = [len(p) for p in prompts] * 50
    props = type("P", (), {"total_memory": 2 << 30})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    plans = decode.plan(model, lengths, 10, particles=3, max_new_tokens=20, batch_size=4,
                        max_tokens=64, memory_share=0.5, device=torch.device("cuda"))
    assert sorted(i for p in plans for i in p.items) == list(range(len(lengths)))
    for p in plans:
        assert sorted(i for c in p.chunks for i in c) == sorted(p.items)
    assert max(len(p.items) for p in plans) > 4  # wider than the scoring limits
    smaller = decode.plan(model, lengths, 10, particles=3, max_new_tokens=20, batch_size=4,
                          max_tokens=64, memory_share=0.0001,
                          device=torch.device("cuda"))
    assert len(smaller) > len(plans)


@pytest.fixture
def fake_graphs(monkeypatch):
    """The CUDA graph path on the CPU: warm-up runs two real steps, "capture" runs nothing
    and hands back the step itself to replay; everything around it is the real code."""
    monkeypatch.setattr(decode, "GRAPH_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(decode, "CUDA_GRAPHS", True)
    monkeypatch.setattr(decode, "_warm_up", lambda step: (step(), step()))
    monkeypatch.setattr(decode, "capture_graph", lambda step: step)
    decode.STATS.clear()


def test_the_graph_path_gives_the_same_answers(arch, fake_graphs):
    _, _, _, model, tok, prompts, common = arch
    n = decode.GRAPH_MIN_STEPS + 4
    for eos_id in (None, common[0]):
        expected, got = _both(model, tok, prompts, eos_id=eos_id, max_new_tokens=n)
        assert got == expected
    assert decode.STATS["graphs_captured"] > 0 and decode.STATS["graph_replays"] > 0
    assert decode.STATS["eager_steps"] == 0
    # too few steps to repay a capture: eager
    decode.STATS.clear()
    _both(model, tok, prompts, eos_id=None, max_new_tokens=decode.GRAPH_MIN_STEPS)
    assert decode.STATS["graphs_captured"] == 0 and decode.STATS["eager_steps"] > 0


def test_a_failed_capture_decodes_eagerly(arch, fake_graphs, monkeypatch, caplog):
    _, _, _, model, tok, prompts, common = arch

    def refuse(step):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(decode, "capture_graph", refuse)
    n = decode.GRAPH_MIN_STEPS + 4
    expected, got = _both(model, tok, prompts, eos_id=common[0], max_new_tokens=n)
    assert got == expected
    assert decode.STATS["graph_failures"] == 1 and not decode.CUDA_GRAPHS
    assert "CUDA graphs turned off" in caplog.text


def test_what_the_engine_does_not_know_goes_to_generate(arch, monkeypatch):
    """A generation config that changes the greedy choice (here a repetition penalty) is
    honoured by handing the call to model.generate."""
    _, _, _, model, tok, prompts, common = arch
    monkeypatch.setattr(model.generation_config, "repetition_penalty", 1.3)
    assert "generation config" in decode.supported(model)
    decode.STATS.clear()
    expected, got = _both(model, tok, prompts, eos_id=common[0])
    assert got == expected and decode.STATS["hf_generate"] == 1
