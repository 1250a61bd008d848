"""Killed runs: SIGKILL at random moments and in the middle of checkpoint writes, resumed each
time; the end result equals an uninterrupted run and no checkpoint is ever unreadable."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from modelswarms.config import load_config
from modelswarms.folders import MARKER
from modelswarms.runs import runner
from modelswarms.runs.checkpoint import load_checkpoint

KILLS = int(os.environ.get("MODELSWARMS_KILLS", "20"))

# The child: run or resume; with "write:N" it tears its own N-th checkpoint write in half and
# dies inside it (SIGKILL), the worst moment for a crash; with "text:N" it dies inside its N-th
# atomic file write (config, history, exports, report), half the temporary file written.
CHILD = r'''
import os, signal, sys
from modelswarms.config import load_config
from modelswarms import io as atomic
from modelswarms.runs import checkpoint, runner

action, target, mode = sys.argv[1:4]
if mode.startswith("write:"):
    n, calls, real = int(mode[6:]), [0], checkpoint.save_file
    def torn(tensors, filename, metadata=None):
        calls[0] += 1
        real(tensors, filename, metadata=metadata)
        if calls[0] == n:
            data = open(filename, "rb").read()
            open(filename, "wb").write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.save_file = torn
elif mode.startswith("text:"):
    n, calls, real_bytes = int(mode[5:]), [0], atomic.atomic_write_bytes
    def torn_text(path, data):
        calls[0] += 1
        if calls[0] == n:
            (path.parent / f".{path.name}.killed.tmp").write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_bytes(path, data)
    atomic.atomic_write_bytes = torn_text
if action == "new":
    runner.run(load_config(target), overwrite=True, show_progress=False)
elif action == "resume":
    runner.run(resume=target, show_progress=False)
elif action == "hswarm-new":
    runner.run(load_config(target), overwrite=True, show_progress=False, strategy="hswarm")
elif action == "hswarm-resume":
    runner.run(resume=target, show_progress=False)
elif action == "compare-new":
    from modelswarms.runs.compare import compare
    compare(load_config(target), overwrite=True)
else:
    from modelswarms.runs.compare import compare
    compare(resume=target)
'''


def _config(tmp_path: Path, experts, data, out: str) -> Path:
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump({
        "experts": {"paths": [str(p) for p in experts]},
        "data": {"path": str(data)},
        "utility": {"type": "multiple_choice"}, "model": {"batch_size": 4},
        "search": {"max_iterations": 25, "patience": 100, "particles": 5},
        "output": {"dir": str(tmp_path / out), "top_k": 2},
        "seed": 11,
    }))
    return path


def kill_until_done(tmp_path: Path, out: Path, new: tuple[str, Path],
                    resume: tuple[str, Path], seed: int, max_write: int,
                    after_kill, kills_wanted: int = KILLS,
                    plan: list[str] | None = None) -> tuple[int, int]:
    """Run a child, SIGKILL it at a random moment (every fourth time: inside its own
    checkpoint write), resume, until `kills_wanted` kills are done and a last resume finishes.
    With a `plan` (child modes, "write:N" or "text:N"), the kills are those writes, in order,
    and no run is timed. `after_kill()` checks the folder after each kill. Returns (kills,
    torn writes)."""
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(seed)

    def start(mode: str) -> subprocess.Popen:
        action, target = resume if (out / "config.yaml").exists() else new
        return subprocess.Popen([sys.executable, str(child), action, str(target), mode],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    full = 0.0
    if plan is None:  # how long a whole run takes in a child, to spread the kills over it
        t0 = time.perf_counter()
        assert start("none").wait() == 0
        full = time.perf_counter() - t0
        shutil.rmtree(out)  # start from scratch, now that we know the duration
    else:
        kills_wanted = len(plan)
    kills = torn = 0
    while True:
        if plan is not None:
            mode = plan[kills] if kills < kills_wanted else "none"
        else:
            mode = (f"write:{rng.randint(1, max_write)}"
                    if kills < kills_wanted and kills % 4 == 3 else "none")
        proc = start(mode)
        if mode == "none" and kills < kills_wanted:
            time.sleep(rng.uniform(0.2, 0.9 * full))
            proc.kill()
        rc = proc.wait()
        err = proc.stderr.read().decode()
        assert not (rc == 0 and plan and kills < kills_wanted), f"{mode} came after the end"
        if rc == 0 and kills < kills_wanted:  # it finished before the kill came: start again
            shutil.rmtree(out)
            continue
        if rc == 0:
            return kills, torn
        assert rc == -9, err[-2000:]
        kills += 1
        torn += mode != "none"
        after_kill()
        assert kills < 4 * kills_wanted, "the run never finished"


@pytest.mark.long
def test_twenty_kills_change_nothing(tmp_path, lora_experts, mc_data):
    ref = runner.run(load_config(_config(tmp_path, lora_experts, mc_data, "ref")),
                     show_progress=False)
    cfg_path = _config(tmp_path, lora_experts, mc_data, "killed")
    run_dir = tmp_path / "killed"
    iterations_seen = set()

    def after_kill() -> None:
        ckpt = run_dir / "checkpoint.safetensors"
        if ckpt.exists():  # never unreadable, whatever the moment of the kill
            _, meta = load_checkpoint(ckpt)
            iterations_seen.add(meta["search"]["iteration"])

    kills, torn = kill_until_done(tmp_path, run_dir, ("new", cfg_path), ("resume", run_dir),
                                  1234, 4, after_kill)
    assert kills >= KILLS and torn >= KILLS // 4
    assert len(iterations_seen) >= 3, f"kills fell at too few places: {iterations_seen}"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["rows"] == ref["rows"] and report["best_dev"] == ref["best_dev"]
    a, _ = load_checkpoint(run_dir / "checkpoint.safetensors")
    b, _ = load_checkpoint(tmp_path / "ref" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == list(range(26))
    assert not list(run_dir.rglob(".*.tmp")), "torn writes left litter behind"
    print(f"{kills} kills ({torn} inside checkpoint writes), checkpoints at iterations "
          f"{sorted(iterations_seen)}")


@pytest.mark.parametrize("n", [1])
def test_kill_inside_the_first_checkpoint_write_restarts_cleanly(tmp_path, lora_experts,
                                                                   mc_data, n):
    cfg_path = _config(tmp_path, lora_experts, mc_data, "first")
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rc = subprocess.run([sys.executable, str(child), "new", str(cfg_path), f"write:{n}"],
                        env=env, capture_output=True).returncode
    assert rc == -9
    run_dir = tmp_path / "first"
    assert not (run_dir / "checkpoint.safetensors").exists()  # the torn file was never renamed
    assert list(run_dir.glob(".checkpoint.safetensors.*.tmp"))
    report = runner.run(resume=run_dir, show_progress=False)
    assert report["iterations"] == 25


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.long
def test_twenty_kills_of_a_comparison_change_nothing(tmp_path, lora_experts, mc_data):
    """compare runs every strategy (swarm, CMA-ES, random search, greedy soup) and the merges
    in one process; kills land in all of them."""
    from modelswarms.runs.compare import compare

    def cfg_path(out: str) -> Path:
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump({
            "experts": {"paths": [str(p) for p in lora_experts]},
            "data": {"path": str(mc_data), "max_dev": 6, "max_test": 6},
            "model": {"batch_size": 6}, "search": {"particles": 4},
            "coefficients": {"population": 4},
            "compare": {"methods": ["base", "experts", "best_expert", "ties", "dare_ties",
                                    "greedy_soup", "random", "cmaes", "swarm"],
                        "seeds": [0, 1], "budget": 16},
            "output": {"dir": str(tmp_path / out), "top_k": 2}, "seed": 5,
        }))
        return path

    ref = compare(load_config(cfg_path("ref")))
    out = tmp_path / "killed"
    path = cfg_path("killed")

    def after_kill() -> None:
        for ckpt in out.rglob("checkpoint.safetensors"):
            load_checkpoint(ckpt)  # never unreadable

    kills, torn = kill_until_done(tmp_path, out, ("compare-new", path),
                                  ("compare-resume", out), 99, 6, after_kill)
    assert kills >= KILLS
    got = json.loads((out / "compare.json").read_text())
    assert _strip(got["rows"]) == _strip(ref["rows"])
    print(f"compare: {kills} kills ({torn} inside checkpoint writes)")


@pytest.mark.long
def test_killed_hswarm_runs_change_nothing(tmp_path, lora_experts, mc_data):
    """Heterogeneous Swarms: kills land in the search, the baselines (one of them a whole
    role-only search in its own folder) and the export."""
    from modelswarms.runs.runner import run

    def cfg_path(out: str) -> Path:
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump({
            "experts": {"paths": [str(p) for p in lora_experts]},
            "data": {"path": str(mc_data), "max_dev": 6, "max_test": 6},
            "model": {"batch_size": 6},
            "hswarm": {"graphs": 3, "trials": 3, "max_rounds": 4, "patience": 10,
                       "max_new_tokens": 3, "baselines": ["chain", "random_dags", "role_only"]},
            "output": {"dir": str(tmp_path / out)}, "seed": 2,
        }))
        return path

    ref = run(load_config(cfg_path("ref")), show_progress=False, strategy="hswarm")
    out = tmp_path / "killed"

    def after_kill() -> None:
        for ckpt in out.rglob("checkpoint.safetensors"):
            load_checkpoint(ckpt)  # never unreadable

    kills, torn = kill_until_done(tmp_path, out, ("hswarm-new", cfg_path("killed")),
                                  ("hswarm-resume", out), 7, 8, after_kill,
                                  kills_wanted=max(KILLS // 4, 1))
    got = json.loads((out / "report.json").read_text())
    for key in ("rows", "best_dev", "best_test", "graph", "assignment", "systems"):
        assert got[key] == ref[key], key
    assert json.loads((out / "system" / "graph.json").read_text())["edges"] == \
        ref["graph"]["edges"]
    # the marker (and one-writer lock) of each folder of ours is no litter
    assert not [p for p in out.rglob(".*") if p.name not in (".hypothesis", MARKER)], \
        "litter left behind"
    print(f"hswarm: {kills} kills ({torn} inside checkpoint writes)")


@pytest.mark.long
def test_killed_token_swarm_runs_change_nothing(tmp_path, mc_data):
    """`experts.compose: mixture` over a Llama and a GPT-2 (two architectures, two
    vocabularies): kills inside checkpoint writes and inside the exports' and report's
    writes, resumed each time, end in the report, history, checkpoint and mixture.json of a
    run never interrupted. Fewer kills than a weight swarm's: each child spends most of its
    life importing transformers."""
    from modelswarms.testing import make_tiny_gpt2, make_tiny_llama

    experts = [make_tiny_llama(tmp_path / "llama"), make_tiny_gpt2(tmp_path / "gpt2")]

    def cfg_path(out: str) -> Path:
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump({
            "experts": {"paths": [str(p) for p in experts], "compose": "mixture"},
            "data": {"path": str(mc_data), "max_dev": 8, "max_test": 8},
            "utility": {"scoring": "cloze", "chat_template": False}, "model": {"batch_size": 8},
            "search": {"particles": 4, "patience": 100}, "budget": 60,
            "output": {"dir": str(tmp_path / out), "top_k": 2}, "seed": 3,
        }))
        return path

    ref = runner.run(load_config(cfg_path("ref")), show_progress=False)
    run_dir = tmp_path / "killed"

    def after_kill() -> None:
        if (ckpt := run_dir / "checkpoint.safetensors").exists():
            load_checkpoint(ckpt)  # never unreadable
        for spec in run_dir.rglob("mixture.json"):  # an export is whole or absent
            assert len(json.loads(spec.read_text())["experts"]) == 2

    # Kills inside checkpoint writes first (a resumed child writes one per tell), then inside
    # the atomic writes of a resumed child: its history rewrite (1), the three mixture.json
    # exports and report.json / report.md (2-6). A kill at a random moment would almost
    # always fall in the imports: the search between two checkpoints takes milliseconds.
    rng = random.Random(5)
    n = max(KILLS // 10, 2)
    plan = [f"write:{rng.randint(1, 3)}" for _ in range(n - n // 2)] + \
        [f"text:{rng.randint(1, 6)}" for _ in range(n // 2)]
    kills, torn = kill_until_done(tmp_path, run_dir, ("new", cfg_path("killed")),
                                  ("resume", run_dir), 5, 3, after_kill, plan=plan)
    assert kills == torn == n
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("rows", "best_dev", "best_test", "test_gains", "iterations", "evaluations"):
        assert report[key] == ref[key], key
    a, _ = load_checkpoint(run_dir / "checkpoint.safetensors")
    b, _ = load_checkpoint(tmp_path / "ref" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def history(folder: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "wall_time")}
                for x in (folder / "history.jsonl").read_text().splitlines()]

    assert history(run_dir) == history(tmp_path / "ref")
    assert json.loads((run_dir / "best" / "mixture.json").read_text())["experts"] == \
        json.loads((tmp_path / "ref" / "best" / "mixture.json").read_text())["experts"]
    assert not list(run_dir.rglob(".*.tmp")), "torn writes left litter behind"
    print(f"token swarm: {kills} kills inside writes ({', '.join(plan)})")
