"""The frozen trunk (evaluation/engine/trunk.py) on SmolLM2: the same evaluations with and without.

The shipped experts adapt layers 14-29 of SmolLM2-135M-Instruct's 30, so layers 0-13 are the
same for every particle. Two sessions of one config side by side in one process, one with the
trunk memo and one without; each round scores 3 particles (round 0: three shipped experts,
later rounds: other points near them, as a swarm's later steps would) on the same dev items.
Round 0 fills the memo; later rounds reuse it. Both sessions must give identical scores.

Cases: `letter` (MMLU, letter log-likelihood: one forward per item) and `cloze` (HellaSwag,
cloze_norm with the prompt "{question}": generation.option_logprobs, a pass over the
questions, then one over every option's tokens on a row copy of the questions' cache).

Run: python bench/frozen_layers.py [--case letter|cloze] [--items 64] [--rounds 3]
[--threads N]. Rewrites that case's section of docs/bench_frozen_layers.md, keeps the others.
"""

from __future__ import annotations

import argparse
import platform
import re
import time
from pathlib import Path

import torch

from modelswarms.config import RunConfig
from modelswarms.runs.session import Session

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "data" / "eval"
EXPERTS = ["coqa", "jeopardy", "medqa"]
CASES = {
    "letter": ("mmlu.json", {}, "MMLU dev items, letter log-likelihood"),
    "cloze": ("hellaswag.json", {"scoring": "cloze_norm", "prompt": "{question}"},
              'HellaSwag dev items, cloze_norm (prompt "{question}"; the options\' tokens run'
              " on a row copy of the questions' cache)"),
}
TITLE = "# Frozen layers: the trunk memo on SmolLM2"


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=sorted(CASES), default="letter")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_frozen_layers.md"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, utility, what = CASES[args.case]
    cfg = RunConfig.model_validate({
        "experts": {"paths": [str(ROOT / "experts" / "smollm2" / e) for e in EXPERTS]},
        "data": {"path": str(EVAL / data), "max_dev": args.items},
        "utility": {"type": "multiple_choice", **utility}, "model": {"batch_size": 16},
    })
    plain = Session.open(cfg, need_test=False)
    plain.trunk.remove()
    plain.trunk = None
    memo = Session.open(cfg, need_test=False)
    assert memo.trunk is not None
    gen = torch.Generator().manual_seed(0)
    rows = []
    for r in range(args.rounds):
        vectors = memo.experts.clone()
        if r:
            noise = torch.randn(vectors.shape, generator=gen).to(vectors.device, vectors.dtype)
            vectors = vectors + 0.05 * noise * vectors.abs().mean()
        # alternate which goes first, so a warming machine favours neither
        order = [plain, memo] if r % 2 == 0 else [memo, plain]
        times, results = {}, {}
        for session in order:
            results[id(session)], times[id(session)] = timed(
                lambda s=session, v=vectors: s.score_many(v, s.dev))
        a, b = results[id(plain)], results[id(memo)]
        same = all(x.scores == y.scores and x.predictions == y.predictions
                   for x, y in zip(a, b, strict=True))
        rows.append((r, times[id(plain)], times[id(memo)], same, [x.value for x in b]))
        print(f"round {r}: without {times[id(plain)]:.1f} s, with {times[id(memo)]:.1f} s, "
              f"identical scores: {same}", flush=True)

    backend = memo.backend
    warm = rows[1:]
    ratio = sum(r[1] for r in warm) / sum(r[2] for r in warm) if warm else float("nan")
    threads = torch.get_num_threads()
    where = (torch.cuda.get_device_name(backend.device) if backend.device.type == "cuda"
             else f"{platform.machine()} CPU, torch threads: {threads}")
    counts = memo.counts
    copies = (f" Of these, on the options' row copies (the second pass): "
              f"{counts['frozen_layers_copy_hits']} hits, "
              f"{counts['frozen_layers_copy_misses']} misses."
              if counts["frozen_layers_copy_hits"] + counts["frozen_layers_copy_misses"] else "")
    lines = [
        f"## {args.case}",
        "",
        f"`python bench/frozen_layers.py --case {args.case} --items {args.items}"
        f" --rounds {args.rounds}"
        + (f" --threads {args.threads}" if args.threads else "") + "` on " + where
        + f", torch {torch.__version__}, {backend.dtype}; SmolLM2-135M-Instruct (30 layers),"
        f" experts {', '.join(EXPERTS)} (adapters on layers 14-29: the trunk is layers"
        f" 0-{memo.trunk.k - 1}); {args.items} {what}"
        f" (utility batch size 16, particles per forward:"
        f" {memo.evaluator._batch.k if memo.evaluator._batch else 1}); 3 particles a round.",
        "",
        "| round | particles | seconds without | seconds with | speed-up | identical scores |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r, t0, t1, same, _ in rows:
        label = "the 3 experts (memo filled)" if r == 0 else "3 new points (memo reused)"
        lines.append(f"| {r} | {label} | {t0:.1f} | {t1:.1f} | {t0 / t1:.2f}x | "
                     f"{'yes' if same else 'NO'} |")
    lines += [
        "",
        f"Speed-up once the memo holds the items (rounds 1-{args.rounds - 1}): "
        f"**{ratio:.2f}x** (seconds without / seconds with). Memo: "
        f"{memo.counts['frozen_layers_hits']} hits, {memo.counts['frozen_layers_misses']} "
        f"misses (forward passes), {memo.trunk.nbytes / 2**20:.0f} MiB held "
        f"(bound {memo.trunk.max_bytes / 2**20:.0f} MiB).{copies}",
        "",
        f"Layers 0-{memo.trunk.k - 1} are {memo.trunk.k} of 30, so a forward that skips them"
        f" does about {30 - memo.trunk.k}/30 of the layer work: about"
        f" {30 / (30 - memo.trunk.k):.2f}x expected (the embeddings and the prompt head's pass"
        " are skipped too; the LM head, the masks and the key's hashing are not). Round 0"
        " gains already when particles run one per forward: the second and third particle"
        " reuse the first one's trunk. Timings on a shared machine vary by about 10%.",
        "",
    ]
    if args.case == "cloze":
        # every option token is a scored column: it pays the LM head, which no particle shares
        c = backend.model.config
        kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
        layer = c.hidden_size * (2 * c.hidden_size + 2 * kv + 3 * c.intermediate_size)
        head = c.hidden_size * c.vocab_size
        n, k = c.num_hidden_layers, memo.trunk.k
        option = (n * layer + head) / ((n - k) * layer + head)
        lines += [
            "In the cloze case every option token is also a scored column and pays the LM"
            f" head ({c.hidden_size} x {c.vocab_size} multiply-adds, against"
            f" {layer / 1e6:.1f}M for each layer), which the trunk cannot skip: an option"
            f" token gains about {option:.2f}x (({n} layers + head) / ({n - k} layers +"
            f" head)), a question token about the {n / (n - k):.2f}x above, and the option"
            " pass's padding, its attention over the question's keys and the log-softmax"
            " over the vocabulary are paid in full.",
            "",
        ]
    section = "\n".join(lines)
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    # one "## <case>" section per case, in CASES order; the others are kept as they are
    parts = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", old, flags=re.M | re.S))
    parts[args.case] = section.split("\n", 1)[1]
    body = [f"## {c}\n{parts[c].rstrip()}\n" for c in CASES if c in parts]
    out.write_text(TITLE + "\n\n" + "\n".join(body))
    print(section)


if __name__ == "__main__":
    main()
