"""Greedy decoding on preallocated caches: the engine behind `generation.generate`.

What it does that `model.generate` does not:

- every particle of a batch decodes in the same forward (rows tiled particle-major, as
  multiplex.py expects), and on a GPU a batch holds as many items as its caches fit in a share
  of the device's memory, not the scoring limits (a decoding step reads one token per row);
- the prompt head shared by every item (generation.SharedPrefix) is computed once, and the
  lower layers of a prefill pass go through the frozen-layer memo (trunk.py) like scoring;
- keys and values live in buffers allocated once per batch: a step writes one column, where
  a DynamicCache concatenates (copies) the whole cache of every layer at every step;
- end-of-sequence is tracked on the device; on a GPU the host looks whether every row is done
  every CHECK_EVERY steps, without waiting for the device (an event on a pinned copy);
- on a GPU, from GRAPH_MIN_STEPS steps on, one decoding step (forward, argmax, the eos
  bookkeeping, the counters) is captured once as a CUDA graph and replayed, with the cache at
  its full length (static shapes). A model whose step cannot be captured (a host sync inside
  its forward, found by a warm-up step under torch's sync debug mode) decodes eagerly; the
  batch is redone from its prompts, so nothing half-written is used.

Answers are `model.generate`'s greedy answers: the same first token, eos and stop-string
rules, finished rows padded, the output trimmed where generate would have stopped
(tests/test_generation.py compares them, with and without the shared head and with several
particles per forward).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .batching import batches, cache_of, inputs, limits, pad, tile
from .trunk import SEEN

log = logging.getLogger("modelswarms")

# MODELSWARMS_CUDA_GRAPHS=0 turns the graphs off (they are never used off a GPU).
CUDA_GRAPHS = os.environ.get("MODELSWARMS_CUDA_GRAPHS", "1") != "0"
GRAPH_MIN_STEPS = 16  # capture costs about three eager steps: fewer steps do not repay it
CHECK_EVERY = 8  # GPU: how often the host asks whether every row is done
GRAPH_DEVICES = ("cuda",)  # where decoding steps are captured (tests add "cpu", faking it)
MAX_ROWS = 4096  # GPU: most rows in one decoding batch (attention grids grow with rows x heads)
# What the engine did since the last `STATS.clear()`: graphs captured and replayed, batches
# decoded eagerly, fallbacks to model.generate; benchmarks read it.
STATS: Counter = Counter()


class BufferLayer(DynamicLayer):
    """One layer's keys and values in buffers of the batch's full length.

    Growing mode (`col` None): `keys` is a view of the first `n` columns, a step writes
    column n. Static mode (`col` a one-element device tensor): a step writes column `col` and
    attention reads the whole buffer (the mask hides the columns not written yet), so shapes
    and addresses never change, as a CUDA graph needs.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, n: int,
                 col: torch.Tensor | None = None):
        super().__init__()
        self.kbuf, self.vbuf, self.n, self.col = keys, values, n, col
        self.device, self.is_initialized = keys.device, True
        self._views()

    def _views(self) -> None:
        if self.col is None:
            self.keys, self.values = self.kbuf[:, :, : self.n], self.vbuf[:, :, : self.n]
        else:
            self.keys, self.values = self.kbuf, self.vbuf

    def lazy_initialization(self, key_states, value_states) -> None:  # allocated up front
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.col is not None:
            self.kbuf.index_copy_(2, self.col, key_states)
            self.vbuf.index_copy_(2, self.col, value_states)
            return self.kbuf, self.vbuf
        m = key_states.shape[-2]
        self.kbuf[:, :, self.n : self.n + m].copy_(key_states)
        self.vbuf[:, :, self.n : self.n + m].copy_(value_states)
        self.n += m
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.kbuf.shape[-2] if self.col is not None else self.n

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.col is not None:
            return self.kbuf.shape[-2], 0
        return self.n + query_length, 0

    def get_max_length(self) -> int:
        return self.kbuf.shape[-2]


class BufferCache(Cache):
    def __init__(self, layers: list[BufferLayer]):
        super().__init__(layers=layers)
        # the frozen-layer memo (trunk.py) treats a cache it has seen as a continuation and
        # leaves its forwards alone: decoding steps are never keyed
        setattr(self, SEEN, True)


def supported(model) -> str | None:
    """None when this engine can decode for `model`; else why not (generate is used)."""
    import inspect

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "generate"):
        return "not a transformers causal LM"
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder or unknown model"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return f"attention implementation {getattr(config, '_attn_implementation', None)}"
    types = getattr(config, "layer_types", None)
    if types is not None and any(t != "full_attention" for t in types):
        return "sliding-window or linear attention layers"
    if types is None and getattr(config, "sliding_window", None) and \
            getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(inner).__module__.startswith("transformers."):
        return "a model class from outside transformers (remote code): its cache is unknown"
    params = inspect.signature(inner.forward).parameters
    if not {"position_ids", "logits_to_keep"} <= set(params) or \
            not ({"cache", "past_key_values"} & set(params)):
        return "its forward takes no position ids, cache or logits_to_keep"
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        def value(name: str, default=None):
            return getattr(gen, name, default)

        # settings under which generate's greedy choice is something else than the argmax
        if (value("num_beams") or 1) > 1 or (value("repetition_penalty") or 1.0) != 1.0 or \
                (value("encoder_repetition_penalty") or 1.0) != 1.0 or any(value(n) for n in (
                    "no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens",
                    "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
                    "exponential_decay_length_penalty", "renormalize_logits")) or \
                value("forced_bos_token_id") is not None or \
                value("forced_eos_token_id") is not None:
            return "its generation config changes the greedy choice"
    return None


@dataclass
class Plan:
    """A decoding batch: the items (indices into the prompts) and its prefill chunks."""

    items: list[int]
    chunks: list[list[int]]


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _kv_bytes_per_token(model, elem: int) -> int:
    c = _text_config(model)
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", 16)
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", 1024)
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", 24)
    return 2 * layers * kv_heads * head_dim * elem


def plan(model, lengths: Sequence[int], cut: int, *, particles: int, max_new_tokens: int,
         batch_size: int, max_tokens: int | None, memory_share: float,
         device: torch.device | None = None) -> list[Plan]:
    """Decoding batches. Off a GPU, the scoring limits (per particle), as generate had them:
    there a wider batch buys little. On a GPU, as many items as their caches (prompt and new
    tokens, every particle) fit in `memory_share` of the device's memory less the weights,
    prefilled in chunks of the same order of memory. Sizes come from the device's total
    memory, not its free memory, so the batch layout (and the answers) are the same in every
    run on that device."""
    device = device or next(model.parameters()).device
    if device.type != "cuda":
        rows, tokens = limits(batch_size, max_tokens, particles)
        return [Plan(b, [b]) for b in batches(lengths, rows, tokens, fill=0.4)]
    dtype = model.get_input_embeddings().weight.dtype
    elem = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    c = _text_config(model)
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", 1024)
    inter = getattr(c, "intermediate_size", None) or 4 * hidden
    vocab = getattr(c, "vocab_size", 32000)
    total = torch.cuda.get_device_properties(device).total_memory
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = max(0.85 * total - weights, 1 << 30) * memory_share
    kv = _kv_bytes_per_token(model, elem)
    per_row = vocab * (elem + 8) + 64 * hidden * elem  # logits, argmax, one token's activations
    row_cap = max(1, min(int(budget // (2 * particles * per_row)), MAX_ROWS // particles))
    token_cap = max(1, int(budget // (particles * kv)))
    groups = batches([n + max_new_tokens for n in lengths], row_cap, token_cap, fill=0.4)
    # a prefill pass holds activations of every token it runs: half the budget for them
    act = elem * (6 * hidden + 3 * inter) + kv
    chunk_tokens = max(max_tokens or 0, int(budget // (2 * particles * act)))
    out = []
    for g in groups:
        sub = batches([lengths[i] - cut for i in g], row_cap, chunk_tokens, fill=0.75)
        out.append(Plan(g, [[g[j] for j in c] for c in sub]))
    return out


def _attention_value(model) -> tuple[torch.dtype | None, float | bool, float | bool]:
    """(mask dtype, value where a key is read, value where it is not): sdpa takes a boolean
    mask, eager attention adds a float one (0 / the dtype's minimum), as transformers makes
    them."""
    if model.config._attn_implementation == "sdpa":
        return None, True, False
    dtype = model.get_input_embeddings().weight.dtype
    return dtype, 0.0, torch.finfo(dtype).min


def _mask4d(keep: torch.Tensor, model) -> torch.Tensor:
    dtype, yes, no = _attention_value(model)
    m = keep[:, None, None, :]
    if dtype is None:
        return m.clone()
    return torch.where(m, torch.tensor(yes, dtype=dtype, device=m.device),
                       torch.tensor(no, dtype=dtype, device=m.device))


class _Batch:
    """One decoding batch: prefill, then greedy steps on BufferLayers."""

    def __init__(self, model, kwarg: str, suffixes: list[list[int]], chunks: list[list[int]],
                 *, particles: int, prefix, max_new_tokens: int, pad_id: int, eos: list[int],
                 stop=None, full_prompts: list[list[int]] | None = None):
        self.model, self.kwarg, self.particles = model, kwarg, particles
        self.device = next(model.parameters()).device
        self.b, self.max_new = len(suffixes), max_new_tokens
        self.rows = particles * self.b
        self.pad_id, self.eos, self.stop = pad_id, eos, stop
        self.cut = prefix.length if prefix is not None and prefix.length else 0
        self.prefix = prefix if self.cut else None
        self.suffixes, self.chunks = suffixes, chunks
        ids, mask = pad(suffixes, pad_id, left=True, device=torch.device("cpu"))
        self.width = ids.shape[1]
        self.padded = bool((mask == 0).any())  # host tensors: no device sync
        self.cap = self.cut + self.width + max_new_tokens - 1
        keep = torch.ones(self.b, self.cap, dtype=torch.bool)
        keep[:, self.cut : self.cut + self.width] = mask.bool()
        self.keep = keep.repeat(particles, 1).to(self.device)
        # position of each row's first new token
        self.first_pos = (self.cut + mask.sum(1)).repeat(particles).to(self.device)
        self.eos_t = torch.tensor(eos or [-1], device=self.device)
        self.full = None
        if stop is not None:  # generate's input_ids: left-padded whole prompts, then new tokens
            fids, _ = pad(full_prompts, pad_id, left=True, device=torch.device("cpu"))
            self.full_width = fids.shape[1]
            self.full = torch.full((self.rows, self.full_width + max_new_tokens), pad_id,
                                   dtype=torch.long, device=self.device)
            self.full[:, : self.full_width] = fids.repeat(particles, 1).to(self.device)

    # ---------------------------------------------------------------------------- prefill

    def prefill(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Run the prompts in their chunks into full-length buffers; the first new tokens."""
        buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        first = torch.empty(self.rows, dtype=torch.long, device=self.device)
        b, cut, width = self.b, self.cut, self.width
        for chunk in self.chunks:
            ids, mask = pad([self.suffixes[i] for i in chunk], self.pad_id, left=True,
                             device=self.device)
            args = inputs(*tile(ids, mask, self.particles), self.prefix, self.particles)
            out = self.model(**args, use_cache=True, logits_to_keep=1)
            cache = cache_of(out)
            whole = len(chunk) == b and chunk == list(range(b))
            dest = None if whole else torch.tensor(
                [p * b + i for p in range(self.particles) for i in chunk], device=self.device)
            w = ids.shape[1]
            for n, layer in enumerate(cache.layers):
                keys, values = layer.keys, layer.values
                if n == len(buffers):
                    shape = (self.rows, keys.shape[1], self.cap, keys.shape[3])
                    # zeros, not empty: a masked column must hold a finite key (0 * NaN)
                    buffers.append((keys.new_zeros(shape),
                                    values.new_zeros((*shape[:3], values.shape[3]))))
                for buf, src in zip(buffers[n], (keys, values), strict=True):
                    # left padding: the chunk's columns end where the batch's prompt ends
                    for lo, hi, s_lo in ((0, cut, 0), (cut + width - w, cut + width, cut)):
                        if hi <= lo:
                            continue
                        part = src[:, :, s_lo : s_lo + hi - lo]
                        if dest is None:
                            buf[:, :, lo:hi].copy_(part)
                        else:
                            buf[:, :, lo:hi].index_copy_(0, dest, part)
            nxt = out.logits[:, -1].argmax(-1)
            if dest is None:
                first.copy_(nxt)
            else:
                first.index_copy_(0, dest, nxt)
            del out, cache
        return buffers, first

    # ----------------------------------------------------------------------------- decode

    def run(self, graphs: bool, static: bool = False) -> list[list[int]]:
        """Greedy new tokens of every row (particle-major), trimmed as generate trims them.
        `static` (tests): the graph's static-shape step, run eagerly."""
        buffers, first = self.prefill()
        dev = self.device
        max_new = self.max_new
        tokens = torch.full((self.rows, max_new), self.pad_id, dtype=torch.long, device=dev)
        tokens[:, 0] = first
        done = torch.zeros(self.rows, dtype=torch.bool, device=dev)
        done_at = torch.full((self.rows,), max_new, dtype=torch.long, device=dev)
        self._record_full(0, first)
        self._finish(first, torch.zeros(1, dtype=torch.long, device=dev), done, done_at)
        steps = 1
        use_graph = graphs and dev.type in GRAPH_DEVICES and max_new - 1 >= GRAPH_MIN_STEPS
        if max_new > 1:
            if (use_graph or static) and self.full is None:
                steps = self._static(buffers, tokens, done, done_at, use_graph)
            else:
                steps = self._growing(buffers, tokens, done, done_at)
        # generate stops after the step where the last row finished
        ends = int(done_at.max()) + 1
        return tokens[:, : min(steps, ends)].tolist()

    def _finish(self, nxt: torch.Tensor, t: torch.Tensor, done: torch.Tensor,
                done_at: torch.Tensor) -> None:
        """Rows that end with token `nxt` at step `t` (a device scalar): eos, a stop string
        (generate's StopStringCriteria on its input ids, which `_record_full` keeps)."""
        hit = (nxt[:, None] == self.eos_t).any(-1) if self.eos else torch.zeros_like(done)
        if self.full is not None:
            hit = hit | self.stop(self.full[:, : self.full_len], None).to(done.device)
        hit = hit & ~done
        done_at.copy_(torch.where(hit, t, done_at))
        done.logical_or_(hit)

    def _pick(self, logits: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        nxt = logits[:, -1].argmax(-1)
        if self.eos:  # generate pads finished rows only when it stops at eos
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
        return nxt

    def _record_full(self, t: int, nxt: torch.Tensor) -> None:
        if self.full is not None:
            self.full[:, self.full_width + t] = nxt
            self.full_len = self.full_width + t + 1

    def _growing(self, buffers, tokens, done, done_at) -> int:
        """Eager steps: attention over the columns written so far."""
        n0 = self.cut + self.width
        cache = BufferCache([BufferLayer(k, v, n0) for k, v in buffers])
        # No mask where no row is padded, as generate does (same kernels, same bits on a
        # CPU); on a GPU always one, since some models look for padding in the ids when
        # there is none (a host sync per step)
        mask = None if not self.padded and self.device.type == "cpu" else \
            _mask4d(self.keep, self.model)
        pos = self.first_pos[:, None].clone()
        watch = _DoneWatch(done)
        t = 1
        while t < self.max_new:
            if watch.all_done(t):
                break
            n = n0 + t - 1  # columns before this step's token
            out = self.model(input_ids=tokens[:, t - 1 : t], position_ids=pos,
                             attention_mask=None if mask is None else mask[..., : n + 1],
                             use_cache=True, logits_to_keep=1, **{self.kwarg: cache})
            nxt = self._pick(out.logits, done)
            del out
            tokens[:, t] = nxt
            self._record_full(t, nxt)
            self._finish(nxt, torch.full((1,), t, device=self.device), done, done_at)
            pos += 1
            t += 1
        STATS["eager_steps"] += t - 1
        return t

    def _static(self, buffers, tokens, done, done_at, use_graph: bool) -> int:
        """Static-shape steps (the whole buffer, a mask column opened per step), captured as
        one CUDA graph when `use_graph`; run eagerly otherwise (tests on a CPU)."""
        dev = self.device
        n0 = self.cut + self.width
        col = torch.full((1,), n0, dtype=torch.long, device=dev)
        t = torch.ones(1, dtype=torch.long, device=dev)
        cache = BufferCache([BufferLayer(k, v, n0, col) for k, v in buffers])
        keep = self.keep.clone()
        keep[:, n0:] = False  # columns not written yet
        mask = _mask4d(keep, self.model)
        _, yes, _ = _attention_value(self.model)
        ids = tokens[:, :1].clone()
        pos = self.first_pos[:, None].clone()

        def step() -> None:
            mask.index_fill_(3, col, yes)
            out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask,
                             use_cache=True, logits_to_keep=1, **{self.kwarg: cache})
            nxt = self._pick(out.logits, done)
            tokens.index_copy_(1, t, nxt[:, None])
            self._finish(nxt, t, done, done_at)
            ids.copy_(nxt[:, None])
            pos.add_(1)
            col.add_(1)
            t.add_(1)

        if not use_graph:
            watch = _DoneWatch(done)
            step_no = 1
            while step_no < self.max_new and not watch.all_done(step_no):
                step()
                step_no += 1
            STATS["static_steps"] += step_no - 1
            return step_no
        return self._graph(step, done)

    def _graph(self, step, done) -> int:
        """Warm up (two real steps), capture one step, replay it until every row is done."""
        _warm_up(step)
        replay = capture_graph(step)
        STATS["graphs_captured"] += 1
        watch = _DoneWatch(done)
        n = 3  # the first token and the two warm-up steps; capturing runs nothing
        while n < self.max_new and not watch.all_done(n):
            replay()
            n += 1
        STATS["graph_replays"] += n - 3
        return n


def _warm_up(step: Callable[[], None]) -> None:
    """Two eager steps on a side stream, as capture wants; the second under the sync debug
    mode, which raises on a host sync inside the forward (it would break the graph)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(before)
    torch.cuda.current_stream().wait_stream(side)


def capture_graph(step: Callable[[], None]) -> Callable[[], None]:
    """One decode step recorded as a CUDA graph, its replay returned: the seam a failed or
    faked capture is tested through (a failure falls back to eager steps)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


class _DoneWatch:
    """Whether every row is done, asked without making the host wait on a GPU: every
    CHECK_EVERY steps a flag is copied to pinned memory behind an event, and read once the
    event has passed (a step or a few later). On a CPU it is read at once, every step."""

    def __init__(self, done: torch.Tensor):
        self.done = done
        self.cuda = done.device.type == "cuda"
        if self.cuda:
            self.host = torch.zeros((), dtype=torch.bool).pin_memory()
            self.event: torch.cuda.Event | None = None
            self.asked = 0

    def all_done(self, step: int) -> bool:
        if not self.cuda:
            return bool(self.done.all())
        if self.event is not None and (self.event.query() or step - self.asked >= 4 *
                                       CHECK_EVERY):
            self.event.synchronize()  # already passed, or bound how far the host runs ahead
            self.event = None
            if bool(self.host):
                return True
        if self.event is None and step % CHECK_EVERY == 0:
            self.host.copy_(self.done.all(), non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
            self.asked = step
        return False


def disable_graphs(reason: BaseException) -> None:
    global CUDA_GRAPHS
    CUDA_GRAPHS = False
    STATS["graph_failures"] += 1
    log.warning("CUDA graphs turned off for generation (%s: %s); decoding eagerly",
                type(reason).__name__, reason)


def decode(model, kwarg: str, suffixes: list[list[int]], chunks: list[list[int]], **kw
           ) -> list[list[int]]:
    """Greedy new tokens of one batch, rows particle-major; a failed graph falls back to
    eager decoding of the whole batch."""
    static = kw.pop("static", False)
    graphs = CUDA_GRAPHS and not static and kw.get("stop") is None
    try:
        return _Batch(model, kwarg, suffixes, chunks, **kw).run(graphs, static)
    except torch.OutOfMemoryError:
        raise  # the evaluator's back-off halves the limits and tries again
    except Exception as err:  # noqa: BLE001 - any failure of the graph path
        if not (graphs and next(model.parameters()).device.type in GRAPH_DEVICES):
            raise
        disable_graphs(err)
        return _Batch(model, kwarg, suffixes, chunks, **kw).run(False)
