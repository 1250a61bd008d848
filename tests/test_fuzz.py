"""No input makes it crash (issue 19), tested by machine.

Hypothesis generates configs (unknown, missing, wrongly typed and out-of-range keys; paths
that are missing, files, folders, under a file, unwritable; YAML that does not parse), data
files (truncated JSON and JSONL, wrong fields and types, empty splits, answers outside the
choices, duplicate ids, huge and empty strings, non-UTF-8 bytes) and expert folders (missing
or corrupt safetensors, mismatched configs, duplicates, adapters of another base), and runs
them through the command line in-process on tiny models. Every example must end in a result
(exit 0) or in exit 2 with one line naming the key, file, item or expert at fault; never a
traceback, a hang, a changed input file, or a folder left by a run that could not start.

CI runs a fixed, derandomised set (FUZZ_EXAMPLES per command, below); MODELSWARMS_FUZZ=N runs
N random examples per command instead. Every failure the fuzzer found is kept in
REGRESSIONS and runs on every CI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from modelswarms.cli import main
from modelswarms.config import RunConfig
from modelswarms.folders import MARKER, FolderLock, mark
from modelswarms.testing import (
    make_tiny_full_pool,
    make_tiny_gpt2,
    make_tiny_llama,
    make_tiny_lora_pool,
)

from .conftest import make_mc_items

FUZZ = int(os.environ.get("MODELSWARMS_FUZZ", "0"))
# examples per command on CI: bounded so the suite stays under its time
FUZZ_EXAMPLES = {"run": 40, "merge": 30, "eval": 20, "compare": 10, "hswarm": 10,
                 "distil": 12}
HANG_SECONDS = 60  # a tiny example takes about a second; this long is a hang
TALLY: dict[str, int] = {}  # what each fuzz test tried, for docs/RELIABILITY.md


@dataclass
class World:
    root: Path
    base: Path
    experts: list[Path]
    other_base_expert: Path  # an adapter of a base with another hidden size
    full: Path  # a full model folder among adapters
    gpt2: Path  # another architecture and tokenizer, for mixtures


@pytest.fixture(scope="module")
def no_ray():
    # a generated `model.workers` must not start a Ray cluster inside the test process: as on
    # a machine without the extra, it gets the one line saying how to install it
    import sys

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "ray", None)
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory, no_ray) -> World:
    root = tmp_path_factory.mktemp("fuzz")
    base = make_tiny_llama(root / "base")
    experts = make_tiny_lora_pool(base, root / "pool", n=3)
    other = make_tiny_llama(root / "other_base", hidden_size=48, seed=3)
    other_expert = make_tiny_lora_pool(other, root / "other_pool", n=1)[0]
    full = make_tiny_full_pool(base, root / "full", n=1)[0]
    gpt2 = make_tiny_gpt2(root / "gpt2")
    return World(root, base, experts, other_expert, full, gpt2)


# --- what a generated example is: mutations of a valid case --------------------------------

def _config_keys(model: type = RunConfig, prefix: str = "") -> list[str]:
    """Every key of the config schema, dotted (the multiple-choice utility's keys)."""
    from modelswarms.config import field_models
    from modelswarms.evaluation.objectives.utilities import MultipleChoiceConfig

    keys = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        subs = [MultipleChoiceConfig] if name == "utility" else field_models(info)
        if subs and path.count(".") < 2:
            keys += _config_keys(subs[0], path + ".")
    return keys


CONFIG_KEYS = _config_keys()
WORDS = ["swarm", "cmaes", "random", "greedy_soup", "layer_swarm", "hswarm", "nope",
         "multiple_choice", "exact_match", "python", "reward_model", "letter", "cloze",
         "cloze_norm", "permuted", "generate", "cpu", "cuda", "auto", "mixture", "weights",
         "float16", "bfloat16", "linear", "ties", "dare_ties", "slerp", "base", "experts", "*",
         "q_proj", "", "..", "/", "smollm2", "stop", "worst", "dev", "test", "{question}"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12), st.sampled_from([2**31, 10**30, -(10**9)]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(WORDS),
    st.lists(st.integers(-1, 5), max_size=4), st.lists(st.sampled_from(WORDS), max_size=3),
    st.dictionaries(st.sampled_from(WORDS), st.integers(-1, 3), max_size=2))
PATH_KINDS = ["missing", "file", "empty folder", "under a file", "unwritable", "base model"]
DATA_FAULTS = ["truncate", "not utf-8", "jsonl", "jsonl torn line", "no dev split",
               "empty dev", "empty test", "drop field", "field type", "answer outside",
               "one choice", "duplicate ids", "huge string", "empty strings", "top-level list",
               "not an object", "nan answer", "choices list", "nan choice", "huge test string",
               "long test prompt", "nan question"]
EXPERT_FAULTS = ["no weights", "truncated weights", "random bytes", "empty weights",
                 "no adapter config", "garbage adapter config", "adapter config list",
                 "other rank", "other targets", "missing base", "duplicate", "other base",
                 "full model", "tensor shape", "tensor dtype", "extra tensor",
                 "missing tensor", "nan weights", "inf weights", "pickle only"]
# issue 28: shapes that once lost a user's files or wrote a NaN model
OVERLAPS = ["case folder", "expert", "inside expert", "data file", "base model"]
DISAGREE = ["rank", "targets", "alpha nan", "alpha text", "rank text"]
NONFINITE_KEYS = ["merge.weights", "merge.params.lambda", "search.inertia",
                  "search.step_length", "coefficients.sigma", "compare.merge_params.linear"]

# Legal variations: combinations of valid settings must give a result, not a crash.
LEGAL = {"strategy": ["swarm", "cmaes", "random", "greedy_soup", "layer_swarm"],
         "utility.scoring": ["letter", "cloze", "cloze_norm", "permuted", "generate"],
         "utility.type": ["multiple_choice", "exact_match"],
         "model.particles_per_forward": [1, 2, 3, "auto"], "model.batch_size": [1, 2, 64],
         "model.max_batch_tokens": [8, 64, 100000], "model.reuse_frozen_layers": [True, False],
         "search.particles": [2, 4, 6], "search.start_velocity": ["random", "zero", "best"],
         "search.use_repel": [True, False], "search.random_factors": [True, False],
         "output.top_k": [1, 2, 5], "output.evaluate_test": [True, False],
         "data.max_dev": [1, 2, 5], "data.max_test": [1, 3], "budget": [3, 6, 20, None],
         "experts.include": [["*lora_B*"], ["*layers.0.*"], ["*nomatch*"]],
         "experts.exclude": [["*lora_A*"], ["*"]], "coefficients.per_layer": [True, False],
         "seed": [0, 1, 12345]}
legal = st.sampled_from([("set", k, v) for k, vs in LEGAL.items() for v in vs])

mutation = st.one_of(
    legal,
    st.tuples(st.just("set"), st.sampled_from(CONFIG_KEYS), VALUES),
    st.tuples(st.just("drop"), st.sampled_from(CONFIG_KEYS)),
    st.tuples(st.just("unknown"), st.sampled_from(["", *sorted({k.rsplit(".", 1)[0] + "."
                                                                for k in CONFIG_KEYS
                                                                if "." in k})]),
              st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)),
    st.tuples(st.just("path"), st.sampled_from(["experts.paths", "experts.base_model",
                                                "data.path", "data.test_path", "output.dir"]),
              st.sampled_from(PATH_KINDS)),
    st.tuples(st.just("yaml"), st.sampled_from(["truncate", "garbage", "not utf-8", "list",
                                                "scalar", "empty", "tabs"]),
              st.integers(0, 10**6)),
    st.tuples(st.just("data"), st.sampled_from(DATA_FAULTS), st.integers(0, 10**6)),
    st.tuples(st.just("expert"), st.integers(0, 2), st.sampled_from(EXPERT_FAULTS)),
    st.tuples(st.just("exists"), st.sampled_from(["empty", "full", "ours"])),
    st.tuples(st.just("overlap"), st.sampled_from(OVERLAPS)),
    st.just(("flag", "--overwrite")),
    st.just(("held",)),
    st.tuples(st.just("nonfinite"), st.sampled_from(NONFINITE_KEYS),
              st.sampled_from([float("nan"), float("inf"), float("-inf")])),
    st.tuples(st.just("disagree"), st.sampled_from(DISAGREE)),
)


@dataclass
class Case:
    argv: list[str]
    culprits: set[str]  # an error line must name one of these
    inputs: list[Path]  # files the command must not change
    out: Path  # the folder a run would make
    out_existed: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    held: bool = False  # another process (here: another lock) writes the output folder


def _valid_config(command: str, w: World, case: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "experts": {"paths": [str(p) for p in w.experts]},
        "data": {"path": str(case / "data.json")},
        "utility": {"type": "multiple_choice"},
        "search": {"max_iterations": 2, "patience": 2},
        "budget": 9,
        "output": {"dir": str(case / "out")},
        "seed": 0,
    }
    if command == "merge":
        cfg["merge"] = {"method": "ties", "params": {"density": 0.5}}
    if command == "compare":
        cfg["compare"] = {"methods": ["base", "best_expert", "linear", "random", "swarm"],
                          "seeds": [0], "budget": 9}
        cfg["coefficients"] = {"max_iterations": 1}
    if command == "hswarm":
        cfg["hswarm"] = {"graphs": 2, "trials": 2, "max_rounds": 1, "max_new_tokens": 3,
                         "node_answers": "choice", "baselines": ["best_expert"]}
        cfg["budget"] = 8
    return cfg


def _walk(cfg: dict, dotted: str, create: bool = False) -> tuple[dict | None, str]:
    *parents, leaf = dotted.split(".")
    node: Any = cfg
    for p in parents:
        if not isinstance(node, dict):
            return None, leaf
        if p not in node or not isinstance(node[p], dict):
            if not create:
                return None, leaf
            node[p] = {}
        node = node[p]
    return (node if isinstance(node, dict) else None), leaf


def _bad_path(kind: str, case: Path, w: World) -> str:
    if kind == "missing":
        return str(case / "nowhere" / "gone")
    if kind == "file":
        f = case / "a_file.txt"
        f.write_text("not a folder\n")
        return str(f)
    if kind == "empty folder":
        d = case / "empty_folder"
        d.mkdir(exist_ok=True)
        return str(d)
    if kind == "under a file":
        f = case / "blocker"
        f.write_text("x")
        return str(f / "inside")
    if kind == "unwritable":  # tests run as root here, where permissions do not bind; /proc does
        return "/proc/modelswarms_fuzz/out"
    return str(w.base)


def _data(fault: str | None, r: random.Random) -> bytes:
    dev, test = make_mc_items(6, 0), make_mc_items(4, 1)
    doc: Any = {"dev": dev, "test": test}
    if fault is None:
        return json.dumps(doc).encode()
    item = r.choice(dev)
    if fault == "truncate":
        text = json.dumps(doc).encode()
        return text[: r.randrange(len(text))]
    if fault == "not utf-8":
        text = bytearray(json.dumps(doc).encode())
        text[r.randrange(len(text))] = 0xFF
        return bytes(text)
    if fault in ("jsonl", "jsonl torn line"):
        lines = [json.dumps({**it, "split": s}) for s, its in doc.items() for it in its]
        if fault == "jsonl torn line":
            k = r.randrange(len(lines))
            lines[k] = lines[k][: r.randrange(1, len(lines[k]))]
        return ("\n".join(lines) + "\n").encode()
    if fault == "no dev split":
        doc = {"train": dev, "test": test}
    elif fault == "empty dev":
        doc["dev"] = []
    elif fault == "empty test":
        doc["test"] = []
    elif fault == "drop field":
        del item[r.choice(["question", "choices", "answer", "id"])]
    elif fault == "field type":
        item[r.choice(["question", "choices", "answer", "id"])] = r.choice(
            [None, 3, 2.5, [1, 2], {"x": {"y": 1}}, True, ""])
    elif fault == "answer outside":
        item["answer"] = r.choice(["E", "a", "", "AB", 0])
    elif fault == "one choice":
        item["choices"] = {"A": "1"}
        item["answer"] = "A"
    elif fault == "duplicate ids":
        for it in dev:
            it["id"] = "same"
    elif fault == "huge string":
        item[r.choice(["question", "id"])] = "why " * 50_000
    elif fault == "empty strings":
        item["question"] = ""
        item["choices"] = {k: "" for k in item["choices"]}
    elif fault == "top-level list":
        doc = dev
    elif fault == "not an object":
        dev[r.randrange(len(dev))] = r.choice([1, "q", None, [1]])
    elif fault == "nan answer":
        return json.dumps(doc).replace(f'"answer": "{item["answer"]}"', '"answer": NaN',
                                       1).encode()
    elif fault == "choices list":
        item["choices"] = list(item["choices"].values())
    elif fault == "nan choice":
        item["choices"][next(iter(item["choices"]))] = float("nan")
    elif fault == "huge test string":  # found before the search, not after it
        r.choice(test)["question"] = "why " * 50_000
    elif fault == "long test prompt":  # each field fits the model, the prompt as scored not
        it = r.choice(test)
        it["question"] = "why " * 75
        it["choices"][next(iter(it["choices"]))] = "so " * 110
    elif fault == "nan question":  # read as "nan" before it was refused
        item["question"] = float("nan")
    return json.dumps(doc).encode()


def _break_expert(src: Path, fault: str, case: Path, w: World, r: random.Random) -> Path | None:
    """A copy of `src` with `fault`; None for a fault that is a path of the pool itself."""
    if fault == "duplicate":
        return None
    if fault == "other base":
        return w.other_base_expert
    if fault == "full model":
        return w.full
    bad = case / f"broken_{fault.replace(' ', '_')}"
    if bad.exists():
        shutil.rmtree(bad)
    shutil.copytree(src, bad)
    weights, conf = bad / "adapter_model.safetensors", bad / "adapter_config.json"
    if fault == "no weights":
        weights.unlink()
    elif fault == "truncated weights":
        data = weights.read_bytes()
        weights.write_bytes(data[: r.randrange(len(data))])
    elif fault == "random bytes":
        weights.write_bytes(r.randbytes(r.randrange(1, 4096)))
    elif fault == "empty weights":
        weights.write_bytes(b"")
    elif fault == "no adapter config":
        conf.unlink()
    elif fault == "garbage adapter config":
        conf.write_bytes(r.randbytes(64))
    elif fault == "adapter config list":
        conf.write_text("[1, 2, 3]")
    elif fault in ("other rank", "other targets", "missing base"):
        c = json.loads(conf.read_text())
        if fault == "other rank":
            c["r"] = r.choice([0, -1, 1, 8, "four", None])
        elif fault == "other targets":
            c["target_modules"] = r.choice([["k_proj"], [], "q_proj", None, ["nope"]])
        else:
            c["base_model_name_or_path"] = str(case / "no_such_base")
        conf.write_text(json.dumps(c))
    elif fault == "pickle only":
        weights.unlink()
        (bad / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    else:
        tensors = load_file(weights)
        name = r.choice(sorted(tensors))
        if fault == "tensor shape":
            tensors[name] = tensors[name].flatten()[:-1].clone()
        elif fault == "tensor dtype":
            tensors[name] = tensors[name].to(getattr(torch, r.choice(
                ["float16", "bfloat16", "int32"])))
        elif fault == "extra tensor":
            tensors["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = \
                tensors[name].clone()
        elif fault == "missing tensor":
            del tensors[name]
        elif fault in ("nan weights", "inf weights"):
            tensors[name] = tensors[name].clone().fill_(float("nan" if fault == "nan weights"
                                                              else "-inf"))
        save_file(tensors, weights)
    return bad


def _overlap(where: str, cfg: dict, case: Path, w: World) -> str:
    """An output folder among the inputs (issue 28: `--overwrite` deleted them)."""
    if where == "case folder":  # beside the config and the data: `output: {dir: .}`
        return str(case)
    if where == "data file":
        return str(case / "data.json")
    if where == "base model":  # the adapters' base, named by their configs only
        return str(w.base)
    own = case / "own_expert"
    if not own.exists():
        shutil.copytree(w.experts[1], own)
    paths = cfg["experts"].get("paths") if isinstance(cfg.get("experts"), dict) else None
    if isinstance(paths, list) and paths:
        paths[-1] = str(own)
    return str(own if where == "expert" else own / "runs")


def _disagree(kind: str, cfg: dict, case: Path, w: World) -> None:
    """Every expert's adapter config at odds with its own tensors (the same way in all, so
    the pool agrees with itself)."""
    value = {"rank": ("r", 7), "rank text": ("r", "four"), "targets": (
        "target_modules", ["q_proj"]), "alpha nan": ("lora_alpha", float("nan")),
        "alpha text": ("lora_alpha", "sixteen")}[kind]
    paths = []
    for i, src in enumerate(w.experts):
        copy = case / f"agree_{i}"
        if not copy.exists():
            shutil.copytree(src, copy)
        conf = json.loads((copy / "adapter_config.json").read_text())
        conf[value[0]] = value[1]
        (copy / "adapter_config.json").write_text(json.dumps(conf))
        paths.append(str(copy))
    if isinstance(cfg.get("experts"), dict):
        cfg["experts"]["paths"] = paths


def build_case(command: str, mutations: list[tuple], w: World, case: Path) -> Case:
    r = random.Random(json.dumps(mutations, default=str))
    cfg = _valid_config(command, w, case)
    culprits: set[str] = set()
    data_fault = next((m[1] for m in mutations if m[0] == "data"), None)
    (case / "data.json").write_bytes(_data(data_fault, r))
    if data_fault:
        culprits.add("data.json")
    yaml_fault = None
    out = case / "out"
    existed = held = False
    flags: list[str] = []
    for m in mutations:
        kind = m[0]
        if kind == "nonfinite":
            value = [m[2], 1.0, 1.0] if m[1] == "merge.weights" else (
                {"weights": [m[2], 1.0, 1.0]} if m[1].endswith("linear") else m[2])
            m = ("set", m[1], value)
            kind = "set"
        if kind == "set":
            node, leaf = _walk(cfg, m[1], create=True)
            if node is not None:
                node[leaf] = m[2]
            culprits |= set(m[1].split("."))
            if isinstance(m[2], str) and len(m[2]) > 2:
                culprits.add(m[2])
        elif kind == "drop":
            node, leaf = _walk(cfg, m[1])
            if node is not None and leaf in node:
                del node[leaf]
            culprits |= set(m[1].split("."))
        elif kind == "unknown":
            node, _ = _walk(cfg, m[1] + "x", create=True)
            if node is not None:
                node[m[2]] = 1
            culprits.add(m[2])
        elif kind == "path":
            node, leaf = _walk(cfg, m[1], create=True)
            bad = _bad_path(m[2], case, w)
            if node is not None:
                if leaf == "paths":
                    paths = list(node.get(leaf) or [])
                    paths[r.randrange(len(paths))] = bad if paths else None
                    node[leaf] = [p for p in paths if p] or [bad]
                else:
                    node[leaf] = bad
                if m[1] == "output.dir":
                    out = Path(bad)
            culprits |= {m[1].rsplit(".", 1)[-1], Path(bad).name, bad}
        elif kind == "yaml":
            yaml_fault = m
        elif kind == "expert":
            paths = cfg["experts"].get("paths") if isinstance(cfg.get("experts"), dict) else None
            if isinstance(paths, list) and paths:
                i = m[1] % len(paths)
                src = w.experts[m[1] % len(w.experts)]
                broken = _break_expert(src, m[2], case, w, r)
                paths[i] = str(src) if broken is None else str(broken)
                if broken is None:  # the same expert twice: legal, a warning
                    paths.append(str(src))
                culprits |= {Path(paths[i]).name, "expert"}
        elif kind == "exists":
            if out != case and case not in out.parents:
                continue  # the world's base model, shared by every example: never written
            try:
                out.mkdir(parents=True, exist_ok=True)
                if m[1] == "full":
                    (out / "something.txt").write_text("a user's file\n")
                elif m[1] == "ours":  # what a run of ours left: --overwrite may replace it
                    mark(out)
                    (out / "history.jsonl").write_text("{}\n")
            except OSError:
                continue  # the output path was already made unusable
            existed = True
            culprits |= {out.name, "exists"}
        elif kind == "overlap":
            node, leaf = _walk(cfg, "output.dir", create=True)
            bad = _overlap(m[1], cfg, case, w)
            if node is not None:
                node[leaf] = bad
                out = Path(bad)
            culprits |= {"output.dir"}
        elif kind == "flag":
            flags.append(m[1])
        elif kind == "held":
            held = True
            culprits |= {"in use", out.name}
        elif kind == "disagree":
            _disagree(m[1], cfg, case, w)
            culprits |= {"adapter_config.json", "agree_0", "agree_1", "agree_2"}
    text = yaml.safe_dump(cfg, allow_unicode=True).encode()
    if yaml_fault:
        what, seed = yaml_fault[1], yaml_fault[2]
        rr = random.Random(seed)
        text = {"truncate": text[: rr.randrange(len(text))],
                "garbage": rr.randbytes(rr.randrange(1, 200)),
                "not utf-8": text[:20] + b"\xff\xfe" + text[20:],
                "list": b"- 1\n- 2\n", "scalar": b"just words\n", "empty": b"",
                "tabs": b"experts:\n\tpaths: [a]\n"}[what]
        culprits.add("c.yaml")
        if what == "truncate":  # what is left may be valid YAML missing any key, or a cut path
            culprits |= {k.split(".")[0] for k in CONFIG_KEYS} | {"expert", "data"}
            culprits |= _strings(_try_yaml(text))
    config = case / "c.yaml"
    config.write_bytes(text)
    argv = {"run": ["run", str(config), "--quiet"],
            "hswarm": ["hswarm", str(config), "--quiet"],
            "compare": ["compare", str(config)],
            "merge": ["merge", str(config)]}.get(command)
    if argv is not None:
        argv += flags
    if command == "eval":
        experts = cfg.get("experts") if isinstance(cfg.get("experts"), dict) else {}
        target = experts.get("paths")
        target = target[0] if isinstance(target, list) and target else str(w.experts[0])
        argv = ["eval", str(target), "--config", str(config), "--max-items", "4"]
        if not isinstance(experts.get("base_model"), str):
            argv += ["--base", str(w.base)]
    inputs = [p for p in case.rglob("*") if p.is_file() and out not in p.parents]
    return Case(argv or [], culprits, inputs, out, existed, cfg, held)


MIXTURE_FAULTS = ["garbage", "not utf-8", "list", "no experts", "empty experts", "one expert",
                  "nan weight", "text weight", "negative weights", "zero weights",
                  "missing expert", "expert is a file", "adapter expert", "no file"]
DISTIL_ARGS = {"--student": ["nobody", "", "base"], "--steps": ["0", "-1", "many"],
               "--rank": ["0", "-2"], "--lr": ["nan", "-1", "inf", "1e9"],
               "--max-new-tokens": ["0", "-1"], "--max-items": ["0", "-1"],
               "--out": ["under a file", "unwritable", "not empty", "file"],
               "--prompts": ["also", "not utf-8", "empty", "missing"],
               "--split": ["nope", "test"]}
distil_mutation = st.one_of(
    st.tuples(st.just("mixture"), st.sampled_from(MIXTURE_FAULTS)),
    st.tuples(st.just("data"), st.sampled_from(DATA_FAULTS), st.integers(0, 10**6)),
    st.sampled_from([("arg", k, v) for k, vs in DISTIL_ARGS.items() for v in vs]),
)


def build_distil_case(mutations: list[tuple], w: World, case: Path) -> Case:
    """`modelswarms distil`: a mixture of two architectures distilled into one of them."""
    r = random.Random(json.dumps(mutations, default=str))
    culprits: set[str] = set()
    experts = [{"name": "base", "path": str(w.base), "weight": 0.6},
               {"name": "gpt2", "path": str(w.gpt2), "weight": 0.4}]
    spec: Any = {"experts": experts}
    raw: bytes | None = None
    data_fault = next((m[1] for m in mutations if m[0] == "data"), None)
    (case / "data.json").write_bytes(_data(data_fault, r))
    if data_fault:
        culprits.add("data.json")
    args = {"--student": "gpt2", "--out": str(case / "student"), "--data": str(case /
                                                                                "data.json"),
            "--steps": "2", "--max-items": "2", "--max-new-tokens": "2"}
    out = case / "student"
    for m in mutations:
        if m[0] == "mixture":
            fault = m[1]
            culprits |= {"mixture.json", "mixture"}
            if fault == "garbage":
                raw = r.randbytes(40)
            elif fault == "not utf-8":
                raw = b'{"experts": "\xff"}'.replace(b"\\xff", b"\xff")
            elif fault == "list":
                spec = [experts]
            elif fault == "no experts":
                spec = {"weights": [1]}
            elif fault == "empty experts":
                spec = {"experts": []}
            elif fault == "one expert":
                spec = {"experts": experts[1:]}
            elif fault in ("nan weight", "text weight"):
                experts[0]["weight"] = float("nan") if fault == "nan weight" else "heavy"
            elif fault in ("negative weights", "zero weights"):
                for e in experts:
                    e["weight"] = -1.0 if fault == "negative weights" else 0.0
            elif fault == "missing expert":
                experts[1]["path"] = str(case / "gone")
                culprits.add("gone")
            elif fault == "expert is a file":
                (case / "afile").write_text("x")
                experts[1]["path"] = str(case / "afile")
                culprits.add("afile")
            elif fault == "adapter expert":
                experts[1]["path"] = str(w.experts[0])
                culprits |= {"expert_0", "gpt2"}
            elif fault == "no file":
                raw = b""
                spec = None
        elif m[0] == "arg":
            flag, value = m[1], m[2]
            culprits |= {flag, flag.lstrip("-"), value} if value else {flag}
            if flag == "--out":
                if value == "under a file":
                    (case / "blocker").write_text("x")
                    args[flag] = str(case / "blocker" / "student")
                elif value == "unwritable":
                    args[flag] = "/proc/modelswarms_fuzz/student"
                elif value in ("not empty", "file"):
                    with contextlib.suppress(OSError):  # an --out made unusable before
                        if value == "file":
                            out.write_text("a file\n")
                        else:
                            out.mkdir(exist_ok=True)
                            (out / "keep.txt").write_text("a user's file\n")
                culprits |= {"out", "student", "blocker"}
                out = Path(args[flag])
            elif flag == "--prompts":
                prompts = case / "prompts.txt"
                if value != "missing":
                    prompts.write_bytes({"also": b"Hello there\nWhat is 2+2?\n",
                                         "not utf-8": b"Hi \xff\n", "empty": b"\n\n"}[value])
                args[flag] = str(prompts)
                if value != "also":
                    args.pop("--data", None)
                culprits |= {"prompts", "data"}
            else:
                args[flag] = value
    folder = case / "mix"
    folder.mkdir()
    if spec is not None or raw is not None:
        (folder / "mixture.json").write_bytes(raw if raw is not None else json.dumps(
            spec).encode())
    argv = ["distil", str(folder), *[x for k, v in args.items() for x in (k, v)]]
    inputs = [p for p in case.rglob("*") if p.is_file() and out not in p.parents and p != out]
    return Case(argv, culprits, inputs, out)


def _try_yaml(text: bytes) -> Any:
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):
        return None


def _strings(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {str(k) for k in node} | {s for v in node.values() for s in _strings(v)}
    if isinstance(node, list):
        return {s for v in node for s in _strings(v)}
    return {node} if isinstance(node, str) and len(node) > 1 else set()


def _digest(paths: list[Path]) -> dict[str, str]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")))
             if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@contextmanager
def _deadline(seconds: int):
    def fire(*_):
        raise TimeoutError(f"no answer in {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check(command: str, mutations: list[tuple], w: World) -> str:
    """Run one example through the command line and assert the guarantee; returns how it
    ended ("result" or the error line)."""
    case = Path(tempfile.mkdtemp(dir=w.root, prefix="case"))
    try:
        c = (build_distil_case(mutations, w, case) if command == "distil"
             else build_case(command, mutations, w, case))
        watched = [*c.inputs, *(w.root / d for d in ("base", "pool", "other_base",
                                                     "other_pool", "full", "gpt2"))]
        before = _digest(watched)
        holder = None
        made: list[Path] = []  # what the harness made to hold the lock, removed after
        if c.held:  # a second writer: the folder is locked as another process would hold it
            with contextlib.suppress(OSError):
                made = [p for p in (c.out, c.out / MARKER) if not p.exists()]
                c.out.mkdir(parents=True, exist_ok=True)
                holder = FolderLock(c.out).acquire()
        out_before = _digest([c.out]) if c.out.exists() and c.out not in made else None
        if out_before is not None:
            out_before.pop(str(c.out / MARKER) if c.out / MARKER in made else "", None)
        replaced = "--overwrite" in c.argv and (c.out / MARKER).is_file()  # ours: may go
        cwd = os.getcwd()
        os.chdir(case)  # a default relative path lands in the case, not in the repository
        try:
            with _deadline(HANG_SECONDS):
                result = CliRunner().invoke(main, c.argv, catch_exceptions=True)
        finally:
            os.chdir(cwd)
            if holder is not None:
                holder.release()
                # the harness's own marker, in an input folder (an output among the inputs)
                # it would count as a file changed there
                for p in reversed(made):
                    with contextlib.suppress(OSError):
                        p.unlink() if p.is_file() else p.rmdir()
        after = _digest(watched)
        lost = sum(after.get(f) != h for f, h in before.items())
        TALLY["files lost"] = TALLY.get("files lost", 0) + lost
        if isinstance(result.exception, TimeoutError) and any(
                isinstance(v, int) and abs(v) > 1000 for m in mutations for v in m[1:]
                if m[0] == "set"):
            reject()  # a config that asks for a very long run, legitimately
        stderr = result.stderr
        assert "Traceback" not in result.output + stderr, (c.argv, mutations, stderr)
        assert result.exit_code in (0, 2), (mutations, result.exit_code, stderr,
                                            result.exception)
        assert lost == 0 and after == before, ("an input file changed", mutations)
        if result.exit_code == 0:
            return "result"
        # ours ("error: ...") or click's for a malformed flag ("Error: Invalid value for ...")
        lines = [x for x in stderr.splitlines() if x.startswith(("error:", "Error:"))]
        assert len(lines) == 1 and len(stderr.strip().splitlines()) >= 1, (mutations, stderr)
        line = lines[0]
        assert any(s and s in line for s in c.culprits), (mutations, line, c.culprits)
        if "max_position_embeddings" in line:  # found before the search: nothing to resume
            assert not any(c.out.rglob("checkpoint.safetensors")), ("an over-long item found "
                                                                     "after the search", line)
        if out_before is None:
            assert not c.out.exists() or (c.out / "checkpoint.safetensors").exists() or any(
                c.out.rglob("checkpoint.safetensors")), ("a run that could not start left "
                                                          "its folder", mutations, line)
        elif not replaced:
            assert _digest([c.out]) == out_before, ("an existing folder changed", mutations)
        return line
    finally:
        shutil.rmtree(case, ignore_errors=True)


def _fuzz(command: str):
    n = FUZZ or FUZZ_EXAMPLES[command]
    one = distil_mutation if command == "distil" else mutation
    # as many cases of legal settings or one fault as of several faults: combinations of
    # legal settings must give results, and a single fault must be named
    lists = st.one_of(st.lists(legal, max_size=3), st.lists(one, max_size=1),
                      st.lists(one, min_size=2, max_size=4))

    @settings(max_examples=n, deadline=None, derandomize=not FUZZ, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.function_scoped_fixture])
    @given(mutations=lists if command != "distil" else st.lists(one, max_size=3))
    def test(world, mutations):
        TALLY[f"{command} examples"] = TALLY.get(f"{command} examples", 0) + 1
        for m in mutations:
            TALLY[m[0]] = TALLY.get(m[0], 0) + 1
            if m[0] == "data":  # which data faults, so a figure can say how often each ran
                TALLY[f"data: {m[1]}"] = TALLY.get(f"data: {m[1]}", 0) + 1
        end = "errors" if check(command, mutations, world) != "result" else "results"
        TALLY[f"{command} {end}"] = TALLY.get(f"{command} {end}", 0) + 1

    test.__name__ = f"test_fuzz_{command}"
    return test


test_fuzz_run = _fuzz("run")
test_fuzz_merge = _fuzz("merge")
test_fuzz_eval = _fuzz("eval")
test_fuzz_compare = _fuzz("compare")
test_fuzz_hswarm = _fuzz("hswarm")
test_fuzz_distil = _fuzz("distil")


# Every example the fuzzer ever failed on, kept as it was found.
REGRESSIONS: list[tuple[str, list[tuple]]] = [
    # UnicodeDecodeError out of the adapter config reader
    ("eval", [("expert", 0, "garbage adapter config")]),
    ("run", [("expert", 0, "adapter config list")]),
    # peft's HFValidationError for an adapter folder without weights
    ("eval", [("expert", 0, "no weights")]),
    # "blocker: File exists", from deep in the export, after the merge was computed
    ("merge", [("path", "output.dir", "under a file")]),
    ("run", [("path", "output.dir", "unwritable")]),
    # the default output folder resolved against the working folder, not the config's
    ("run", [("drop", "output")]),
    # a NaN mixing weight: ValueError from the mixture
    ("distil", [("mixture", "nan weight")]),
    # a diverged distillation named no flag (and left a half-written adapter)
    ("distil", [("arg", "--lr", "1e9")]),
    # a 200,000-character question: out of memory in attention
    ("distil", [("arg", "--student", "base"), ("data", "huge string", 0)]),
    ("distil", [("mixture", "one expert"), ("data", "huge string", 0)]),
    ("run", [("data", "huge string", 0)]),
    # a device string torch refuses, or one this machine lacks: RuntimeError at model load
    ("run", [("set", "model.device", "")]),
    ("eval", [("set", "model.device", "cuda")]),
    ("run", [("set", "model.workers", 2)]),
    # a utility type that is not text: TypeError (unhashable list) in the utility's tag
    ("eval", [("set", "utility.type", [])]),
    ("run", [("set", "utility.type", {"x": 1})]),
    # a multiple-choice answer that is a list: TypeError (unhashable) in the item check
    ("distil", [("arg", "--student", ""), ("mixture", "missing expert"),
                ("data", "field type", 43)]),
    # eval found an over-long test item only inside a batch: "data: an item is N tokens",
    # no file, split or item
    ("eval", [("data", "huge test string", 0)]),
    # test-side: the harness's lock for a second writer put its marker into the base model
    # folder the output overlapped, and counted it as an input file changed
    ("hswarm", [("nonfinite", "compare.merge_params.linear", float("inf")),
                ("overlap", "base model"), ("expert", 0, "full model"), ("held",)]),
]


# Issue 28's shapes, each on every CI whatever the generated set holds: output folders among
# the inputs (with --overwrite), a second writer, non-finite numbers in configs, tensors and
# data, expert configs at odds with their tensors.
FAMILIES: list[tuple[str, list[tuple]]] = [
    *((cmd, [("overlap", where), ("flag", "--overwrite")]) for cmd in ("run", "compare", "merge",
                                                                      "hswarm")
      for where in OVERLAPS),
    ("run", [("exists", "full"), ("flag", "--overwrite")]),
    ("merge", [("exists", "full"), ("flag", "--overwrite")]),
    ("run", [("exists", "ours"), ("flag", "--overwrite")]),
    *((cmd, [("held",)]) for cmd in ("run", "compare", "hswarm")),
    ("run", [("held",), ("exists", "ours"), ("flag", "--overwrite")]),
    *(("merge", [("set", "merge.method", method), ("nonfinite", "merge.weights", v)])
      for method in ("linear", "task_arithmetic") for v in (float("nan"), float("inf"))),
    ("merge", [("nonfinite", "merge.params.lambda", float("inf"))]),
    ("run", [("nonfinite", "search.inertia", float("nan"))]),
    ("compare", [("nonfinite", "compare.merge_params.linear", float("-inf"))]),
    *((cmd, [("expert", 0, fault)]) for cmd in ("run", "merge", "eval")
      for fault in ("nan weights", "inf weights")),
    ("run", [("data", "nan choice", 0)]),
    ("run", [("data", "huge test string", 0)]),
    ("compare", [("data", "huge test string", 1)]),
    ("run", [("data", "long test prompt", 0)]),
    ("compare", [("data", "long test prompt", 1)]),
    ("hswarm", [("data", "long test prompt", 2)]),
    ("run", [("data", "nan question", 0)]),
    ("compare", [("data", "nan question", 0)]),
    *((cmd, [("disagree", kind)]) for cmd in ("run", "merge") for kind in DISAGREE),
    ("eval", [("disagree", "rank")]),
]


@pytest.mark.parametrize(("command", "mutations"), FAMILIES)
def test_fuzz_family(world, command, mutations):
    TALLY["family examples"] = TALLY.get("family examples", 0) + 1
    check(command, mutations, world)


@pytest.mark.parametrize(("command", "mutations"), REGRESSIONS)
def test_fuzz_regression(world, command, mutations):
    check(command, mutations, world)


def test_fuzz_tally_is_written(request):
    """MODELSWARMS_FUZZ_TALLY=FILE appends what this session's fuzz tests tried (the figures
    of docs/RELIABILITY.md)."""
    path = os.environ.get("MODELSWARMS_FUZZ_TALLY")
    if path and TALLY:
        with open(path, "a") as f:
            f.write(json.dumps(TALLY, sort_keys=True) + "\n")
