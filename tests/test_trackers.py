"""Experiment trackers on tiny models: what TensorBoard, MLflow and W&B (offline) hold after a
search, read back with each one's own reader, equals history.jsonl and report.json."""

from __future__ import annotations

import json
import logging
import re
import statistics
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import modelswarms as ms
from modelswarms.config import load_config, parse_config
from modelswarms.errors import ConfigError
from modelswarms.runs import runner
from modelswarms.runs.compare import compare
from modelswarms.trackers import TRACKERS, Tracker, TrackingRun

README = Path(__file__).resolve().parents[1] / "README.md"


def _cfg(tmp_path: Path, experts, data, trackers: list[str], **output: Any):
    return parse_config({
        "experts": {"paths": [str(p) for p in experts]},
        "data": {"path": str(data), "max_dev": 8, "max_test": 8},
        "model": {"batch_size": 8},
        "search": {"particles": 4, "max_iterations": 4, "patience": 10},
        "output": {"dir": str(tmp_path / "run"), "top_k": 2, "trackers": trackers, **output},
        "seed": 7,
    })


def history_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def expected(history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """What every tracker must hold per iteration, from history.jsonl."""
    series = {
        "utility/global_best": lambda h: h["global_best"],
        "utility/best": lambda h: max(h["utilities"]),
        "utility/mean": lambda h: statistics.fmean(h["utilities"]),
        "utility/worst": lambda h: min(h["utilities"]),
        "search/step": lambda h: h["step"],
        "search/evaluations": lambda h: h["evaluations"],
        "time/seconds_per_iteration": lambda h: h["seconds"],
    }
    if "step" not in history[0]:  # Model Swarms' step length; other strategies have none
        del series["search/step"]
    return {name: [(h["iteration"], float(f(h))) for h in history]
            for name, f in series.items()}


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def float32(series: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(step, float(np.float32(v))) for step, v in series]  # TensorBoard stores float32


def check_tensorboard(logdir: Path, run_dir: Path, report: dict[str, Any]) -> None:
    got = tensorboard_scalars(logdir)
    history = history_of(run_dir)
    for name, series in expected(history).items():
        assert got[name] == float32(series), name
    last = history[-1]["iteration"]
    assert got["report/best_dev"] == [(last, float(np.float32(report["best_dev"])))]
    assert got["report/best_test"] == [(last, float(np.float32(report["best_test"])))]


def test_tensorboard_holds_every_iteration_and_the_report(tmp_path, lora_experts, mc_data):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    report = runner.run(_cfg(tmp_path, lora_experts, mc_data, ["tensorboard"]),
                        show_progress=False)
    run_dir = tmp_path / "run"
    assert len(history_of(run_dir)) == 5
    check_tensorboard(run_dir / "tensorboard" / "run", run_dir, report)


def test_mlflow_local_store_holds_every_iteration_and_the_report(tmp_path, lora_experts,
                                                                 mc_data, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    pytest.importorskip("sqlalchemy", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    report = runner.run(_cfg(tmp_path, lora_experts, mc_data, ["mlflow"]), show_progress=False)
    run_dir = tmp_path / "run"
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    run = client.get_run(json.loads((run_dir / "trackers.json").read_text())["mlflow"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "run"
    assert run.data.params["search.particles"] == "4"
    for name, series in expected(history_of(run_dir)).items():
        got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        assert sorted(got) == series, name
    assert run.data.metrics["report/best_dev"] == report["best_dev"]
    assert run.data.metrics["report/best_test"] == report["best_test"]
    assert not (tmp_path / "mlartifacts").exists() and not Path("mlartifacts").exists()


def wandb_records(run_folder: Path):
    """The records of an offline run's .wandb file (a LevelDB-style log of 32 KiB blocks of
    chunks, each `crc32, length, type` then protobuf bytes), as the wandb CLI's sync reads it."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_folder.glob("run-*.wandb")
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):  # the end, or a chunk being written
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""


def wandb_logged(folders: list[Path]) -> tuple[dict[str, list[tuple[int, float]]],
                                                dict[str, Any]]:
    """Per metric its (step, value) points, and the summary, of offline runs in order."""
    steps: dict[str, list[tuple[int, float]]] = {}
    summary: dict[str, Any] = {}
    for folder in folders:
        # wandb's service process may still be writing after finish() returned: its last
        # record is the run's exit
        deadline = time.monotonic() + 60
        while (records := list(wandb_records(folder)))[-1].WhichOneof("record_type") != "exit":
            assert time.monotonic() < deadline, f"{folder}: the run never closed"
            time.sleep(0.1)
        for record in records:
            kind = record.WhichOneof("record_type")
            if kind == "history":
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    steps.setdefault(key, []).append((record.history.step.num,
                                                      json.loads(item.value_json)))
            elif kind == "summary":
                summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.summary.update})
            elif kind == "run":
                assert record.run.project == "run" and record.run.display_name == "run"
    return steps, summary


def test_wandb_offline_run_holds_every_iteration_and_the_report(tmp_path, lora_experts,
                                                                mc_data, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    report = runner.run(_cfg(tmp_path, lora_experts, mc_data, ["wandb"]), show_progress=False)
    run_dir = tmp_path / "run"
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]
    assert folder.name.endswith(run_id)
    steps, summary = wandb_logged([folder])
    for name, series in expected(history_of(run_dir)).items():
        assert steps[name] == series, name
    assert summary["report/best_dev"] == report["best_dev"]
    assert summary["report/best_test"] == report["best_test"]


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow", "wandb"])
def test_a_resumed_run_logs_each_iteration_once(tmp_path, lora_experts, mc_data, monkeypatch,
                                                tracker, checkpoint_dies):
    pytest.importorskip(tracker, reason=f"the {tracker} extra is not installed")
    if tracker == "mlflow":
        pytest.importorskip("sqlalchemy", reason="the mlflow extra is not installed")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = _cfg(tmp_path, lora_experts, mc_data, [tracker])
    checkpoint_dies(3)  # iteration 2's checkpoint write dies, before it was logged
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, show_progress=False)
    checkpoint_dies(None)
    run_dir = tmp_path / "run"
    report = runner.run(resume=run_dir, show_progress=False)
    history = history_of(run_dir)
    assert [h["iteration"] for h in history] == [0, 1, 2, 3, 4]
    if tracker == "tensorboard":
        check_tensorboard(run_dir / "tensorboard" / "run", run_dir, report)
        return
    if tracker == "wandb":  # two offline folders of one run id, as `wandb sync` joins them
        folders = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(folders) == 2
        assert len({f.name for folder in folders for f in folder.glob("run-*.wandb")}) == 1
        steps, _ = wandb_logged(folders)
        for name, series in expected(history).items():
            assert sorted(steps[name]) == series, name  # each iteration once, from either
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    for name, series in expected(history).items():
        got = [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
        assert sorted(got) == series, name
    assert client.get_run(run_id).info.status == "FINISHED"


def test_compare_tracks_each_search_row_in_its_folder(tmp_path, lora_experts, mc_data):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    cfg = parse_config({
        **_cfg(tmp_path, lora_experts, mc_data, ["tensorboard"]).model_dump(mode="json"),
        "compare": {"methods": ["best_expert", "random", "swarm"], "seeds": [0], "budget": 8},
        "output": {"dir": str(tmp_path / "cmp"), "trackers": ["tensorboard"]}})
    compare(cfg)
    for method in ("random", "swarm"):
        run_dir = tmp_path / "cmp" / "runs" / method / "seed_0"
        got = tensorboard_scalars(tmp_path / "cmp" / "tensorboard" / "runs" / method / "seed_0")
        want = expected(history_of(run_dir))
        assert got["utility/global_best"] == float32(want["utility/global_best"])
        assert got["utility/mean"] == float32(want["utility/mean"])
        report = json.loads((run_dir / "report.json").read_text())
        assert got["report/best_dev"][0][1] == float(np.float32(report["best_dev"]))
    assert not (tmp_path / "cmp" / "tensorboard" / "runs" / "best_expert").exists()


def test_the_python_api_in_memory_and_hswarm_are_tracked(tmp_path, lora_experts, mc_data,
                                                         monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tmp_path, lora_experts, mc_data, ["tensorboard"],
               tracking_dir=str(tmp_path / "tracking"))
    result = ms.search(cfg)
    got = tensorboard_scalars(tmp_path / "tracking" / "tensorboard" / "run")
    assert got["utility/global_best"] == float32(expected(result.history)["utility/global_best"])
    assert got["report/best_dev"][0][1] == float(np.float32(result.best_dev))
    assert not (tmp_path / "run").exists()  # in memory: only the trackers wrote

    hs = parse_config({**cfg.model_dump(mode="json"), "strategy": "hswarm", "search": {},
                       "hswarm": {"graphs": 2, "trials": 2, "max_rounds": 2,
                                  "max_new_tokens": 2},
                       "output": {"dir": str(tmp_path / "hs"), "trackers": ["tensorboard"],
                                  "evaluate_test": False}})
    report = ms.search(hs, run_dir=tmp_path / "hs")
    got = tensorboard_scalars(tmp_path / "hs" / "tensorboard" / "hs")
    history = history_of(tmp_path / "hs")
    assert [s for s, _ in got["utility/global_best"]] == [h["iteration"] for h in history]
    assert got["utility/mean"] == float32(
        [(h["iteration"], statistics.fmean(h["utilities"])) for h in history])
    assert got["report/best_dev"][0][1] == float(np.float32(report["best_dev"]))


def test_a_missing_package_names_the_extra_before_anything_is_made(tmp_path, lora_experts,
                                                                   mc_data, monkeypatch):
    monkeypatch.setattr(TRACKERS["wandb"], "missing", classmethod(lambda cls: ["wandb"]))
    cfg = _cfg(tmp_path, lora_experts, mc_data, ["wandb"])
    message = re.escape("output.trackers: wandb needs wandb, not installed: "
                        "pip install 'modelswarms[wandb]'")
    with pytest.raises(ConfigError, match=message):
        runner.run(cfg, show_progress=False)
    with pytest.raises(ConfigError, match=message):
        ms.search(cfg)
    with pytest.raises(ConfigError, match=message):
        compare(parse_config({**cfg.model_dump(mode="json"), "compare": {"methods": ["swarm"]}}))
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_tracker_is_a_config_error(tmp_path, lora_experts, mc_data):
    with pytest.raises(ConfigError, match="output.trackers: .*unknown tracker 'comet'"):
        _cfg(tmp_path, lora_experts, mc_data, ["comet"])


class Recording(Tracker):
    """A tracker that keeps what it is given."""

    seen: list[tuple[str, Any]] = []

    def __init__(self, run: TrackingRun):
        super().__init__(run)
        self.seen.append(("start", run.name))

    def log_iteration(self, rec: dict[str, Any]) -> None:
        self.seen.append(("iteration", rec["iteration"]))

    def log_report(self, report: dict[str, Any]) -> None:
        self.seen.append(("report", report["best_dev"]))

    def close(self, failed: bool = False) -> None:
        self.seen.append(("close", failed))


class Breaking(Recording):
    """Fails at iteration 2, as a full disk or a lost server would."""

    seen: list[tuple[str, Any]] = []

    def log_iteration(self, rec: dict[str, Any]) -> None:
        if rec["iteration"] == 2:
            raise OSError("No space left on device")
        super().log_iteration(rec)


def test_a_tracker_that_fails_mid_run_is_dropped_and_the_run_goes_on(
        tmp_path, lora_experts, mc_data, monkeypatch, caplog):
    monkeypatch.setitem(TRACKERS, "recording", Recording)
    monkeypatch.setitem(TRACKERS, "breaking", Breaking)
    monkeypatch.setattr(Recording, "seen", [])
    monkeypatch.setattr(Breaking, "seen", [])
    cfg = _cfg(tmp_path, lora_experts, mc_data, ["breaking", "recording"])
    with caplog.at_level(logging.WARNING, logger="modelswarms"):
        report = runner.run(cfg, show_progress=False)
    assert Recording.seen == [("start", "run"), *[("iteration", i) for i in range(5)],
                              ("report", report["best_dev"]), ("close", False)]
    assert Breaking.seen == [("start", "run"), ("iteration", 0), ("iteration", 1),
                             ("close", True)]
    warning = "tracker breaking failed (OSError: No space left on device); the run goes on"
    assert warning in caplog.text and warning in (tmp_path / "run" / "run.log").read_text()


def test_the_readme_tracking_example_runs(tmp_path, lora_experts, mc_data):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    section = README.read_text().split("## Tracking experiments", 1)[1].split("\n## ", 1)[0]
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    assert example["output"]["trackers"] == ["tensorboard"]
    # the shipped experts and data need SmolLM2; the tiny pool stands in for them
    example["experts"]["paths"] = [str(p) for p in lora_experts]
    example["data"]["path"] = str(mc_data)
    example["output"]["dir"] = "run"
    (tmp_path / "tracked.yaml").write_text(yaml.safe_dump(example))
    cfg = load_config(tmp_path / "tracked.yaml")
    report = runner.run(cfg, show_progress=False)
    run_dir = tmp_path / "run"
    got = tensorboard_scalars(run_dir / "tensorboard" / "run")
    assert len(got["utility/global_best"]) == len(history_of(run_dir)) == 5
    assert got["report/best_dev"][0][1] == float(np.float32(report["best_dev"]))
