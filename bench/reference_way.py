"""The reference code's way, emulated for the benches that measure against it
(engine_throughput.py, iteration_overhead.py, gpu.py): answers by `model.generate`, and the
swarm's update through files on disk.

bench/ is not a package: a bench run as `python bench/X.py` imports this as `reference_way`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def reference_generate(model, tok, texts: list[str], max_new_tokens: int) -> tuple[list[str],
                                                                                 int]:
    """Batches of 10 in input order, the tokenizer's own padding, `model.generate`. Returns
    the answers (cut at eos) and the tokens processed (prompts and answers)."""
    tok.padding_side = "left"
    answers, tokens = [], 0
    for start in range(0, len(texts), 10):
        batch = tok(texts[start:start + 10], return_tensors="pt", padding=True,
                    add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, batch.input_ids.shape[1]:]
        for row in new.tolist():
            cut = next((i for i, t in enumerate(row) if t == tok.eos_token_id), len(row))
            answers.append(tok.decode(row[:cut], skip_special_tokens=True))
            tokens += cut
        tokens += int(batch.attention_mask.sum())
    return answers, tokens


def file_update(files: Path, i: int, coefficients) -> None:
    """Particle i's update as the reference does it: x (an adapter folder), v, p, g and w read
    from safetensors files, v = a v + b (p - x) + c (g - x) + d (x - w) on the searched
    tensors (those v holds), x += v, x and v written back."""
    a, b, c, d = coefficients
    x = load_file(files / f"x_{i}" / "adapter_model.safetensors")
    v = load_file(files / f"v_{i}.safetensors")
    p = load_file(files / f"p_{i}.safetensors")
    g = load_file(files / "g.safetensors")
    w = load_file(files / "w.safetensors")
    for key in x:
        if key in v:
            v[key] = a * v[key] + b * (p[key] - x[key]) + c * (g[key] - x[key]) + \
                d * (x[key] - w[key])
            x[key] = x[key] + v[key]
    save_file(x, files / f"x_{i}" / "adapter_model.safetensors")
    save_file(v, files / f"v_{i}.safetensors")
