"""Nothing lost, whatever the user does (issue 28): each reproduction of the issue, through
the command line, gives one clear line and leaves every input as it was."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from modelswarms.cli import main
from modelswarms.config import load_config
from modelswarms.errors import ConfigError, ExpertError, RunError
from modelswarms.folders import MARKER, FolderLock, claim
from modelswarms.pool.kinds import load_pool

from .conftest import make_mc_items
from .test_bad_inputs import digest


def _project(tmp_path: Path, lora_experts, mc_data, output: str, **extra) -> Path:
    """A user's folder: a config beside its data and two experts (copied: the test may
    lose them)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    for i, e in enumerate(lora_experts[:2]):
        shutil.copytree(e, proj / f"expert_{i}")
    shutil.copy(mc_data, proj / "data.json")
    cfg = {"experts": {"paths": ["expert_0", "expert_1"]}, "data": {"path": "data.json"},
           "search": {"particles": 2, "max_iterations": 2}, "budget": 6,
           "output": {"dir": output}, **extra}
    (proj / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return proj


def _error_line(result) -> str:
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output,
                                                       result.exception)
    return lines[0]


COMMANDS = {"run": ["run", "--quiet", "--overwrite"], "compare": ["compare", "--overwrite"],
            "merge": ["merge", "--overwrite"], "hswarm": ["hswarm", "--quiet", "--overwrite"]}
SECTIONS = {"compare": {"compare": {"methods": ["linear"], "budget": 4}},
            "merge": {"merge": {"method": "linear"}}}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(("output", "how"), [(".", "holds the config"),
                                             ("expert_1", "is the expert"),
                                             ("expert_0/runs", "lies inside the expert")])
def test_overwrite_never_deletes_an_input(tmp_path, lora_experts, mc_data, command, output,
                                          how):
    """Issue 28, 1: `output: {dir: .}` beside config, data and experts removed them all under
    --overwrite; `output.dir` naming an expert deleted it. Now: refused before anything."""
    proj = _project(tmp_path, lora_experts, mc_data, output, **SECTIONS.get(command, {}))
    before = digest([proj])
    result = CliRunner().invoke(main, [*COMMANDS[command], str(proj / "cfg.yaml")])
    line = _error_line(result)
    assert "output.dir" in line and how in line, line
    assert digest([proj]) == before
    assert not (proj / "expert_0" / "runs").exists()


@pytest.mark.parametrize("command", ["run", "merge"])
def test_overwrite_refuses_a_folder_we_did_not_make(tmp_path, lora_experts, mc_data, command):
    proj = _project(tmp_path, lora_experts, mc_data, "out", **SECTIONS.get(command, {}))
    (proj / "out").mkdir()
    (proj / "out" / "thesis.tex").write_text("years of work\n")
    result = CliRunner().invoke(main, [*COMMANDS[command], str(proj / "cfg.yaml")])
    assert "modelswarms did not write" in _error_line(result)
    assert (proj / "out" / "thesis.tex").read_text() == "years of work\n"


def test_overwrite_replaces_what_a_run_of_ours_made(tmp_path, lora_experts, mc_data):
    proj = _project(tmp_path, lora_experts, mc_data, "out", merge={"method": "linear"})
    runner = CliRunner()
    assert runner.invoke(main, ["merge", str(proj / "cfg.yaml")]).exit_code == 0
    assert (proj / "out" / MARKER).is_file()
    result = runner.invoke(main, ["merge", "--overwrite", str(proj / "cfg.yaml")])
    assert result.exit_code == 0, result.output


HOLDER = textwrap.dedent("""
    import fcntl, json, os, sys, time
    fd = os.open(os.path.join(sys.argv[1], ".modelswarms"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"made_by": "modelswarms", "pid": os.getpid()}).encode())
    print("locked", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def held_run_folder(tmp_path, lora_experts, mc_data):
    """A run folder of ours (config.yaml and a history) locked by another process."""
    proj = _project(tmp_path, lora_experts, mc_data, "out")
    run_dir = proj / "out"
    run_dir.mkdir()
    cfg = load_config(proj / "cfg.yaml")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (run_dir / "history.jsonl").write_text('{"iteration": 1}\n')
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield proj, run_dir, holder
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("argv", [["run", "--quiet", "--resume", "{dir}"],
                                  ["run", "--quiet", "--overwrite", "{cfg}"],
                                  ["hswarm", "--quiet", "--resume", "{dir}"],
                                  ["compare", "--resume", "{dir}"]])
def test_a_second_writer_is_refused(held_run_folder, argv):
    """Issue 28, 2: two `run --resume` on one folder both wrote history; a `run --overwrite`
    resumed from the other run's checkpoint. Now the second gets one line: folder and pid."""
    proj, run_dir, holder = held_run_folder
    before = digest([run_dir])
    argv = [a.format(dir=run_dir, cfg=proj / "cfg.yaml") for a in argv]
    line = _error_line(CliRunner().invoke(main, argv))
    assert str(run_dir) in line and f"pid {holder.pid}" in line, line
    assert digest([run_dir]) == before


def test_the_lock_dies_with_its_holder(held_run_folder):
    _, run_dir, holder = held_run_folder
    with pytest.raises(RunError, match=f"pid {holder.pid}"):
        FolderLock(run_dir).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # no stale lock: the kernel dropped it; and one process is one writer too
    with FolderLock(run_dir).acquire(), pytest.raises(RunError, match="in use"):
        FolderLock(run_dir).acquire()


def _progress(run_dir: Path, state: str, pid: int) -> None:
    import socket
    import time

    (run_dir / "progress.json").write_text(json.dumps({
        "kind": "run", "state": state, "pid": pid, "host": socket.gethostname(),
        "updated": time.time(), "error": "KeyboardInterrupt"}))
    (run_dir / "history.jsonl").write_text(json.dumps({
        "iteration": 1, "evaluations": 4, "global_best": 0.5, "wall_time": 1.0}) + "\n")


def _status(run_dir: Path, monkeypatch) -> str:
    import fcntl

    def refuse(*_):
        raise AssertionError("status took a lock")

    monkeypatch.setattr(fcntl, "flock", refuse)  # read-only: the probe never takes it
    before = digest([run_dir])
    result = CliRunner().invoke(main, ["status", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert digest([run_dir]) == before
    return result.output.splitlines()[0]


def test_status_asks_the_lock_who_writes(held_run_folder, monkeypatch):
    """progress.json and the lock both told whether a writer lives; the pid could lie (a
    recycled pid, a progress.json from before a new writer started). Now the lock decides."""
    _, run_dir, holder = held_run_folder
    # the holder has not written progress.json yet; an earlier session's says "stopped"
    _progress(run_dir, "stopped", 1)
    assert f"running (pid {holder.pid})" in _status(run_dir, monkeypatch)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # "running" by a pid that lives (this test's own, as a recycled pid would), lock free
    _progress(run_dir, "running", subprocess.os.getpid())
    line = _status(run_dir, monkeypatch)
    assert f"process {subprocess.os.getpid()} ended without finishing" in line, line


def test_status_without_a_lock_table_asks_the_pid(held_run_folder, monkeypatch):
    """No /proc/locks (not Linux), or a folder of an older version without the marker: the
    pid progress.json names, as before."""
    from modelswarms import folders

    _, run_dir, holder = held_run_folder
    monkeypatch.setattr(folders, "PROC_LOCKS", run_dir / "no such table")
    _progress(run_dir, "running", holder.pid)
    assert f"running (pid {holder.pid})" in _status(run_dir, monkeypatch)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert f"process {holder.pid} ended" in _status(run_dir, monkeypatch)


def test_claim_refuses_an_output_inside_an_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(RunError, match="lies inside the data"):
        claim(data / "run", inputs=[("data", data)])
    assert not (data / "run").exists()


@pytest.mark.parametrize("merge", [{"method": "linear", "weights": [".nan", 1]},
                                   {"method": "linear", "weights": [".inf", 1]},
                                   {"method": "task_arithmetic", "weights": [1, ".nan"]},
                                   {"method": "task_arithmetic", "params": {"lambda": ".inf"}}])
def test_non_finite_config_numbers_write_no_model(tmp_path, lora_experts, mc_data, merge):
    """Issue 28, 3: `weights: [.nan, 1]` wrote an all-NaN model and exited 0."""
    proj = _project(tmp_path, lora_experts, mc_data, "out")
    text = (proj / "cfg.yaml").read_text() + yaml.safe_dump({"merge": merge}).replace(
        "'.nan'", ".nan").replace("'.inf'", ".inf")
    (proj / "cfg.yaml").write_text(text)
    line = _error_line(CliRunner().invoke(main, ["merge", str(proj / "cfg.yaml")]))
    assert "finite" in line and ("weights" in line or "lambda" in line), line
    assert not (proj / "out").exists()


def test_a_merge_that_overflows_writes_nothing(tmp_path, lora_experts, mc_data):
    proj = _project(tmp_path, lora_experts, mc_data, "out",
                    merge={"method": "task_arithmetic", "params": {"lambda": 1e38},
                           "weights": [1e10, 1e10]})
    line = _error_line(CliRunner().invoke(main, ["merge", str(proj / "cfg.yaml")]))
    assert "comes out non-finite" in line and "tensor" in line, line
    assert not (proj / "out").exists()


def _nan_expert(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    f = dest / "adapter_model.safetensors"
    tensors = load_file(f)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, f)
    return dest


def test_a_nan_expert_is_refused_by_name(tmp_path, lora_experts):
    """Issue 28, 3: a NaN expert became the run's "best expert" and its export."""
    bad = _nan_expert(lora_experts[1], tmp_path / "nan_expert")
    with pytest.raises(ExpertError, match="nan_expert: tensor .* NaN or infinite"):
        load_pool([lora_experts[0], bad])


def test_a_nan_particle_is_an_invalid_candidate(lora_experts, mc_data):
    import modelswarms as ms
    from modelswarms.runs.session import Session

    cfg = ms.config(experts=lora_experts, data=mc_data, budget=6)
    session = Session.open(cfg, need_test=False)
    vectors = session.experts.clone()
    vectors[1, 3] = float("nan")
    values = session.dev_utilities(vectors)
    assert values[1] == float("-inf") and all(v > float("-inf") for v in values[::2])
    assert session.counts["nonfinite_candidate"] == 1


def _long_prompt_run(tmp_path: Path, paths, item: dict, **extra) -> Path:
    """A run config whose test split's third item is `item`."""
    test = make_mc_items(4, 1)
    test[2] = {"id": "q1-2", **item}
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"dev": make_mc_items(6, 0), "test": test}))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "experts": {"paths": [str(p) for p in paths]}, "data": {"path": str(data)},
        "search": {"particles": 2, "max_iterations": 2}, "budget": 6,
        "output": {"dir": str(tmp_path / "out")}, **extra}))
    return cfg


def test_an_over_long_test_item_stops_the_run_before_the_search(tmp_path, lora_experts):
    """Issue 28, 4: found only after the whole search, naming the file, not the item."""
    # 800 characters: the tiny model reads 512 tokens
    item = {**make_mc_items(4, 1)[2], "question": "why " * 200}
    cfg = _long_prompt_run(tmp_path, lora_experts, item)
    line = _error_line(CliRunner().invoke(main, ["run", "--quiet", str(cfg)]))
    assert "data.json: item 2 (id 'q1-2') of split 'test': field 'question'" in line, line
    assert not (tmp_path / "out").exists()


# Each field fits the tiny model's 512 (character) tokens, the prompt as scored does not: the
# lettered list holds both texts (300 and 330 characters), a cloze row the question and its
# option, a question of 500 characters its template's 49 more.
FIT_ALONE = {"question": "why " * 75, "choices": {"A": "so " * 110, "B": "no"}, "answer": "A"}


@pytest.mark.parametrize(("utility", "item"), [
    *(({"scoring": mode}, FIT_ALONE) for mode in ("letter", "cloze", "cloze_norm", "permuted",
                                                  "generate")),
    ({"type": "exact_match"}, {"question": "why " * 125, "answer": "7"}),
])
def test_a_prompt_longer_than_the_model_reads_is_found_before_the_search(
        tmp_path, lora_experts, utility, item):
    """Issue 28, 4: the length check counted each field alone, so an item that fits field by
    field but not in its prompt was found only when scored: after the search, for the test
    split. Now the rows are built by the utility's own code, before the search."""
    cfg = _long_prompt_run(tmp_path, lora_experts, item, utility=utility)
    line = _error_line(CliRunner().invoke(main, ["run", "--quiet", str(cfg)]))
    field = "choices.A" if "choices" in item else "question"
    assert f"data.json: item 2 (id 'q1-2') of split 'test': field {field!r}" in line, line
    assert "makes its prompt, as the utility scores it," in line and "(512," in line, line
    assert not (tmp_path / "out").exists()


def test_eval_names_the_item_too_long(tmp_path, lora_experts):
    """eval found it inside a batch: "data: an item is N tokens", no file, split or item."""
    cfg = _long_prompt_run(tmp_path, lora_experts, FIT_ALONE)
    line = _error_line(CliRunner().invoke(main, ["eval", str(lora_experts[0]), "--data",
                                                 str(tmp_path / "data.json")]))
    assert "data.json: item 2 (id 'q1-2') of split 'test': field 'choices.A'" in line, line
    line = _error_line(CliRunner().invoke(main, ["eval", str(lora_experts[0]), "--config",
                                                 str(cfg)]))
    assert "data.json: item 2 (id 'q1-2') of split 'test'" in line, line


def test_eval_of_a_config_checks_its_items(tmp_path, lora_experts):
    """`eval --config` loaded the split without the utility's fields: a NaN question was
    scored as the text "nan"."""
    cfg = _long_prompt_run(tmp_path, lora_experts, {**make_mc_items(4, 1)[2],
                                                    "question": float("nan")})
    line = _error_line(CliRunner().invoke(main, ["eval", str(lora_experts[0]), "--config",
                                                 str(cfg)]))
    assert "data.json: item 2 (id 'q1-2') of 'test': field 'question' is nan" in line, line


def test_a_token_swarm_checks_lengths_before_the_search(tmp_path):
    """The mixture evaluator skipped the check: each expert reads the text in its own tokens."""
    from modelswarms.testing import make_tiny_gpt2, make_tiny_llama

    experts = [make_tiny_llama(tmp_path / "llama"), make_tiny_gpt2(tmp_path / "gpt2")]
    cfg = _long_prompt_run(tmp_path, experts, FIT_ALONE, experts={
        "paths": [str(p) for p in experts], "compose": "mixture"},
        utility={"scoring": "cloze", "chat_template": False})
    line = _error_line(CliRunner().invoke(main, ["run", "--quiet", str(cfg)]))
    assert "item 2 (id 'q1-2') of split 'test': field 'choices.A'" in line, line
    assert "more than expert " in line and "(512," in line, line
    assert not (tmp_path / "out").exists()


def test_a_utility_without_rows_is_measured_field_by_field(tiny_base):
    """A user's utility builds its prompts where the check cannot see: each field alone."""
    from transformers import AutoTokenizer

    from modelswarms.evaluation.evaluator import Overlong, first_overlong

    class Mine:
        name, required_fields = "mine", ("question",)

    tok = AutoTokenizer.from_pretrained(tiny_base)
    items = [{"id": "a", "question": "short"}, {"id": "b", "question": "x" * 600}]

    def reads(prompt, cont):
        return len(prompt) + (1 if cont is None else len(cont)), 512, "the model"

    assert first_overlong(tok, Mine(), items, reads) == Overlong(1, 600, 512, "the model",
                                                                 "question")
    assert first_overlong(tok, Mine(), items[:1], reads) is None


def test_the_length_check_passes_what_fits(tmp_path, lora_experts):
    """The check refuses nothing the scorer would score: 400-character texts, each alone in a
    cloze row with its question, fit."""
    item = {"question": "why " * 25, "choices": {"A": "so " * 130, "B": "no"}, "answer": "A"}
    cfg = _long_prompt_run(tmp_path, lora_experts, item, utility={"scoring": "cloze"})
    result = CliRunner().invoke(main, ["run", "--quiet", str(cfg)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("utility", "change", "field"), [
    ("multiple_choice", {"question": float("nan")}, "field 'question' is nan, not text"),
    ("multiple_choice", {"question": 42}, "field 'question' is 42, not text"),
    ("multiple_choice", {"choices": {"A": float("nan"), "B": "2"}},
     "field 'choices.A' is nan, not text"),
    ("multiple_choice", {"choices": {"A": None, "B": "2"}}, "field 'choices.A' is None"),
    ("multiple_choice", {"choices": {}}, "'choices' has 0 option"),
    ("multiple_choice", {"answer": "Z"}, "'answer' 'Z' is not one of its choices"),
    ("multiple_choice", {"answer": [1, 2]}, "'answer' [1, 2] is not one of its choices"),
    ("exact_match", {"answer": float("nan")}, "field 'answer' is nan, not text or a finite"),
    ("exact_match", {"answer": None}, "field 'answer' is None"),
    ("exact_match", {"question": ["a", "list"]}, "field 'question' is ['a', 'list']"),
])
def test_an_item_field_that_would_read_as_nan_is_refused(tmp_path, lora_experts, utility,
                                                         change, field):
    """A NaN (JSON's NaN, or a gap in a dataset's column) was shown to the model as "nan"."""
    cfg = _long_prompt_run(tmp_path, lora_experts, {**make_mc_items(4, 1)[2], **change},
                           utility={"type": utility})
    line = _error_line(CliRunner().invoke(main, ["run", "--quiet", str(cfg)]))
    assert "data.json: item 2 (id 'q1-2') of 'test': " in line and field in line, line
    assert not (tmp_path / "out").exists()


def test_a_resume_with_changed_inputs_stops_unless_told(tmp_path, lora_experts, mc_data):
    proj = _project(tmp_path, lora_experts, mc_data, "out")
    runner = CliRunner()
    first = runner.invoke(main, ["run", "--quiet", str(proj / "cfg.yaml")])
    assert first.exit_code == 0, first.output
    run_dir = proj / "out"
    assert runner.invoke(main, ["run", "--quiet", "--resume", str(run_dir)]).exit_code == 0

    doc = json.loads((proj / "data.json").read_text())
    doc["dev"] = doc["dev"][:-1]
    (proj / "data.json").write_text(json.dumps(doc))
    text = (run_dir / "config.yaml").read_text().replace("seed: 0", "seed: 1")
    (run_dir / "config.yaml").write_text(text)
    before = digest([run_dir])
    line = _error_line(runner.invoke(main, ["run", "--quiet", "--resume", str(run_dir)]))
    assert "inputs changed" in line and "data.json changed" in line and "seed" in line, line
    assert "--accept-changes" in line
    assert digest([run_dir]) == before
    went_on = runner.invoke(main, ["run", "--quiet", "--resume", str(run_dir),
                                   "--accept-changes"])
    assert went_on.exit_code == 0, went_on.output
    assert runner.invoke(main, ["run", "--quiet", "--resume", str(run_dir)]).exit_code == 0


def test_finite_numbers_only_in_configs():
    from modelswarms.config import parse_config

    with pytest.raises(ConfigError, match="search.inertia: Input should be a finite number"):
        parse_config({"experts": {"paths": ["a", "b"]}, "search": {"inertia": float("nan")}})
    assert torch.isfinite(torch.tensor(parse_config(
        {"experts": {"paths": ["a", "b"]}}).search.inertia))


def test_an_export_replaces_its_own_folder_never_the_users(tmp_path, lora_experts):
    from modelswarms.pool import export_vector
    from modelswarms.space import FlatSpace

    pool = load_pool(lora_experts)
    space = FlatSpace.select(pool.experts[0].tensors)
    vector = space.flatten(pool.experts[1].tensors)
    export_vector(pool, space, vector, tmp_path / "adapted", {})
    export_vector(pool, space, vector, tmp_path / "adapted", {})  # ours: replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    with pytest.raises(ExpertError, match="modelswarms did not write"):
        export_vector(pool, space, vector, mine, {})
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_experts_train_and_distil_keep_out_of_their_inputs(tmp_path, mc_data):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(mc_data, data_dir / "d.json")
    mix = tmp_path / "mix"
    mix.mkdir()
    (mix / "mixture.json").write_text(json.dumps({"experts": [
        {"name": "a", "path": str(tmp_path / "a"), "weight": 1.0}]}))
    before = digest([data_dir, mix])
    runner = CliRunner()
    line = _error_line(runner.invoke(main, ["experts", "train", "--data",
                                            str(data_dir / "d.json"), "--out", str(data_dir)]))
    assert "--out" in line and "holds the data" in line, line
    line = _error_line(runner.invoke(main, ["distil", str(mix), "--student", "a", "--data",
                                            str(data_dir / "d.json"), "--out", str(mix)]))
    assert "--out" in line and "is the mixture" in line, line
    assert digest([data_dir, mix]) == before
