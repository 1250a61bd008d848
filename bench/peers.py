"""Peers side by side: the cost of evaluating one merge candidate three ways, in one process on
the same items, model and answers.

- ours: one particle-evaluation of a resident session (`Scorer.score_many`, utility `lm_eval`
  on the task below, so our engine scores lm-eval's own prompts and metric); alone, and per
  particle when a swarm iteration's candidates are scored together;
- lm-eval: lm-evaluation-harness's `HFLM` around a transformers model already loaded (the
  candidate's tensors copied into it), then `simple_evaluate` on the task;
- mergekit-evolve's way (its OnDiskMergeEvaluator): mergekit's `run_merge` writes the merged
  model to disk, lm-eval's `simple_evaluate(model="hf")` loads and evaluates it.

The candidates are linear merges (mergekit `linear`, weights summing to 1) of full-model
experts, SmolLM2-135M-Instruct with one starter-pool LoRA each merged in (written once, float32),
so all three compute the same model. The task: the demo's capitals dev items as an lm-eval
multiple-choice task (acc_norm, "Question: ...\\nAnswer:"), local JSONL. Answers are checked
per item.

lm-eval and mergekit live in their own venv (mergekit pins what ours does not):

    python -m venv VENV && VENV/bin/pip install torch==2.13.0
    VENV/bin/pip install -e ".[lm-eval]" && VENV/bin/pip install --no-deps mergekit
    VENV/bin/pip install <whatever `pip check` says mergekit still needs>
    VENV/bin/python bench/peers.py [--experts 3] [--candidates 3] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TASK = "capitals_peers"


def full_experts(base: str, names: list[str], folder: Path) -> list[Path]:
    """Each LoRA expert merged into the base, saved as a float32 model folder (once)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = []
    for name in names:
        target = folder / name
        if not (target / "config.json").exists():
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            merged = PeftModel.from_pretrained(model, ROOT / "experts" / "smollm2" / name)
            merged.merge_and_unload().save_pretrained(target)
            AutoTokenizer.from_pretrained(base).save_pretrained(target)
        out.append(target)
    return out


def write_task(folder: Path, items: list[dict]) -> None:
    docs = [{"question": it["question"], "choices": list(it["choices"].values()),
             "answer": list(it["choices"]).index(it["answer"])} for it in items]
    data = folder / f"{TASK}.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump({
        "task": TASK, "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(data)}},
        "validation_split": "validation", "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc_norm", "aggregation": "mean",
                         "higher_is_better": True}]}, sort_keys=False))


def lm_eval_scores(result: dict) -> list[float]:
    rows = sorted(result["samples"][TASK], key=lambda s: s["doc_id"])
    return [float(s["acc_norm"]) for s in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experts", type=int, default=3, help="first experts of the starter pool")
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="lm-eval's batch size")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "peers")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_peers.md")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelswarms.config import parse_config
    from modelswarms.models import smollm2_path
    from modelswarms.runs.session import Session

    args.work.mkdir(parents=True, exist_ok=True)
    base = str(smollm2_path())
    names = sorted(p.name for p in (ROOT / "experts" / "smollm2").iterdir()
                   if p.is_dir())[: args.experts]
    experts = full_experts(base, names, args.work / "experts")
    items = json.loads((ROOT / "examples" / "capitals.json").read_text())["dev"]
    write_task(args.work, items)
    manager = TaskManager(include_path=str(args.work), include_defaults=False)

    # the tensors the LoRAs changed; every other tensor is the base's in every expert
    raw = {"experts": {"paths": [str(p) for p in experts],
                       "include": ["*layers.1[4-9].self_attn.*", "*layers.2?.self_attn.*"]},
           "utility": {"type": "lm_eval", "tasks": [TASK], "include_path": [str(args.work)],
                       "metric": "acc_norm", "max_dev": len(items)},
           "output": {"evaluate_test": False}}
    cfg = parse_config(raw)
    session = Session.open(cfg, need_test=False)
    space = session.space
    gen = torch.Generator().manual_seed(0)
    coefs = torch.rand(args.candidates, len(experts), generator=gen) + 0.2
    coefs = coefs / coefs.sum(1, keepdim=True)
    vectors = coefs.to(session.experts) @ session.experts
    print(f"{len(items)} items, {len(experts)} experts, {space.dim} searched values; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; lm-eval "
          f"{version('lm_eval')}, mergekit {version('mergekit')}", flush=True)

    session.score(session.experts[0], session.dev)  # warm: the engine's first-use costs
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base)
    params = dict(hf.named_parameters())
    rows: list[dict] = []
    for k in range(args.candidates):
        row: dict = {"candidate": k, "weights": [round(float(c), 4) for c in coefs[k]]}
        start, cpu = time.perf_counter(), time.process_time()
        ours = session.score(vectors[k], session.dev)
        row["ours_s"], row["ours_cpu"] = time.perf_counter() - start, time.process_time() - cpu

        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for name, t in space.unflatten(vectors[k]).items():
                params[name].copy_(t)
        result = simple_evaluate(model=HFLM(pretrained=hf, tokenizer=tok, device="cpu",
                                            batch_size=args.batch_size),
                                 tasks=[TASK], task_manager=manager, log_samples=True,
                                 bootstrap_iters=0)
        row["lm_eval_s"], row["lm_eval_cpu"] = (time.perf_counter() - start,
                                                time.process_time() - cpu)
        lm_scores = lm_eval_scores(result)

        merged = args.work / f"merged_{k}"
        shutil.rmtree(merged, ignore_errors=True)
        mk = MergeConfiguration.model_validate({
            "merge_method": "linear", "dtype": "float32", "out_dtype": "float32",
            "parameters": {"normalize": True},
            "models": [{"model": str(p), "parameters": {"weight": float(c)}}
                       for p, c in zip(experts, coefs[k], strict=True)]})
        start, cpu = time.perf_counter(), time.process_time()
        run_merge(mk, str(merged), options=MergeOptions(cuda=False, copy_tokenizer=True,
                                                         lazy_unpickle=False))
        mk_result = simple_evaluate(model="hf", model_args={"pretrained": str(merged),
                                                            "dtype": "float32",
                                                            "device": "cpu"},
                                    batch_size=args.batch_size, tasks=[TASK],
                                    task_manager=manager, log_samples=True, bootstrap_iters=0)
        row["mergekit_s"], row["mergekit_cpu"] = (time.perf_counter() - start,
                                                  time.process_time() - cpu)
        shutil.rmtree(merged, ignore_errors=True)
        mk_scores = lm_eval_scores(mk_result)
        row["accuracy"] = {"ours": ours.value, "lm_eval": statistics.fmean(lm_scores),
                           "mergekit": statistics.fmean(mk_scores)}
        row["agree"] = {"lm_eval": sum(a == b for a, b in zip(ours.scores, lm_scores,
                                                              strict=True)),
                        "mergekit": sum(a == b for a, b in zip(ours.scores, mk_scores,
                                                               strict=True))}
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(args, rows, None, len(items), len(experts), space.dim)  # a kill keeps these

    # a swarm iteration scores its candidates together
    fresh = vectors + 1e-3 * torch.randn(vectors.shape, generator=gen).to(vectors)
    start = time.perf_counter()
    session.score_many(fresh, session.dev)
    batched = (time.perf_counter() - start) / args.candidates
    write(args, rows, batched, len(items), len(experts), space.dim)


def write(args, rows, batched: float | None, n_items, n_experts, dim) -> None:
    med = {k: statistics.median(r[k] for r in rows) for k in ("ours_s", "lm_eval_s",
                                                               "mergekit_s")}
    agree = {k: sum(r["agree"][k] for r in rows) for k in ("lm_eval", "mergekit")}
    total = n_items * len(rows)
    lines = [
        "# Peers side by side (bench/peers.py)", "",
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"lm-eval {version('lm_eval')}, mergekit {version('mergekit')}. SmolLM2-135M-Instruct, "
        f"{n_experts} full-model experts (starter-pool LoRAs merged in), linear merges of them "
        f"({dim} searched values: the LoRA-touched projections of layers 14-29); the demo's "
        f"{n_items} capitals dev items as an lm-eval multiple-choice task (acc_norm); lm-eval "
        f"batch size {args.batch_size}. One process, the three side by side per candidate "
        "(timings on a shared machine are noisy).", "",
        f"Command: `VENV/bin/python bench/peers.py --experts {args.experts} --candidates "
        f"{args.candidates} --batch-size {args.batch_size}`", "",
        "Seconds are wall (CPU seconds of this process in brackets: a busy shared machine "
        "stretches wall time, not CPU time).", "",
        "| candidate | ours s | lm-eval HFLM s | mergekit-evolve way s | accuracy ours / "
        "lm-eval / mergekit | items agreeing (lm-eval, mergekit) |",
        "| ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        a = r["accuracy"]
        lines.append(f"| {r['candidate']} | {r['ours_s']:.2f} ({r['ours_cpu']:.2f}) | "
                     f"{r['lm_eval_s']:.2f} ({r['lm_eval_cpu']:.2f}) | "
                     f"{r['mergekit_s']:.2f} ({r['mergekit_cpu']:.2f}) | "
                     f"{a['ours']:.4f} / {a['lm_eval']:.4f} / "
                     f"{a['mergekit']:.4f} | {r['agree']['lm_eval']}/{n_items}, "
                     f"{r['agree']['mergekit']}/{n_items} |")
    together = "" if batched is None else (
        f", {batched:.2f} s per candidate when {args.candidates} are scored together (a "
        f"swarm iteration: lm-eval {med['lm_eval_s'] / batched:.1f}x that, mergekit-evolve's "
        f"way {med['mergekit_s'] / batched:.1f}x)")
    lines += [
        "", f"Median per candidate: ours {med['ours_s']:.2f} s alone{together}; lm-eval "
        f"{med['lm_eval_s']:.2f} s ({med['lm_eval_s'] / med['ours_s']:.1f}x ours alone); "
        f"mergekit-evolve's way {med['mergekit_s']:.2f} s "
        f"({med['mergekit_s'] / med['ours_s']:.1f}x). Per-item scores agree on "
        f"{agree['lm_eval']}/{total} (lm-eval) and {agree['mergekit']}/{total} (mergekit) "
        "item-candidates.", ""]
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "batched_s": batched, "median": med}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
