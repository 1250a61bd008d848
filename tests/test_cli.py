"""The command line: run, resume, eval, and one clear line per error."""

from __future__ import annotations

import json
import re

import yaml
from click.testing import CliRunner

from modelswarms.cli import main


def config(tmp_path, experts, data, **extra) -> str:
    cfg = {"experts": {"paths": [str(p) for p in experts]}, "data": {"path": str(data)},
           "search": {"max_iterations": 2, "particles": 3},
           "output": {"dir": str(tmp_path / "run")}, **extra}
    path = tmp_path / "swarm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_run_then_eval_the_export(tmp_path, lora_experts, mc_data):
    runner = CliRunner()
    cfg = config(tmp_path, lora_experts, mc_data)
    result = runner.invoke(main, ["run", cfg, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Model Swarms: global best" in result.output and "adapted model:" in result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    out = runner.invoke(main, ["eval", str(tmp_path / "run" / "best"), "--config", cfg,
                               "--split", "test", "--as-json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["value"] == report["best_test"]
    again = runner.invoke(main, ["run", cfg, "--quiet"])
    assert again.exit_code == 2 and "run folder exists" in again.output
    resumed = runner.invoke(main, ["run", "--resume", str(tmp_path / "run"), "--quiet"])
    assert resumed.exit_code == 0, resumed.output


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, lora_experts, mc_data):
    runner = CliRunner()
    cfg = config(tmp_path, lora_experts, mc_data, seed="zero")
    result = runner.invoke(main, ["run", cfg])
    assert result.exit_code == 2
    assert "error:" in result.output and "seed" in result.output
    assert "Traceback" not in result.output
    debug = runner.invoke(main, ["run", cfg, "--debug"])
    assert debug.exception is not None and type(debug.exception).__name__ == "ConfigError"
    missing = runner.invoke(main, ["run", config(tmp_path, [lora_experts[0], tmp_path / "gone"],
                                                 mc_data)])
    assert missing.exit_code == 2 and "gone: expert folder not found" in missing.output
    usage = runner.invoke(main, ["run"])
    assert usage.exit_code == 2 and "CONFIG" in usage.output


def test_non_positive_engine_limits_are_refused(tmp_path, lora_experts, mc_data):
    """--batch-size 0 fell back to the default in silence; a negative one reached the engine.
    Now the command line and ms.evaluate refuse them, naming the option."""
    import pytest

    import modelswarms as ms
    from modelswarms.errors import ConfigError

    runner = CliRunner()
    for flag, value in (("--batch-size", "0"), ("--batch-size", "-4"), ("--max-items", "0")):
        out = runner.invoke(main, ["eval", str(lora_experts[0]), "--data", str(mc_data),
                                   flag, value])
        assert out.exit_code == 2 and f"'{flag}': {value} is not in the range x>=1" in \
            out.output, out.output
    train = runner.invoke(main, ["experts", "train", "--data", str(mc_data), "--out",
                                 str(tmp_path / "e"), "--max-length", "0"])
    assert train.exit_code == 2 and "'--max-length': 0 is not in the range" in train.output
    with pytest.raises(ConfigError, match="evaluate: model.batch_size: Input should be greater"):
        ms.evaluate(lora_experts[0], mc_data, batch_size=0)
    with pytest.raises(ConfigError, match="model.max_batch_tokens"):
        ms.evaluate(lora_experts[0], mc_data, max_batch_tokens=-1)


def test_a_missing_model_folder_is_named_as_such(tmp_path, mc_data):
    runner = CliRunner()
    out = runner.invoke(main, ["eval", str(tmp_path / "gone" / "best"), "--data", str(mc_data)])
    assert out.exit_code == 2, out.output
    assert f"{tmp_path / 'gone' / 'best'}: no such folder" in out.output
    assert "hub" not in out.output.lower() and "connect" not in out.output.lower()


def test_status_of_a_finished_and_of_a_stopped_run(tmp_path, lora_experts, mc_data,
                                                   checkpoint_dies):
    """A run stopped by an exception (Ctrl-C here) says so and how to resume; a finished one
    its best; both only read the folder."""
    cfg = config(tmp_path, lora_experts, mc_data, budget=12)
    runner = CliRunner()
    checkpoint_dies(2)
    assert runner.invoke(main, ["run", cfg, "--quiet"]).exit_code != 0
    checkpoint_dies(None)
    stopped = runner.invoke(main, ["status", str(tmp_path / "run")])
    assert stopped.exit_code == 0, stopped.output
    assert "stopped (KeyboardInterrupt" in stopped.output
    assert f"modelswarms run --resume {tmp_path / 'run'}" in stopped.output
    # what history.jsonl holds (a resume drops the lines after the last checkpoint)
    assert re.search(r"iteration \d/2, evaluations \d+/12, best dev", stopped.output)
    assert runner.invoke(main, ["run", "--resume", str(tmp_path / "run"),
                                "--quiet"]).exit_code == 0
    done = runner.invoke(main, ["status", str(tmp_path / "run")])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "finished" in done.output and f"best dev {report['best_dev']:.4f}" in done.output
    assert "iteration 2/2" in done.output
    nothing = runner.invoke(main, ["status", str(tmp_path)])
    assert nothing.exit_code == 2 and "not a run or comparison folder" in nothing.output


def test_status_of_a_hand_edited_history_names_the_record(tmp_path, lora_experts, mc_data):
    """A history line we did not write is one clear line naming the file and record, not an
    internal error; the folder is only read."""
    cfg = config(tmp_path, lora_experts, mc_data, budget=12)
    runner = CliRunner()
    assert runner.invoke(main, ["run", cfg, "--quiet"]).exit_code == 0
    history = tmp_path / "run" / "history.jsonl"
    records = len(history.read_text().splitlines())
    history.write_text(history.read_text() + json.dumps({"iteration": 9}) + "\n")
    before = history.read_bytes()
    out = runner.invoke(main, ["status", str(tmp_path / "run")])
    assert out.exit_code == 2, out.output
    lacks = f"{history}: record {records + 1} lacks evaluations, global_best, wall_time"
    assert lacks in out.output
    assert history.read_bytes() == before
