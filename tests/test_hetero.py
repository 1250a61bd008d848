"""Heterogeneous Swarms on tiny models: DAG decoding, message passing, JFK-scores, the loop,
resume, export and the exported runner."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from modelswarms.cli import main
from modelswarms.config import load_config, parse_config
from modelswarms.hetero import Dag, chain, decode, star
from modelswarms.hetero.graph import random_adjacency
from modelswarms.hetero.system import SystemScorer
from modelswarms.runs.runner import run
from modelswarms.runs.session import Session
from modelswarms.search import HeteroSwarm, jfk_scores
from modelswarms.search.swarm import ModelSwarm, SwarmConfig


def write_config(tmp_path: Path, experts, data, **hswarm_knobs) -> Path:
    cfg = {
        "experts": {"paths": [str(p) for p in experts]},
        "strategy": "hswarm",
        "data": {"path": str(data), "max_dev": 6, "max_test": 8},
        "utility": {"type": "multiple_choice"},
        "search": {"patience": 10},
        "hswarm": {"graphs": 3, "trials": 3, "max_rounds": 3, "patience": 5,
                   "max_new_tokens": 4, **hswarm_knobs},
        "output": {"dir": str(tmp_path / "run")},
        "model": {"device": "cpu", "batch_size": 4},
        "seed": 3,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def check_in_tree(dag: Dag) -> None:
    """Acyclic, one end node, every other node with exactly one outgoing edge."""
    outgoing = [a for a, _ in dag.edges]
    assert dag.end not in outgoing
    assert sorted(outgoing) == [i for i in range(dag.n) if i != dag.end]
    order = dag.order()
    assert sorted(order) == list(range(dag.n)) and order[-1] == dag.end
    position = {node: i for i, node in enumerate(order)}
    assert all(position[a] < position[b] for a, b in dag.edges)  # so no cycle


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 8), seed=st.integers(0, 10_000), sample=st.booleans(),
       scale=st.sampled_from([1.0, 3.0]))
def test_decoded_graphs_are_in_trees_and_deterministic(n, seed, sample, scale):
    # scale 3: PSO moves entries out of [0, 1], negative ones included
    a = (random_adjacency(1, n, torch.Generator().manual_seed(seed))[0] - 0.3) * scale
    mode = "top_p" if sample else "argmax"
    first = decode(a, mode, 0.8, torch.Generator().manual_seed(seed))
    check_in_tree(first)
    assert decode(a, mode, 0.8, torch.Generator().manual_seed(seed)) == first


def test_argmax_decoding_by_hand():
    # out-degrees 1.0, 0.4, 1.1: node 1 sends least, so it is the end node; of nodes 0 and 2
    # node 2 has the larger row sum and goes next, to node 1 (the only one placed); node 0
    # then prefers node 2 (0.7) over node 1 (0.3).
    a = torch.tensor([[0.0, 0.3, 0.7], [0.2, 0.0, 0.2], [0.1, 1.0, 0.0]])
    assert decode(a) == Dag(3, 1, ((0, 2), (2, 1)))
    assert decode(a).order() == [0, 2, 1]


def test_chain_and_star():
    check_in_tree(chain(4))
    check_in_tree(star(4, 2))
    assert star(4, 2).predecessors(2) == [0, 1, 3]
    with pytest.raises(ValueError, match="in-tree"):
        Dag(3, 2, ((0, 1), (1, 0))).order()


def test_jfk_scores_by_hand():
    # trial 1 (utility 0.6): models 0, 0, 1; trial 2 (0.2): models 1, 0, 1; model 2 never drawn
    scores = jfk_scores([[0, 0, 1], [1, 0, 1]], [0.6, 0.2], 3)
    assert scores[0] == pytest.approx((0.6 + 0.6 + 0.2) / 3)
    assert scores[1] == pytest.approx((0.6 + 0.2 + 0.2) / 3)
    assert math.isnan(scores[2])


def test_a_particle_told_nan_stays_put():
    x = torch.randn(3, 5)
    swarm = ModelSwarm(x, SwarmConfig(), seed=0)
    swarm.tell([0.1, 0.5, 0.3])
    before = swarm.ask().clone()
    swarm.tell([0.2, math.nan, 0.4])
    assert swarm.p_util[1] == 0.5 and swarm.stall[1] == 0
    after = swarm.ask()
    assert torch.equal(after[1], before[1])
    assert not torch.equal(after[0], before[0])
    with pytest.raises(ValueError, match="NaN"):
        swarm.tell([math.nan] * 3)


def test_messages_pass_in_topological_order(tmp_path, lora_experts, mc_data, monkeypatch):
    cfg = load_config(write_config(tmp_path, lora_experts, mc_data))
    session = Session.open(cfg, need_test=False)
    ev = SystemScorer(session.scorer, cfg.hswarm, cfg.utility)
    seen = []
    real_answers, real_score = ev.answers, session.scorer.score

    def answers(weights, items):
        out = real_answers(weights, items)
        seen.append(("gen", [it["question"] for it in items], out))
        return out

    def score(weights, items, utility=None):
        if utility is None:  # the task's utility: the end node
            seen.append(("end", [it["question"] for it in items], None))
        return real_score(weights, items, utility)

    monkeypatch.setattr(ev, "answers", answers)
    monkeypatch.setattr(session.scorer, "score", score)
    dag = Dag(3, 2, ((0, 1), (1, 2)))  # 0 -> 1 -> 2
    result = ev.evaluate(dag, [2, 0, 1], session.experts, session.dev)
    assert [kind for kind, *_ in seen] == ["gen", "gen", "end"]
    questions = [it["question"] for it in session.dev]
    assert seen[0][1] == questions  # the source sees the question only
    for (_, asked, _), (_, _, previous) in zip(seen[1:], seen[:-1], strict=True):
        for q, text, answer in zip(questions, asked, previous, strict=True):
            assert text.startswith(q) and f"Previous response 1: {answer}" in text
            assert "Previous response 2" not in text
    # the end node's result is the utility of its model on the augmented items
    direct = real_score(session.experts[1], [{**it, "question": q} for it, q in
                                              zip(session.dev, seen[2][1], strict=True)])
    assert result.scores == direct.scores
    # a source node with the same expert and inputs is answered from the cache
    generated = session.counts["node_generations"]
    ev.evaluate(Dag(2, 1, ((0, 1),)), [2, 0], session.experts, session.dev)
    assert session.counts["node_generations"] == generated


def test_hswarm_run_folder_report_and_exported_runner(tmp_path, lora_experts, mc_data):
    config = write_config(tmp_path, lora_experts, mc_data,
                          baselines=["best_expert", "chain", "star", "random_dags",
                                     "role_only", "weight_only"])
    result = CliRunner().invoke(main, ["run", str(config), "--quiet"])  # strategy: hswarm
    assert result.exit_code == 0, result.output
    assert "(python" in result.output and "--help)" in result.output  # the system's runner
    run_dir = tmp_path / "run"
    report = json.loads((run_dir / "report.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names[-1] == "Heterogeneous Swarms: best system"
    for label in ("best single expert", "chain of all experts", "star of all experts",
                  "random DAGs", "role-step only", "weight-step only"):
        assert any(label in n for n in names), label
    best = report["rows"][-1]
    assert best["dev"] == report["best_dev"]
    assert best["dev"] >= max(r["dev"] for r in report["rows"] if r["name"].startswith("expert"))
    assert report["systems"] <= 3 * 6
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [1, 2, 3]
    assert all(len(h["graph_utilities"]) == 3 and len(h["trial_utilities"]) == 3
               for h in history)
    for ablation, key in (("role_only", "trial_utilities"), ("weight_only", "graph_utilities")):
        sub = (run_dir / "baselines" / ablation / "history.jsonl").read_text().splitlines()
        assert sub and all(key not in json.loads(x) for x in sub)
    system = run_dir / "system"
    spec = json.loads((system / "graph.json").read_text())
    assert (system / "graph.png").stat().st_size > 0 and spec["end"] == report["graph"]["end"]
    for node in spec["nodes"]:
        assert (system / "experts" / node["model"] / "adapter_config.json").is_file()
    check_exported_runner(config, tmp_path)


def check_exported_runner(config: Path, tmp_path: Path) -> None:
    """The exported runner, a plain script, answers the test items as the search scored them."""
    from modelswarms.runs.checkpoint import load_checkpoint

    cfg = load_config(config)
    run_dir = Path(cfg.output.dir)
    session = Session.open(cfg)
    ev = SystemScorer(session.scorer, cfg.hswarm, cfg.utility)
    search = HeteroSwarm(session.experts, cfg)
    tensors, meta = load_checkpoint(run_dir / "checkpoint.safetensors")
    search.load_state_dict(tensors, meta["search"])
    expected = ev.evaluate(search.best_dag, search.best_assignment, search.best_models,
                           session.test)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(it) + "\n" for it in session.test))
    extra = ["--base", str(session.pool.base_model)] if session.pool.base_model else []
    out = subprocess.run([sys.executable, str(run_dir / "system" / "answer.py"), "--items",
                          str(items), *extra], capture_output=True, text=True, check=True,
                         timeout=300)
    answers = [json.loads(line)["answer"] for line in out.stdout.splitlines()]
    assert answers == expected.predictions


def test_full_weight_experts_choice_nodes_and_their_runner(tmp_path, full_experts, mc_data):
    config = write_config(tmp_path, full_experts, mc_data, node_answers="choice",
                          max_rounds=2, baselines=["chain"])
    report = run(load_config(config), show_progress=False)
    assert report["rows"][-1]["dev"] == report["best_dev"]
    spec = json.loads((tmp_path / "run" / "system" / "graph.json").read_text())
    assert spec["node_answers"] == "choice"
    for node in spec["nodes"]:
        assert (tmp_path / "run" / "system" / "experts" / node["model"] /
                "model.safetensors").is_file()
    check_exported_runner(config, tmp_path)


# A round is two tells (role-step, weight-step), each checkpointed: the 3rd save falls in the
# middle of round 2 (its role-step done), the 4th after round 2's history line. A save runs
# while the next tell scores, and its failure is raised once that tell is done: after round
# 2's history line in both cases.
@pytest.mark.parametrize(("die_at", "lines"), [(3, 2), (4, 2)])
def test_interrupted_hswarm_resumes_to_the_same_result(tmp_path, lora_experts, mc_data,
                                                        checkpoint_dies, die_at, lines):
    ref = run(load_config(write_config(tmp_path / "ref", lora_experts, mc_data)),
              show_progress=False)
    cfg = load_config(write_config(tmp_path / "cut", lora_experts, mc_data))
    checkpoint_dies(die_at)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, show_progress=False)
    checkpoint_dies(None)
    run_dir = tmp_path / "cut" / "run"
    assert len((run_dir / "history.jsonl").read_text().splitlines()) == lines
    resumed = run(resume=run_dir, show_progress=False)
    for key in ("rows", "best_dev", "best_test", "graph", "assignment", "systems"):
        assert resumed[key] == ref[key], key
    assert (run_dir / "history.jsonl").read_text().count("\n") == 3


def test_budget_below_one_round_is_an_error(tmp_path, lora_experts, mc_data):
    from modelswarms.errors import ConfigError

    cfg = load_config(write_config(tmp_path, lora_experts, mc_data))
    cfg = cfg.model_copy(update={"budget": 2})
    with pytest.raises(ConfigError, match="do not cover one round of Heterogeneous Swarms"):
        run(cfg, show_progress=False)


def test_choice_nodes_pass_on_the_option_they_pick(tmp_path, lora_experts, mc_data):
    cfg = load_config(write_config(tmp_path, lora_experts, mc_data, node_answers="choice"))
    session = Session.open(cfg, need_test=False)
    ev = SystemScorer(session.scorer, cfg.hswarm, cfg.utility)
    picks = session.score(session.experts[0], session.dev).predictions
    texts = ev.answers(session.experts[0], session.dev)
    assert texts == [f"{p}: {it['choices'][p]}" for p, it in zip(picks, session.dev, strict=True)]
    with pytest.raises(Exception, match="multiple-choice"):
        ev.answers(session.experts[0], [{"question": "2+2?", "answer": "4"}])


def test_config_errors_name_the_key(tmp_path, lora_experts, mc_data):
    from modelswarms.errors import ConfigError

    cfg = load_config(write_config(tmp_path, lora_experts, mc_data))
    with pytest.raises(ConfigError, match="search.particles"):
        run(cfg.model_copy(update={"search": SwarmConfig(particles=5)}), show_progress=False)
    with pytest.raises(ConfigError, match="at least 2 experts"):
        run(cfg.model_copy(update={"experts": cfg.experts.model_copy(
            update={"paths": cfg.experts.paths[:1]})}), show_progress=False)
    assert not (tmp_path / "run").exists()  # refused before any folder is made
    bad = yaml.safe_load((tmp_path / "config.yaml").read_text())
    bad["hswarm"]["graph"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="hswarm.graph: unknown key"):
        load_config(tmp_path / "bad.yaml")


def test_templates_must_hold_their_fields(tmp_path, lora_experts, mc_data):
    from modelswarms.errors import ConfigError

    data = yaml.safe_load(write_config(tmp_path, lora_experts, mc_data).read_text())
    data["hswarm"]["context_template"] = "{question} (others said nothing)"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="context_template must contain {responses}"):
        load_config(tmp_path / "bad.yaml")


def test_hswarm_in_memory_gives_the_run_folders_result(tmp_path, lora_experts, mc_data,
                                                       monkeypatch):
    """`ms.search` runs Heterogeneous Swarms without a folder: the same report as a run
    folder's, a System as its best, which scores and saves like the run's export."""
    import modelswarms as ms

    config = write_config(tmp_path / "cfg", lora_experts, mc_data, max_rounds=2,
                          baselines=["best_expert", "chain", "role_only"])
    folder = ms.search(config, run_dir=tmp_path / "run")
    (tmp_path / "mem").mkdir()
    monkeypatch.chdir(tmp_path / "mem")
    memory = ms.search(config)
    assert list((tmp_path / "mem").iterdir()) == []  # nothing written
    for key in ("rows", "best_dev", "best_test", "graph", "assignment", "systems", "rounds"):
        assert memory.report[key] == folder.report[key], key
    assert memory.report["export"] is None
    best = memory.best
    assert best.dag.to_json() == folder.report["graph"]
    assert memory.best_dev == folder.best_dev
    assert memory.score(memory.session.test).value == folder.report["best_test"]
    saved = memory.save(tmp_path / "system")
    spec = json.loads((saved / "graph.json").read_text())
    assert spec["edges"] == [list(e) for e in best.dag.edges] and \
        (saved / "answer.py").is_file()
    for node in spec["nodes"]:
        assert (saved / "experts" / node["model"] / "adapter_config.json").is_file()


def test_hswarm_baselines_are_compare_rows(tmp_path, lora_experts, mc_data):
    """The rows an hswarm report shows beside its search are compare rows: at the same seed
    and budget a comparison gives them the same scores."""
    from modelswarms.runs.compare import compare

    cfg = load_config(write_config(tmp_path / "h", lora_experts, mc_data, max_rounds=2,
                                   baselines=["best_expert", "chain", "star", "role_only"]))
    cfg = cfg.model_copy(update={"budget": 12})
    report = run(cfg, show_progress=False)
    raw = cfg.model_dump(mode="json", exclude_none=True)
    table = compare(parse_config({
        **raw, "strategy": "swarm", "budget": None,
        "hswarm": {k: v for k, v in raw["hswarm"].items() if k != "baselines"},
        "compare": {"methods": ["best_expert", "chain", "star", "role_only"],
                    "seeds": [cfg.seed], "budget": 12},
        "output": {"dir": str(tmp_path / "cmp")}}))
    ours = {r["key"]: r for r in report["rows"] if "key" in r}
    rows = {r["method"]: r for r in table["rows"]}  # one seed: lists of one value
    for method in ("best_expert", "chain", "star", "role_only"):
        assert rows[method]["test"] == [ours[method]["test"]], method
        assert rows[method]["dev"] == [ours[method]["dev"]], method
    assert rows["chain"]["name"] == ours["chain"]["name"] == "chain of all experts"
