"""Parity of `modelswarms.merge` with mergekit, on tiny random Llama checkpoints.

Not a test: mergekit lives in its OWN virtual environment, so its pins never touch ours.

    python -m venv /tmp/mk-venv
    /tmp/mk-venv/bin/pip install torch==2.13.0 mergekit==0.1.5   # pin torch: no CUDA build
    python bench/mergekit_parity.py [--mk-venv /tmp/mk-venv] [--setup]

(`--setup` runs those two install commands when the venv is missing.) The script saves a base
and 3 experts with `make_tiny_llama` (seeds 0..3), merges them with `mergekit-yaml` (CPU, one
thread, fixed random seed) and with our `merge_vectors` over a FlatSpace of every tensor, and
writes the max abs difference per method to docs/MERGEKIT_PARITY.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from modelswarms.merge import merge_vectors
from modelswarms.space import FlatSpace
from modelswarms.testing import make_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
E = ["e1", "e2", "e3"]
# label, method, our params, weights (None: default), models merged, uses base, mergekit params
CASES = [
    ("linear", "linear", {}, None, E, False, {}),
    ("linear", "linear", {}, [1.0, 2.0, 3.0], E, False, {}),
    ("task_arithmetic", "task_arithmetic", {"lambda": 0.7}, None, E, True, {"lambda": 0.7}),
    ("task_arithmetic", "task_arithmetic", {"normalize": True}, [0.5, 1.0, 1.5], E, True,
     {"normalize": True}),
    ("ties", "ties", {"density": 0.5}, None, E, True, {"density": 0.5}),
    ("ties", "ties", {"density": 0.3}, [1.0, 0.5, 2.0], E, True, {"density": 0.3}),
    ("dare_linear", "dare_linear", {"density": 1.0}, None, E, True, {"density": 1.0}),
    ("dare_ties", "dare_ties", {"density": 1.0}, [1.0, 0.5, 2.0], E, True, {"density": 1.0}),
    ("breadcrumbs", "breadcrumbs", {"density": 0.8, "gamma": 0.05}, None, E, True,
     {"density": 0.8, "gamma": 0.05}),
    ("breadcrumbs_ties", "breadcrumbs_ties", {"density": 0.8, "gamma": 0.05}, None, E, True,
     {"density": 0.8, "gamma": 0.05}),
    ("slerp", "slerp", {"t": 0.3}, None, E[:2], False, {"t": 0.3}),
    ("karcher", "karcher", {}, None, E, False, {}),
    ("model_stock", "model_stock", {}, None, E, True, {}),
]


def mergekit_config(method, weights, models, uses_base, mk_params, folder: Path) -> dict:
    cfg: dict = {"merge_method": method, "dtype": "float32", "out_dtype": "float32"}
    if method == "slerp":  # mergekit's slerp interpolates from its base model
        cfg["base_model"] = str(folder / models[0])
    elif uses_base:
        cfg["base_model"] = str(folder / "base")
    entries = []
    for i, name in enumerate(models):
        entry: dict = {"model": str(folder / name)}
        if method not in ("slerp", "karcher", "model_stock"):
            entry["parameters"] = {"weight": 1.0 if weights is None else weights[i]}
        entries.append(entry)
    if method == "slerp":
        entries = entries[1:]
    cfg["models"] = entries
    if mk_params:
        cfg["parameters"] = mk_params
    return cfg


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def ensure_venv(venv: Path) -> None:
    if (venv / "bin" / "mergekit-yaml").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0",
                    "mergekit==0.1.5"], check=True)


def search_exports(folder: Path, venv: Path, env: dict) -> list[tuple]:
    """Each coefficient search's own exports: the best/model.safetensors a run wrote against
    mergekit run on the best/mergekit.yaml written beside it."""
    import json
    import random

    import modelswarms as ms

    rng = random.Random(0)
    items = []
    for i in range(12):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        opts = [str(a + b + d) for d in rng.sample([-2, -1, 0, 1], 4)]
        items.append({"id": f"q{i}", "question": f"What is {a}+{b}?",
                      "choices": dict(zip("ABCD", opts, strict=True)),
                      "answer": "ABCD"[opts.index(str(a + b))]})
    data = folder / "items.json"
    data.write_text(json.dumps({"dev": items, "test": items}))
    rows = []
    for strategy, per_layer in [("greedy_soup", False), ("random", False), ("cmaes", True),
                                ("layer_swarm", True)]:
        run = folder / f"run_{strategy}"
        cfg = ms.config(experts=[str(folder / m) for m in E], data=str(data),
                        strategy=strategy, budget=12, search={"particles": 4},
                        coefficients={"per_layer": per_layer, "population": 4},
                        output={"evaluate_test": False})
        ms.search(cfg, run_dir=run)
        out = folder / f"out_{strategy}"
        started = time.perf_counter()
        subprocess.run(
            [str(venv / "bin" / "mergekit-yaml"), str(run / "best" / "mergekit.yaml"), str(out),
             "--no-cuda", "--quiet", "-j", "1", "--no-copy-tokenizer",
             "--no-write-model-card"], check=True, env=env, capture_output=True, text=True)
        mk_seconds = time.perf_counter() - started
        ours, theirs = load_folder(run / "best"), load_folder(out)
        diff = max((ours[k].double() - theirs[k].double()).abs().max().item() for k in ours)
        scale = max(theirs[k].abs().max().item() for k in ours)
        label = f"{strategy} export ({'per layer' if per_layer else 'per expert'})"
        rows.append((label, {}, None, diff, scale, float("nan"), mk_seconds))
        print(f"{label:18s} max|diff| {diff:.3g}", flush=True)
    return rows


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mk-venv", type=Path, default=Path("/tmp/mk-venv"))
    ap.add_argument("--setup", action="store_true", help="create the mergekit venv if missing")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "MERGEKIT_PARITY.md")
    args = ap.parse_args()
    if args.setup:
        ensure_venv(args.mk_venv)
    mk_py = args.mk_venv / "bin" / "python"
    versions = subprocess.run(
        [str(mk_py), "-c", "import importlib.metadata as m; print(m.version('mergekit'), "
         "m.version('torch'), m.version('transformers'))"],
        check=True, capture_output=True, text=True).stdout.split()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torch.set_num_threads(1)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, name in enumerate(["base", *E]):
            make_tiny_llama(folder / name, seed=i)
        tensors = {name: load_folder(folder / name) for name in ["base", *E]}
        space = FlatSpace.select(tensors["base"])
        flat = {name: space.flatten(t) for name, t in tensors.items()}
        for n, (label, method, params, weights, models, uses_base, mk_params) in enumerate(CASES):
            cfg = mergekit_config(method, weights, models, uses_base, mk_params, folder)
            cfg_path, out = folder / f"case{n}.yml", folder / f"out{n}"
            cfg_path.write_text(yaml.safe_dump(cfg))
            started = time.perf_counter()
            subprocess.run(
                [str(args.mk_venv / "bin" / "mergekit-yaml"), str(cfg_path), str(out),
                 "--no-cuda", "--quiet", "--random-seed", "0", "-j", "1",
                 "--no-copy-tokenizer", "--no-write-model-card"],
                check=True, env=env, capture_output=True, text=True)
            mk_seconds = time.perf_counter() - started
            theirs = space.flatten(load_folder(out))
            experts = torch.stack([flat[m] for m in models])
            ours = merge_vectors(method, experts, flat["base"] if uses_base else None, space,
                                 params, weights)
            diff = (ours - theirs).abs().max().item()
            scale = theirs.abs().max().item()
            moved = (theirs - flat["base"]).abs().max().item()
            rows.append((label, params, weights, diff, scale, moved, mk_seconds))
            print(f"{label:18s} {params!s:34s} {weights!s:17s} max|diff| {diff:.3g}", flush=True)

        # a coefficient search's result (CMA-ES, random search, layer_swarm): per-layer
        # coefficients, written by merge/mergekit.py
        from modelswarms.merge.mergekit import coefficients_config
        from modelswarms.search.coefficients import CoefficientMap

        experts = torch.stack([flat[m] for m in E])
        cmap = CoefficientMap(experts, space, per_layer=True)
        coef = torch.Generator().manual_seed(0)
        c = torch.rand(cmap.dim, generator=coef, dtype=torch.float64) * 1.5 - 0.25
        cfg = coefficients_config([str(folder / m) for m in E], cmap.describe(c))
        cfg_path, out = folder / "layerwise.yml", folder / "out_layerwise"
        cfg_path.write_text(yaml.safe_dump(cfg))
        started = time.perf_counter()
        subprocess.run(
            [str(args.mk_venv / "bin" / "mergekit-yaml"), str(cfg_path), str(out),
             "--no-cuda", "--quiet", "-j", "1", "--no-copy-tokenizer",
             "--no-write-model-card"], check=True, env=env, capture_output=True, text=True)
        mk_seconds = time.perf_counter() - started
        theirs = space.flatten(load_folder(out))
        ours = cmap.weights(c)
        diff = (ours - theirs).abs().max().item()
        label = f"per-layer coefficients ({len(cmap.groups)} groups)"
        rows.append((label, {}, None, diff, theirs.abs().max().item(),
                     (theirs - flat["base"]).abs().max().item(), mk_seconds))
        print(f"{label:18s} max|diff| {diff:.3g}", flush=True)
        rows += search_exports(folder, args.mk_venv, env)

    lines = [
        "# Parity with mergekit",
        "",
        "Generated by `python bench/mergekit_parity.py` (see its docstring for the setup). A "
        f"base and 3 experts: random tiny Llamas (`make_tiny_llama`, hidden 32, 2 layers, "
        f"seeds 0-3, float32, {space.dim} values in {len(space.slots)} tensors). mergekit ran "
        "in its own venv via `mergekit-yaml` on CPU; ours is `merge_vectors` over a FlatSpace "
        "of every tensor. The difference is the max over all values.",
        "",
        f"- mergekit {versions[0]} (torch {versions[1]}, transformers {versions[2]}); ours: "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        f"- machine: {machine()}",
        f"- date: {datetime.date.today().isoformat()}",
        "",
        "| method | our params | weights | max abs diff | max abs value | max move from base "
        "| mergekit s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, params, weights, diff, scale, moved, secs in rows:
        p = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        w = "default" if weights is None else ", ".join(f"{x:g}" for x in weights)
        move = "-" if moved != moved else f"{moved:.3g}"  # NaN: not measured
        lines.append(f"| {label} | {p} | {w} | {diff:.2e} | {scale:.3g} | {move} "
                     f"| {secs:.1f} |")
    lines += [
        "",
        "Not compared: `dare_linear` / `dare_ties` below density 1. The drop masks are random "
        "and drawn from different generators (mergekit: the global torch RNG in its own task "
        "order; ours: one generator seeded once, slot order), and mergekit 0.1.5 rescales the "
        "survivors to the delta's L1 norm where the DARE paper (and our default) divides by "
        "the density; `rescale: l1` gives mergekit's rescaling. Density 1 checks the rest of "
        "the pipeline (no draw is made). Slerp: mergekit's base model is our first expert. "
        "Per-layer coefficients: random coefficients in [-0.25, 1.25] per expert and layer "
        "group, as CMA-ES, random search and layer_swarm find them, written by "
        "`modelswarms.merge.mergekit.coefficients_config` (the `mergekit.yaml` a run of "
        "full models exports) and decoded by our CoefficientMap. The `... export` rows run "
        "each coefficient search for real (`ms.search`, budget 12, 12 arithmetic items) over "
        "the 3 experts as full models and compare the model the run exported "
        "(`best/model.safetensors`) with mergekit's merge of the `best/mergekit.yaml` written "
        "beside it (greedy soup: 1/k for each expert in the soup). LoRA pools get no "
        "`mergekit.yaml`: our merges combine the A and B factors apart, mergekit merges whole "
        "weights (B A), a different point.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
