"""The evaluation engine around utilities: the score cache and the out-of-memory back-off."""

from __future__ import annotations

import pytest
import torch

from modelswarms.config import parse_config
from modelswarms.errors import UtilityError
from modelswarms.evaluation.engine.batching import current_batching
from modelswarms.runs.session import Session, fingerprint


@pytest.fixture()
def session(lora_experts, mc_data, tmp_path) -> Session:
    cfg = parse_config({
        "experts": {"paths": [str(p) for p in lora_experts]},
        "data": {"path": str(mc_data), "max_dev": 8, "max_test": 8},
        "utility": {"type": "multiple_choice"},
        "model": {"batch_size": 8},
        "output": {"dir": str(tmp_path / "run")},
    })
    return Session.open(cfg)


class CountingUtility:
    """Wraps a real utility, counting the calls that reach the model."""

    def __init__(self, inner, fail_above: int | None = None):
        self.inner, self.cfg, self.name = inner, inner.cfg, inner.name
        self.required_fields = inner.required_fields
        self.calls = 0
        self.fail_above = fail_above
        self.batch_sizes: list[int] = []

    def score(self, model, tokenizer, items):
        self.calls += 1
        size = current_batching().batch_size  # the engine's limits, set around every call
        self.batch_sizes.append(size)
        if self.fail_above is not None and size > self.fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner.score(model, tokenizer, items)


def test_fingerprint_sees_every_bit():
    v = torch.randn(1000)
    w = v.clone()
    assert fingerprint(v) == fingerprint(w)
    w[123] = torch.nextafter(w[123], torch.tensor(float("inf")))
    assert fingerprint(v) != fingerprint(w)


def test_an_unchanged_particle_is_never_scored_twice(session):
    counting = CountingUtility(session.utility)
    session.utility = counting
    first = session.score_many(session.experts, session.dev)
    assert counting.calls == len(session.experts)
    again = session.score_many(session.experts.clone(), session.dev)  # same bytes, new tensor
    assert counting.calls == len(session.experts) and again == first
    assert session.counts["cache_hits"] == len(session.experts)
    assert session.evaluations == 2 * len(session.experts)  # budgets count requests
    moved = session.experts[0] + 1e-3
    session.score(moved, session.dev)
    assert counting.calls == len(session.experts) + 1
    session.score(session.experts[0], session.test)  # other items: a new evaluation
    assert counting.calls == len(session.experts) + 2
    session.score(None, session.dev)
    session.score(None, session.dev)
    assert counting.calls == len(session.experts) + 3


def test_out_of_memory_halves_the_batch_and_gives_the_same_scores(session):
    clean = session.score(session.experts[1], session.dev)
    session.scorer._cache.clear()
    config = session.cfg.model_dump()
    counting = CountingUtility(session.utility, fail_above=2)
    session.utility = counting
    after = session.score(session.experts[1], session.dev)
    assert counting.batch_sizes == [8, 4, 2]
    assert session.counts["oom_backoffs"] == 2
    assert after.predictions == clean.predictions and after.value == clean.value
    session.score(session.experts[2], session.dev)  # the smaller batch stays
    assert counting.batch_sizes[-1] == 2
    # the back-off lives in the evaluator: no config is rewritten
    assert session.cfg.model_dump() == config and session.utility.cfg is counting.inner.cfg
    assert session.evaluator.batching.batch_size == 2


def test_out_of_memory_at_batch_one_is_a_clear_error(session):
    session.utility = CountingUtility(session.utility, fail_above=0)
    with pytest.raises(UtilityError, match="out of memory even with one item"):
        session.score(session.experts[0], session.dev)


def _flaky_module(tmp_path, monkeypatch):
    (tmp_path / "flaky_utility.py").write_text(
        "import math\n"
        "calls = [0]\n"
        "def score(model, tokenizer, items):\n"
        "    calls[0] += 1\n"
        "    if calls[0] % 3 == 0:\n"
        "        return math.nan\n"
        "    if calls[0] % 5 == 0:\n"
        "        raise ValueError('the grader is down')\n"
        "    return (calls[0] % 7) / 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("policy", ["stop", "worst"])
def test_a_nan_or_raising_utility_follows_the_policy(tmp_path, monkeypatch, lora_experts,
                                                     mc_data, policy):
    import sys

    from modelswarms.runs import runner

    sys.modules.pop("flaky_utility", None)
    _flaky_module(tmp_path, monkeypatch)
    cfg = parse_config({
        "experts": {"paths": [str(p) for p in lora_experts]},
        "data": {"path": str(mc_data), "max_dev": 4, "max_test": 4},
        "utility": {"type": "python", "function": "flaky_utility:score",
                    "on_invalid": policy},
        "search": {"max_iterations": 4, "patience": 10},
        "output": {"dir": str(tmp_path / "run")},
    })
    if policy == "stop":
        with pytest.raises(UtilityError, match="flaky_utility:score returned nan.*on_invalid"):
            runner.run(cfg, show_progress=False)
        return
    report = runner.run(cfg, show_progress=False)
    assert report["events"]["invalid_utility"] >= 2
    history = (tmp_path / "run" / "history.jsonl").read_text()
    assert "-Infinity" in history  # the invalid candidates, as -inf
    assert report["best_dev"] > 0 and report["best_dev"] != float("inf")
    assert "invalid_utility" in (tmp_path / "run" / "report.md").read_text()


def test_int8_quantises_the_base_linears_only(lora_experts, full_experts, mc_data, tmp_path):
    """model.dtype int8: the base model's linear layers become dynamic int8 ones (per-channel
    scales), the LoRA factors, the LM head and a full pool's searched tensors stay float32
    and bound to the flat buffer, and a particle's scores stay close to float32's."""
    from modelswarms.errors import ConfigError
    from modelswarms.evaluation.engine.backend import pick_dtype

    def open_(experts, dtype):
        return Session.open(parse_config({
            "experts": {"paths": [str(p) for p in experts]},
            "data": {"path": str(mc_data), "max_dev": 8, "max_test": 8},
            "utility": {"type": "multiple_choice", "scoring": "cloze"},
            "model": {"dtype": dtype, "batch_size": 8},
            "output": {"dir": str(tmp_path / dtype)}}), need_test=False)

    fp32, int8 = open_(lora_experts, "float32"), open_(lora_experts, "int8")
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert any(isinstance(m, DynamicLinear) for m in int8.backend.model.modules())
    for name, m in int8.backend.model.named_modules():
        if name.endswith((".lora_A.default", ".lora_B.default", "lm_head")):
            assert type(m) is torch.nn.Linear and m.weight.dtype == torch.float32, name
    assert int8.backend.flat.dtype == torch.float32
    a = fp32.score_many(fp32.experts, fp32.dev)
    b = int8.score_many(int8.experts, int8.dev)
    assert [x.value for x in a] == pytest.approx([x.value for x in b], abs=0.5)
    full = open_(full_experts, "int8")  # searched linears stay float32, bound to the buffer
    params = dict(full.backend.model.named_parameters())
    assert all(params[s.name].data_ptr() >= full.backend.flat.data_ptr()
               for s in full.space.slots if s.name in params)
    with pytest.raises(ConfigError, match="CPU only"):
        pick_dtype("int8", torch.device("cuda"))
