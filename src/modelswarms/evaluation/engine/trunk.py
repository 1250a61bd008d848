"""The frozen trunk: decoder layers below the first searched tensor, computed once per input.

Every particle of a search shares the weights of the embeddings and of every decoder layer
below the first one that holds a searched tensor (layer k; 14 for the shipped SmolLM2 pool,
whose adapters cover layers 14-29). On the same inputs those layers give every particle the
same hidden states and the same keys and values, so `FrozenTrunk` remembers the output of
layer k-1 (and, where a cache is being filled, the lower layers' new keys and values) per
distinct forward input, and later forwards on the same input skip layers 0..k-1.

How it hooks in (Llama-like models: `<causal lm>.model.layers`; any other structure: nothing
is installed). A pre-hook on the decoder model sees the forward's input ids, attention mask,
position ids and cache. Layer 0's `forward` is replaced on the instance: on a forward it can
key, it returns the remembered output of layer k-1 (computing it on a miss), writes the
lower layers' keys and values into the cache being filled, and tells layers 1..k-1 (also
wrapped) to pass their input through unchanged.

Exactness. A memo entry is keyed by a blake2b digest of everything the lower layers see: the
input ids, the 2-D attention mask, the position ids, the shapes, the bytes of the lower
layers' prefix keys/values in the cache (the shared prompt head), and any non-tensor layer
arguments. Every other input of layers < k is frozen: their parameters and buffers (and the
embeddings') are watched through their storage pointers and version counters, and any
in-place change clears the memo (a write through `param.data`, which bumps no version
counter, is not seen: call `clear()` after one). The entry is always computed on the same rows (the
distinct row block, see below) whether or not it was in the memo before, so a hit returns
bit for bit what a miss would have: results do not depend on what was evaluated earlier, and
a resumed run stays bit-identical to an uninterrupted one.

Several particles per forward: rows are tiled particle-major, so the batch is n copies of a
block of b rows; the trunk finds the smallest such block (from the ids, mask and positions),
computes b rows and repeats them. LoRA modules inside layers < k (adapters excluded from the
search there) run their own (class) forward while the trunk computes, since every particle
holds the same frozen factors.

The base model (adapter disabled). If layers < k hold no LoRA module at all (the shipped
pool: `layers_to_transform` starts at 14) the base model's lower layers are the very same
modules with the same weights, so its forwards share entries with every particle's: exact.
If they do hold LoRA modules (frozen, excluded from the search), disabling the adapter
changes those layers, so the adapter state of those modules is part of the key.

Caches. A cache is "wanted" when the caller passes one or `use_cache=True`; then the lower
layers' new keys and values are kept with the entry and written into the cache on a hit, so
a later forward can continue from it. When the caller passes neither, the trunk turns
`use_cache` off (no cache is returned) and keeps hidden states only; a caller that passes a
cache with `use_cache=False` declares it will not read it back, so its lower layers are not
filled on a hit. A cache object the trunk has seen before (generation's decoding steps, a
continuation of a cache it filled) is never keyed: those forwards run every layer normally.
Nor is a cache whose lower-layer prefix differs between rows (one prompt per row): hashing it
would cost more than the layers. Forwards with gradients, in training mode, from
`inputs_embeds`, asking for hidden states or attentions, or with unknown tensor arguments
also run normally.

A question's options (generation.option_logprobs, cloze scoring). The first pass runs the
questions and fills a cache; the second runs every option's tokens on a copy of its question's
rows of that cache (`select_rows`), so that cache's rows differ and the rule above would run
every layer. But the lower layers of those rows are a function of the first pass's inputs:
the trunk tags the cache it fills with the first pass's key, `select_rows` tags its copy with
that key and the row map, and the second pass is keyed by (the first pass's key, which of its
distinct rows each row copies, the option ids, mask and positions): a hit skips layers
0..k-1 for the options too. The tags hold weak references to the lower layers' key and value
tensors (and their version counters, outside inference mode): a cache changed since (a
continuation; an in-place write, where it is counted), or a memo cleared since, is not keyed
by its tag. Particle-major tiling works here as above (the rows of every particle copy the
same question rows), and so does a cache of several blocks (multiplex.LogitAverage). The
option pass passes `use_cache=False`, so its entries hold hidden states only.

Memory: entries are kept least-recently-used first out within `max_bytes` (default: about
1000 items of 256 tokens, hidden states plus lower keys/values, between 64 MiB and 8 GiB).
"""

from __future__ import annotations

import contextlib
import hashlib
import types
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

SEEN = "_modelswarms_trunk_seen"  # set on every cache object the trunk has handled
_ATTR = "_modelswarms_trunk"  # the decoder model's installed trunk
_ORIGIN = "_modelswarms_trunk_origin"  # on a cache the trunk filled / a row copy of one
# layer arguments the key already covers (the 4-D mask and the rotary tables are functions of
# the 2-D mask, the positions and the cache) or that the trunk handles itself
_KNOWN = {"attention_mask", "position_ids", "position_embeddings", "cache", "past_key_values",
          "use_cache"}
_MiB = 1 << 20


def decoder_layers(model) -> tuple[torch.nn.Module, torch.nn.ModuleList] | None:
    """(decoder model, its layer list) of a Llama-like causal LM, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, getattr(base, "base_model_prefix", "model") or "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(inner, torch.nn.Module) or not isinstance(layers, torch.nn.ModuleList) \
            or len(layers) == 0:
        return None
    return inner, layers


def first_searched_layer(model, searched: Iterable[torch.nn.Parameter]) -> int:
    """Index of the first decoder layer holding a searched parameter (the layer count when
    only the LM head or the final norm is searched); 0 when something the layers read is
    searched (the embeddings, a tied LM head) or the model has no known layer list."""
    found = decoder_layers(model)
    if found is None:
        return 0
    inner, layers = found
    layer_of: dict[int, int] = {}
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            layer_of.setdefault(id(p), i)
    norm = getattr(inner, "norm", None)
    after = {id(p) for p in norm.parameters()} if isinstance(norm, torch.nn.Module) else set()
    in_decoder = {id(p) for p in inner.parameters()}
    k = len(layers)
    for p in searched:
        if id(p) in layer_of:
            k = min(k, layer_of[id(p)])
        elif id(p) in after:
            continue  # the final norm comes after every layer
        elif id(p) in in_decoder:
            return 0  # the embeddings or anything else the layers read
        # else: outside the decoder model (an untied LM head), after every layer
    return k


@dataclass
class _Entry:
    hidden: torch.Tensor  # (b, T, H): the output of layer k-1 for the distinct rows
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # lower layers' new keys/values
    nbytes: int


@dataclass
class _Call:
    ids: np.ndarray
    mask: np.ndarray | None
    positions: np.ndarray | None
    wanted: bool


class _Snapshot:
    """The lower layers' key/value tensors of a cache as they are now: weak references and
    version counters (DynamicLayer.update replaces its tensors, in-place writes bump the
    counter; inference-mode tensors have none), so a later look can tell whether the cache
    still holds what was tagged."""

    def __init__(self, cache, k: int):
        tensors = _lower_tensors(cache, k)
        self.refs = [(weakref.ref(t), _version(t)) for t in tensors] if tensors else None

    def holds(self, cache, k: int) -> bool:
        tensors = _lower_tensors(cache, k)
        return self.refs is not None and tensors is not None and \
            len(tensors) == len(self.refs) and all(
                ref() is t and _version(t) == version
                for (ref, version), t in zip(self.refs, tensors, strict=True))


def _version(t: torch.Tensor) -> int | None:
    return None if t.is_inference() else t._version


def _lower_tensors(cache, k: int) -> list[torch.Tensor] | None:
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) < k:
        return None
    tensors = [t for layer in layers[:k] for t in (getattr(layer, "keys", None),
                                                   getattr(layer, "values", None))]
    return tensors if all(torch.is_tensor(t) for t in tensors) else None


@dataclass
class _Origin:
    """Tag of a cache the trunk filled: what its lower layers hold is a function of `key`
    (the forward's memo key): row r holds the prefix, then the entry's row r mod `period`."""
    trunk: object  # the trunk's token
    epoch: int  # the memo's generation (clear() starts a new one)
    key: bytes
    period: int
    rows: int
    length: int  # prefix + new tokens
    k: int
    snapshot: _Snapshot


@dataclass
class _Derived:
    """Tag of a row copy of a tagged cache (`select_rows`): row j copies row index[j]."""
    origin: _Origin
    index: np.ndarray
    snapshot: _Snapshot


def select_rows(cache, rows: torch.Tensor, config):
    """A DynamicCache holding rows `rows` (a 1-D index) of every layer of `cache`. When the
    frozen trunk filled `cache` the copy says so, and a forward on it can use the memo."""
    from transformers import DynamicCache

    out = DynamicCache(ddp_cache_data=[(layer.keys[rows], layer.values[rows])
                                       for layer in cache.layers], config=config)
    origin = getattr(cache, _ORIGIN, None)
    if isinstance(origin, _Origin) and origin.snapshot.holds(cache, origin.k):
        index = rows.detach().cpu().numpy().astype(np.int64)
        if index.ndim == 1 and (index.size == 0 or (index.min() >= 0 and
                                                    index.max() < origin.rows)):
            setattr(out, _ORIGIN, _Derived(origin, index, _Snapshot(out, origin.k)))
    return out


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    if t.dtype == torch.bfloat16:  # no numpy type: its bits are what the key needs
        t = t.view(torch.int16)
    return t.detach().cpu().numpy()


def _period(arrays: list[np.ndarray | None], rows: int) -> int:
    """The smallest b such that every array with `rows` rows is rows/b copies of its first b."""
    for b in range(1, rows):
        if rows % b:
            continue
        n = rows // b
        if all(a is None or a.shape[0] != rows or np.array_equal(
                a.reshape(n, b, *a.shape[1:]), np.broadcast_to(a[:b], (n, b, *a.shape[1:])))
               for a in arrays):
            return b
    return rows


def _rows(value, rows: int, b: int):
    """`value` cut to its first b rows where it has `rows` rows (tensors and tuples of them)."""
    if torch.is_tensor(value):
        return value[:b] if value.dim() and value.shape[0] == rows else value
    if isinstance(value, tuple):
        return tuple(_rows(v, rows, b) for v in value)
    return value


def _has_tensor(value) -> bool:
    if torch.is_tensor(value):
        return True
    return isinstance(value, (tuple, list)) and any(_has_tensor(v) for v in value)


def default_max_bytes(config, k: int, dtype: torch.dtype) -> int:
    """About 1000 items of 256 tokens: hidden states plus k layers' keys and values."""
    hidden = getattr(config, "hidden_size", 1024)
    heads = getattr(config, "num_attention_heads", 16) or 16
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_token = (hidden + 2 * k * kv_heads * head_dim) * torch.finfo(dtype).bits // 8
    return int(min(max(1000 * 256 * per_token, 64 * _MiB), 8192 * _MiB))


class FrozenTrunk:
    """Memoises layers 0..k-1 of a decoder model per distinct forward input (module doc)."""

    def __init__(self, model, k: int, *, max_bytes: int | None = None,
                 counts: Counter | None = None):
        found = decoder_layers(model)
        if found is None or not 1 <= k <= len(found[1]):
            raise ValueError(f"no frozen trunk of {k} layers in this model")
        self.inner, layers = found
        self.k = k
        self.lower = list(layers[:k])
        self.counts = counts if counts is not None else Counter()
        dtype = next(self.inner.parameters()).dtype
        self.max_bytes = max_bytes if max_bytes is not None else \
            default_max_bytes(self.inner.config, k, dtype if dtype.is_floating_point
                              else torch.float32)
        self.memo: OrderedDict[bytes, _Entry] = OrderedDict()
        self.nbytes = 0
        self._token = object()  # names this trunk in the tags of the caches it fills
        self._epoch = 0
        self._prefixes: list[tuple[list[torch.Tensor], bytes]] = []  # recent prompt heads
        self._tuners = self._lower_tuners()
        self._watched = self._frozen_tensors(layers)
        self._weights = self._weights_state()
        self._call: _Call | None = None
        self._skip = False
        self._orig = [layer.forward for layer in self.lower]
        self._patched = ["forward" in layer.__dict__ for layer in self.lower]
        self.lower[0].forward = types.MethodType(self._first_forward, self.lower[0])
        for layer in self.lower[1:]:
            layer.forward = types.MethodType(self._pass_forward(layer.forward), layer)
        self._hooks = [
            self.inner.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.inner.register_forward_hook(self._post, always_call=True),
        ]
        setattr(self.inner, _ATTR, self)

    # ----------------------------------------------------------------------------- set-up

    @property
    def frozen_adapters(self) -> int:
        """How many adapter modules sit in the memoised layers (outside the search, yet
        part of every particle's model): their state goes into the memo's key."""
        return len(self._tuners)

    def _lower_tuners(self) -> list[torch.nn.Module]:
        try:
            from peft.tuners.tuners_utils import BaseTunerLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            return []
        return [m for layer in self.lower for m in layer.modules()
                if isinstance(m, BaseTunerLayer)]

    def _frozen_tensors(self, layers: torch.nn.ModuleList) -> list[torch.Tensor]:
        """Parameters and buffers of the decoder model that the lower layers' output reads:
        all but those of layers >= k and of the final norm."""
        skip = {id(t) for layer in layers[self.k:] for t in
                (*layer.parameters(), *layer.buffers())}
        norm = getattr(self.inner, "norm", None)
        if isinstance(norm, torch.nn.Module):
            skip |= {id(t) for t in (*norm.parameters(), *norm.buffers())}
        return [t for t in (*self.inner.parameters(), *self.inner.buffers())
                if id(t) not in skip]

    def _weights_state(self) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in self._watched)

    def _adapter_state(self) -> bytes:
        return repr([(m.disable_adapters, tuple(m.active_adapters), m.merged)
                     for m in self._tuners]).encode()

    def remove(self) -> None:
        """Uninstall: the layers run as before, the memo is freed."""
        for hook in self._hooks:
            hook.remove()
        for layer, orig, patched in zip(self.lower, self._orig, self._patched, strict=True):
            if patched:
                layer.forward = orig
            else:
                del layer.forward
        if getattr(self.inner, _ATTR, None) is self:
            delattr(self.inner, _ATTR)
        self.clear()

    def clear(self) -> None:
        self.memo.clear()
        self._prefixes.clear()
        self.nbytes = 0
        self._epoch += 1  # tags of caches filled so far name entries that may be gone

    # ------------------------------------------------------------------------ the forward

    def _pre(self, module, args, kwargs):
        self._call, self._skip = None, False
        if torch.is_grad_enabled() or module.training or len(args) > 1:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or kwargs.get("inputs_embeds") is not None or ids.dim() != 2 or \
                kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            return None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and getattr(cache, SEEN, False):
            return None  # a continuation: decoding steps of generate
        use_cache = kwargs.get("use_cache")
        wanted = use_cache is True or (cache is not None and use_cache is not False)
        mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if (mask is not None and not torch.is_tensor(mask)) or \
                (positions is not None and not torch.is_tensor(positions)):
            return None
        self._call = _Call(_numpy(ids), _numpy(mask), _numpy(positions), wanted)
        if not wanted and cache is None and use_cache is not False:
            # nobody asked for a cache: none is built (its lower layers would stay empty)
            return args, {**kwargs, "use_cache": False}
        return None

    def _post(self, module, args, output):
        self._call, self._skip = None, False

    def _pass_forward(self, orig):
        trunk = self

        def forward(layer, hidden_states, *args, **kwargs):
            if trunk._skip:
                return hidden_states  # already the output of layer k-1
            return orig(hidden_states, *args, **kwargs)

        return forward

    def _first_forward(self, layer, hidden_states: torch.Tensor, *args, **kwargs):
        call, self._call = self._call, None
        orig = self._orig[0]
        if call is None or args or hidden_states.dim() != 3:
            return orig(hidden_states, *args, **kwargs)
        rows, length = hidden_states.shape[:2]
        cache_name = "past_key_values" if "past_key_values" in kwargs else "cache"
        cache = kwargs.get(cache_name)
        extras = {n: v for n, v in kwargs.items() if n not in _KNOWN}
        if call.ids.shape != (rows, length) or any(_has_tensor(v) for v in extras.values()):
            return orig(hidden_states, *args, **kwargs)
        state = self._weights_state()
        if state != self._weights:  # a frozen weight changed in place: forget everything
            self.clear()
            self._weights = state
            self.counts["frozen_layers_cleared"] += 1
        with torch.profiler.record_function("modelswarms.memo_key"):
            found = self._key(call, cache, rows, length, hidden_states.dtype, extras)
        if found is None:
            return orig(hidden_states, *args, **kwargs)
        key, b, past, source = found
        n = rows // b
        fill = cache is not None and call.wanted
        entry = self.memo.get(key)
        if entry is None or (fill and entry.kv is None):
            self.counts["frozen_layers_misses"] += 1
            if source is not None:  # of which on a row copy (an option pass)
                self.counts["frozen_layers_copy_misses"] += 1
            entry = self._compute(hidden_states[:b], kwargs, rows, b, cache_name, cache,
                                  past, keep_kv=fill)
            if entry is None:  # a layer that is not Llama-like: give up for good
                return orig(hidden_states, *args, **kwargs)
            self._store(key, entry)
        else:
            self.counts["frozen_layers_hits"] += 1
            if source is not None:
                self.counts["frozen_layers_copy_hits"] += 1
            self.memo.move_to_end(key)
        if fill:
            for i, (keys, values) in enumerate(entry.kv or []):
                cache.update(keys.repeat(n, 1, 1, 1) if n > 1 else keys,
                             values.repeat(n, 1, 1, 1) if n > 1 else values, i)
            # a row copy of this cache (select_rows) can be keyed by this forward's key
            setattr(cache, _ORIGIN, _Origin(self._token, self._epoch, key, b, rows,
                                            past + length, self.k, _Snapshot(cache, self.k)))
        self._skip = True
        return entry.hidden.repeat(n, 1, 1) if n > 1 else entry.hidden.clone()

    def _key(self, call: _Call, cache, rows: int, length: int, dtype: torch.dtype,
             extras: dict) -> tuple[bytes, int, int, np.ndarray | None] | None:
        """(memo key, distinct row block b, prefix length, row-copy map) of this forward, or
        None when the trunk cannot key it."""
        prefix = self._prefix(cache, rows)
        if cache is not None:
            setattr(cache, SEEN, True)
        if prefix is None:
            return None
        past, prefix_digest, source = prefix
        # source: which distinct row of a tagged first pass each cache row copies
        b = _period([call.ids, call.mask, call.positions, source], rows)
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((b, length, past, str(dtype), sorted(
            (k, repr(v)) for k, v in extras.items()), source is not None)).encode())
        h.update(self._adapter_state() if self._tuners else b"")
        h.update(prefix_digest)
        if source is not None:
            h.update(np.ascontiguousarray(source[:b]).tobytes())
        for name, a in (("ids", call.ids), ("mask", call.mask), ("pos", call.positions)):
            h.update(name.encode())
            if a is None:
                h.update(b"none")
                continue
            a = a[:b] if a.shape[0] == rows else a
            h.update(repr(a.shape).encode() + str(a.dtype).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.digest(), b, past, source

    def _prefix(self, cache, rows: int) -> tuple[int, bytes, np.ndarray | None] | None:
        """(prefix length, digest of the lower layers' prefix keys/values, None) of a cache;
        for a row copy of a cache the trunk filled (select_rows): (its length, that fill's
        key, which distinct row of it each row holds); None when the trunk cannot key it
        (other cache layouts, rows that differ)."""
        if cache is None:
            return 0, b"", None
        from transformers.cache_utils import DynamicLayer

        if getattr(cache, "offloading", False) or not hasattr(cache, "layers"):
            return None
        lengths = set()
        for i in range(self.k):
            layer = cache.layers[i] if i < len(cache.layers) else None
            if layer is not None and type(layer) is not DynamicLayer:
                return None  # sliding windows, quantised or static caches
            lengths.add(layer.get_seq_length() if layer is not None else 0)
        if len(lengths) != 1:
            return None
        past = lengths.pop()
        if past == 0:
            return 0, b"", None
        derived = getattr(cache, _ORIGIN, None)
        if isinstance(derived, _Derived):
            origin = derived.origin
            if origin.trunk is self._token and origin.epoch == self._epoch and \
                    origin.k == self.k and origin.length == past and \
                    derived.index.shape[0] == rows and derived.snapshot.holds(cache, self.k):
                return past, b"rows" + origin.key, derived.index % origin.period
        tensors = [t for layer in cache.layers[: self.k] for t in (layer.keys, layer.values)]
        if any(t.shape[0] != rows for t in tensors):
            return None
        # a prompt head shared by every row (generation.SharedPrefix): one row says it all;
        # one prompt per row (a question's cache) usually shows in the first tensor already
        if not bool((tensors[0] == tensors[0][:1]).all()) or \
                not bool(torch.stack([(t == t[:1]).all() for t in tensors[1:]]).all()):
            return None
        heads = [t[0] for t in tensors]
        for known, digest in self._prefixes:
            if all(a.shape == b.shape for a, b in zip(known, heads, strict=True)) and bool(
                    torch.stack([(a == b).all() for a, b in zip(known, heads, strict=True)])
                    .all()):
                return past, digest, None
        h = hashlib.blake2b(digest_size=16)
        for t in heads:
            h.update(repr((tuple(t.shape), str(t.dtype))).encode())
            h.update(_bytes(t))
        digest = h.digest()
        self._prefixes = [*self._prefixes[-7:], ([t.clone() for t in heads], digest)]
        return past, digest, None

    def _compute(self, hidden: torch.Tensor, kwargs: dict, rows: int, b: int,
                 cache_name: str, cache, past: int, keep_kv: bool) -> _Entry | None:
        """Layers 0..k-1 on the distinct b rows, with a private cache for their keys/values."""
        from transformers import DynamicCache

        sub = {n: _rows(v, rows, b) for n, v in kwargs.items() if n != cache_name}
        private = None
        if keep_kv or past:
            private = DynamicCache()
            for i in range(self.k if past else 0):
                layer = cache.layers[i]
                private.update(layer.keys[:b], layer.values[:b], i)
        sub[cache_name] = private
        with self._own_forwards():
            for orig in self._orig:
                hidden = orig(hidden, **sub)
                if not torch.is_tensor(hidden):
                    self.remove()
                    return None
        kv = None
        if keep_kv:
            kv = [(layer.keys[:, :, past:].contiguous() if past else layer.keys,
                   layer.values[:, :, past:].contiguous() if past else layer.values)
                  for layer in private.layers[: self.k]]
        nbytes = hidden.numel() * hidden.element_size() + sum(
            t.numel() * t.element_size() for pair in kv or [] for t in pair)
        return _Entry(hidden, kv, nbytes)

    @contextlib.contextmanager
    def _own_forwards(self) -> Iterator[None]:
        """LoRA modules below layer k run their class forward (not multiplex.ParticleBatch's
        per-row-block one): every particle holds the same frozen factors there."""
        saved = [(m, m.__dict__.pop("forward")) for m in self._tuners if "forward" in m.__dict__]
        try:
            yield
        finally:
            for m, fwd in saved:
                m.forward = fwd

    def _store(self, key: bytes, entry: _Entry) -> None:
        old = self.memo.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        if entry.nbytes > self.max_bytes:
            return
        self.memo[key] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes:
            _, dropped = self.memo.popitem(last=False)
            self.nbytes -= dropped.nbytes


def install(model, searched: Iterable[torch.nn.Parameter], *, max_bytes: int | None = None,
            counts: Counter | None = None) -> FrozenTrunk | None:
    """A FrozenTrunk over the layers below the first searched parameter of `model`, or None
    when there are none (a searched tensor in layer 0 or the embeddings, an unknown model)."""
    found = decoder_layers(model)
    if found is None:
        return None
    old = getattr(found[0], _ATTR, None)
    if old is not None:
        old.remove()
    k = first_searched_layer(model, searched)
    if k < 1:
        return None
    return FrozenTrunk(model, k, max_bytes=max_bytes, counts=counts)


def install_on(backend, *, max_bytes: int | None = None,
               counts: Counter | None = None) -> FrozenTrunk | None:
    """`install` for a ResidentModel: its searched parameters are its weight space's slots."""
    params = dict(backend.model.named_parameters(remove_duplicate=False))
    searched = [params[backend.pool.live_name(s.name)] for s in backend.space.slots]
    return install(backend.model, searched, max_bytes=max_bytes, counts=counts)
