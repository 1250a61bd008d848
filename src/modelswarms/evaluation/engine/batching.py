"""Batches and their tensors, below generation.py and decode.py: the engine's batch limits,
length-sorted batches, left padding, particle tiling, forward arguments over a shared prompt
head, and the cache keyword of this transformers release."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class Prefix(Protocol):
    """A prompt head computed once (generation.SharedPrefix)."""

    length: int

    def inputs(self, ids: torch.Tensor, mask: torch.Tensor, particles: int) -> dict: ...


@dataclass(frozen=True)
class Batching:
    """The engine's batch limits: most rows, and most padded tokens, in one forward."""

    batch_size: int = 16
    max_tokens: int | None = 4096
    # GPU generation: the share of the device's memory (less the weights) one decoding batch's
    # caches may take (decode.plan); a decoding step reads one token per row, so its batches
    # are sized by memory, not by the scoring limits above
    generate_memory: float = 0.5

    def halved(self) -> Batching:
        return Batching(max(1, self.batch_size // 2),
                        None if self.max_tokens is None else max(1, self.max_tokens // 2),
                        self.generate_memory / 2)


# The limits are the engine's, not a utility's: whoever runs the model (an evaluator, `eval`)
# sets them around a utility call, and every helper below reads them when not given.
_BATCHING: contextvars.ContextVar[Batching | None] = contextvars.ContextVar(
    "modelswarms_batching", default=None)


@contextlib.contextmanager
def batching(limits: Batching) -> Iterator[Batching]:
    token = _BATCHING.set(limits)
    try:
        yield limits
    finally:
        _BATCHING.reset(token)


def current_batching() -> Batching:
    return _BATCHING.get() or Batching()


def batches(lengths: Sequence[int], batch_size: int,
            max_tokens: int | None = None, fill: float = 0.75) -> list[list[int]]:
    """Longest first; a batch closes at `batch_size` rows, at `max_tokens` padded tokens, or
    when the next item would be shorter than `fill` of the batch's longest, so one long item
    does not make fifteen short ones pay for its length."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    budget = max_tokens or batch_size * max(lengths)
    batches: list[list[int]] = []
    for i in order:
        # the first item of a batch is its longest, so padding is rows x lengths[batch[0]]
        if batches and len(batches[-1]) < batch_size and \
                (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget and \
                lengths[i] >= fill * lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def pad(rows: Sequence[Sequence[int]], pad_id: int, left: bool, device: torch.device):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def cache_kwarg(model) -> str:
    # transformers 5.x renamed `past_key_values` to `cache`; accept either release.
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else \
        "past_key_values"


def inputs(ids: torch.Tensor, mask: torch.Tensor, prefix: Prefix | None,
            particles: int) -> dict:
    """Forward arguments of left-padded rows, on top of the shared prompt head if any."""
    if prefix is not None and prefix.length:
        return prefix.inputs(ids, mask, particles)
    return {"input_ids": ids, "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


def tile(ids: torch.Tensor, mask: torch.Tensor, particles: int):
    # Particle-major rows: rows [p*b, (p+1)*b) are particle p's copy of the batch (multiplex.py).
    return ids.repeat(particles, 1), mask.repeat(particles, 1)


def cache_of(out):
    return getattr(out, "cache", None) or out.past_key_values


def limits(batch_size: int | None, max_tokens: int | None, particles: int
            ) -> tuple[int, int | None]:
    """Per-particle limits; a limit not given is the current `batching`'s."""
    if batch_size is None:
        current = current_batching()
        batch_size, max_tokens = current.batch_size, max_tokens or current.max_tokens
    return max(1, batch_size // particles), (max(1, max_tokens // particles) if max_tokens
                                             else None)
