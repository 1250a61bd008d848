"""`modelswarms merge` and `modelswarms compare` on tiny models: every row on one engine, equal
budgets for the searches, the logit-average ensemble by hand, resume."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from modelswarms.cli import main
from modelswarms.config import load_config, parse_config
from modelswarms.errors import ConfigError
from modelswarms.evaluation import generation
from modelswarms.merge import merge_vectors
from modelswarms.pool import load_pool
from modelswarms.runs.compare import compare
from modelswarms.runs.session import Session
from modelswarms.space import FlatSpace

METHODS = ["base", "experts", "best_expert", "expert_vote", "logit_average", "linear",
           "ties", "dare_ties", "slerp", "random", "cmaes", "greedy_soup", "swarm"]


def _cfg(tmp_path, lora_experts, mc_data, **extra):
    return parse_config({
        "experts": {"paths": [str(p) for p in lora_experts]},
        "data": {"path": str(mc_data), "max_dev": 8, "max_test": 8},
        "utility": {"batch_size": 8},
        "search": {"particles": 4},
        "coefficients": {"population": 4},
        "compare": {"methods": METHODS, "seeds": [0, 1], "budget": 12,
                    "merge_params": {"ties": {"density": 0.5}}},
        "output": {"dir": str(tmp_path / "cmp"), "top_k": 2},
        **extra,
    })


def test_compare_every_row_with_equal_budgets_and_resume(tmp_path, lora_experts, mc_data):
    cfg = _cfg(tmp_path, lora_experts, mc_data)
    report = compare(cfg)
    rows = {r["name"]: r for r in report["rows"]}
    assert "base model" in rows and "Model Swarms" in rows and "CMA-ES" in rows
    assert {f"expert: {p.name}" for p in lora_experts} <= set(rows)
    assert "skipped" in rows["slerp"]  # three experts: slerp takes two, said so
    for name in ("Model Swarms", "CMA-ES", "random search"):
        assert rows[name]["seeds"] == 2 and rows[name]["evaluations"] <= 12
    assert rows["random search"]["evaluations"] == 12
    assert rows["dare_ties"]["seeds"] == 2 and rows["ties"]["seeds"] == 1
    best = max(rows[f"expert: {p.name}"]["dev_mean"] for p in lora_experts)
    assert rows["greedy soup"]["dev_mean"] >= best  # the soup starts from the best expert
    out = tmp_path / "cmp"
    for name in ("compare.md", "compare.json", "compare.png", "results.jsonl", "run.log"):
        assert (out / name).is_file(), name
    assert "Model Swarms" in (out / "compare.md").read_text()
    # resume: drop the last rows and a search's report; the table comes back the same
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-3]) + "\n{\"torn")
    (out / "runs" / "swarm" / "seed_1" / "report.json").unlink()
    again = compare(resume=out)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(again["rows"]) == strip(report["rows"])


def test_compare_rejects_unknown_methods(tmp_path, lora_experts, mc_data):
    bad = _cfg(tmp_path, lora_experts, mc_data).compare.model_copy(update={"methods": ["nope"]})
    cfg = _cfg(tmp_path, lora_experts, mc_data).model_copy(update={"compare": bad})
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        compare(cfg)


def test_logit_average_is_the_mean_of_the_experts_probabilities(lora_experts, mc_data,
                                                                tmp_path):
    from modelswarms.evaluation.multiplex import LogitAverage, ParticleBatch

    session = Session.open(_cfg(tmp_path, lora_experts, mc_data), need_test=False)
    prompts = [list(range(30, 52)) + [5, 6], list(range(30, 52)) + [7], [9, 8, 7]]
    per_expert = []
    for v in session.experts:
        session.backend.load(v)
        per_expert.append(torch.tensor(generation.next_token_logprobs(
            session.backend.model, prompts, [5, 17, 42], pad_id=0, batch_size=3)[0]))
    n = len(per_expert)
    batch = ParticleBatch(session.backend, n)
    batch.load(session.experts)
    with batch.active(n) as model:
        # the full softmax mean over the vocabulary, then the three tokens
        got = torch.tensor(generation.next_token_logprobs(
            LogitAverage(model, n), prompts, [5, 17, 42], pad_id=0, batch_size=3)[0])
    # log of the mean of probabilities, token by token
    hand = torch.logsumexp(torch.stack(per_expert), 0) - torch.log(torch.tensor(float(n)))
    torch.testing.assert_close(got, hand, atol=1e-4, rtol=1e-4)


def test_merge_command_writes_a_loadable_adapter(tmp_path, lora_experts, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump({
        "experts": {"paths": [str(p) for p in lora_experts]},
        "data": {"path": "unused.json"},
        "merge": {"method": "ties", "params": {"density": 0.5}},
        "output": {"dir": str(tmp_path / "merged")},
    }))
    res = CliRunner().invoke(main, ["merge", str(path)])
    assert res.exit_code == 0, res.output
    pool = load_pool([str(p) for p in lora_experts])
    space = FlatSpace.select(pool.experts[0].tensors, [], [])
    stack = space.stack([x.tensors for x in pool.experts], device=torch.device("cpu"))
    expected = merge_vectors("ties", stack.float(), torch.zeros(space.dim), space,
                             params={"density": 0.5})
    from safetensors.torch import load_file

    merged = load_file(tmp_path / "merged" / "adapter_model.safetensors")
    torch.testing.assert_close(space.flatten(merged).float(), expected)
    # plain peft loads it, and it changes the base model's output
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        after = PeftModel.from_pretrained(base, str(tmp_path / "merged"))(input_ids=ids).logits
    assert not torch.allclose(before, after)
    res = CliRunner().invoke(main, ["merge", str(path)])
    assert res.exit_code == 2 and "exists" in res.output
    data = yaml.safe_load(path.read_text())
    data["merge"] = {"method": "soup"}
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(main, ["merge", str(path), "--overwrite"])
    assert res.exit_code == 2 and "unknown method 'soup'" in res.output


def test_merge_config_is_read_from_yaml(tmp_path, lora_experts):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"experts": {"paths": [str(lora_experts[0])]},
                                    "data": {"path": "x.json"},
                                    "merge": {"method": "linear", "weights": [1.0]}}))
    assert load_config(path).merge.weights == [1.0]
    assert json.dumps(load_config(path).merge.params) == "{}"


def test_full_weight_merges_measure_task_vectors_from_the_base(tmp_path, full_experts,
                                                               tiny_base):
    from safetensors.torch import load_file

    def run(extra):
        path = tmp_path / "full.yaml"
        path.write_text(yaml.safe_dump({
            "experts": {"paths": [str(p) for p in full_experts], **extra},
            "data": {"path": "unused.json"},
            "merge": {"method": "ties", "params": {"density": 0.5}},
            "output": {"dir": str(tmp_path / "merged_full")},
        }))
        return CliRunner().invoke(main, ["merge", str(path), "--overwrite"])

    res = run({})
    assert res.exit_code == 2 and "set experts.base_model" in res.output
    res = run({"base_model": str(tiny_base)})
    assert res.exit_code == 0, res.output
    pool = load_pool([str(p) for p in full_experts])
    space = FlatSpace.select(pool.experts[0].tensors, [], [])
    stack = space.stack([x.tensors for x in pool.experts], device=torch.device("cpu"))
    base = space.flatten(load_file(tiny_base / "model.safetensors"))
    expected = merge_vectors("ties", stack.float(), base, space, params={"density": 0.5})
    merged = load_file(tmp_path / "merged_full" / "model.safetensors")
    torch.testing.assert_close(space.flatten(merged), expected)
    zero_base = merge_vectors("ties", stack.float(), torch.zeros(space.dim), space,
                              params={"density": 0.5})
    assert not torch.allclose(expected, zero_base)  # the base really was used
