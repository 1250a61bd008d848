"""Batched scoring and greedy generation: the hot path of every search.

Items are sorted by length so each batch holds sequences of similar size (little padding) and
results are put back in input order. Everything pads on the left with explicit position ids
(so padding changes no result): the positions that matter then sit in the last columns of
every row, and the model computes vocabulary logits for those columns only; over a 49k-token
vocabulary the full logits cost more than the rest of the forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...errors import DataError
from .batching import (
    Batching,
    batches,
    cache_kwarg,
    cache_of,
    current_batching,
    device_of,
    inputs,
    limits,
    pad,
    tile,
)
from .trunk import decoder_layers, select_rows


def fits_context(model, lengths: Sequence[int]) -> None:
    """Refuse rows longer than the model reads (max_position_embeddings): past it some
    architectures index out of range, others run out of memory on a hostile item."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max(lengths, default=0)
    if isinstance(limit, int) and longest > limit:
        raise DataError(f"data: an item is {longest} tokens with its answer, more than the "
                        f"model reads ({limit}, its max_position_embeddings); shorten or drop "
                        f"the items that long ({sum(n > limit for n in lengths)} of "
                        f"{len(lengths)} rows)")


# A prompt head shared by every item (system prompt, instruction, "Question:") is run once and
# its keys and values reused by every row; below this many tokens it is not worth a pass.
MIN_SHARED_PREFIX = 8


class SharedPrefix:
    """Keys and values of the first `length` tokens common to every sequence, one row per
    particle, computed once and expanded for each batch."""

    def __init__(self, model, rows: Sequence[Sequence[int]], limit: int, particles: int):
        self.length = 0
        n = min(_common_prefix(rows), limit)
        if n < MIN_SHARED_PREFIX or len(rows) < 2:
            return
        device = device_of(model)
        ids = torch.tensor([list(rows[0][:n])], device=device).repeat(particles, 1)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]
        self.length, self.kwarg, self.config = n, cache_kwarg(model), model.config

    def inputs(self, ids: torch.Tensor, mask: torch.Tensor, particles: int) -> dict:
        """Forward arguments for tiled suffix rows (particle-major, `particles` blocks)."""
        from transformers import DynamicCache

        rows = ids.shape[0] // particles
        cache = DynamicCache(ddp_cache_data=[(k.repeat_interleave(rows, 0),
                                              v.repeat_interleave(rows, 0))
                                             for k, v in self.kv], config=self.config)
        ones = torch.ones(ids.shape[0], self.length, dtype=mask.dtype, device=mask.device)
        return {"input_ids": ids, "attention_mask": torch.cat([ones, mask], dim=1),
                "position_ids": self.length + (mask.cumsum(-1) - 1).clamp(min=0),
                self.kwarg: cache}


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return n


def _forward(model, ids: torch.Tensor, mask: torch.Tensor, keep: int,
             prefix: SharedPrefix | None = None, particles: int = 1) -> torch.Tensor:
    """Logits of the last `keep` columns, as float32 log-probabilities."""
    # nothing reads this batch's cache back: without use_cache=False the frozen-layer memo
    # (trunk.py) would keep the lower layers' keys and values of every batch
    logits = model(**inputs(ids, mask, prefix, particles), use_cache=False,
                   logits_to_keep=keep).logits
    return torch.log_softmax(logits.float(), dim=-1)


@torch.inference_mode()
def next_token_logprobs(model, prompts: Sequence[Sequence[int]], token_ids: Sequence[int],
                        *, pad_id: int, batch_size: int | None = None,
                        max_tokens: int | None = None, particles: int = 1, share_prefix: bool = True
                        ) -> list[list[list[float]]]:
    """[particle][prompt][token]: log p(token | prompt), one forward per batch.

    With particles > 1 the model must run that many particles on row blocks (multiplex.py);
    batch limits are per forward, so each particle gets 1/particles of them.
    """
    if getattr(model, "is_mixture", False):
        probs = model.next_token_probs([_text(model, p) for p in prompts])
        picked = probs[:, list(token_ids)].clamp_min(1e-300).log()
        return [picked.tolist()]
    fits_context(model, [len(p) + 1 for p in prompts])
    device = device_of(model)
    wanted = torch.tensor(list(token_ids), device=device)
    out: list[list[list[float]]] = [[[] for _ in prompts] for _ in range(particles)]
    prefix = SharedPrefix(model, prompts, min(len(p) for p in prompts) - 1, particles) \
        if share_prefix else None
    cut = prefix.length if prefix else 0
    for batch in batches([len(p) - cut for p in prompts],
                          *limits(batch_size, max_tokens, particles)):
        ids, mask = pad([prompts[i][cut:] for i in batch], pad_id, left=True, device=device)
        logp = _forward(model, *tile(ids, mask, particles), keep=1, prefix=prefix,
                        particles=particles)[:, -1, wanted]
        for p, block in enumerate(logp.view(particles, len(batch), -1).tolist()):
            for i, values in zip(batch, block, strict=True):
                out[p][i] = values
    return out


@torch.inference_mode()
def continuation_logprobs(model, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[Sequence[int]]], *, pad_id: int,
                          batch_size: int | None = None, max_tokens: int | None = None,
                          particles: int = 1, share_prefix: bool = True
                          ) -> list[list[list[float]]]:
    """[particle][prompt][continuation]: log p(continuation | prompt), summed over tokens."""
    if getattr(model, "is_mixture", False):
        return [_mixture_continuations(model, prompts, continuations)]
    device = device_of(model)
    pairs = [(i, j) for i, conts in enumerate(continuations) for j in range(len(conts))]
    seqs = [list(prompts[i]) + list(continuations[i][j]) for i, j in pairs]
    fits_context(model, [len(x) for x in seqs])
    out = [[[0.0] * len(c) for c in continuations] for _ in range(particles)]
    longest = max(len(continuations[i][j]) for i, j in pairs)
    # the prefix must stop before the first column whose logits are read
    prefix = SharedPrefix(model, seqs, min(len(s) for s in seqs) - longest - 1, particles) \
        if share_prefix else None
    cut = prefix.length if prefix else 0
    for batch in batches([len(s) - cut for s in seqs],
                          *limits(batch_size, max_tokens, particles)):
        ids, mask = pad([seqs[k][cut:] for k in batch], pad_id, left=True, device=device)
        span = max(len(continuations[pairs[k][0]][pairs[k][1]]) for k in batch)
        # logits at column c predict the token at c + 1: keep the span's columns and one more
        logp = _forward(model, *tile(ids, mask, particles), keep=span + 1, prefix=prefix,
                        particles=particles)
        targets = ids[:, ids.shape[1] - span :].repeat(particles, 1)
        picked = logp[:, :span].gather(2, targets[..., None])[..., 0]  # (rows, span)
        picked = picked.view(particles, len(batch), span)
        for row, k in enumerate(batch):
            i, j = pairs[k]
            n = len(continuations[i][j])
            for p in range(particles):
                out[p][i][j] = float(picked[p, row, span - n :].sum())
    return out


@torch.inference_mode()
def option_logprobs(model, prompts: Sequence[Sequence[int]],
                    options: Sequence[Sequence[Sequence[int]]], *, pad_id: int,
                    batch_size: int | None = None, max_tokens: int | None = None,
                    particles: int = 1, share_prefix: bool = True,
                    packed: bool | None = None) -> list[list[list[float]]]:
    """[particle][prompt][option]: log p(option | prompt), summed over the option's tokens.

    On a CPU (`packed`: None picks) each item is one row, its question then every option's
    tokens, each option attending to the question and to itself (`packed_option_logprobs`):
    one forward, no cache copies, the LM head on read columns only. Elsewhere two passes.

    Two passes: each prompt is run once, for all of its options: a first pass over the (left-padded)
    prompts gives their keys and values and the distribution of every option's first token;
    a second pass runs the options' other tokens on top of a copy of their prompt's keys and
    values. The shared prompt head, when there is one, is computed once below both. Batch
    limits count an item once per option (the second pass holds that many rows). The copy
    is made by trunk.select_rows, so the frozen-layer memo serves the second pass too.
    """
    if getattr(model, "is_mixture", False):
        return [_mixture_continuations(model, prompts, options)]
    lengths = [len(p) + max(map(len, o), default=0) for p, o in zip(prompts, options,
                                                                      strict=True)]
    fits_context(model, lengths)
    if packed is None:
        packed = packs(model, max(lengths, default=0)) and \
            all(len(c) for o in options for c in o)
    if packed:
        return packed_option_logprobs(model, prompts, options, pad_id=pad_id,
                                      batch_size=batch_size, max_tokens=max_tokens,
                                      particles=particles, share_prefix=share_prefix)
    device = device_of(model)
    out = [[[0.0] * len(o) for o in options] for _ in range(particles)]
    prefix = SharedPrefix(model, prompts, min(len(p) for p in prompts) - 1, particles) \
        if share_prefix else None
    cut = prefix.length if prefix else 0
    # pass two holds one row per option: size batches by the mean option count, so one
    # item with 13 options (TruthfulQA) does not shrink every batch
    width = math.ceil(sum(len(o) for o in options) / len(options))
    longest = [max(len(c) for c in o) for o in options]
    kwarg = cache_kwarg(model)
    rows_cap, tokens_cap = limits(batch_size, max_tokens, particles * width)
    for batch in batches([len(p) - cut + longest[i] for i, p in enumerate(prompts)],
                          rows_cap, tokens_cap):
        b = len(batch)
        ids, mask = pad([prompts[i][cut:] for i in batch], pad_id, left=True, device=device)
        args = inputs(*tile(ids, mask, particles), prefix, particles)
        first = model(**args, use_cache=True, logits_to_keep=1)
        first_logp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)  # (particles*b, V)
        cache = cache_of(first)
        full_mask = args["attention_mask"]  # prefix ones + prompt mask, (particles*b, T)
        ends = args["position_ids"][:, -1]  # position of each row's last prompt token
        # (item row r, option j) pairs of this batch, particle-major as multiplex.py expects
        pairs = [(r, j) for r, i in enumerate(batch) for j in range(len(options[i]))]
        heads = torch.tensor([[options[batch[r]][j][0] for r, j in pairs]], device=device)
        src = torch.tensor([p * b + r for p in range(particles) for r, _ in pairs],
                           device=device)
        scores = first_logp[src].gather(1, heads.repeat(1, particles).T)[:, 0]
        # pass two reads o_0 .. o_{n-2}; its column c predicts o_{c+1}
        reads = [list(options[batch[r]][j][:-1]) for r, j in pairs]
        targets = [list(options[batch[r]][j][1:]) for r, j in pairs]
        span = max(len(t) for t in targets)
        if span:
            # The cache may hold several blocks of these rows (LogitAverage tiles its input
            # inside the model): copy each block's rows in the same order.
            blocks = cache.layers[0].keys.shape[0] // (particles * b)
            rows = torch.cat([src + m * particles * b for m in range(blocks)])
            # a row copy the frozen-layer memo (trunk.py) recognises: the lower layers of the
            # option tokens are then computed once for every particle
            copy = select_rows(cache, rows, model.config)
            tail_ids, tail_mask = tile(*pad(reads, pad_id, left=False, device=device),
                                        particles)
            goal, _ = tile(*pad(targets, pad_id, left=False, device=device), particles)
            positions = ends[src][:, None] + 1 + torch.arange(span, device=device)
            logits = model(input_ids=tail_ids,
                           attention_mask=torch.cat([full_mask[src], tail_mask], dim=1),
                           position_ids=positions, logits_to_keep=span,
                           # nothing reads this cache back: the memo keeps no keys/values
                           use_cache=False, **{kwarg: copy}).logits.float()
            picked = logits.gather(2, goal[..., None])[..., 0] - torch.logsumexp(logits, -1)
            scores = scores + (picked * tail_mask).sum(1)
        values = scores.view(particles, len(pairs)).tolist()
        for p in range(particles):
            for q, (r, j) in enumerate(pairs):
                out[p][batch[r]][j] = values[p][q]
    return out


# Architectures whose decoder model's forward takes a custom 4-D mask as it is (for every
# layer type) and whose logits are the LM head of its last hidden state (no scaling of logits
# after it; soft-capping is checked on the config, Gemma 3 has none).
PACKED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "olmo", "olmo2",
                                "gemma3_text"})


def packs(model, span: int | None = None) -> bool:
    """Whether `packed_option_logprobs` serves `model`: a transformers (or peft-wrapped)
    causal LM of a known architecture, on a CPU, whose every layer attends to all it is
    shown. Sliding-window layers (Gemma 3's) qualify when `span`, the longest prompt plus
    option of the call, is within the window: the window then hides nothing, and the packed
    mask, taken as it is by every layer, asks the same. On a GPU the two-pass way keeps
    SDPA's fused kernels (a custom mask rules them out)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel = ()  # noqa: N806
    from transformers import PreTrainedModel

    if not isinstance(model, (PreTrainedModel, PeftModel)) or device_of(model).type != "cpu":
        return False
    config = model.config
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(config, "model_type", None) not in PACKED_MODEL_TYPES or \
            getattr(config, "_attn_implementation", None) not in ("sdpa", "eager") or \
            not type(base).__module__.startswith("transformers."):
        return False
    if getattr(config, "final_logit_softcapping", None) is not None:
        return False
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types is not None and any(t not in ("full_attention", "sliding_attention")
                                 for t in types):
        return False
    windowed = "sliding_attention" in types if types is not None else \
        bool(window) and getattr(config, "use_sliding_window", True)
    if windowed and (span is None or not window or span > window):
        return False
    return decoder_layers(model) is not None and base.get_output_embeddings() is not None


# rows of a head that is not a plain Linear computed at once: (rows x vocabulary) float32
# logits, ~100 MB at 49k
HEAD_CHUNK = 512


@dataclass
class _Packed:
    """One batch of packed rows: an item's question (after the shared head), then the
    options' input tokens (all but their last), right-padded."""

    ids: torch.Tensor  # (b, T)
    positions: torch.Tensor  # (b, T)
    mask: torch.Tensor  # (b, 1, T, T) bool: may query t read key s
    reads: torch.Tensor  # (R,) flat row*T + column of every column whose logits are read
    target_row: torch.Tensor  # (S,) index into reads of each scored token
    target_token: torch.Tensor  # (S,) the token it scores
    target_option: torch.Tensor  # (S,) the (item, option) pair it adds to, batch-local


def _pack(prompts: Sequence[Sequence[int]], options: Sequence[Sequence[Sequence[int]]],
          pad_id: int, offset: int) -> tuple[_Packed, list[tuple[int, int]]]:
    """Packed rows of `prompts` (already cut by the shared head; positions start at
    `offset`) and the (row, option) of each pair, in the order of `target_option`."""
    width = max(len(p) + sum(len(c) - 1 for c in o) for p, o in zip(prompts, options,
                                                                       strict=True))
    b = len(prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    # segment of every column: -1 the question, j option j, -2 padding
    seg = torch.full((b, width), -2, dtype=torch.long)
    reads: list[int] = []
    t_row: list[int] = []
    t_tok: list[int] = []
    t_opt: list[int] = []
    pairs: list[tuple[int, int]] = []
    for r, (prompt, opts) in enumerate(zip(prompts, options, strict=True)):
        n = len(prompt)
        row = list(prompt)
        ids[r, :n] = torch.tensor(row, dtype=torch.long)
        pos[r, :n] = torch.arange(offset, offset + n)
        seg[r, :n] = -1
        last = len(reads)  # the question's last column predicts every option's first token
        reads.append(r * width + n - 1)
        col = n
        for j, opt in enumerate(opts):
            q = len(pairs)
            pairs.append((r, j))
            t_row.append(last)
            t_tok.append(opt[0])
            t_opt.append(q)
            m = len(opt) - 1  # option tokens 0..m-1 are read; column of token t predicts t+1
            if m:
                ids[r, col:col + m] = torch.tensor(opt[:-1], dtype=torch.long)
                pos[r, col:col + m] = torch.arange(offset + n, offset + n + m)
                seg[r, col:col + m] = j
                for t in range(m):
                    t_row.append(len(reads))
                    reads.append(r * width + col + t)
                    t_tok.append(opt[t + 1])
                    t_opt.append(q)
            col += m
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    query, key = seg[:, :, None], seg[:, None, :]
    # a question column reads the question before it; an option column the question and its
    # own option before it; padding reads everything before it (never read by the others)
    mask = causal & ((key == -1) | (key == query) | (query == -2))
    order = torch.argsort(torch.tensor(t_row), stable=True)  # targets in the order of reads
    return _Packed(ids, pos, mask[:, None], torch.tensor(reads), torch.tensor(t_row)[order],
                   torch.tensor(t_tok)[order], torch.tensor(t_opt)[order]), pairs


def _read_logprobs(head, hidden: torch.Tensor, reads: torch.Tensor, target_row: torch.Tensor,
                   target_token: torch.Tensor) -> torch.Tensor:
    """(particles, S) float32 log p(target_token | the read column target_row names), for
    the rows `reads` (particles, R) of `hidden` (the last hidden states, flattened)."""
    particles, rows = reads.shape
    device = hidden.device
    if type(head) is torch.nn.Linear:  # shared by every particle: all rows at once
        t_row = (target_row[None] + rows * torch.arange(particles)[:, None]).reshape(-1)
        out = _blocked_logprobs(head, hidden[reads.reshape(-1).to(device)],
                                t_row.to(device), target_token.repeat(particles).to(device))
        return out.view(particles, -1).cpu()
    # another head (a LoRA'd or quantised one): full logits, particle-major chunks
    picked = torch.empty(particles, len(target_row), dtype=torch.float32)
    chunk, done = max(1, HEAD_CHUNK // particles), 0
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        logits = head(hidden[reads[:, start:stop].reshape(-1).to(device)]).float()
        logits = logits.view(particles, stop - start, -1)
        lse = torch.logsumexp(logits, dim=-1)  # (particles, stop - start)
        # the targets are sorted by the read they score: this chunk's are the next run
        end = int(torch.searchsorted(target_row, stop))
        local = (target_row[done:end] - start).to(device)
        picked[:, done:end] = (logits[:, local, target_token[done:end].to(device)]
                               - lse[:, local]).cpu()
        done = end
    return picked


# The LM head in tiles of rows x vocabulary entries: a tile's logits stay in the CPU's cache
# for the log-sum-exp (a 49k vocabulary's full logits go to memory and back three times).
HEAD_ROWS, HEAD_VOCAB = 1024, 1024


def _blocked_logprobs(head: torch.nn.Linear, x: torch.Tensor, t_row: torch.Tensor,
                      t_tok: torch.Tensor) -> torch.Tensor:
    """log_softmax(head(x))[t_row, t_tok] with a running log-sum-exp over vocabulary tiles;
    `t_row` sorted. The same values as the full logits' up to float rounding."""
    weight, bias = head.weight, head.bias
    vocab = weight.shape[0]
    out = torch.empty(len(t_row), dtype=torch.float32, device=x.device)
    done = 0
    for start in range(0, x.shape[0], HEAD_ROWS):
        stop = min(x.shape[0], start + HEAD_ROWS)
        end = int(torch.searchsorted(t_row, stop))
        local, tok = t_row[done:end] - start, t_tok[done:end]
        top = torch.full((stop - start,), -math.inf, device=x.device)
        total = torch.zeros(stop - start, device=x.device)
        hit = torch.empty(end - done, device=x.device)
        for v in range(0, vocab, HEAD_VOCAB):
            tile = torch.nn.functional.linear(
                x[start:stop], weight[v:v + HEAD_VOCAB],
                None if bias is None else bias[v:v + HEAD_VOCAB]).float()
            here = ((tok >= v) & (tok < v + HEAD_VOCAB)).nonzero()[:, 0]
            hit[here] = tile[local[here], tok[here] - v]
            new = torch.maximum(top, tile.amax(-1))
            total = total * torch.exp(top - new) + tile.sub_(new[:, None]).exp_().sum(-1)
            top = new
        out[done:end] = hit - (top + total.log())[local]
        done = end
    return out


def packed_option_logprobs(model, prompts: Sequence[Sequence[int]],
                           options: Sequence[Sequence[Sequence[int]]], *, pad_id: int,
                           batch_size: int | None, max_tokens: int | None, particles: int,
                           share_prefix: bool) -> list[list[list[float]]]:
    """option_logprobs in one forward per batch: each item is one row holding its question
    and every option's tokens (all but the last), positions restarting after the question
    for each option and a mask that lets an option read the question and itself only. So
    the question runs once, no padding sits between options, no cache is copied, and the LM
    head runs on the columns whose log-probabilities are read and nowhere else. The frozen
    trunk (trunk.py) keys these forwards like any other (ids, mask, positions)."""
    device = device_of(model)
    inner = decoder_layers(model)[0]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    out = [[[0.0] * len(o) for o in options] for _ in range(particles)]
    prefix = SharedPrefix(model, prompts, min(len(p) for p in prompts) - 1, particles) \
        if share_prefix else None
    cut = prefix.length if prefix else 0
    kwarg = cache_kwarg(model)
    lengths = [len(p) - cut + sum(len(c) - 1 for c in o) for p, o in zip(prompts, options,
                                                                        strict=True)]
    for batch in batches(lengths, *limits(batch_size, max_tokens, particles)):
        pk, pairs = _pack([prompts[i][cut:] for i in batch], [options[i] for i in batch],
                          pad_id, cut)
        b, width = pk.ids.shape
        ids = pk.ids.repeat(particles, 1).to(device)
        positions = pk.positions.repeat(particles, 1).to(device)
        mask = pk.mask.repeat(particles, 1, 1, 1).to(device)
        kwargs = {}
        if cut:
            ones = torch.ones(particles * b, 1, width, cut, dtype=torch.bool, device=device)
            mask = torch.cat([ones, mask], dim=-1)
            kwargs[kwarg] = prefix.inputs(ids, torch.ones_like(ids), particles)[kwarg]
        hidden = inner(input_ids=ids, attention_mask=mask, position_ids=positions,
                       use_cache=False, **kwargs).last_hidden_state
        hidden = hidden.reshape(particles * b * width, -1)
        # every particle's read columns, particle-major (a LoRA'd head splits rows that way)
        reads = pk.reads[None] + b * width * torch.arange(particles)[:, None]  # (particles, R)
        with torch.profiler.record_function("modelswarms.head"):
            picked = _read_logprobs(head, hidden, reads, pk.target_row, pk.target_token)
        scores = torch.zeros(particles, len(pairs), dtype=torch.float64)
        scores.index_add_(1, pk.target_option, picked.view(particles, -1).double())
        values = scores.tolist()
        for p in range(particles):
            for q, (r, j) in enumerate(pairs):
                out[p][batch[r]][j] = values[p][q]
    return out


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
             eos_id: int | Sequence[int] | None, batch_size: int | None = None,
             max_tokens: int | None = None, particles: int = 1,
             stop_strings: Sequence[str] = (), tokenizer=None, share_prefix: bool = True
             ) -> list[list[list[int]]]:
    """[particle][prompt]: greedy new tokens, cut at the first end-of-sequence token.

    With `stop_strings` (and the `tokenizer` that reads them) a row stops early once its text
    holds one of them; the tokens are not cut there (the caller cuts the text), the batch just
    stops paying for rows that are done.

    The answers are `model.generate`'s greedy answers (`generate_hf`, used for models the
    engine does not know); decode.py computes them with every particle of a batch in one
    forward, the shared prompt head run once, preallocated caches, no host sync per token
    and, on a GPU, CUDA graphs."""
    # decode.py subclasses transformers' cache classes, so importing it imports transformers
    # (seconds): `import modelswarms` and the CLI's start do without until something generates
    from . import decode

    if getattr(model, "is_mixture", False):
        return [model.generate([_text(model, p) for p in prompts], max_new_tokens)]
    if not prompts:
        return [[] for _ in range(particles)]
    why = decode.supported(model)
    if why is not None or max_new_tokens < 1:
        decode.STATS["hf_generate"] += 1
        return generate_hf(model, prompts, max_new_tokens=max_new_tokens, pad_id=pad_id,
                           eos_id=eos_id, batch_size=batch_size, max_tokens=max_tokens,
                           particles=particles, stop_strings=stop_strings,
                           tokenizer=tokenizer)
    fits_context(model, [len(p) + 1 for p in prompts])
    eos = _eos_ids(eos_id)
    stops = [s for s in stop_strings if s]
    stop = None
    if stops and tokenizer is not None:
        from transformers import StopStringCriteria

        stop = StopStringCriteria(tokenizer=tokenizer, stop_strings=stops)
    prefix = SharedPrefix(model, prompts, min(len(p) for p in prompts) - 1, particles) \
        if share_prefix else None
    cut = prefix.length if prefix else 0
    if batch_size is None:
        current = current_batching()
        batch_size, max_tokens = current.batch_size, max_tokens or current.max_tokens
        share = current.generate_memory
    else:
        share = Batching.generate_memory
    out: list[list[list[int]]] = [[[] for _ in prompts] for _ in range(particles)]
    kwarg = cache_kwarg(model)
    for step in decode.plan(model, [len(p) for p in prompts], cut, particles=particles,
                            max_new_tokens=max_new_tokens, batch_size=batch_size,
                            max_tokens=max_tokens, memory_share=share):
        where = {i: r for r, i in enumerate(step.items)}
        rows = decode.decode(
            model, kwarg, [list(prompts[i][cut:]) for i in step.items],
            [[where[i] for i in c] for c in step.chunks], particles=particles, prefix=prefix,
            max_new_tokens=max_new_tokens, pad_id=pad_id, eos=eos, stop=stop,
            full_prompts=[list(prompts[i]) for i in step.items] if stop else None)
        b = len(step.items)
        for p in range(particles):
            for r, i in enumerate(step.items):
                new = rows[p * b + r]
                out[p][i] = new[: next((t for t, tok in enumerate(new) if tok in eos),
                                       len(new))]
    return out


def _eos_ids(eos_id: int | Sequence[int] | None) -> list[int]:
    return [] if eos_id is None else ([eos_id] if isinstance(eos_id, int) else list(eos_id))


@torch.inference_mode()
def generate_hf(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
                eos_id: int | Sequence[int] | None, batch_size: int | None = None,
                max_tokens: int | None = None, particles: int = 1,
                stop_strings: Sequence[str] = (), tokenizer=None) -> list[list[list[int]]]:
    """`generate` by transformers' `model.generate` in length-sorted batches: the engine
    before decode.py, kept for models decode.py does not support and as the reference its
    answers are tested against."""
    fits_context(model, [len(p) + 1 for p in prompts])
    device = device_of(model)
    eos = _eos_ids(eos_id)
    stops = [s for s in stop_strings if s]
    stopping = {"stop_strings": stops, "tokenizer": tokenizer} if stops and tokenizer else {}
    out: list[list[list[int]]] = [[[] for _ in prompts] for _ in range(particles)]
    # Every batch pays one forward per new token, whatever its width: fewer, fuller batches
    # (more padding) win here, where a scoring pass prefers little padding.
    for batch in batches([len(p) for p in prompts], *limits(batch_size, max_tokens, particles),
                          fill=0.4):
        ids, mask = pad([prompts[i] for i in batch], pad_id, left=True, device=device)
        tiled, tmask = tile(ids, mask, particles)
        gen = model.generate(input_ids=tiled, attention_mask=tmask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad_id, eos_token_id=eos or None,
                             **stopping)
        new_tokens = gen[:, ids.shape[1]:].tolist()
        for p in range(particles):
            for row, i in enumerate(batch):
                new = new_tokens[p * len(batch) + row]
                cut = next((t for t, tok in enumerate(new) if tok in eos), len(new))
                out[p][i] = new[:cut]
    return out


# A mixture of experts with different tokenizers (mixture/) is given union ids; it works on
# their bytes, each expert re-reading them with its own tokenizer.
def _text(model, ids: Sequence[int]) -> bytes:
    return model.vocab.text_bytes(list(ids))


def _mixture_continuations(model, prompts: Sequence[Sequence[int]],
                           continuations: Sequence[Sequence[Sequence[int]]]
                           ) -> list[list[float]]:
    return model.continuation_logprobs([_text(model, p) for p in prompts],
                                       [[_text(model, c) for c in cs] for cs in continuations])
