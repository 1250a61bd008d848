"""End to end on tiny models: run folder, determinism, resume, export round trip, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelswarms.config import dump_config, load_config, parse_config
from modelswarms.errors import ConfigError, RunError
from modelswarms.runs import runner
from modelswarms.runs.checkpoint import load_checkpoint
from modelswarms.runs.session import Session

from .conftest import make_mc_items


def write_config(tmp_path: Path, experts, data, **search) -> Path:
    cfg = {
        "experts": {"paths": [str(p) for p in experts]},
        "data": {"path": str(data)},
        "utility": {"type": "multiple_choice"}, "model": {"batch_size": 4},
        "search": {"max_iterations": 4, "patience": 10, "particles": 4, **search},
        "output": {"dir": str(tmp_path / "run"), "top_k": 2},
        "seed": 7,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def read_history(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def test_run_writes_a_complete_run_folder(tmp_path, lora_experts, mc_data):
    cfg = load_config(write_config(tmp_path, lora_experts, mc_data))
    report = runner.run(cfg, show_progress=False)
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "checkpoint.safetensors", "history.jsonl", "run.log",
                 "report.json", "report.md", "utility_curves.png"):
        assert (run_dir / name).is_file(), name
    assert load_config(run_dir / "config.yaml") == cfg
    history = read_history(run_dir)
    assert [h["iteration"] for h in history] == [0, 1, 2, 3, 4]
    assert all(len(h["utilities"]) == 4 for h in history)
    # the global best is the running maximum of every utility seen
    seen = [max(u for h in history[: i + 1] for u in h["utilities"]) for i in range(5)]
    assert [h["global_best"] for h in history] == seen
    assert report["best_dev"] == seen[-1]
    assert (run_dir / "best" / "adapter_model.safetensors").is_file()
    assert sorted(os.listdir(run_dir / "top")) == ["rank_1", "rank_2"]
    names = [r["name"] for r in report["rows"]]
    assert names[0] == "base model" and "Model Swarms: top-2 majority vote" in names
    assert isinstance(report["correctness_emergence"], int)
    assert "| Model Swarms: global best |" in (run_dir / "report.md").read_text()


def test_same_seed_same_run(tmp_path, lora_experts, mc_data):
    a = runner.run(load_config(write_config(tmp_path / "a", lora_experts, mc_data)),
                   show_progress=False)
    b = runner.run(load_config(write_config(tmp_path / "b", lora_experts, mc_data)),
                   show_progress=False)
    ha, hb = read_history(tmp_path / "a" / "run"), read_history(tmp_path / "b" / "run")
    assert [h["utilities"] for h in ha] == [h["utilities"] for h in hb]
    assert a["rows"] == b["rows"]
    ta = load_file(tmp_path / "a" / "run" / "checkpoint.safetensors")
    tb = load_file(tmp_path / "b" / "run" / "checkpoint.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_interrupted_run_resumes_to_the_same_result(tmp_path, lora_experts, mc_data,
                                                     checkpoint_dies):
    ref = runner.run(load_config(write_config(tmp_path / "ref", lora_experts, mc_data)),
                     show_progress=False)
    cfg = load_config(write_config(tmp_path / "cut", lora_experts, mc_data))
    # iteration 2's checkpoint write dies; written in the background, its error is raised
    # once iteration 3 is scored
    checkpoint_dies(3)
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, show_progress=False)
    checkpoint_dies(None)
    run_dir = tmp_path / "cut" / "run"
    assert len(read_history(run_dir)) == 4  # iterations 2 and 3 logged, not checkpointed
    resumed = runner.run(resume=run_dir, show_progress=False)
    assert resumed["rows"] == ref["rows"] and resumed["best_dev"] == ref["best_dev"]
    assert [h["utilities"] for h in read_history(run_dir)] == \
        [h["utilities"] for h in read_history(tmp_path / "ref" / "run")]


def test_sigkilled_run_resumes_to_the_same_result(tmp_path, lora_experts, mc_data):
    ref = runner.run(load_config(write_config(tmp_path / "ref", lora_experts, mc_data,
                                              max_iterations=6)), show_progress=False)
    config = write_config(tmp_path / "cut", lora_experts, mc_data, max_iterations=6)
    run_dir = tmp_path / "cut" / "run"
    proc = subprocess.Popen([sys.executable, "-m", "modelswarms", "run", str(config),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run_dir / "history.jsonl").exists() and len(read_history(run_dir)) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    tensors, meta = load_checkpoint(run_dir / "checkpoint.safetensors")
    assert meta["search"]["iteration"] < 6, "the run finished before it could be killed"
    resumed = runner.run(resume=run_dir, show_progress=False)
    assert resumed["rows"] == ref["rows"]


def test_export_round_trip_gives_the_particles_logits(tmp_path, tiny_base, lora_experts, mc_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_config(write_config(tmp_path, lora_experts, mc_data))
    runner.run(cfg, show_progress=False)
    tensors, _ = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    session = Session.open(cfg, need_test=False)
    ids = torch.tensor([[5, 17, 30, 42, 8]])
    with torch.no_grad():
        session.backend.load(tensors["g"])
        ours = session.backend.model(input_ids=ids).logits
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base),
                                          str(tmp_path / "run" / "best")).eval()
        theirs = model(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_full_weight_pool_runs_and_exports_a_model_folder(tmp_path, full_experts, mc_data):
    from transformers import AutoModelForCausalLM

    path = write_config(tmp_path, full_experts, mc_data, max_iterations=2)
    cfg = load_config(path)
    cfg = cfg.model_copy(update={"experts": cfg.experts.model_copy(
        update={"include": ["model.layers.*"]})})
    report = runner.run(cfg, show_progress=False)
    assert report["rows"][0]["name"].startswith("expert:")  # no base model row for full pools
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "best")
    tensors, _ = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    session = Session.open(cfg, need_test=False)
    exported = session.space.flatten(dict(model.named_parameters()))
    torch.testing.assert_close(exported, tensors["g"])


def test_existing_run_folder_is_refused(tmp_path, lora_experts, mc_data):
    cfg = load_config(write_config(tmp_path, lora_experts, mc_data, max_iterations=1))
    runner.run(cfg, show_progress=False)
    with pytest.raises(RunError, match="--resume"):
        runner.run(cfg, show_progress=False)
    runner.run(cfg, overwrite=True, show_progress=False)


def test_config_errors_name_the_key(tmp_path):
    base = {"experts": {"paths": ["a", "b"]}, "data": {"path": "d.json"}}
    with pytest.raises(ConfigError, match=r"search\.inertai: unknown key"):
        parse_config({**base, "search": {"inertai": 0.3}})
    with pytest.raises(ConfigError, match=r"search\.patience"):
        parse_config({**base, "search": {"patience": "soon"}})
    # data is optional in the file (merge never reads it); the commands that score need it
    with pytest.raises(ConfigError, match=r"^data: .*no `data:` section"):
        parse_config({"experts": {"paths": ["a"]}}).need_data("run")
    with pytest.raises(ConfigError, match=r"utility\.topic: unknown key for utility type "
                       "multiple_choice"):
        parse_config({**base, "utility": {"type": "multiple_choice", "topic": "finance"}})
    with pytest.raises(ConfigError, match=r"utility\.function: required for utility type "
                       "python"):
        parse_config({**base, "utility": {"type": "python"}})
    with pytest.raises(ConfigError, match=r"utility\.batch_size: unknown key"):
        parse_config({**base, "utility": {"batch_size": 3}})  # an engine knob: model.batch_size
    path = tmp_path / "c.yaml"
    path.write_text("experts:\n  paths: [a, b]\ndata:\n  path: d.json\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: bogus: unknown key"):
        load_config(path)


def test_config_paths_resolve_against_the_config_file(tmp_path):
    path = tmp_path / "sub" / "c.yaml"
    path.parent.mkdir()
    path.write_text("experts:\n  paths: [e1, ../e2]\n  base_model: smollm2\n"
                    "data:\n  path: d.json\n")
    cfg = load_config(path)
    assert cfg.experts.paths == [str(tmp_path / "sub" / "e1"), str(tmp_path / "e2")]
    assert cfg.experts.base_model == "smollm2"
    assert cfg.data.path == str(tmp_path / "sub" / "d.json")
    assert parse_config(__import__("yaml").safe_load(dump_config(cfg))) == cfg


def test_progress_is_a_plain_line_per_iteration_in_a_log(tmp_path, lora_experts, mc_data,
                                                          capsys):
    """Standard error is not a terminal here (pytest captures it): a CI log or `| tee` gets
    one line per iteration with the figures, not a redrawn bar or nothing."""
    from modelswarms.runs.runner import run as run_search

    cfg = parse_config({"experts": {"paths": [str(p) for p in lora_experts]},
                        "data": {"path": str(mc_data)}, "budget": 12,
                        "search": {"max_iterations": 2},
                        "output": {"dir": str(tmp_path / "run")}})
    report = run_search(cfg, show_progress=True)
    lines = [x for x in capsys.readouterr().err.splitlines() if "iteration" in x]
    assert len(lines) == report["iterations"] + 1  # the experts' evaluation, then each move
    assert lines[-1].startswith(f"Model Swarms: iteration {report['iterations']}/2")
    assert "best" in lines[-1] and "evals" in lines[-1] and "ETA" in lines[-1]


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path, lora_experts, mc_data):
    """An expert path that is a file: one clear error, and no run folder that would refuse
    the corrected config until --overwrite."""
    from modelswarms.errors import ExpertError
    from modelswarms.runs.runner import run as run_search

    stray = tmp_path / "not_a_folder"
    stray.write_text("x")
    cfg = parse_config({"experts": {"paths": [str(lora_experts[0]), str(stray)]},
                        "data": {"path": str(mc_data)}, "budget": 4,
                        "output": {"dir": str(tmp_path / "run")}})
    with pytest.raises(ExpertError, match="not_a_folder"):
        run_search(cfg, show_progress=False)
    assert not (tmp_path / "run").exists()
    fixed = cfg.model_copy(update={"experts": cfg.experts.model_copy(
        update={"paths": [str(p) for p in lora_experts]})})
    assert run_search(fixed, show_progress=False)["evaluations"] <= 4


def test_the_same_expert_twice_is_a_counted_warning(tmp_path, lora_experts, mc_data, caplog):
    from modelswarms.runs.runner import run as run_search

    cfg = parse_config({"experts": {"paths": [str(lora_experts[0]), str(lora_experts[1]),
                                              str(lora_experts[0])],
                                    "base_model": None},
                        "data": {"path": str(mc_data)}, "budget": 6,
                        "output": {"dir": str(tmp_path / "run"), "evaluate_test": False}})
    report = run_search(cfg, show_progress=False)
    assert report["events"]["duplicate_experts"] == 1
    assert any("the search gets a copy" in r.message for r in caplog.records)


def test_suspicious_inputs_are_printed_once_and_counted(tmp_path, lora_experts, capsys):
    """A small dev set, answers piled on one position, a budget of one swarm step: legal, so
    the run goes on, but each is said once on the console and counted in the events."""
    from modelswarms.runs.checks import check_budget
    from modelswarms.runs.runner import run as run_search

    items = make_mc_items(30, 0)
    for it in items:  # every answer moved to option A
        right = it["choices"][it["answer"]]
        others = [v for v in it["choices"].values() if v != right]
        it["choices"], it["answer"] = dict(zip("ABCD", [right, *others], strict=True)), "A"
    data = tmp_path / "piled.json"
    data.write_text(json.dumps({"dev": items, "test": items[:4]}))
    cfg = parse_config({"experts": {"paths": [str(p) for p in lora_experts]},
                        "data": {"path": str(data)}, "budget": 6,
                        "output": {"dir": str(tmp_path / "run"), "evaluate_test": False}})
    report = run_search(cfg, show_progress=False)
    err = capsys.readouterr().err
    for event, text in [("small_dev", "the dev split has 30 items"),
                        ("answer_position", "100% of the 30 dev answers are option 1 ('A'"),
                        ("small_budget", "6 evaluations allow Model Swarms 1 iteration(s)")]:
        assert report["events"][event] == 1, event
        assert err.count(text) == 1, (text, err)
    assert "duplicate_experts" not in report["events"]

    class Search:  # the same check again in the same session says nothing new
        starts_at_experts, n, label = True, 3, "Model Swarms"

    session = Session.open(cfg, need_test=False)
    capsys.readouterr()
    check_budget(cfg, Search(), session.scorer)
    check_budget(cfg, Search(), session.scorer)
    assert session.counts["small_budget"] == 1
    assert capsys.readouterr().err.count("warning:") == 1


def test_an_even_spread_of_answers_and_a_large_budget_say_nothing(tmp_path, lora_experts):
    from modelswarms.runs.checks import answer_position, check_budget
    from modelswarms.runs.scorer import Scorer

    class Quiet:  # an evaluator with nothing to report; these checks never score
        def drain_events(self) -> dict:
            return {}
    scorer = Scorer(Quiet(), None)  # type: ignore[arg-type]
    items = make_mc_items(200, 3)
    cfg = parse_config({"experts": {"paths": [str(p) for p in lora_experts]},
                        "data": {"path": "x.json"}, "budget": 9})

    class Search:
        starts_at_experts, n, label = True, 3, "Model Swarms"
    answer_position(items, cfg, scorer)
    check_budget(cfg, Search(), scorer)
    assert not scorer.warned
