"""The engine against the CPU's compute floor: seconds per particle-evaluation, and where the
time goes.

SmolLM2-135M-Instruct with three shipped experts (LoRA on layers 14-29, so layers 0-13 are the
frozen trunk, memoised), one resident evaluator, the tasks' dev items. For each task and
scoring mode:

- FLOPs the work needs, counted from the items' tokens as the utility builds them: every linear
  layer (LoRA factors included) of layers 14-29 for every token (all 30 layers for the first
  particle, which fills the trunk memo), attention over the keys each token reads, the LM head
  only on the columns whose log-probability is read; no padding, a shared prompt head once;
- a plain `torch.matmul` of the model's shapes (512x576 by 576x1536) timed right before and
  after every timed evaluation, in the same process: the floor is the FLOPs at that rate;
- seconds for the first particle (trunk memo filled) and for each next one (steady state),
  achieved GFLOP/s and the fraction of the floor (floor seconds / seconds);
- a torch.profiler breakdown of one steady particle (layer matmuls, LM head, log-softmax,
  attention, elementwise ops, copies, the memo's key hashing, and the rest: Python);
- before/after, side by side in this run: the two-pass option scoring (question pass, then
  the options on a copy of its cache) against the packed one (generation.packs);
- several particles per forward (multiplex.ParticleBatch) against one each, on the CPU;
- model.dtype int8 and bfloat16 against float32: speed, and agreement of per-item choices and
  accuracy with float32 on the dev sets (paired bootstrap interval).

Run: python bench/engine_floor.py [--items 200] [--quick] [--threads N] [--sections floor
profile compare multiplex dtype] [--tasks ...] [--modes ...]. Writes docs/bench_engine_floor.md
and .json; `--render` rewrites the page from the .json (one run, or {"runs": [...]} of several).
On a machine shared with other work, `--threads 1` (several threads stall there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from modelswarms.config import ExpertsConfig, ModelConfig, utility_config
from modelswarms.evaluation.data.items import load_items
from modelswarms.evaluation.engine import generation
from modelswarms.evaluation.engine.batching import Batching
from modelswarms.evaluation.engine.trunk import decoder_layers
from modelswarms.evaluation.evaluator import ResidentEvaluator
from modelswarms.evaluation.objectives.utilities import build_utility
from modelswarms.runs.session import open_pool
from modelswarms.stats import paired_bootstrap

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "data" / "eval"
EXPERTS = ["gsm8k_solutions", "medqa", "squad"]
LONG = Batching(16, 4096)  # the engine's defaults
SHORT = Batching(256, 16384)  # examples/demo.yaml's: short cloze rows, wide batches
# task: (where its items come from, cloze prompt template, batch limits)
TASKS = {
    "hellaswag": ("shared:hellaswag.json", "{question}", LONG),
    "capitals": ("file:examples/capitals.json", None, SHORT),
    "arc_easy": ("olmo:arc_easy", None, SHORT),
    "sciq": ("olmo:sciq", None, SHORT),
    "piqa": ("olmo:piqa", None, SHORT),
}
MATMUL = (512, 576, 1536)


# ------------------------------------------------------------------------------- items

def load_task(name: str, items: int) -> list[dict] | str:
    """The task's first `items` dev items, or why it is skipped."""
    where, _, _ = TASKS[name]
    kind, _, ref = where.partition(":")
    if kind == "shared":
        path = EVAL / ref
        if not path.is_file():
            return f"skipped: {path} is not there (the shared task data)"
        return load_items(path, "dev", limit=items)
    if kind == "file":
        return load_items(ROOT / ref, "dev", limit=items)
    try:
        from modelswarms.evaluation.data import olmo
    except ImportError:
        return "skipped: modelswarms.evaluation.data.olmo is not on this branch"
    try:
        return olmo.target_splits(ref, dev=items, test=0)["dev"]
    except Exception as err:  # the package missing: DataError with the install line
        return f"skipped: {err}"


def utility_for(task: str, mode: str):
    _, template, _ = TASKS[task]
    fields = {"type": "multiple_choice", "scoring": mode}
    if template and mode in ("cloze", "cloze_norm"):
        fields["prompt"] = template
    return build_utility(utility_config(**fields))


# ------------------------------------------------------------------------------- FLOPs

class Recorder:
    """Records the token rows the utility hands the engine (one call per evaluation)."""

    def __init__(self):
        self.calls: list[tuple[str, list, list | None]] = []
        self._orig = {n: getattr(generation, n) for n in ("option_logprobs",
                                                         "next_token_logprobs")}

    def __enter__(self):
        def wrap(name):
            orig = self._orig[name]

            def run(model, prompts, extra, **kw):
                self.calls.append((name, [list(p) for p in prompts],
                                   [[list(c) for c in o] for o in extra]
                                   if name == "option_logprobs" else None))
                return orig(model, prompts, extra, **kw)
            return run

        for n in self._orig:
            setattr(generation, n, wrap(n))
        return self

    def __exit__(self, *exc):
        for n, f in self._orig.items():
            setattr(generation, n, f)


def shapes(model) -> dict:
    """Per-token multiply-adds of each decoder layer's linear layers (LoRA factors and
    int8 layers included), the head's, and the attention geometry."""
    inner, layers = decoder_layers(model)

    def linear_macs(module) -> int:
        total = 0
        for m in module.modules():
            if hasattr(m, "in_features") and hasattr(m, "out_features") and \
                    not any(True for _ in m.children()):
                total += m.in_features * m.out_features
        return total

    c = model.config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return {"layer_macs": [linear_macs(layer) for layer in layers], "hidden": c.hidden_size,
            "vocab": c.vocab_size, "heads": heads, "head_dim": head_dim}


def count_flops(call, geo: dict, first_layer: int) -> dict:
    """FLOPs of one particle-evaluation of the recorded call: steady (layers >= k) and
    first (all layers), tokens, read columns."""
    name, prompts, options = call
    cut = generation._common_prefix(prompts) if len(prompts) > 1 else 0
    if name == "option_logprobs":
        cut = min(cut, min(len(p) for p in prompts) - 1)
    else:
        cut = min(cut, min(len(p) for p in prompts) - 1)
    cut = cut if cut >= generation.MIN_SHARED_PREFIX else 0
    keys: list[int] = list(range(1, cut + 1))  # keys each token reads (itself included)
    reads = 0
    for i, p in enumerate(prompts):
        keys += [t + 1 for t in range(cut, len(p))]
        reads += 1
        if options is not None:
            for o in options[i]:
                keys += [len(p) + t + 1 for t in range(len(o) - 1)]
                reads += len(o) - 1
    tokens = len(keys)
    attn_per_key = 4 * geo["heads"] * geo["head_dim"]  # QK and PV, multiply-add = 2 FLOPs
    upper = geo["layer_macs"][first_layer:]
    every = geo["layer_macs"]
    head = 2 * geo["hidden"] * geo["vocab"] * reads
    steady = 2 * tokens * sum(upper) + attn_per_key * sum(keys) * len(upper) + head
    first = 2 * tokens * sum(every) + attn_per_key * sum(keys) * len(every) + head
    return {"tokens": tokens, "reads": reads, "prefix": cut, "items": len(prompts),
            "steady_flops": steady, "first_flops": first, "head_flops": head,
            "attention_flops": attn_per_key * sum(keys) * len(upper)}


# ------------------------------------------------------------------------------ timing

def matmul_rate(seconds: float = 0.4) -> float:
    m, k, n = MATMUL
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.matmul(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start)


def timed_eval(ev, vector, items, utility):
    """(ItemScores, seconds, matmul FLOP/s measured right before and after)."""
    before = matmul_rate()
    start = time.perf_counter()
    result = ev.score_many(vector[None], items, utility)[0]
    seconds = time.perf_counter() - start
    return result, seconds, (before + matmul_rate()) / 2


def run_particles(ev, vectors, items, utility, batching: Batching):
    """First particle (memo emptied first), then the others: steady state."""
    ev.batching = batching
    if ev.trunk is not None:
        ev.trunk.clear()
    out = []
    for v in vectors:
        out.append(timed_eval(ev, v, items, utility))
    return out


# ----------------------------------------------------------------------------- profile

CATEGORIES = [
    ("matmuls (layers and LM head)", ("aten::mm", "aten::addmm", "aten::bmm",
                                     "quantized::linear_dynamic", "aten::_weight_int8pack_mm")),
    ("log-sum-exp / log-softmax", ("aten::logsumexp", "aten::_log_softmax", "aten::exp",
                                   "aten::exp_", "aten::amax", "aten::sub", "aten::sub_",
                                   "aten::maximum", "aten::log")),
    ("attention", ("aten::_scaled_dot_product_flash_attention_for_cpu",
                   "aten::_scaled_dot_product_attention_math")),
    ("norms, rotary, SiLU, residuals, LoRA scaling", (
        "aten::mul", "aten::add", "aten::pow", "aten::mean", "aten::rsqrt", "aten::silu",
        "aten::neg", "aten::cat", "aten::add_", "aten::mul_", "aten::div", "aten::cos",
        "aten::sin", "aten::embedding")),
    ("copies, indexing, masks", ("aten::copy_", "aten::index", "aten::index_select",
                                 "aten::clone", "aten::repeat", "aten::gather", "aten::where",
                                 "aten::bitwise_and", "aten::bitwise_or", "aten::eq",
                                 "aten::fill_", "aten::tril", "aten::zero_", "aten::index_add_",
                                 "aten::_to_copy", "aten::repeat_interleave", "aten::cumsum",
                                 "aten::ones", "aten::full", "aten::zeros", "aten::arange",
                                 "aten::empty", "aten::item", "aten::_local_scalar_dense",
                                 "aten::all", "aten::sort", "aten::argsort", "aten::sum",
                                 "aten::clamp", "aten::index_put_", "aten::nonzero",
                                 "aten::searchsorted", "aten::ge", "aten::lt")),
]


def profile(ev, vector, items, utility) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ev.score_many(vector[None], items, utility)  # steady: the memo holds every input
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        ev.score_many(vector[None], items, utility)
        wall = time.perf_counter() - start
    selfs: dict[str, float] = defaultdict(float)
    totals: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        selfs[e.key] += e.self_cpu_time_total / 1e6
        totals[e.key] += e.cpu_time_total / 1e6
    out = {}
    claimed = set()
    for name, ops in CATEGORIES:
        out[name] = sum(selfs.get(o, 0.0) for o in ops)
        claimed |= set(ops)
    out["other ops"] = sum(v for k, v in selfs.items() if k not in claimed and
                           k.startswith("aten::"))
    out["memo key hashing (Python, numpy)"] = totals.get("modelswarms.memo_key", 0.0)
    out["Python and the rest"] = max(0.0, wall - sum(out.values()))
    # not a share of its own: the packed way's LM head (its matmul, log-sum-exp, picks)
    out["of all these: inside the LM head"] = totals.get("modelswarms.head", 0.0)
    out["wall"] = wall
    return out


# --------------------------------------------------------------------------------- main

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def agreement(a, b) -> dict:
    same = sum(x == y for x, y in zip(a.predictions, b.predictions, strict=True))
    diff = paired_bootstrap(b.scores, a.scores)
    return {"choices_same": same / len(a.predictions), "acc_fp32": a.value, "acc": b.value,
            "diff": diff["mean"], "low": diff["low"], "high": diff["high"]}


def main() -> None:  # noqa: C901 - one linear script
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--particles", type=int, default=3, help="first + steady ones per row")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--modes", nargs="+", default=["cloze_norm", "cloze", "letter"])
    ap.add_argument("--sections", nargs="+",
                    default=["floor", "profile", "compare", "multiplex", "dtype"])
    ap.add_argument("--dtype-mode", default="cloze_norm",
                    help="the scoring mode of the dtype section; `targets`: each task's own, "
                    "as docs/bench_targets.json chose it for the evidence run")
    ap.add_argument("--quick", action="store_true", help="64 items, 2 particles")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                    "torch's, the machine's cores)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_engine_floor"))
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the page from the .json of an earlier run")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render:  # one run, or {"runs": [...]} put together from several
        saved = json.loads(out.with_suffix(".json").read_text())
        pages = []
        for result in saved.get("runs", [saved]):
            args.quick, args.items = False, result["items"]
            args.threads, args.command = result.get("threads"), result.get("command")
            pages.append(render(result, args, title=not pages))
        out.with_suffix(".md").write_text("\n".join(pages))
        print(out.with_suffix(".md").read_text())
        return
    if args.quick:
        args.items, args.particles = 64, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pool, space = open_pool(ExpertsConfig(paths=[str(ROOT / "experts" / "smollm2" / e)
                                                  for e in EXPERTS]))
    ev = ResidentEvaluator(pool, space, ModelConfig(particles_per_forward=1))
    vectors = space.stack([x.tensors for x in pool.experts], device=ev.device)
    vectors = vectors[: args.particles]
    model = ev.backend.model
    geo = shapes(model)
    k = ev.trunk.k if ev.trunk is not None else 0
    threads = torch.get_num_threads()
    result = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                         f"{threads} threads, float32",
              "load_average_start": os.getloadavg(), "items": args.items,
              "threads": args.threads,
              "command": "python bench/engine_floor.py " + " ".join(sys.argv[1:]),
              "experts": EXPERTS, "trunk_layers": k, "rows": [], "profiles": {},
              "compare": [], "multiplex": [], "dtype": [], "skipped": {},
              "dtype_mode": args.dtype_mode}
    tasks = {}
    for t in args.tasks:
        got = load_task(t, args.items)
        if isinstance(got, str):
            result["skipped"][t] = got
            print(t, got, flush=True)
        else:
            tasks[t] = got
    print(f"matmul {MATMUL}: {matmul_rate(1.0) / 1e9:.0f} GFLOP/s", flush=True)

    def record(task, mode):
        utility = utility_for(task, mode)
        with Recorder() as rec:
            runs = run_particles(ev, vectors, tasks[task], utility, TASKS[task][2])
        flops = count_flops(rec.calls[0], geo, k)
        first, steady = runs[0], runs[1:]
        s = statistics.mean(r[1] for r in steady)
        rate = statistics.mean(r[2] for r in steady)
        row = {"task": task, "mode": mode, **flops, "first_s": first[1], "steady_s": s,
               "matmul_gflops": rate / 1e9, "floor_s": flops["steady_flops"] / rate,
               "first_floor_s": flops["first_flops"] / first[2],
               "gflops": flops["steady_flops"] / s / 1e9, "accuracy": first[0].value}
        row["fraction"] = row["floor_s"] / s
        print(json.dumps({k2: (round(v, 3) if isinstance(v, float) else v)
                          for k2, v in row.items()}), flush=True)
        return row, utility

    if "floor" in args.sections:
        for task in tasks:
            for mode in args.modes:
                if mode == "cloze" and task not in ("hellaswag", "capitals"):
                    continue  # the same forward as cloze_norm: two tasks show it
                row, _ = record(task, mode)
                result["rows"].append(row)

    if "profile" in args.sections:
        for task in [t for t in ("hellaswag", "capitals") if t in tasks]:
            ev.batching = TASKS[task][2]
            prof = profile(ev, vectors[-1], tasks[task], utility_for(task, "cloze_norm"))
            result["profiles"][task] = prof
            print(task, {n: round(v, 2) for n, v in prof.items()}, flush=True)

    if "compare" in args.sections:
        for task in [t for t in ("hellaswag", "capitals") if t in tasks]:
            utility = utility_for(task, "cloze_norm")
            ev.batching = TASKS[task][2]
            times = {"two-pass": [], "packed": []}
            preds = {}
            packs = generation.packs
            for rnd in range(2):  # alternate, so a machine that warms favours neither
                order = ["two-pass", "packed"] if rnd == 0 else ["packed", "two-pass"]
                for way in order:
                    generation.packs = packs if way == "packed" else (lambda m: False)
                    try:
                        if rnd == 0 and ev.trunk is not None:
                            ev.trunk.clear()
                            ev.score_many(vectors[0][None], tasks[task], utility)
                        r, s, _ = timed_eval(ev, vectors[-1], tasks[task], utility)
                    finally:
                        generation.packs = packs
                    times[way].append(s)
                    preds[way] = r
            same = preds["two-pass"].scores == preds["packed"].scores and \
                preds["two-pass"].predictions == preds["packed"].predictions
            # the option log-likelihoods themselves, both ways, on the same rows
            with Recorder() as rec:
                ev.score_many(vectors[-1][None], tasks[task][:32], utility)
            _, prompts, options = rec.calls[0]
            ev.backend.load(vectors[-1])
            kw = {"pad_id": ev.tokenizer.pad_token_id or 0, "batch_size": 16}
            a = generation.option_logprobs(model, prompts, options, packed=False, **kw)[0]
            b = generation.option_logprobs(model, prompts, options, packed=True, **kw)[0]
            gap = max(abs(x - y) for ra, rb in zip(a, b, strict=True)
                      for x, y in zip(ra, rb, strict=True))
            row = {"task": task, "two_pass_s": statistics.mean(times["two-pass"]),
                   "packed_s": statistics.mean(times["packed"]), "same_scores": same,
                   "max_logprob_gap": gap, "times": times}
            result["compare"].append(row)
            print(json.dumps(row), flush=True)

    if "multiplex" in args.sections:
        for task in [t for t in ("capitals", "hellaswag") if t in tasks]:
            utility = utility_for(task, "cloze_norm")
            ev.batching = TASKS[task][2]
            group = vectors.repeat(2, 1)[: max(2, min(3, len(vectors)))]
            per: dict[int, list] = {1: [], len(group): []}
            results = {}
            ev.score_many(group, tasks[task], utility)  # memo filled
            for kk in (1, len(group), len(group), 1):  # alternated: load changes neither
                ev.particles_per_forward = kk
                start = time.perf_counter()
                results[kk] = ev.score_many(group, tasks[task], utility)
                per[kk].append((time.perf_counter() - start) / len(group))
            ev.particles_per_forward = 1
            same = all(x.scores == y.scores for x, y in zip(results[1], results[len(group)],
                                                            strict=True))
            row = {"task": task, "k": len(group), "one_each_s": statistics.mean(per[1]),
                   "together_s": statistics.mean(per[len(group)]), "same_scores": same}
            result["multiplex"].append(row)
            print(json.dumps(row), flush=True)

    if "dtype" in args.sections:
        base = {}
        chosen = json.loads((ROOT / "docs" / "bench_targets.json").read_text())["targets"] \
            if args.dtype_mode == "targets" else {}

        def mode_of(task: str) -> str:
            return chosen[task]["scoring"] if task in chosen else args.dtype_mode

        for task in tasks:
            utility = utility_for(task, mode_of(task))
            ev.batching = TASKS[task][2]
            ev.score_many(vectors[0][None], tasks[task], utility)
            r, s, _ = timed_eval(ev, vectors[-1], tasks[task], utility)
            base[task] = (r, s)
        del ev
        for dtype in ("bfloat16", "int8"):
            other = ResidentEvaluator(pool, space, ModelConfig(dtype=dtype,
                                                               particles_per_forward=1))
            for task in tasks:
                utility = utility_for(task, mode_of(task))
                other.batching = TASKS[task][2]
                other.score_many(vectors[0][None].to(other.backend.flat.dtype), tasks[task],
                                 utility)
                r, s, _ = timed_eval(other, vectors[-1].to(other.backend.flat.dtype),
                                     tasks[task], utility)
                row = {"dtype": dtype, "task": task, "mode": mode_of(task),
                       "fp32_s": base[task][1], "s": s,
                       **agreement(base[task][0], r)}
                result["dtype"].append(row)
                print(json.dumps(row), flush=True)
            del other

    result["load_average_end"] = os.getloadavg()
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.command = result["command"]  # the page names the command as it was typed
    out.with_suffix(".md").write_text(render(result, args))
    print(out.with_suffix(".md").read_text())


def render(r: dict, args, title: bool = True) -> str:
    cmd = getattr(args, "command", None) or "python bench/engine_floor.py" + (
        " --quick" if args.quick else f" --items {args.items}") + \
        (f" --threads {args.threads}" if args.threads else "")
    lines = [
        ("# Lower precision against float32" if not r["rows"] and r["dtype"] else
         "# The engine against the CPU's compute floor") if title else "## Another run", "",
        f"`{cmd}` on {r['machine']}; SmolLM2-135M-Instruct, experts "
        f"{', '.join(r['experts'])} (LoRA on layers {r['trunk_layers']}-29: layers "
        f"0-{r['trunk_layers'] - 1} are the memoised trunk); up to {r['items']} dev items a "
        f"task. Load average {r['load_average_start'][0]:.1f} at the start and "
        f"{r['load_average_end'][0]:.1f} at the end (2 cores: other work shared the machine).",
        "",
    ]
    if r["rows"]:
        lines += [
            "Floor: the FLOPs the work needs (layers 14-29 for every token, all 30 for the "
            "first particle; attention over the keys each token reads; the LM head on read "
            "columns only; no padding) at the rate of a plain `torch.matmul` of 512x576 by "
            "576x1536 timed right before and after each evaluation.", "",
            "| task | mode | items | tokens | head rows | GFLOP | first particle s (floor) | "
            "steady s | floor s | GFLOP/s | matmul GFLOP/s | fraction of floor |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for x in r["rows"]:
            lines.append(
                f"| {x['task']} | {x['mode']} | {x['items']} | {x['tokens']} | {x['reads']} | "
                f"{x['steady_flops'] / 1e9:.0f} | {x['first_s']:.1f} ({x['first_floor_s']:.1f})"
                f" | {x['steady_s']:.2f} | {x['floor_s']:.2f} | {x['gflops']:.0f} | "
                f"{x['matmul_gflops']:.0f} | {x['fraction']:.2f} |")
        lines.append("")
    if r["profiles"]:
        names = [n for n in next(iter(r["profiles"].values())) if n != "wall"]
        tasks = list(r["profiles"])
        lines += ["Where one steady particle's time goes (torch.profiler, seconds of the "
                  "main thread; the profiler's own cost is in the wall time):", "",
                  "| | " + " | ".join(tasks) + " |", "| --- |" + " ---: |" * len(tasks)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(f"{r['profiles'][t][n]:.2f}"
                                                  for t in tasks) + " |")
        lines.append("| wall | " + " | ".join(f"{r['profiles'][t]['wall']:.2f}"
                                                for t in tasks) + " |")
        lines.append("")
    if r["compare"]:
        lines += ["Before and after, side by side (cloze_norm, steady particle, mean of two "
                  "alternated runs each):", "",
                  "| task | two-pass s | packed s | speed-up | same per-item scores | "
                  "largest log-likelihood gap |", "| --- | ---: | ---: | ---: | --- | ---: |"]
        for x in r["compare"]:
            lines.append(f"| {x['task']} | {x['two_pass_s']:.2f} | {x['packed_s']:.2f} | "
                         f"{x['two_pass_s'] / x['packed_s']:.2f}x | "
                         f"{'yes' if x['same_scores'] else 'NO'} | "
                         f"{x['max_logprob_gap']:.1e} |")
        lines.append("")
    if r["multiplex"]:
        lines += ["Several particles per forward on this CPU (seconds per particle, memo "
                  "filled):", "", "| task | particles | one each s | together s | same scores |",
                  "| --- | ---: | ---: | ---: | --- |"]
        for x in r["multiplex"]:
            lines.append(f"| {x['task']} | {x['k']} | {x['one_each_s']:.2f} | "
                         f"{x['together_s']:.2f} | {'yes' if x['same_scores'] else 'NO'} |")
        lines.append("")
    if r["dtype"]:
        mode = r.get("dtype_mode", "cloze_norm")
        scored = "each task in its own mode" if mode == "targets" else mode
        lines += [f"Lower precision against float32 ({scored}, one steady particle; accuracy "
                  "difference with a paired bootstrap 95% interval over the items):",
                  "", "| dtype | task | mode | float32 s | s | choices as float32 | "
                  "accuracy fp32 | accuracy | difference [95%] |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for x in r["dtype"]:
            lines.append(f"| {x['dtype']} | {x['task']} | {x.get('mode', mode)} | "
                         f"{x['fp32_s']:.2f} | {x['s']:.2f} | "
                         f"{x['choices_same']:.1%} | {x['acc_fp32']:.3f} | {x['acc']:.3f} | "
                         f"{x['diff']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}] |")
        lines.append("")
    steady = {(x["task"], x["mode"]): x for x in r["rows"]}
    targets = [(t, m, goal) for t, m, goal in (("hellaswag", "cloze_norm", 1.5),
                                                 ("capitals", "cloze_norm", 2.0))
               if (t, m) in steady]
    if targets:
        lines += ["Against the issue's targets (steady particle, seconds / floor seconds): " +
                  "; ".join(f"{t} {m}: {1 / steady[(t, m)]['fraction']:.2f}x the floor "
                            f"(target {goal}x)" for t, m, goal in targets) + ".", ""]
    lines += [] if not (title and r["rows"]) else [
        "How to read it. The floor is the rate of one plain matmul of the model's largest "
        "shape; the layers' own matmuls (576x576 projections, rank-4 LoRA factors, 1024-"
        "vocabulary head tiles) run below that rate even when nothing else costs, so a "
        "fraction of 1 is out of reach. The matmul rate is measured right before and after "
        "each evaluation because the machine's load changes the rate from minute to minute; "
        "a load average far above the core count makes every figure noisier, and makes "
        "several torch threads per process stall at every parallel region (run it with "
        "`--threads 1` then: one thread's rate and one thread's seconds).", ""]
    for t, why in r["skipped"].items():
        lines.append(f"- {t}: {why}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
