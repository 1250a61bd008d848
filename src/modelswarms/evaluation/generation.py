"""Batched scoring and greedy generation: the hot path of every search.

Items are sorted by length so each batch holds sequences of similar size (little padding) and
results are put back in input order. Scoring pads on the right (positions stay 0..n-1);
generation pads on the left so every row's next token sits in the last column.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad(rows: Sequence[Sequence[int]], pad_id: int, left: bool, device: torch.device):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def next_token_logprobs(model, prompts: Sequence[Sequence[int]], token_ids: Sequence[int],
                        *, pad_id: int, batch_size: int) -> list[list[float]]:
    """log p(token | prompt) for each prompt and each of `token_ids`: one forward per batch."""
    device = _device(model)
    wanted = torch.tensor(list(token_ids), device=device)
    out: list[list[float]] = [[] for _ in prompts]
    for batch in _batches([len(p) for p in prompts], batch_size):
        ids, mask = _pad([prompts[i] for i in batch], pad_id, left=False, device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = mask.sum(1) - 1
        rows = logits[torch.arange(len(batch), device=device), last].float()
        logp = torch.log_softmax(rows, dim=-1)[:, wanted].tolist()
        for i, values in zip(batch, logp, strict=True):
            out[i] = values
    return out


@torch.inference_mode()
def continuation_logprobs(model, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[Sequence[int]]], *, pad_id: int,
                          batch_size: int) -> list[list[float]]:
    """log p(continuation | prompt), summed over its tokens, for every prompt's continuations."""
    device = _device(model)
    pairs = [(i, j) for i, conts in enumerate(continuations) for j in range(len(conts))]
    seqs = [list(prompts[i]) + list(continuations[i][j]) for i, j in pairs]
    out = [[0.0] * len(c) for c in continuations]
    for batch in _batches([len(s) for s in seqs], batch_size):
        ids, mask = _pad([seqs[k] for k in batch], pad_id, left=False, device=device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for row, k in enumerate(batch):
            i, j = pairs[k]
            start, end = len(prompts[i]), len(seqs[k])
            # the token at position t is predicted by the logits at t - 1
            targets = ids[row, start:end]
            out[i][j] = float(logp[row, start - 1 : end - 1].gather(1, targets[:, None]).sum())
    return out


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
             eos_id: int | Sequence[int] | None, batch_size: int) -> list[list[int]]:
    """Greedy continuations (new tokens only, cut at the first end-of-sequence token)."""
    device = _device(model)
    eos = [] if eos_id is None else ([eos_id] if isinstance(eos_id, int) else list(eos_id))
    out: list[list[int]] = [[] for _ in prompts]
    for batch in _batches([len(p) for p in prompts], batch_size):
        ids, mask = _pad([prompts[i] for i in batch], pad_id, left=True, device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad_id, eos_token_id=eos or None)
        for row, i in enumerate(batch):
            new = gen[row, ids.shape[1]:].tolist()
            cut = next((t for t, tok in enumerate(new) if tok in eos), len(new))
            out[i] = new[:cut]
    return out
