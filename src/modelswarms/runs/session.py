"""Everything a run needs in memory: the pool, its weight space, the resident model, the data.

Built once per process; the search loop then only moves vectors and calls the utility.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..config import RunConfig
from ..errors import UtilityError
from ..evaluation.backend import ResidentModel
from ..evaluation.data import load_split
from ..evaluation.multiplex import ParticleBatch
from ..evaluation.trunk import FrozenTrunk, install_on
from ..evaluation.utilities import ItemScores, Utility, build_utility
from ..pool import ExpertPool, export_expert, load_pool
from ..space import FlatSpace

log = logging.getLogger("modelswarms")


def fingerprint(vector: torch.Tensor) -> bytes:
    """A digest of a weight vector's exact bytes: equal digests, equal weights."""
    raw = vector.detach().contiguous().cpu().view(torch.uint8).numpy()
    return hashlib.blake2b(raw, digest_size=16).digest()


def items_key(items: list[dict]) -> bytes:
    text = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.blake2b(text, digest_size=16).digest()


@dataclass
class Session:
    cfg: RunConfig
    pool: ExpertPool
    space: FlatSpace
    backend: ResidentModel
    utility: Utility
    dev: list[dict]
    test: list[dict] | None
    experts: torch.Tensor  # (experts x parameters), on the model's device
    evaluations: int = 0
    # Events a report shows: cache hits, out-of-memory back-offs, the utility's own counts.
    counts: Counter = field(default_factory=Counter)
    _batch: ParticleBatch | None = None
    # Layers below the first searched one, memoised per input (evaluation/trunk.py).
    trunk: FrozenTrunk | None = None
    # (weights, items) -> scores: a particle that did not move, a restart to a personal best,
    # an expert scored again for the report, costs nothing the second time. Evaluation is
    # deterministic, so a hit returns exactly what a new evaluation would.
    _cache: dict[tuple[bytes, bytes], ItemScores] = field(default_factory=dict)

    @classmethod
    def open(cls, cfg: RunConfig, *, need_test: bool = True) -> Session:
        e = cfg.experts
        pool = load_pool(e.paths, base_model=e.base_model)
        space = FlatSpace.select(pool.experts[0].tensors, e.include, e.exclude)
        backend = ResidentModel(pool, space, device=cfg.model.device, dtype=cfg.model.dtype,
                                trust_remote_code=e.trust_remote_code)
        utility = build_utility(cfg.utility)
        d = cfg.data
        dev = load_split(d, d.dev_split, required=utility.required_fields, limit=d.max_dev)
        test = None
        if need_test:
            test = load_split(d, d.test_split, required=utility.required_fields,
                              limit=d.max_test)
        experts = space.stack([x.tensors for x in pool.experts], device=backend.device)
        session = cls(cfg, pool, space, backend, utility, dev, test, experts)
        if getattr(cfg.model, "reuse_frozen_layers", True):
            session.trunk = install_on(backend, counts=session.counts)
        return session

    def score(self, vector: torch.Tensor | None, items: list[dict]) -> ItemScores:
        """Score a point of the weight space (None: the base model without adapters)."""
        return self.score_many(None if vector is None else vector[None], items)[0]

    def score_many(self, vectors: torch.Tensor | None, items: list[dict]) -> list[ItemScores]:
        """Score rows of `vectors` (None: the base model), several per forward pass when the
        pool and utility allow; rows scored before on these items come from the cache."""
        ikey = items_key(items)
        keys = ([(b"base", ikey)] if vectors is None
                else [(fingerprint(v), ikey) for v in vectors])
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        self.counts["cache_hits"] += len(keys) - len(todo)
        if todo:
            fresh = self._with_backoff(lambda: self._evaluate(
                None if vectors is None else vectors[todo], items))
            for i, result in zip(todo, fresh, strict=True):
                if not math.isfinite(result.value):
                    result = self._invalid(f"returned {result.value}", len(items))
                self.counts.update(result.counts)
                self._cache[keys[i]] = result
        self.evaluations += len(keys)
        return [self._cache[k] for k in keys]

    def _invalid(self, what: str, n_items: int) -> ItemScores:
        """The documented policy for a utility that failed (`utility.on_invalid`)."""
        self.counts["invalid_utility"] += 1
        if self.cfg.utility.on_invalid == "stop":
            raise UtilityError(f"utility {self.utility.name} {what} (utility.on_invalid: "
                               "stop; set it to worst to score such candidates -inf and go on)")
        log.warning("utility %s %s: the candidate scores -inf", self.utility.name, what)
        return ItemScores(-math.inf, [0.0] * n_items, [""] * n_items)

    def _score_one(self, model, items: list[dict]) -> ItemScores:
        try:
            return self.utility.score(model, self.backend.tokenizer, items)
        except UtilityError as err:  # a user's function raised; its message says how
            return self._invalid(f"failed: {err}", len(items))

    def _evaluate(self, vectors: torch.Tensor | None, items: list[dict]) -> list[ItemScores]:
        tok = self.backend.tokenizer
        if vectors is None:
            with self.backend.base_model() as model:
                return [self._score_one(model, items)]
        batch = self._particle_batch()
        if batch is None:
            out = []
            for v in vectors:
                self.backend.load(v)
                out.append(self._score_one(self.backend.model, items))
            return out
        results: list[ItemScores] = []
        for start in range(0, len(vectors), batch.k):
            group = vectors[start : start + batch.k]
            batch.load(group)
            with batch.active(len(group)) as model:
                results += self.utility.score_many(  # type: ignore[attr-defined]
                    model, tok, items, len(group))
        return results

    def _with_backoff(self, fn: Callable[[], list[ItemScores]]) -> list[ItemScores]:
        """Run `fn`; on out-of-memory halve the utility's batch size and token budget and try
        again, down to one item per batch. The smaller batch stays for the rest of the run."""
        while True:
            try:
                return fn()
            except torch.OutOfMemoryError:
                cfg = getattr(self.utility, "cfg", None)
                if cfg is None or cfg.batch_size <= 1:
                    raise UtilityError(
                        f"utility {self.utility.name}: out of memory even with one item per "
                        "batch; use a smaller model dtype, fewer particles_per_forward, or a "
                        "larger device") from None
                if self.trunk is not None:
                    self.trunk.clear()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                smaller = cfg.model_copy(update={
                    "batch_size": max(1, cfg.batch_size // 2),
                    "max_batch_tokens": max(1, cfg.max_batch_tokens // 2)})
                self.utility.cfg = smaller  # type: ignore[attr-defined]
                self.counts["oom_backoffs"] += 1
                log.warning("out of memory: batch size %d -> %d, token budget %d -> %d",
                            cfg.batch_size, smaller.batch_size, cfg.max_batch_tokens,
                            smaller.max_batch_tokens)

    def _particle_batch(self) -> ParticleBatch | None:
        k = self.cfg.model.particles_per_forward
        if k == "auto":
            # On a CPU the forward is compute-bound either way; on a GPU small batches leave
            # it idle, and several particles per forward fill it.
            k = 8 if self.backend.device.type == "cuda" else 1
        if k <= 1 or self.pool.kind != "lora" or not hasattr(self.utility, "score_many"):
            return None
        if self._batch is None or self._batch.k != k:
            self._batch = ParticleBatch(self.backend, k)
        return self._batch

    def dev_utilities(self, vectors: torch.Tensor) -> list[float]:
        return [r.value for r in self.score_many(vectors, self.dev)]

    def export(self, vector: torch.Tensor, folder, metadata: dict[str, str]) -> None:
        """Write `vector` as a standard adapter / model folder (frozen tensors: expert 0's)."""
        tensors = dict(self.pool.experts[0].tensors)
        for name, value in self.space.unflatten(vector.detach().cpu()).items():
            tensors[name] = value.to(tensors[name].dtype)
        export_expert(self.pool, tensors, folder, metadata=metadata)
