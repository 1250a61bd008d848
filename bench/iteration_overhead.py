"""One Model Swarms iteration, ours against the reference way, measured side by side.

SmolLM2-135M-Instruct, 10 rank-16 LoRA experts (random factors: only timing matters here),
200 MMLU dev items, multiple-choice log-likelihood utility, on whatever device is present.

- ours: one resident model; a particle is swapped in with one in-place copy; the swarm's
  state is flat tensors; one atomic checkpoint per iteration (score cache emptied first, so
  every particle is really evaluated).
- reference way: every particle's update is a round trip through safetensors files on disk
  (read x, v, p, g, w; write x, v), and every evaluation reloads the base model and the adapter
  from disk, as the reference code does. It scores with our utility, so the difference is the
  data flow alone; bench/engine_throughput.py compares the scoring itself with the
  reference's `model.generate` in batches of 10.

The share of an iteration that is not the forward passes of the evaluation is measured by
timing every forward call of the model with hooks.

Run: python bench/iteration_overhead.py [--items 200] [--experts 10]
Writes docs/bench_iteration_overhead.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from modelswarms.config import RunConfig
from modelswarms.evaluation.engine.backend import load_causal_lm
from modelswarms.models import smollm2_path
from modelswarms.runs.checkpoint import save_checkpoint
from modelswarms.runs.session import Session
from modelswarms.search import ModelSwarm
from modelswarms.search.swarm import SwarmConfig, coefficients

# bench/ is not a package: its shared module is importable once this folder is on the path
# (`python bench/X.py` puts it there; runpy, as the tests use, does not)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_way import file_update  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MMLU = ROOT.parent / "shared" / "data" / "eval" / "mmlu.json"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ForwardTimer:
    """Adds up wall time spent inside the top-level forward of a model."""

    def __init__(self):
        self.seconds = 0.0
        self._t = 0.0

    def attach(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *_):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def _post(self, *_):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._t


def make_experts(folder: Path, n: int) -> list[Path]:
    from modelswarms.testing import random_lora_adapters

    base = load_causal_lm(str(smollm2_path()), torch.float32, torch.device("cpu"))
    return random_lora_adapters(base, folder, n, rank=16, target_modules=TARGETS, scale=0.01)


def ours(session: Session, swarm: ModelSwarm, ckpt: Path, timer: ForwardTimer) -> dict:
    # The same iteration is measured twice: without this the second would be cache hits.
    session.scorer._cache.clear()
    timer.seconds = 0.0
    start = time.perf_counter()
    utilities = session.dev_utilities(swarm.ask())
    swarm.tell(utilities)
    tensors, meta = swarm.state_dict()
    save_checkpoint(ckpt, tensors, {"swarm": meta})
    total = time.perf_counter() - start
    return {"seconds": total, "forward_seconds": timer.seconds,
            "non_forward_share": 1 - timer.seconds / total, "utilities": utilities}


def reference_way(session: Session, files: Path, cfg: SwarmConfig) -> dict:
    """The reference code's data flow: files for every update, a fresh model per evaluation."""
    from peft import PeftModel

    timer_total = 0.0
    forward = 0.0
    gen = torch.Generator().manual_seed(0)
    base_path = str(smollm2_path())
    start = time.perf_counter()
    for i in range(len(session.pool.experts)):
        file_update(files, i, coefficients(cfg, torch.rand(4, generator=gen)))
        model = load_causal_lm(base_path, torch.float32, session.backend.device)
        model = PeftModel.from_pretrained(model, str(files / f"x_{i}")).eval()
        timer = ForwardTimer()
        timer.attach(model.get_base_model())
        session.utility.score(model, session.backend.tokenizer, session.dev)
        forward += timer.seconds
        del model
    timer_total = time.perf_counter() - start
    return {"seconds": timer_total, "forward_seconds": forward,
            "non_forward_share": 1 - forward / timer_total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--experts", type=int, default=10)
    args = ap.parse_args()
    if not MMLU.exists():
        raise SystemExit(f"needs {MMLU} (the shared task data)")
    work = Path(tempfile.mkdtemp(prefix="ms-bench-"))
    try:
        experts = make_experts(work / "experts", args.experts)
        cfg = RunConfig.model_validate({
            "experts": {"paths": [str(p) for p in experts], "base_model": "smollm2"},
            "data": {"path": str(MMLU), "max_dev": args.items},
            "utility": {"type": "multiple_choice"}, "model": {"batch_size": 16},
            "search": {"random_factors": True},
        })
        session = Session.open(cfg, need_test=False)
        timer = ForwardTimer()
        timer.attach(session.backend.model.get_base_model())
        swarm = ModelSwarm(session.experts, cfg.search, seed=0, device=session.backend.device)
        swarm.tell(session.dev_utilities(swarm.ask()))  # iteration 0
        # the reference way's files: every particle's x (as an adapter folder), v, p; g and w
        files = work / "files"
        for i, expert in enumerate(experts):
            shutil.copytree(expert, files / f"x_{i}")
            for name, vec in (("v", swarm.v[i]), ("p", swarm.p[i])):
                save_file({k: t.contiguous() for k, t in session.space.unflatten(
                    vec.cpu()).items()}, files / f"{name}_{i}.safetensors")
        for name, vec in (("g", swarm.g), ("w", swarm.w)):
            save_file({k: t.contiguous() for k, t in session.space.unflatten(vec.cpu()).items()},
                      files / f"{name}.safetensors")
        # the same iteration twice: one particle per forward, then all of them per forward
        state = [{k: v.clone() for k, v in swarm.state_dict()[0].items()},
                 dict(swarm.state_dict()[1])]
        a = ours(session, swarm, work / "checkpoint.safetensors", timer)
        swarm.load_state_dict(*state)
        session.cfg = cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"particles_per_forward": args.experts})})
        # the evaluator read its particles per forward when it was built, not from session.cfg
        session.evaluator.particles_per_forward = args.experts
        c = ours(session, swarm, work / "checkpoint.safetensors", timer)
        if c.pop("utilities") != a.pop("utilities"):
            raise SystemExit("batched particles changed the utilities")
        b = reference_way(session, files, cfg.search)
        result = {
            "machine": f"{platform.processor() or platform.machine()}, "
                       f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
                       f"device {session.backend.device}",
            "experts": args.experts, "items": len(session.dev), "lora_rank": 16,
            "searched_values": session.space.dim, "ours": a, "ours_batched": c,
            "reference_way": b, "speedup": b["seconds"] / a["seconds"],
            "batched_speedup": a["seconds"] / c["seconds"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    docs = ROOT / "docs"
    (docs / "bench_iteration_overhead.json").write_text(json.dumps(result, indent=2))
    (docs / "bench_iteration_overhead.md").write_text(
        "# One iteration: resident model vs the reference way\n\n"
        f"`python bench/iteration_overhead.py` on {result['machine']}. SmolLM2-135M-Instruct, "
        f"{args.experts} rank-16 LoRA experts ({result['searched_values']:,} searched values "
        f"each), {result['items']} MMLU dev items, multiple-choice log-likelihood.\n\n"
        "| | iteration (s) | forward passes (s) | not forward passes |\n"
        "| --- | ---: | ---: | ---: |\n"
        f"| ours | {a['seconds']:.1f} | {a['forward_seconds']:.1f} | "
        f"{a['non_forward_share']:.1%} |\n"
        f"| ours, {args.experts} particles per forward | {c['seconds']:.1f} | "
        f"{c['forward_seconds']:.1f} | {c['non_forward_share']:.1%} |\n"
        f"| reference way | {b['seconds']:.1f} | {b['forward_seconds']:.1f} | "
        f"{b['non_forward_share']:.1%} |\n\n"
        f"Speed-up of one iteration over the reference way: {result['speedup']:.2f}x; "
        f"all particles in each forward against one at a time: "
        f"{result['batched_speedup']:.2f}x (identical utilities). Measured side by side in one "
        "run; \"forward passes\" is wall time inside the model's top-level forward calls, "
        "so the rest is swaps, scoring bookkeeping, the swarm update and the checkpoint.\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
