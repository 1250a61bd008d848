"""The evaluator seam: what turns candidates into per-item scores, behind one small protocol.

The search loop, `compare` and Heterogeneous Swarms call `score_many(vectors, items,
utility)` and nothing else of the model; the score cache, evaluation counts, the invalid-
utility policy and the report's events live on the caller's side (runs/scorer.py). Another
implementation (Ray actors holding one model each, a mixture of models of different
architectures) plugs in here without touching the loop.

`ResidentEvaluator` is the first: one model in memory, particle vectors swapped into its
live weights in place, several LoRA particles per forward where the pool and utility allow,
the frozen lower layers computed once per input, and an out-of-memory back-off that halves
its own batch limits (the config is never rewritten).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..config import ModelConfig
from ..errors import ConfigError, UtilityError
from ..space import FlatSpace
from .engine.backend import ResidentModel, WeightPool
from .engine.batching import Batching, batching
from .engine.multiplex import LogitAverage, ParticleBatch
from .engine.trunk import FrozenTrunk, install_on
from .objectives.utilities import ItemScores, Utility

log = logging.getLogger("modelswarms")


class Evaluator(Protocol):
    device: torch.device

    def score_many(self, vectors: torch.Tensor | None, items: list[dict],
                   utility: Utility) -> list[ItemScores]:
        """One ItemScores per row of `vectors` (None: the pool's base model, one result).
        A utility that raises for a candidate gives that candidate an ItemScores whose
        `error` says why, not an exception: the caller's policy decides."""
        ...

    def drain_events(self) -> dict[str, int]:
        """Counts of what happened inside since the last call (out-of-memory back-offs,
        frozen-layer memo hits, ...), for the report's events."""
        ...


def failed(error: str, n_items: int) -> ItemScores:
    return ItemScores(math.nan, [0.0] * n_items, [""] * n_items, error=error)


@dataclass(frozen=True)
class Overlong:
    """An item longer than a model reads, as the utility scores it."""

    index: int         # in the items checked
    tokens: int
    limit: int         # the reader's max_position_embeddings
    reader: str        # "the model", or the mixture's expert that reads it
    field: str | None  # the one field that alone is too long; None: the whole prompt is


def text_fields(item: dict) -> Iterator[tuple[str, str]]:
    """(field, text) of every string an item holds, nested ones as "choices.A"; but its id
    and split, which no prompt shows."""
    return _strings({k: v for k, v in item.items() if k not in ("id", "split")})


def _strings(node: Any, field: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield field, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{field}.{k}" if field else str(k))
    elif isinstance(node, list):
        for k, v in enumerate(node):
            yield from _strings(v, f"{field}.{k}" if field else str(k))


# A row's length in the tokens the model runs, the most it reads, and who reads it.
Reads = Callable[[list[int], list[int] | None], tuple[int, int | None, str]]


def reads_of(model: Any) -> Reads:
    """How `model` counts a row (what generation.fits_context checks while scoring): a
    mixture has each expert count the text in its own tokens."""
    if getattr(model, "is_mixture", False):
        return lambda prompt, cont: model.reads(prompt + (cont or []))
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    limit = limit if isinstance(limit, int) else None
    return lambda prompt, cont: (len(prompt) + (1 if cont is None else len(cont)), limit,
                                 "the model")


def first_overlong(tokenizer: Any, utility: Utility, items: list[dict],
                   reads: Reads) -> Overlong | None:
    """The first of `items` a model cannot read whole. A utility with `rows` says which token
    sequences it runs (template, few-shot, question and options, as it builds them); `reads`
    gives a sequence's length and limit as the model sees it. Any other utility is checked
    field by field: a prompt holds at least each field it shows."""
    rows_of = getattr(utility, "rows", None)
    if rows_of is not None:
        for i, rows in enumerate(rows_of(tokenizer, items)):
            for prompt, cont in rows:
                n, limit, reader = reads(prompt, cont)
                if limit is not None and n > limit:
                    return Overlong(i, n, limit, reader, None)
        return None
    for i, item in enumerate(items):
        for field, text in text_fields(item):
            n, limit, reader = reads(tokenizer(text, add_special_tokens=False)["input_ids"],
                                     [])
            if limit is not None and n > limit:
                return Overlong(i, n, limit, reader, field)
    return None


class CountingEvaluator:
    """What every evaluator shares: its event counts, and one candidate's score with a
    failing utility reported, not raised."""

    events: Counter
    tokenizer: Any
    model: Any  # the model the utility is given

    def drain_events(self) -> dict[str, int]:
        out = dict(self.events)
        self.events.clear()
        return out

    def score_one(self, utility: Utility, model: Any, tokenizer: Any,
                  items: list[dict]) -> ItemScores:
        try:
            return utility.score(model, tokenizer, items)
        except UtilityError as err:  # a user's function raised; its message says how
            return failed(f"failed: {err}", len(items))

    def overlong(self, items: list[dict], utility: Utility) -> Overlong | None:
        """The first item longer than the model reads as `utility` scores it (None: none);
        checked before a search, so the test split's is not found after it."""
        return first_overlong(self.tokenizer, utility, items, reads_of(self.model))


class ResidentEvaluator(CountingEvaluator):
    """One resident model serving every candidate of a pool's weight space."""

    def __init__(self, pool: WeightPool, space: FlatSpace, model: ModelConfig | None = None,
                 *, trust_remote_code: bool = False):
        model = model or ModelConfig()
        self.backend = ResidentModel(pool, space, device=model.device, dtype=model.dtype,
                                     trust_remote_code=trust_remote_code)
        self.pool, self.space = pool, space
        self.device = self.backend.device
        self.tokenizer = self.backend.tokenizer
        self.batching = Batching(model.batch_size, model.max_batch_tokens)
        self.particles_per_forward = model.particles_per_forward
        self.events: Counter = Counter()
        self.trunk: FrozenTrunk | None = (
            install_on(self.backend, counts=self.events) if model.reuse_frozen_layers else None)
        self._batch: ParticleBatch | None = None

    @property
    def model(self) -> Any:
        return self.backend.model

    def score_many(self, vectors: torch.Tensor | None, items: list[dict],
                   utility: Utility) -> list[ItemScores]:
        return self._with_backoff(utility, lambda: self._evaluate(vectors, items, utility))

    def score_ensemble(self, vectors: torch.Tensor, items: list[dict],
                       utility: Utility) -> ItemScores:
        """The utility of the rows of `vectors` run side by side, their next-token
        distributions averaged (log-likelihood utilities only)."""
        if not self.pool.batches_particles:
            raise ConfigError("logit averaging runs the experts side by side: LoRA pools only")
        n = vectors.shape[0]

        def run() -> list[ItemScores]:
            batch = ParticleBatch(self.backend, n)
            batch.load(vectors)
            with batch.active(n) as model:
                return [utility.score(LogitAverage(model, n), self.tokenizer, items)]

        return self._with_backoff(utility, run)[0]

    def _evaluate(self, vectors: torch.Tensor | None, items: list[dict],
                  utility: Utility) -> list[ItemScores]:
        if vectors is None:
            with self.backend.base_model() as model:
                return [self.score_one(utility, model, self.tokenizer, items)]
        batch = self._particle_batch(utility)
        if batch is None:
            out = []
            for v in vectors:
                self.backend.load(v)
                out.append(self.score_one(utility, self.backend.model, self.tokenizer, items))
            return out
        results: list[ItemScores] = []
        for start in range(0, len(vectors), batch.k):
            group = vectors[start : start + batch.k]
            batch.load(group)
            with batch.active(len(group)) as model:
                try:
                    results += utility.score_many(  # type: ignore[attr-defined]
                        model, self.tokenizer, items, len(group))
                except UtilityError as err:
                    results += [failed(f"failed: {err}", len(items))] * len(group)
        return results

    def _with_backoff(self, utility: Utility, fn) -> list[ItemScores]:
        """Run `fn` within this evaluator's batch limits; on out-of-memory halve them and try
        again, down to one item per batch. The smaller limits stay for the rest of the run."""
        while True:
            try:
                with batching(self.batching):
                    return fn()
            except torch.OutOfMemoryError:
                if self.batching.batch_size <= 1:
                    raise UtilityError(
                        f"utility {utility.name}: out of memory even with one item per "
                        "batch; use a smaller model dtype, fewer particles_per_forward, or a "
                        "larger device") from None
                if self.trunk is not None:
                    self.trunk.clear()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                old, self.batching = self.batching, self.batching.halved()
                self.events["oom_backoffs"] += 1
                log.warning(
                    "out of memory: batch size %d -> %d, token budget %s -> %s",
                    old.batch_size, self.batching.batch_size, old.max_tokens,
                    self.batching.max_tokens)

    @property
    def group_size(self) -> int:
        """Rows of a call that share one forward: consecutive blocks of this many, from the
        call's first row (Ray actors are sent exactly these blocks, so layouts match)."""
        k = self.particles_per_forward
        if k == "auto":
            # On a CPU the forward is compute-bound either way; on a GPU small batches leave
            # it idle, and several particles per forward fill it.
            k = 8 if self.device.type == "cuda" else 1
        return k if self.pool.batches_particles else 1

    def _particle_batch(self, utility: Utility) -> ParticleBatch | None:
        k = self.group_size
        if k <= 1 or not hasattr(utility, "score_many"):
            return None
        if self._batch is None or self._batch.k != k:
            self._batch = ParticleBatch(self.backend, k)
        return self._batch
