"""Ray actors as the evaluator (model.workers): a run on a local cluster of CPU actors equals a
run in one process, through actor kills at random moments and a driver killed and resumed.

One Ray cluster for the module (starting one costs ~10 s here); every Ray config shares one
`model:` section, so its two actors are started once and reused by every test (Session.open
keeps them while the experts and engine settings are the same)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

ray = pytest.importorskip("ray")
# one worker holds the module's Ray cluster and runs every test of it (scripts/test.sh runs
# pytest-xdist with --dist loadgroup)
pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.long]

from modelswarms.config import load_config  # noqa: E402
from modelswarms.evaluation import ray_pool  # noqa: E402
from modelswarms.runs import runner  # noqa: E402
from modelswarms.runs.checkpoint import load_checkpoint  # noqa: E402
from modelswarms.runs.compare import compare  # noqa: E402

KILLS = int(os.environ.get("MODELSWARMS_RAY_KILLS", "10"))
VOLATILE = {"seconds", "wall_time", "search_seconds", "exports", "events"}
# The engine settings of every config here, so the Ray ones share their actors. Two
# candidates per forward: a unit is a block of two, as one process's forward is.
MODEL = {"device": "cpu", "batch_size": 4, "particles_per_forward": 2}


@pytest.fixture(scope="module")
def cluster():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors' thread count: local runs score exactly as they do
    # 4 logical CPUs: this process's 2 actors, and 2 for a child driver's (the driver test);
    # workers at this process's priority, not Ray's nice 15 (as RayEvaluator does)
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             logging_level="warning")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray_pool.stop_actors()
        assert ray_pool.running_actors() is None
        ray.shutdown()
        torch.set_num_threads(threads)


def write(tmp_path: Path, name: str, experts, data_path, address: str | None,
          **extra) -> Path:
    cfg = {
        "experts": {"paths": [str(p) for p in experts]},
        "data": {"path": str(data_path)},
        "utility": {"type": "multiple_choice"},
        "search": {"max_iterations": 6, "patience": 100, "particles": 5},
        "model": {**MODEL, **({"workers": 2, "ray_address": address} if address else {})},
        "output": {"dir": str(tmp_path / name), "top_k": 2},
        "seed": 11,
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def strip(x):
    """A report or history without what may differ between two equal runs (times, paths,
    engine event counts such as actor restarts)."""
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x


def history(run_dir: Path) -> list[dict]:
    return strip([json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()])


def same_run(a: Path, b: Path) -> None:
    assert history(a) == history(b)
    ta, _ = load_checkpoint(a / "checkpoint.safetensors")
    tb, _ = load_checkpoint(b / "checkpoint.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def run_both(tmp_path, name, experts, data, address, **extra) -> tuple[dict, dict]:
    ref = runner.run(load_config(write(tmp_path, f"{name}_local", experts, data, None,
                                       **extra)), show_progress=False)
    got = runner.run(load_config(write(tmp_path, f"{name}_ray", experts, data, address,
                                       **extra)), show_progress=False)
    same_run(tmp_path / f"{name}_local", tmp_path / f"{name}_ray")
    assert strip(got) == strip(ref)
    return ref, got


def test_swarm_on_two_actors_equals_one_process(tmp_path, cluster, lora_experts, mc_data):
    ref, got = run_both(tmp_path, "swarm", lora_experts, mc_data, cluster)
    assert got["iterations"] == ref["iterations"] == 6
    ev = ray_pool.running_actors()
    assert ev is not None and len(ev.actors) == 2 and ev.group == 2


def test_compare_rows_on_actors_equal_one_process(tmp_path, cluster, lora_experts, mc_data):
    """compare: reference rows, merges, greedy soup, random search, CMA-ES and the swarm."""
    extra = {"data": {"path": str(mc_data), "max_dev": 6, "max_test": 6},
             "coefficients": {"population": 4}, "search": {"particles": 4},
             "compare": {"methods": ["base", "experts", "best_expert", "ties",
                                     "logit_average", "greedy_soup", "random", "cmaes",
                                     "swarm"], "seeds": [0], "budget": 16}}
    ref = compare(load_config(write(tmp_path, "cmp_local", lora_experts, mc_data, None,
                                    **extra)))
    got = compare(load_config(write(tmp_path, "cmp_ray", lora_experts, mc_data, cluster,
                                    **extra)))
    assert strip(got["rows"]) == strip(ref["rows"])
    names = {r["name"] for r in got["rows"]}
    assert {"experts, logit average"} <= names and len(got["rows"]) >= 9


def test_hswarm_on_actors_equals_one_process(tmp_path, cluster, lora_experts, mc_data):
    extra = {"data": {"path": str(mc_data), "max_dev": 6, "max_test": 8},
             "search": {"patience": 10},
             "hswarm": {"graphs": 3, "trials": 3, "max_rounds": 2, "patience": 5,
                        "max_new_tokens": 4, "baselines": ["chain"]}}
    ref = runner.run(load_config(write(tmp_path, "h_local", lora_experts, mc_data, None,
                                       **extra)), show_progress=False, strategy="hswarm")
    got = runner.run(load_config(write(tmp_path, "h_ray", lora_experts, mc_data, cluster,
                                       **extra)), show_progress=False, strategy="hswarm")
    for key in ("rows", "best_dev", "best_test", "graph", "assignment", "systems"):
        assert got[key] == ref[key], key
    assert history(tmp_path / "h_ray") == history(tmp_path / "h_local")


class Killer(threading.Thread):
    """While armed and under its quota, kills a random actor at random moments: one holding
    candidates (mid-unit), one between units, or a replacement still loading (never the same
    loading slot twice running, which the evaluator would rightly call an actor that cannot
    start), nor a unit's holder more than twice (MAX_ATTEMPTS would rightly call a unit that
    kills every actor it meets a crash)."""

    def __init__(self, seed: int):
        super().__init__(daemon=True)
        self.rng, self.stop, self.armed = random.Random(seed), threading.Event(), threading.Event()
        self.quota = self.kills = self.busy_kills = self.starting_kills = 0

    def run(self) -> None:
        loading_killed: dict[int, bool] = {}
        unit_kills: dict[tuple[int, int], int] = {}  # (the call's dict, unit) -> kills
        while not self.stop.wait(self.rng.uniform(0.1, 1.0)):
            ev = ray_pool.running_actors()
            if not self.armed.is_set() or self.kills >= self.quota or ev is None:
                continue
            try:
                call = ev.busy  # a new dict per call
                busy = {slot: (id(call), unit) for unit, slot in list(call.values())}
                starting = ev.starting_slots
            except RuntimeError:  # changed while read: next moment
                continue
            slot = self.rng.randrange(len(ev.actors))
            if (slot in starting and loading_killed.get(slot)) or \
                    unit_kills.get(busy.get(slot, (0, -1)), 0) >= 2:
                continue
            ray.kill(ev.actors[slot])
            loading_killed[slot] = slot in starting
            if slot in busy:
                unit_kills[busy[slot]] = unit_kills.get(busy[slot], 0) + 1
            self.kills += 1
            self.busy_kills += slot in busy
            self.starting_kills += slot in starting


def test_actors_killed_at_random_moments_change_nothing(tmp_path, cluster, lora_experts,
                                                        mc_data):
    """KILLS kills spread over swarm, CMA-ES and random search runs (more seeds while kills
    are due); every run ends exactly as its run in one process."""
    runs = [("swarm", {"search": {"max_iterations": 12, "patience": 100, "particles": 6}}),
            ("cmaes", {"strategy": "cmaes", "budget": 36,
                       "coefficients": {"population": 6}}),
            ("random", {"strategy": "random", "budget": 36,
                        "coefficients": {"population": 6}})]
    killer = Killer(seed=7)
    killer.start()
    done, restarts = [], 0
    try:
        for i in range(9):
            name, extra = runs[i % len(runs)]
            extra = {**extra, "seed": 11 + i}
            ref = runner.run(load_config(write(tmp_path, f"k{i}_local", lora_experts,
                                               mc_data, None, **extra)), show_progress=False)
            killer.quota = min(KILLS, killer.kills + -(-KILLS // len(runs)))
            killer.armed.set()
            got = runner.run(load_config(write(tmp_path, f"k{i}_ray", lora_experts, mc_data,
                                               cluster, **extra)), show_progress=False)
            killer.armed.clear()
            restarts += got["events"].get("ray_actor_restarts", 0)
            same_run(tmp_path / f"k{i}_local", tmp_path / f"k{i}_ray")
            assert strip(got) == strip(ref), name
            done.append(name)
            if killer.kills >= KILLS and i >= len(runs) - 1:
                break
    finally:
        killer.stop.set()
        killer.join()
    assert killer.kills >= KILLS, f"only {killer.kills} kills in {done}"
    assert killer.busy_kills >= 1 and restarts >= 1
    print(f"{killer.kills} actor kills ({killer.busy_kills} holding candidates, "
          f"{killer.starting_kills} still loading) over {done}; {restarts} restarts")


CHILD = r"""
import sys, torch
from modelswarms.config import load_config
from modelswarms.runs import runner
torch.set_num_threads(1)
action, target = sys.argv[1:3]
if action == "new":
    runner.run(load_config(target), overwrite=True, show_progress=False)
else:
    runner.run(resume=target, show_progress=False)
"""


def test_driver_killed_and_resumed_gives_the_same_result(tmp_path, cluster, lora_experts,
                                                         mc_data):
    """A child driver (its own actors) SIGKILLed after its second iteration; resumed here,
    on this process's actors."""
    extra = {"search": {"max_iterations": 12, "patience": 100, "particles": 5}}
    ref = runner.run(load_config(write(tmp_path, "d_local", lora_experts, mc_data, None,
                                       **extra)), show_progress=False)
    cfg = write(tmp_path, "d_ray", lora_experts, mc_data, cluster, **extra)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(child), "new", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hist = tmp_path / "d_ray" / "history.jsonl"
    deadline = time.monotonic() + 120
    while not (hist.exists() and hist.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the child never got going"
        time.sleep(0.02)
    time.sleep(random.Random(3).uniform(0.0, 0.2))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -9
    lines = hist.read_text().count("\n")
    assert lines < 13, "the child finished before the kill"
    got = runner.run(resume=tmp_path / "d_ray", show_progress=False)
    same_run(tmp_path / "d_local", tmp_path / "d_ray")
    assert strip(got) == strip(ref)
    print(f"driver killed with {lines - 1} iterations written")


def test_docs_ray_example_runs(tmp_path, cluster, lora_experts, mc_data):
    """docs/PERFORMANCE.md's config example ("Many GPUs or machines: Ray") is a valid
    `model:` and runs here, on this machine's cluster and this module's engine settings."""
    from modelswarms.config import ModelConfig

    text = (Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md").read_text()
    section = text[text.index("## Many GPUs or machines: Ray"):]
    start = section.index("```yaml") + len("```yaml")
    model = yaml.safe_load(section[start : section.index("```", start)])["model"]
    ModelConfig(**model)  # strict: a misspelt key in the docs fails here
    assert model["workers"] >= 1 and "ray_address" in model
    model.update({**MODEL, "workers": 2, "ray_address": cluster})
    path = write(tmp_path, "readme", lora_experts, mc_data, cluster)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"] = model
    path.write_text(yaml.safe_dump(cfg))
    report = runner.run(load_config(path), show_progress=False)
    assert report["iterations"] == 6


def test_an_over_long_item_is_found_on_the_actors_before_the_search(tmp_path, cluster,
                                                                     lora_experts):
    """The Ray evaluator skipped the length check (the tokenizer and model live on the
    actors): an actor measures the rows, before the search."""
    from modelswarms.errors import DataError

    from .conftest import make_mc_items

    test = make_mc_items(4, 1)
    test[1]["choices"]["A"] = "so " * 150  # alone it fits 512 tokens; in the lettered list not
    test[1]["question"] = "why " * 50
    data = tmp_path / "long.json"
    data.write_text(json.dumps({"dev": make_mc_items(6, 0), "test": test}))
    cfg = load_config(write(tmp_path, "long", lora_experts, data, cluster))
    with pytest.raises(DataError, match=r"item 1 \(id 'q1-1'\) of split 'test': field "
                                        r"'choices.A' .* more than the model reads \(512"):
        runner.run(cfg, show_progress=False)
    assert not (tmp_path / "long").exists()


def test_without_ray_one_config_error(monkeypatch, lora_experts, mc_data, tmp_path):
    from modelswarms.errors import ConfigError
    from modelswarms.runs.session import Session

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    cfg = load_config(write(tmp_path, "noray", lora_experts, mc_data, "auto"))
    with pytest.raises(ConfigError, match=r"pip install 'modelswarms\[ray\]'"):
        Session.open(cfg)


def test_ray_address_needs_workers(tmp_path, lora_experts, mc_data):
    from modelswarms.errors import ConfigError

    path = write(tmp_path, "bad", lora_experts, mc_data, None)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["ray_address"] = "auto"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="ray_address needs model.workers"):
        load_config(path)


def test_a_loaded_local_judge_travels_without_its_model(tiny_base, tmp_path):
    """Utilities go to the actors pickled (human_interest holds a judge): a local judge that
    has loaded its model arrives unloaded, with a lock of its own, and loads on first use."""
    import pickle

    from modelswarms.evaluation.objectives.judges import JudgeConfig, build_judge

    judge = build_judge(JudgeConfig(kind="local", model=str(tiny_base), max_tokens=4,
                                    cache_dir=str(tmp_path / "c")))
    model = judge.load()[0]
    copy = pickle.loads(pickle.dumps(judge))  # a lock would not pickle: it is left behind
    assert judge.loaded and not copy.loaded
    assert copy.load()[0] is not model and copy.loaded


def test_an_address_where_nothing_listens_is_one_line_at_once():
    from modelswarms.errors import ConfigError

    t = time.monotonic()
    with pytest.raises(ConfigError, match=r"model.ray_address: no Ray cluster at '127.0.0.1:1'"):
        ray_pool.connect(ray, "127.0.0.1:1")  # Ray itself would wait two minutes, then exit
    assert time.monotonic() - t < 10
