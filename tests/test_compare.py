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
from modelswarms.evaluation.engine import generation
from modelswarms.merge import merge_vectors
from modelswarms.pool.kinds import load_pool
from modelswarms.runs.compare import compare
from modelswarms.runs.session import Session
from modelswarms.space import FlatSpace

METHODS = ["base", "experts", "best_expert", "expert_vote", "logit_average", "linear",
           "ties", "dare_ties", "slerp", "random", "cmaes", "greedy_soup", "swarm"]


def _cfg(tmp_path, lora_experts, mc_data, **extra):
    return parse_config({
        "experts": {"paths": [str(p) for p in lora_experts]},
        "data": {"path": str(mc_data), "max_dev": 8, "max_test": 8},
        "model": {"batch_size": 8},
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
    from modelswarms.evaluation.engine.multiplex import LogitAverage, ParticleBatch

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


# --- intervals, references chosen by dev, weak-to-strong, old result lines ---------------

STAT_METHODS = ["experts", "best_expert", "linear", "ties", "dare_ties", "random", "swarm"]


@pytest.fixture(scope="module")
def stat_compare(tmp_path_factory, lora_experts, mc_data):
    out = tmp_path_factory.mktemp("stats") / "cmp"
    cfg = parse_config({
        "experts": {"paths": [str(p) for p in lora_experts]},
        "data": {"path": str(mc_data), "max_dev": 8, "max_test": 8},
        "model": {"batch_size": 8},
        "search": {"particles": 4},
        "coefficients": {"population": 4},
        "compare": {"methods": STAT_METHODS, "seeds": [0, 1], "budget": 12},
        "output": {"dir": str(out), "top_k": 3},
    })
    return out, compare(cfg)


def _results(out) -> dict:
    return {(r["method"], r["seed"]): r for r in
            (json.loads(line) for line in (out / "results.jsonl").read_text().splitlines())}


def test_compare_table_has_interval_columns_and_item_counts(stat_compare):
    out, report = stat_compare
    md = (out / "compare.md").read_text()
    assert "| Δ test vs best expert [95% CI] | Δ test vs best merge [95% CI] |" in md
    assert "8 dev items, 8 test items" in md and report["items"] == {"dev": 8, "test": 8}
    swarm_line = next(x for x in md.splitlines() if x.startswith("| Model Swarms |"))
    assert swarm_line.count("[") == 2
    assert any(word in swarm_line for word in ("tie", "**wins**", "**loses**"))
    assert json.loads((out / "compare.json").read_text())["rows"] == report["rows"]


def test_search_intervals_are_the_paired_bootstrap_of_the_stored_scores(stat_compare):
    from modelswarms.stats import paired_bootstrap, seed_averaged_gain, unpack_scores

    out, report = stat_compare
    res = _results(out)
    experts = res[("experts", 0)]["rows"]
    assert all(isinstance(r["test_scores"], str) and len(r["test_scores"]) == 8
               for r in experts)  # accuracy: one "0"/"1" per test item
    best = max(experts, key=lambda r: r["dev"])  # by dev, first on a tie
    expert_ref = unpack_scores(best["test_scores"])
    merges = {m: [res[(m, s)]["rows"][0] for s in ((0, 1) if m == "dare_ties" else (0,))]
              for m in ("linear", "ties", "dare_ties")}
    merge = max(merges, key=lambda m: sum(r["dev"] for r in merges[m]) / len(merges[m]))
    per_seed = [unpack_scores(r["test_scores"]) for r in merges[merge]]
    merge_ref = [sum(col) / len(col) for col in zip(*per_seed, strict=True)]
    assert report["references"]["best_expert"]["name"] == best["name"]
    assert report["references"]["best_merge"]["name"] == merge
    rows = {r["name"]: r for r in report["rows"]}
    for method, name in (("swarm", "Model Swarms"), ("random", "random search")):
        seeds = [unpack_scores(res[(method, s)]["rows"][0]["test_scores"]) for s in (0, 1)]
        row = rows[name]
        for key, ref in (("vs_best_expert", expert_ref), ("vs_best_merge", merge_ref)):
            assert row[key] == seed_averaged_gain(seeds, ref)
            for entry, scores in zip(row["per_seed"], seeds, strict=True):
                assert entry[key] == paired_bootstrap(scores, ref)
        # the stored scores are the row's test accuracy
        assert [sum(s) / len(s) for s in seeds] == pytest.approx(row["test"])


def test_weak_to_strong_ranks_follow_the_experts_dev_order(stat_compare, lora_experts):
    out, report = stat_compare
    experts = [r for r in report["rows"] if r["method"] == "experts"]
    names = [p.name for p in lora_experts]
    dev = {r["name"].removeprefix("expert: "): r["dev_mean"] for r in experts}
    order = sorted(names, key=lambda n: -dev[n])
    swarm = next(r for r in report["rows"] if r["name"] == "Model Swarms")
    for entry in swarm["per_seed"]:
        w2s = entry["weak_to_strong"]
        assert [w["final_rank"] for w in w2s] == [1, 2, 3]
        assert w2s[0]["dev"] == entry["dev"]  # the best personal best is the global best
        assert [w["dev"] for w in w2s] == sorted((w["dev"] for w in w2s), reverse=True)
        for w in w2s:
            if w["particle"] < len(names):
                assert w["started_as"] == names[w["particle"]]
                assert w["start_rank"] == 1 + sum(dev[n] > dev[w["started_as"]] for n in order)
            else:
                assert (w["started_as"], w["start_rank"]) == ("grown", None)
    run_report = json.loads((out / "runs" / "swarm" / "seed_0" / "report.json").read_text())
    assert run_report["weak_to_strong"] == swarm["per_seed"][0]["weak_to_strong"]
    md = (out / "compare.md").read_text()
    assert "Weak-to-strong (Model Swarms)" in md and "correctness emergence |" in md


def test_old_result_lines_without_per_item_scores_still_render(stat_compare, tmp_path):
    import shutil

    out, _ = stat_compare
    old = tmp_path / "old"
    old.mkdir()
    shutil.copyfile(out / "config.yaml", old / "config.yaml")
    lines = []
    for line in (out / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for row in rec["rows"]:
            row.pop("test_scores", None)
            row.pop("weak_to_strong", None)
        lines.append(json.dumps(rec))
    (old / "results.jsonl").write_text("\n".join(lines) + "\n")
    report = compare(resume=old)  # every row is done: nothing runs again
    swarm = next(r for r in report["rows"] if r["name"] == "Model Swarms")
    assert swarm["vs_best_expert"] is None and swarm["vs_best_merge"] is None
    assert all(e["vs_best_expert"] is None for e in swarm["per_seed"])
    md = (old / "compare.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| Model Swarms |"))
    assert line.split(" | ")[3:5] == ["-", "-"]
    assert "Weak-to-strong" not in md


def test_benchmark_page_rebuilds_from_docs_folders(stat_compare, tmp_path):
    import importlib.util
    import shutil
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "benchmark_table.py"
    spec = importlib.util.spec_from_file_location("benchmark_table", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, report = stat_compare
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "BENCHMARKS.md").write_text(f"old tables\n{bench.ANALYSIS}\n\nMy analysis.\n")
    target = bench.save_to_docs("arith", out, {"command": "python bench/benchmark_table.py",
                                               "machine": "test machine"}, docs)
    assert {p.name for p in target.iterdir()} >= {"results.jsonl", "compare.json",
                                                   "compare.md", "config.yaml", "meta.json"}
    text = bench.write_page(docs)
    page = (docs / "BENCHMARKS.md").read_text()
    assert page.startswith(text) and page.endswith("\n\nMy analysis.\n")
    assert "old tables" not in page and "## arith:" in page and "test machine" in page
    assert "Δ test vs best expert [95% CI]" in page and "Weak-to-strong" in page
    # a config written for a run of the default task set
    args = bench.parser().parse_args(["--device", "cpu", "--prompt", "mmlu=Q: {question}",
                                      "--particles-per-forward", "2", "--max-test", "5000"])
    cfg = bench.config_dict("hellaswag", args, tmp_path / "out")
    assert args.tasks == ["hellaswag"] and cfg["utility"]["scoring"] == "cloze_norm"
    assert cfg["utility"]["prompt"] == "{question}" and cfg["search"]["particles"] == 10
    assert cfg["model"] == {"device": "cpu", "particles_per_forward": 2, "batch_size": 32}
    assert cfg["compare"]["budget"] == 100 and cfg["compare"]["seeds"] == [0, 1, 2]
    if bench.task_file("hellaswag").is_file():
        assert cfg["data"]["max_test"] <= 1000
    assert bench.config_dict("mmlu", args, tmp_path)["utility"]["prompt"] == "Q: {question}"
    assert bench.config_dict("capitals", args, tmp_path)["data"] == {
        "path": str(bench.task_file("capitals")), "max_dev": 60, "max_test": 100}
    parse_config(cfg)  # a valid config
    # one scoring mode per task: TASK=MODE entries beside a default for the rest
    args = bench.parser().parse_args(["--scoring", "cloze", "mmlu=letter",
                                      "--extra-methods", "layer_swarm"])
    assert bench.config_dict("mmlu", args, tmp_path)["utility"]["scoring"] == "letter"
    cfg = bench.config_dict("capitals", args, tmp_path)
    assert cfg["utility"]["scoring"] == "cloze"
    assert cfg["compare"]["methods"] == [*bench.METHODS, "layer_swarm"]
    parse_config(cfg)
    shutil.rmtree(docs / "bench")
    assert "No task has finished yet" in bench.render_page(docs)


def _watch_cfg(tmp_path, lora_experts, mc_data, seeds, budget=12, max_iterations=2):
    return _cfg(tmp_path, lora_experts, mc_data,
                search={"particles": 4, "max_iterations": max_iterations, "patience": 100},
                compare={"methods": ["experts", "linear", "swarm"], "seeds": seeds,
                         "budget": budget})


def test_a_comparison_in_a_log_shows_progress_and_its_table_grows_row_by_row(
        tmp_path, lora_experts, mc_data, capsys, monkeypatch):
    """stderr is no terminal here (as under nohup): a flushed line per search iteration and
    per finished row, each with rows done, ETA; compare.md rewritten after every row, marked
    partial, with the intervals of the rows so far."""
    from modelswarms.runs import compare as cmp
    from modelswarms.runs.status import folder_status, render

    tables: list[str] = []
    real = cmp.write_tables

    def spy(report, out):
        real(report, out)
        tables.append((out / "compare.md").read_text())

    monkeypatch.setattr(cmp, "write_tables", spy)
    report = compare(_watch_cfg(tmp_path, lora_experts, mc_data, [0, 1]), show_progress=True)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("compare: [")]
    assert lines[0].startswith("compare: [0/4 rows] 4 rows, 0 done before")
    finished = [x for x in lines if " done in " in x]
    assert [x.split("]")[0] for x in finished] == [f"compare: [{k}/4 rows" for k in (1, 2, 3, 4)]
    steps = [x for x in lines if "Model Swarms (seed 1): iteration" in x]
    assert len(steps) == 3 and "evaluations 12/12" in steps[-1]  # experts, then 2 moves
    assert all("ETA " in x for x in lines)
    # from the experts' scoring on, the ETA is a figure, and 0 at the end
    assert all("ETA ?" not in x for x in lines[2:]) and lines[-1].endswith("ETA 0 s")
    assert len(tables) == 5
    for k, table in enumerate(tables[:4], 1):
        assert f"Partial table: {k} of 4 rows done" in table
    assert "Partial" not in tables[-1] and "partial" not in report
    swarm_row = next(x for x in tables[2].splitlines() if x.startswith("| Model Swarms |"))
    assert "[" in swarm_row  # an interval against the best expert, from the first seed
    status = render(folder_status(tmp_path / "cmp"))
    assert "4 of 4 rows done; finished" in status and "Partial" not in status


CHILD = r'''
import sys
from modelswarms.config import load_config
from modelswarms.runs.compare import compare
compare(load_config(sys.argv[1]), overwrite=True, show_progress=True)
'''


def test_status_of_a_live_then_a_killed_comparison(tmp_path, lora_experts, mc_data):
    """`modelswarms status` on a folder another process is writing, then on the same folder
    after a SIGKILL: the rows so far and who writes, and not a byte of the folder changed."""
    import os
    import subprocess
    import sys
    import time

    from modelswarms.config import dump_config

    cfg = _watch_cfg(tmp_path, lora_experts, mc_data, list(range(30)), budget=40,
                     max_iterations=9)
    path = tmp_path / "cmp.yaml"
    path.write_text(dump_config(cfg))
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    out, runner = tmp_path / "cmp", CliRunner()
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(child), str(path)], stdout=log,
                                stderr=log,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        try:
            deadline = time.monotonic() + 300
            while len(_lines(out / "results.jsonl")) < 3:  # experts, linear, a swarm seed
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "log").read_text()[-2000:]
                time.sleep(0.2)
            live = runner.invoke(main, ["status", str(out)])
            assert live.exit_code == 0, live.output
            assert f"running (pid {proc.pid})" in live.output
            assert "of 32 rows done" in live.output and "Partial table" in live.output
            assert "| Model Swarms |" in live.output and "last line: [" in live.output
            assert "compare: [" in (tmp_path / "log").read_text()  # the log shows it too
        finally:
            proc.kill()
            proc.wait()
    before = _snapshot(out)
    done = len(_lines(out / "results.jsonl"))
    killed = runner.invoke(main, ["status", str(out)])
    assert killed.exit_code == 0, killed.output
    assert f"process {proc.pid} ended without finishing" in killed.output
    assert f"{done} of 32 rows done" in killed.output
    assert f"Partial table: {done} of 32 rows done" in killed.output
    assert f"compare --resume {out}" in killed.output
    assert _snapshot(out) == before


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def _snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_the_benchmark_script_shows_progress_unless_quiet(tmp_path, lora_experts, monkeypatch):
    """The evidence run starts bench/benchmark_table.py with its output in a log: the
    comparison's progress lines must reach it (`--quiet` turns them off)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "benchmark_table.py"
    spec = importlib.util.spec_from_file_location("benchmark_table", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    asked = []
    monkeypatch.setattr("modelswarms.runs.compare.compare",
                        lambda *a, **kw: asked.append(kw["show_progress"]))
    for flags in ([], ["--quiet"]):
        args = bench.parser().parse_args(["--tasks", "capitals", "--out", str(tmp_path / "o"),
                                          "--pool", str(lora_experts[0].parent), *flags])
        bench.run_task("capitals", args)
    assert asked == [True, False]
