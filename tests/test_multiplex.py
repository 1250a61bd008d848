"""k particles in one forward give each particle's own logits and generations."""

import pytest
import torch

from modelswarms.config import RunConfig


def open_session(experts, data, include=()):
    from modelswarms.runs.session import Session

    cfg = RunConfig.model_validate({
        "experts": {"paths": [str(p) for p in experts], "include": list(include)},
        "data": {"path": str(data)},
    })
    return Session.open(cfg, need_test=False)


@pytest.mark.parametrize("include", [(), ("*lora_B*",)])
def test_batched_particles_match_one_at_a_time(lora_experts, mc_data, include):
    from modelswarms.evaluation.engine.multiplex import ParticleBatch

    session = open_session(lora_experts, mc_data, include)
    backend = session.backend
    gen = torch.Generator().manual_seed(0)
    particles = session.experts + 0.3 * torch.randn(session.experts.shape, generator=gen)
    ids = torch.randint(4, 100, (2, 7), generator=gen)
    with torch.no_grad():
        expected = []
        for row in particles:
            backend.load(row)
            expected.append(backend.model(input_ids=ids).logits)
        batch = ParticleBatch(backend, k_max=4)
        batch.load(particles)
        with batch.active(3) as model:
            got = model(input_ids=ids.repeat(3, 1)).logits
            out = model.generate(input_ids=ids.repeat(3, 1), max_new_tokens=5, do_sample=False,
                                 pad_token_id=0)
        for i in range(3):
            torch.testing.assert_close(got[2 * i : 2 * i + 2], expected[i], atol=1e-5, rtol=1e-5)
        for i, row in enumerate(particles):
            backend.load(row)
            alone = backend.model.generate(input_ids=ids, max_new_tokens=5, do_sample=False,
                                           pad_token_id=0)
            assert torch.equal(out[2 * i : 2 * i + 2], alone)
        # outside the block the model is the ordinary single-particle model again
        backend.load(particles[0])
        torch.testing.assert_close(backend.model(input_ids=ids).logits, expected[0])


@pytest.mark.parametrize("utility", ["multiple_choice", "exact_match"])
def test_session_scores_several_particles_per_forward(lora_experts, mc_data, utility):
    from modelswarms.runs.session import Session

    def session(k):
        cfg = RunConfig.model_validate({
            "experts": {"paths": [str(p) for p in lora_experts]},
            "data": {"path": str(mc_data), "max_dev": 6},
            "utility": {"type": utility, "max_new_tokens": 4},
            "model": {"particles_per_forward": k, "batch_size": 4},
        })
        return Session.open(cfg, need_test=False)

    one, three = session(1), session(3)
    gen = torch.Generator().manual_seed(1)
    vectors = one.experts.repeat(2, 1)[:5] + 0.2 * torch.randn(5, one.space.dim, generator=gen)
    a = one.score_many(vectors, one.dev)
    b = three.score_many(vectors, three.dev)  # groups of 3 and 2 particles
    assert three.evaluator._batch is not None and one.evaluator._batch is None
    assert [r.predictions for r in a] == [r.predictions for r in b]
    assert [r.value for r in a] == [r.value for r in b]


def test_shared_prefix_with_several_particles_per_forward(lora_experts, mc_data):
    from modelswarms.evaluation.engine import generation
    from modelswarms.evaluation.engine.multiplex import ParticleBatch

    session = open_session(lora_experts, mc_data)
    backend = session.backend
    gen = torch.Generator().manual_seed(2)
    particles = session.experts + 0.3 * torch.randn(session.experts.shape, generator=gen)
    head = list(range(30, 50))
    prompts = [head + [5, 6, 7], head + [8], head + [9, 10, 11, 12]]
    alone = []
    for row in particles:
        backend.load(row)
        alone.append(generation.next_token_logprobs(
            backend.model, prompts, [5, 17, 42], pad_id=0, batch_size=2,
            share_prefix=False)[0])
    batch = ParticleBatch(backend, k_max=3)
    batch.load(particles)
    with batch.active(3) as model:
        assert generation.SharedPrefix(model, prompts, 100, 3).length == 20
        together = generation.next_token_logprobs(model, prompts, [5, 17, 42], pad_id=0,
                                                  batch_size=6, particles=3)
    for p in range(3):
        for a, b in zip(alone[p], together[p], strict=True):
            assert a == pytest.approx(b, abs=1e-4)
