"""The command line: run, resume, eval, and one clear line per error."""

from __future__ import annotations

import json

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
