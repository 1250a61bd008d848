"""The evaluation engine against plain `model.generate` in batches of 10 (the reference way).

SmolLM2-135M-Instruct, side by side in one process on whatever device is present:
- multiple choice on MMLU dev: ours by log-likelihood, ours by generate-and-parse (10 new
  tokens, as the reference), and the reference way (batches of 10 in file order, left
  padded by the tokenizer, `model.generate(max_new_tokens=10)`);
- GSM8K exact match: ours against the reference way, both greedy with the same token limit.

Throughput is counted in tokens the model processed (prompt tokens + generated tokens) per
second of wall time, and items per second; the predictions of ours and the reference's are
compared (equal prompts and greedy decoding should give equal answers).

Run: python bench/engine_throughput.py [--mc-items 200] [--gsm-items 40] [--gsm-tokens 128]
Writes docs/bench_engine_throughput.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from modelswarms.evaluation.data.items import load_items
from modelswarms.evaluation.data.prompts import encode, multiple_choice_prompt, qa_prompt, render
from modelswarms.evaluation.engine import generation
from modelswarms.evaluation.engine.backend import load_causal_lm, load_tokenizer, pick_device
from modelswarms.evaluation.objectives.extract import extract_letter, extract_number
from modelswarms.models import smollm2_path
from modelswarms.testing import make_utility

# bench/ is not a package: its shared module is importable once this folder is on the path
# (`python bench/X.py` puts it there; runpy, as the tests use, does not)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_way import reference_generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "data" / "eval"


GENERATED = {"tokens": 0}
_generate = generation.generate


def _counting_generate(*args, **kwargs):
    out = _generate(*args, **kwargs)
    GENERATED["tokens"] += sum(len(x) for per_particle in out for x in per_particle)
    return out


generation.generate = _counting_generate  # the utilities call it through the module


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def row(name: str, seconds: float, tokens: int, items: int, value: float) -> dict:
    return {"name": name, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "items_per_s": items / seconds, "utility": value}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mc-items", type=int, default=200)
    ap.add_argument("--gsm-items", type=int, default=40)
    ap.add_argument("--gsm-tokens", type=int, default=128)
    args = ap.parse_args()
    if not (EVAL / "mmlu.json").exists():
        raise SystemExit(f"needs {EVAL} (the shared task data)")
    device = pick_device("auto")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    path = str(smollm2_path())
    model, tok = load_causal_lm(path, dtype, device), load_tokenizer(path)
    rows, agreement = [], {}

    mmlu = load_items(EVAL / "mmlu.json", "dev", limit=args.mc_items)
    texts = [render(tok, multiple_choice_prompt(it), True) + "The answer is" for it in mmlu]
    prompt_tokens = sum(len(encode(tok, t, True)) for t in texts)
    ll = make_utility(type="multiple_choice", batch_size=16)
    r, s = timed(lambda: ll.score(model, tok, mmlu))
    rows.append(row("MMLU, ours, log-likelihood", s, prompt_tokens, len(mmlu), r.value))
    gen = make_utility(type="multiple_choice", scoring="generate",
                                      max_new_tokens=10, batch_size=16)
    GENERATED["tokens"] = 0
    g, s = timed(lambda: gen.score(model, tok, mmlu))
    rows.append(row("MMLU, ours, generate-and-parse", s, prompt_tokens + GENERATED["tokens"],
                    len(mmlu), g.value))
    (ref, tokens), s = timed(lambda: reference_generate(model, tok, texts, 10))
    ref_preds = [extract_letter(t, list(it["choices"])) or "" for t, it in
                 zip(ref, mmlu, strict=True)]
    ref_value = sum(p == it["answer"] for p, it in zip(ref_preds, mmlu, strict=True)) / len(mmlu)
    rows.append(row("MMLU, reference way (model.generate, batches of 10)", s, tokens, len(mmlu),
                    ref_value))
    agreement["mmlu_generate"] = sum(a == b for a, b in zip(ref_preds, g.predictions,
                                                            strict=True)) / len(mmlu)

    gsm = load_items(EVAL / "gsm8k.json", "dev", limit=args.gsm_items)
    qtexts = [render(tok, qa_prompt(it), True) for it in gsm]
    q_tokens = sum(len(encode(tok, t, True)) for t in qtexts)
    em = make_utility(type="exact_match", max_new_tokens=args.gsm_tokens,
                                     batch_size=16)
    GENERATED["tokens"] = 0
    e, s = timed(lambda: em.score(model, tok, gsm))
    rows.append(row("GSM8K, ours, exact match", s, q_tokens + GENERATED["tokens"], len(gsm),
                    e.value))
    (ref, tokens), s_ref = timed(lambda: reference_generate(model, tok, qtexts, args.gsm_tokens))
    ref_nums = [extract_number(t) or "" for t in ref]
    from modelswarms.evaluation.objectives.extract import normalize_number

    ref_value = sum(n == normalize_number(str(it["answer"])) for n, it in
                    zip(ref_nums, gsm, strict=True)) / len(gsm)
    rows.append(row("GSM8K, reference way (model.generate, batches of 10)", s_ref, tokens,
                    len(gsm), ref_value))
    agreement["gsm8k"] = sum(n == p for n, p in
                             zip(ref_nums, e.predictions, strict=True)) / len(gsm)

    name = (torch.cuda.get_device_name() if device.type == "cuda" else
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    result = {"machine": f"{name}, torch {torch.__version__}, {dtype}", "rows": rows,
              "agreement": agreement, "mc_items": len(mmlu), "gsm_items": len(gsm),
              "gsm_tokens": args.gsm_tokens}
    out = ROOT / "docs" / ("bench_engine_throughput" + ("_gpu" if device.type == "cuda" else ""))
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Evaluation engine against plain `model.generate` (batches of 10)", "",
        f"`python bench/engine_throughput.py` on {result['machine']}; SmolLM2-135M-Instruct, "
        f"{len(mmlu)} MMLU dev items, {len(gsm)} GSM8K dev items with up to "
        f"{args.gsm_tokens} new tokens. Tokens = prompt tokens + generated tokens.", "",
        "| run | seconds | tokens/s | items/s | utility |", "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {r['name']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | "
          f"{r['items_per_s']:.2f} | {_fmt(r['utility'])} |" for r in rows), "",
        "Same answers as the reference way: MMLU generate-and-parse "
        f"{agreement['mmlu_generate']:.1%}, GSM8K {agreement['gsm8k']:.1%} of items "
        "(greedy decoding in different batch shapes can differ in the last bits).", "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
