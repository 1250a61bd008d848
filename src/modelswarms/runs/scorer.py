"""The loop's side of the evaluator seam: a score cache, evaluation counts, the invalid-utility
policy and the events a report shows. Whatever evaluates (evaluation/evaluator.py), this stays
with the driver, so budgets, caches and reports do not depend on where forwards run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import torch

from ..errors import DataError, UtilityError
from ..evaluation.evaluator import Evaluator
from ..evaluation.objectives.utilities import ItemScores, Utility

log = logging.getLogger("modelswarms")


def fingerprint(vector: torch.Tensor) -> bytes:
    """A digest of a weight vector's exact bytes: equal digests, equal weights."""
    raw = vector.detach().contiguous().cpu().view(torch.uint8).numpy()
    return hashlib.blake2b(raw, digest_size=16).digest()


_HASHERS: ThreadPoolExecutor | None = None
PARALLEL_HASH_BYTES = 1 << 22  # rows smaller than this hash faster than threads start


def fingerprints(vectors: torch.Tensor) -> list[bytes]:
    """`fingerprint` of every row. Large rows hash on several threads: hashlib releases the
    GIL while it hashes, and at 7B-pool sizes the digests of one iteration's particles are
    seconds of the driver's serial work on one core (docs/bench_ray.md)."""
    global _HASHERS
    rows = list(vectors)
    if len(rows) < 2 or rows[0].numel() * rows[0].element_size() < PARALLEL_HASH_BYTES:
        return [fingerprint(v) for v in rows]
    if _HASHERS is None:
        _HASHERS = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1),
                                      thread_name_prefix="modelswarms-hash")
    return list(_HASHERS.map(fingerprint, rows))


def items_key(items: list[dict]) -> bytes:
    text = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.blake2b(text, digest_size=16).digest()


class Scorer:
    """Scores points of a weight space with `utility` through `evaluator`, each (weights,
    items, utility) once: a particle that did not move, a restart to a personal best, an
    expert scored again for the report, costs nothing the second time. Evaluation is
    deterministic, so a hit returns exactly what a new evaluation would."""

    def __init__(self, evaluator: Evaluator, utility: Utility, on_invalid: str = "stop"):
        self.evaluator, self.utility, self.on_invalid = evaluator, utility, on_invalid
        self.evaluations = 0  # requests for the search utility (what budgets count)
        self._counts: Counter = Counter()
        self._cache: dict[tuple[bytes, bytes, str], ItemScores] = {}
        self.warned: set[str] = set()  # runs/checks.py: each warning once per session
        self.source: str | None = None  # the data's name, for errors about its items

    @property
    def counts(self) -> Counter:
        """The report's events: this side's (cache hits, invalid utilities, the utility's own
        counts) and whatever the evaluator reported since."""
        self._counts.update(self.evaluator.drain_events())
        return self._counts

    def score(self, vector: torch.Tensor | None, items: list[dict],
              utility: Utility | None = None) -> ItemScores:
        """Score a point of the weight space (None: the base model without adapters)."""
        return self.score_many(None if vector is None else vector[None], items, utility)[0]

    def score_many(self, vectors: torch.Tensor | None, items: list[dict],
                   utility: Utility | None = None) -> list[ItemScores]:
        """Score rows of `vectors` (None: the base model) with `utility` (default: the
        search's); rows scored before on these items come from the cache. Only requests for
        the search's utility count as evaluations."""
        utility = utility or self.utility
        ikey, ukey = items_key(items), _utility_key(utility)
        keys = ([(b"base", ikey, ukey)] if vectors is None
                else [(f, ikey, ukey) for f in fingerprints(vectors)])
        todo: list[int] = []
        seen: set[tuple[bytes, bytes, str]] = set()
        for i, k in enumerate(keys):  # a row repeated within the call runs once
            if k not in self._cache and k not in seen:
                seen.add(k)
                todo.append(i)
        self.counts["cache_hits"] += len(keys) - len(todo)
        if todo and vectors is not None:
            todo = self._drop_nonfinite(vectors, todo, keys, len(items))
        if todo:
            try:
                fresh = self.evaluator.score_many(
                    None if vectors is None else vectors[todo], items, utility)
            except DataError as err:  # an item the model cannot read: say whose data it is
                if self.source and not str(err).startswith(self.source):
                    raise DataError(f"{self.source}: {err}") from None
                raise
            for i, result in zip(todo, fresh, strict=True):
                if result.error is not None or not math.isfinite(result.value):
                    result = self._invalid(utility, result.error or f"returned {result.value}",
                                           len(items))
                self.counts.update(result.counts)
                self._cache[keys[i]] = result
        if utility is self.utility:
            self.evaluations += len(keys)
        return [self._cache[k] for k in keys]

    def _drop_nonfinite(self, vectors: torch.Tensor, todo: list[int],
                        keys: list[tuple[bytes, bytes, str]], n_items: int) -> list[int]:
        """A candidate with a NaN or infinite weight is invalid, never evaluated: a model of
        NaNs still answers (every logit NaN, argmax 0) and can score like any other. It
        scores -inf, and the report counts it (`nonfinite_candidate`)."""
        # a float64 sum is NaN or infinite exactly when a value is (weights never sum past
        # 1e308), and allocates nothing the size of a row
        finite = [bool(torch.isfinite(vectors[i].sum(dtype=torch.float64))) for i in todo]
        for i, ok in zip(todo, finite, strict=True):
            if not ok:
                self.counts["nonfinite_candidate"] += 1
                log.warning("a candidate with NaN or infinite weights scores -inf")
                self._cache[keys[i]] = ItemScores(-math.inf, [0.0] * n_items, [""] * n_items)
        return [i for i, ok in zip(todo, finite, strict=True) if ok]

    def utilities(self, vectors: torch.Tensor, items: list[dict]) -> list[float]:
        return [r.value for r in self.score_many(vectors, items)]

    def _invalid(self, utility: Utility, what: str, n_items: int) -> ItemScores:
        """The documented policy for a utility that failed (`utility.on_invalid`)."""
        self.counts["invalid_utility"] += 1
        if self.on_invalid == "stop":
            raise UtilityError(f"utility {utility.name} {what} (utility.on_invalid: "
                               "stop; set it to worst to score such candidates -inf and go on)")
        log.warning("utility %s %s: the candidate scores -inf", utility.name, what)
        return ItemScores(-math.inf, [0.0] * n_items, [""] * n_items)


def _utility_key(utility: Utility) -> str:
    # Two utilities share cached scores only when they are the same kind with the same config.
    if (key := getattr(utility, "cache_key", None)) is not None:
        return f"{type(utility).__qualname__}:{key}"
    cfg = getattr(utility, "cfg", None)
    dumped = cfg.model_dump_json() if hasattr(cfg, "model_dump_json") else repr(cfg)
    return f"{type(utility).__module__}.{type(utility).__qualname__}:{utility.name}:{dumped}"
