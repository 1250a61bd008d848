"""The frozen trunk: layers below the first searched one, memoised, change no result."""

from __future__ import annotations

import contextlib

import pytest
import torch

from modelswarms.config import RunConfig
from modelswarms.evaluation.engine import batching, generation
from modelswarms.evaluation.engine.multiplex import ParticleBatch
from modelswarms.evaluation.engine.trunk import FrozenTrunk, install_on
from modelswarms.runs.scorer import Scorer
from modelswarms.runs.session import Session
from modelswarms.testing import make_tiny_llama, make_tiny_lora_pool

HEAD = list(range(30, 50))  # a prompt head shared by every prompt (generation.SharedPrefix)
PROMPTS = [HEAD + [5, 6, 7], HEAD + [8], HEAD + [9, 10, 11, 12], HEAD + [13, 14],
           HEAD[:12] + [60, 61, 62, 63, 64]]
TOKENS = [5, 17, 42]


@pytest.fixture(scope="module")
def upper_experts(tmp_path_factory):
    """Four layers, adapters on layers 2 and 3 only (like the shipped pool's 14-29)."""
    root = tmp_path_factory.mktemp("trunk")
    base = make_tiny_llama(root / "base", layers=4)
    return make_tiny_lora_pool(base, root / "lora", n=3, layers_to_transform=(2, 3))


def open_session(experts, data, *, k=1, trunk=True, include=(), exclude=(), **utility):
    cfg = RunConfig.model_validate({
        "experts": {"paths": [str(p) for p in experts], "include": list(include),
                    "exclude": list(exclude)},
        "data": {"path": str(data), "max_dev": 8},
        # letter, named: the counts below see only what each test runs, not auto's choice
        "utility": {"type": "multiple_choice", "scoring": "letter", **utility},
        "model": {"particles_per_forward": k, "batch_size": 4},
    })
    session = Session.open(cfg, need_test=False)
    if not trunk and session.trunk is not None:
        session.trunk.remove()
        session.trunk = None
    return session


def particles(session, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = session.experts.repeat(2, 1)[:n]
    return rows + 0.3 * torch.randn(rows.shape, generator=gen)


def test_the_trunk_starts_at_the_first_searched_layer(upper_experts, lora_experts, mc_data):
    assert open_session(upper_experts, mc_data).trunk.k == 2
    assert open_session(upper_experts, mc_data, include=["*layers.3.*"]).trunk.k == 3
    assert open_session(upper_experts, mc_data, exclude=["*layers.2.*"]).trunk.k == 3
    # searched tensors in layer 0: nothing is installed, the layers are the class's own
    session = open_session(lora_experts, mc_data)
    assert session.trunk is None
    layers = session.backend.model.get_base_model().model.layers
    assert all("forward" not in layer.__dict__ for layer in layers)


@pytest.mark.parametrize("k", [1, 3])
def test_session_scores_are_identical_and_reuse_the_trunk(upper_experts, mc_data, k):
    plain = open_session(upper_experts, mc_data, k=k, trunk=False)
    memo = open_session(upper_experts, mc_data, k=k)
    vectors = particles(plain, n=6)
    expected = plain.score_many(vectors, plain.dev) + [plain.score(None, plain.dev)]
    got = memo.score_many(vectors[:3], memo.dev)
    misses = memo.counts["frozen_layers_misses"]
    assert misses > 0
    # other particles: the trunk's work is reused, nothing recomputed
    got += memo.score_many(vectors[3:], memo.dev)
    assert memo.counts["frozen_layers_misses"] == misses
    assert memo.counts["frozen_layers_hits"] > 0
    # the base model shares the trunk too (batches are cut per particle count, so with three
    # particles per forward its batches are other batches)
    got.append(memo.score(None, memo.dev))
    if k == 1:
        assert memo.counts["frozen_layers_misses"] == misses
    for a, b in zip(expected, got, strict=True):
        assert a.scores == b.scores and a.predictions == b.predictions and a.value == b.value


def _logprobs(model, particles, share):
    nxt = generation.next_token_logprobs(model, PROMPTS, TOKENS, pad_id=0, batch_size=6,
                                         particles=particles, share_prefix=share)
    conts = [[[5, 6], [7]], [[8, 9, 10]], [[11], [12, 13]], [[14]], [[15, 16], [17]]]
    cont = generation.continuation_logprobs(model, PROMPTS, conts, pad_id=0, batch_size=6,
                                            particles=particles, share_prefix=share)
    return nxt, cont


def _everything(session, vectors):
    """Log-probabilities one particle at a time, three per forward, and of the base model,
    with and without the shared prompt head; greedy generations."""
    backend = session.backend
    out = {}
    for share in (True, False):
        for i, row in enumerate(vectors[:3]):
            backend.load(row)
            out["single", share, i] = _logprobs(backend.model, 1, share)
        batch = ParticleBatch(backend, 3)
        batch.load(vectors[:3])
        with batch.active(3) as model:
            out["multi", share] = _logprobs(model, 3, share)
        with backend.base_model() as model:
            out["base", share] = _logprobs(model, 1, share)
    backend.load(vectors[0])
    out["generate"] = generation.generate(backend.model, PROMPTS, max_new_tokens=6, pad_id=0,
                                          eos_id=None, batch_size=3)
    with batch.active(3) as model:
        out["generate", 3] = generation.generate(model, PROMPTS, max_new_tokens=6, pad_id=0,
                                                 eos_id=None, batch_size=9, particles=3)
    return out


def _flat(nested) -> torch.Tensor:
    if isinstance(nested, (list, tuple)):
        parts = [_flat(x) for x in nested]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    return torch.tensor([float(nested)], dtype=torch.float64)


def test_log_probabilities_and_generations_are_exact(upper_experts, mc_data):
    plain = open_session(upper_experts, mc_data, trunk=False)
    memo = open_session(upper_experts, mc_data)
    vectors = particles(plain, seed=3)
    expected = _everything(plain, vectors)
    first = _everything(memo, vectors)
    hits = memo.counts["frozen_layers_hits"]
    again = _everything(memo, vectors)  # now mostly from the memo
    assert memo.counts["frozen_layers_hits"] > hits
    for got in (first, again):
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if key[0] == "multi":  # three particles' trunk computed once: equal to rounding
                torch.testing.assert_close(_flat(got[key]), _flat(value), atol=1e-6, rtol=1e-6)
            else:
                assert got[key] == value, key  # bitwise


def test_a_filled_cache_continues_exactly(upper_experts, mc_data):
    """A forward that fills a cache (use_cache=True) and one that continues from it: the
    lower layers' keys and values come from the memo on a hit, and are right."""
    plain = open_session(upper_experts, mc_data, trunk=False)
    memo = open_session(upper_experts, mc_data)
    ids = torch.tensor([[7, 8, 9, 10, 11], [0, 0, 12, 13, 14]])
    mask = (ids != 0).long()
    more = torch.tensor([[20, 21], [22, 23]])

    @torch.inference_mode()
    def two_stage(session):
        model = session.backend.model
        kwarg = batching.cache_kwarg(model)
        first = model(input_ids=ids, attention_mask=mask,
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
        cache = getattr(first, "cache", None) or first.past_key_values
        assert all(layer.get_seq_length() == 5 for layer in cache.layers)
        full = torch.cat([mask, torch.ones_like(more)], dim=1)
        second = model(input_ids=more, attention_mask=full,
                       position_ids=mask.sum(-1, keepdim=True) + torch.arange(2),
                       **{kwarg: cache})
        # no cache asked for: the trunk builds none rather than a half-filled one
        third = model(input_ids=ids, attention_mask=mask)
        return first.logits, second.logits, third.logits

    expected = two_stage(plain)
    for _ in range(2):  # a miss, then a hit
        got = two_stage(memo)
        for a, b in zip(expected, got, strict=True):
            assert torch.equal(a, b)
    assert memo.counts["frozen_layers_hits"] >= 2


def test_option_scoring_on_a_question_cache(upper_experts, mc_data):
    if not hasattr(generation, "option_logprobs"):
        pytest.skip("generation.option_logprobs is not there yet")
    plain = open_session(upper_experts, mc_data, trunk=False)
    memo = open_session(upper_experts, mc_data)
    options = [[[5, 6], [7, 8, 9]], [[8]], [[11, 12], [13]], [[14, 15]], [[16], [17, 18]]]
    kw = {"pad_id": 0, "batch_size": 8}
    for session in (plain, memo):
        session.backend.load(session.experts[1])
    expected = generation.option_logprobs(plain.backend.model, PROMPTS, options, **kw)
    for _ in range(2):
        assert generation.option_logprobs(memo.backend.model, PROMPTS, options, **kw) \
            == expected
    assert memo.counts["frozen_layers_hits"] > 0


def test_memory_stays_within_its_bound(upper_experts, mc_data):
    plain = open_session(upper_experts, mc_data, trunk=False)
    memo = open_session(upper_experts, mc_data)
    memo.trunk.remove()
    # room for about two single-prompt entries: 32 floats x 25 tokens each
    trunk = install_on(memo.backend, max_bytes=2 * 32 * 4 * 25 + 100, counts=memo.counts)
    assert isinstance(trunk, FrozenTrunk)
    for session in (plain, memo):
        session.backend.load(session.experts[0])
    for _ in range(2):
        for prompt in PROMPTS:
            a = generation.next_token_logprobs(plain.backend.model, [prompt], TOKENS,
                                               pad_id=0, batch_size=1)
            b = generation.next_token_logprobs(memo.backend.model, [prompt], TOKENS,
                                               pad_id=0, batch_size=1)
            assert a == b
            assert trunk.nbytes <= trunk.max_bytes and len(trunk.memo) < len(PROMPTS)
    assert memo.counts["frozen_layers_hits"] == 0  # least recently used first out
    trunk.max_bytes = 10  # an entry larger than the bound is never kept
    trunk.clear()
    generation.next_token_logprobs(memo.backend.model, PROMPTS, TOKENS, pad_id=0, batch_size=8)
    assert len(trunk.memo) == 0 and trunk.nbytes == 0


def test_a_changed_frozen_weight_clears_the_memo(upper_experts, mc_data):
    plain = open_session(upper_experts, mc_data, trunk=False)
    memo = open_session(upper_experts, mc_data)

    def run(session):
        session.backend.load(session.experts[2])
        return generation.next_token_logprobs(session.backend.model, PROMPTS, TOKENS,
                                              pad_id=0, batch_size=8)

    assert run(plain) == run(memo)
    for session in (plain, memo):
        with torch.no_grad():
            session.backend.model.get_base_model().model.layers[0].mlp.up_proj.weight.mul_(1.5)
    assert run(plain) == run(memo)
    assert memo.counts["frozen_layers_cleared"] == 1


def test_the_key_sees_every_input(upper_experts, mc_data):
    """Same ids with another mask, other positions, another prompt head of the same length:
    each is a different entry."""
    plain = open_session(upper_experts, mc_data, trunk=False)
    memo = open_session(upper_experts, mc_data)
    ids = torch.tensor([[7, 8, 9, 10], [11, 12, 13, 14]])
    ones = torch.ones_like(ids)
    positions = torch.arange(4).repeat(2, 1)
    inputs = [(ones, positions), (torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]), positions),
              (ones, positions + 3), (ones, None)]
    other = [h + 1 for h in HEAD]  # another head, as long
    prompts = [[h + p[len(HEAD):] for p in PROMPTS[:4]] for h in (HEAD, other)]

    @torch.inference_mode()
    def run(session):
        model = session.backend.model
        session.backend.load(session.experts[0])
        out = [model(input_ids=ids, attention_mask=m, position_ids=p).logits
               for m, p in inputs]
        out += [torch.tensor(generation.next_token_logprobs(model, rows, TOKENS, pad_id=0,
                                                            batch_size=8))
                for rows in prompts]
        return out

    expected = run(plain)
    assert not torch.equal(expected[0], expected[1]) and not torch.equal(expected[0],
                                                                          expected[2])
    assert not torch.equal(expected[-1], expected[-2])
    for _ in range(2):
        for a, b in zip(expected, run(memo), strict=True):
            assert torch.equal(a, b)
    assert memo.counts["frozen_layers_hits"] > 0


@pytest.mark.parametrize("k", [1, 3])
def test_frozen_lora_below_the_searched_layers(lora_experts, mc_data, k):
    """Adapters on every layer but layer 0 excluded from the search: layer 0 is frozen, yet
    differs between the adapted and the base model, and multiplex.ParticleBatch patches its
    LoRA modules."""
    plain = open_session(lora_experts, mc_data, k=k, trunk=False, exclude=["*layers.0.*"])
    memo = open_session(lora_experts, mc_data, k=k, exclude=["*layers.0.*"])
    assert memo.trunk.k == 1 and memo.trunk.frozen_adapters > 0
    vectors = particles(plain, n=3, seed=5)
    hits = 0
    for _ in range(2):
        # new scorers hold no cached scores: every candidate runs the model again
        p, m = (Scorer(s.evaluator, s.utility) for s in (plain, memo))
        expected = p.score_many(vectors, plain.dev) + [p.score(None, plain.dev)]
        got = m.score_many(vectors, memo.dev) + [m.score(None, memo.dev)]
        for a, b in zip(expected, got, strict=True):
            assert a.scores == b.scores and a.predictions == b.predictions
        hits += m.counts["frozen_layers_hits"]
    assert hits > 0
    # the log-probabilities themselves, adapted then base, on the same prompts
    for session in (plain, memo):
        session.backend.load(vectors[0])
    def logprobs(session, base):
        with session.backend.base_model() if base else contextlib.nullcontext():
            return generation.next_token_logprobs(session.backend.model, PROMPTS, TOKENS,
                                                  pad_id=0, batch_size=8)

    for _ in range(2):
        for base in (False, True):
            assert logprobs(plain, base) == logprobs(memo, base)


# options of one to four tokens: pass two of option_logprobs runs all but the first token
OPTIONS = [[[5, 6], [7, 8, 9]], [[8]], [[11, 12], [13, 14, 15, 16]], [[14, 15]],
           [[16], [17, 18]]]


def _options(model, share, particles=1, packed=False):
    # packed=False: the two-pass way (a GPU's), whose option pass runs on a row copy
    return generation.option_logprobs(model, PROMPTS, OPTIONS, pad_id=0, batch_size=8,
                                      particles=particles, share_prefix=share, packed=packed)


@pytest.mark.parametrize("share", [True, False], ids=["shared head", "no shared head"])
@pytest.mark.parametrize("k", [1, 3])
def test_cloze_option_passes_reuse_the_trunk_exactly(upper_experts, mc_data, k, share):
    """option_logprobs' second pass runs the options on a row copy of the questions' cache:
    keyed by the first pass, the second particle's (or the second group's) options skip the
    trunk, and every log-probability is bit for bit what it is without the trunk."""
    plain = open_session(upper_experts, mc_data, trunk=False)
    memo = open_session(upper_experts, mc_data)
    vectors = particles(plain, n=2 * k, seed=7)

    def run(session):
        backend, out = session.backend, []
        for group in range(2):
            rows = vectors[group * k:(group + 1) * k]
            if k == 1:
                backend.load(rows[0])
                out.append(_options(backend.model, share))
            else:
                batch = ParticleBatch(backend, k)
                batch.load(rows)
                with batch.active(k) as model:
                    out.append(_options(model, share, particles=k))
            if session is memo and group == 0:
                copy_misses = memo.counts["frozen_layers_copy_misses"]
                assert copy_misses > 0 and memo.counts["frozen_layers_copy_hits"] == 0
        if session is memo:  # the second group's options came from the memo
            assert memo.counts["frozen_layers_copy_misses"] == copy_misses
            assert memo.counts["frozen_layers_copy_hits"] == copy_misses
        with backend.base_model() as model:
            out.append(_options(model, share))
        return out

    expected = run(plain)
    assert expected[0] != expected[1]  # other particles, other scores
    got = run(memo)
    if k == 1:
        assert got == expected  # bitwise
    else:
        # the trunk runs one block of rows where the plain model runs k: with several BLAS
        # threads a different row count may round the last bit differently
        for a, b in zip(got, expected, strict=True):
            for pa, pb in zip(a, b, strict=True):
                for ia, ib in zip(pa, pb, strict=True):
                    assert ia == pytest.approx(ib, abs=1e-5)
    if k == 1:  # the base model's batches are the particles' batches: nothing new
        assert memo.counts["frozen_layers_copy_misses"] == \
            memo.counts["frozen_layers_copy_hits"] // 2


@pytest.mark.parametrize("share", [True, False], ids=["shared head", "no shared head"])
@pytest.mark.parametrize("k", [1, 3])
def test_packed_options_reuse_the_trunk_exactly(upper_experts, mc_data, k, share):
    """The CPU's way (generation.packed_option_logprobs): one forward of packed rows per
    batch, keyed by the trunk like any forward; the second group of particles skips the
    trunk, and the log-probabilities are those of the two-pass way (float tolerance) and,
    with one particle a forward, bit for bit those without the trunk."""
    plain = open_session(upper_experts, mc_data, trunk=False)
    memo = open_session(upper_experts, mc_data)
    vectors = particles(plain, n=2 * k, seed=7)

    def run(session, packed=True):
        backend, out = session.backend, []
        for group in range(2):
            rows = vectors[group * k:(group + 1) * k]
            if k == 1:
                backend.load(rows[0])
                out.append(_options(backend.model, share, packed=packed))
            else:
                batch = ParticleBatch(backend, k)
                batch.load(rows)
                with batch.active(k) as model:
                    out.append(_options(model, share, particles=k, packed=packed))
            if session is memo and group == 0:
                misses = memo.counts["frozen_layers_misses"]
                assert misses > 0 and memo.counts["frozen_layers_hits"] == 0
        if session is memo:  # the second group came from the memo
            assert memo.counts["frozen_layers_misses"] == misses
            assert memo.counts["frozen_layers_hits"] == misses
        return out

    expected = run(plain)
    assert expected[0] != expected[1]
    got = run(memo)
    two_pass = run(plain, packed=False)
    for a, b, c in zip(got, expected, two_pass, strict=True):
        if k == 1:
            assert a == b  # bitwise
        for pa, pb, pc in zip(a, b, c, strict=True):
            for ia, ib, ic in zip(pa, pb, pc, strict=True):
                assert ia == pytest.approx(ib, abs=1e-5)
                assert ia == pytest.approx(ic, abs=1e-4)


def test_cloze_options_through_a_logit_average(upper_experts, mc_data):
    """multiplex.LogitAverage tiles its rows inside the model: the questions' cache holds
    three blocks, the row copy takes each block's rows, and the trunk computes one."""
    from modelswarms.evaluation.engine.multiplex import LogitAverage

    plain = open_session(upper_experts, mc_data, trunk=False)
    memo = open_session(upper_experts, mc_data)

    def run(session, share):
        batch = ParticleBatch(session.backend, 3)
        batch.load(session.experts)
        with batch.active(3) as model:
            return _options(LogitAverage(model, 3), share)

    for share in (True, False):
        expected = run(plain, share)
        first = run(memo, share)
        misses = memo.counts["frozen_layers_copy_misses"]
        assert misses > 0
        assert run(memo, share) == first  # a hit gives the bits a miss gave
        # one block where the plain model runs three: the last bit may round differently
        for a, b in zip(first, expected, strict=True):
            for pa, pb in zip(a, b, strict=True):
                for ia, ib in zip(pa, pb, strict=True):
                    assert ia == pytest.approx(ib, abs=1e-5)
        assert memo.counts["frozen_layers_copy_misses"] == misses
        assert memo.counts["frozen_layers_copy_hits"] >= misses


def test_a_row_copy_is_keyed_only_while_its_source_is_unchanged(upper_experts, mc_data):
    """A row copy of a cache the trunk filled is keyed by that fill's key; a copy of a
    cache continued since, or one made before the memo was cleared, runs every layer."""
    from modelswarms.evaluation.engine.trunk import select_rows

    plain = open_session(upper_experts, mc_data, trunk=False)
    memo = open_session(upper_experts, mc_data)
    ids = torch.tensor([[7, 8, 9, 10, 11], [0, 0, 12, 13, 14]])
    mask = (ids != 0).long()
    rows = torch.tensor([1, 0, 1])
    more = torch.tensor([[20, 21], [22, 23], [24, 25]])

    @torch.inference_mode()
    def fill(session):
        model = session.backend.model
        first = model(input_ids=ids, attention_mask=mask,
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
        return getattr(first, "cache", None) or first.past_key_values

    @torch.inference_mode()
    def options(session, cache):
        model = session.backend.model
        copy = select_rows(cache, rows, model.config)
        full = torch.cat([mask[rows], torch.ones_like(more)], dim=1)
        positions = mask[rows].sum(-1, keepdim=True) + torch.arange(2)
        return model(input_ids=more, attention_mask=full, position_ids=positions,
                     use_cache=False, **{batching.cache_kwarg(model): copy}).logits

    for session in (plain, memo):
        session.backend.load(session.experts[0])
    expected = options(plain, fill(plain))
    def copies():  # the counts are read afresh: the evaluator reports them when asked
        return memo.counts["frozen_layers_copy_misses"], memo.counts["frozen_layers_copy_hits"]

    for hits in (0, 1):  # a miss, then a hit
        assert torch.equal(options(memo, fill(memo)), expected)
        assert copies() == (1, hits)
    cache = fill(memo)
    memo.trunk.clear()  # the fill's key may name an entry that is gone
    assert torch.equal(options(memo, cache), expected)
    cache = fill(memo)
    with torch.inference_mode():  # a continuation: the copy is not what was tagged
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.clone(), layer.values.clone()
    assert torch.equal(options(memo, cache), expected)
    assert copies() == (1, 1)
