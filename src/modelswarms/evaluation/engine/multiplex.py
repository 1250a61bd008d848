"""Several LoRA particles in one forward pass.

A batch of k*b rows is laid out particle-major: rows [i*b, (i+1)*b) use particle i. Each LoRA
layer computes its update for all particles at once with two batched matmuls over
(k x rank x in) and (k x out x rank) factors that are views into one (k x parameters) buffer,
so loading k particles is still a single `copy_`. The base weights are shared, so the cost of
k particles is one forward of k*b rows instead of k forwards of b rows.

Greedy generation works unchanged: `generate` keeps the row order it is given.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch

from ...errors import ConfigError
from .backend import ResidentModel


def _stacked(flat: torch.Tensor, offset: int, numel: int, shape: tuple[int, ...]) -> torch.Tensor:
    return flat[:, offset : offset + numel].view(flat.shape[0], *shape)


class ParticleBatch:
    """Binds up to `k_max` particles to the LoRA layers of a resident model."""

    def __init__(self, backend: ResidentModel, k_max: int):
        from peft.tuners.lora import Linear as LoraLinear

        if not backend.pool.batches_particles:
            raise ConfigError("several particles per forward needs a pool of LoRA adapters")
        self.backend, self.k = backend, k_max
        space = backend.space
        self.flat = torch.zeros(k_max, space.dim, dtype=backend.flat.dtype,
                                device=backend.device)
        slots = {backend.pool.live_name(s.name): s for s in space.slots}
        self.layers: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor, float]] = []
        for name, module in backend.model.named_modules():
            if not isinstance(module, LoraLinear) or "default" not in module.lora_A:
                continue
            if module.lora_variant.get("default") is not None:
                raise ConfigError(f"{name}: DoRA and other LoRA variants are not batched")
            factors = []
            for part in ("lora_A", "lora_B"):
                slot = slots.get(f"{name}.{part}.default.weight")
                weight = getattr(module, part)["default"].weight
                if slot is None:  # frozen tensor: one copy shared by every particle
                    factors.append(weight.unsqueeze(0).expand(k_max, *weight.shape))
                else:
                    factors.append(_stacked(self.flat, slot.offset, slot.numel, slot.shape))
            self.layers.append((module, factors[0], factors[1], module.scaling["default"]))

    def load(self, vectors: torch.Tensor) -> None:
        """Make row i of `vectors` the weights of particle i (k <= k_max rows)."""
        self.flat[: vectors.shape[0]].copy_(vectors)

    @contextlib.contextmanager
    def active(self, k: int) -> Iterator[torch.nn.Module]:
        """Within the block, the model runs particles 0..k-1 on consecutive row blocks."""
        if not 1 <= k <= self.k:
            raise ValueError(f"k must be in 1..{self.k}, got {k}")
        for module, a, b, scaling in self.layers:
            module.forward = types.MethodType(_forward(a[:k], b[:k], scaling), module)
        try:
            yield self.backend.model
        finally:
            for module, *_ in self.layers:
                del module.forward  # back to the class's forward


def _forward(a: torch.Tensor, b: torch.Tensor, scaling: float):
    k = a.shape[0]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if x.shape[0] % k:
            raise ValueError(f"a batch of {x.shape[0]} rows does not split into {k} particles")
        xs = x.reshape(k, -1, x.shape[-1]).to(a.dtype)  # (k, rows/k * tokens, in)
        delta = torch.bmm(torch.bmm(xs, a.transpose(1, 2)), b.transpose(1, 2))
        return result + (delta * scaling).reshape(result.shape).to(result.dtype)

    return forward


class LogitAverage(torch.nn.Module):
    """Several LoRA particles acting as one causal LM whose next-token distribution is the
    mean of theirs (an output ensemble). Wrap a model inside `ParticleBatch.active(k)`.

    Rows are tiled k times on the way in and the k log-probability blocks averaged in
    probability space on the way out. A cache built through this wrapper (the shared prompt
    head) already holds k row blocks, so it passes through untiled.
    """

    def __init__(self, model: torch.nn.Module, k: int):
        super().__init__()
        self.inner, self.k, self.config = model, k, model.config

    def get_base_model(self) -> torch.nn.Module:
        inner = self.inner
        return inner.get_base_model() if hasattr(inner, "get_base_model") else inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **kwargs):
        import math

        def tile(t):
            return None if t is None else t.repeat(self.k, 1)

        out = self.inner(input_ids=tile(input_ids), attention_mask=tile(attention_mask),
                         position_ids=tile(position_ids), **kwargs)
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        logp = logp.view(self.k, input_ids.shape[0], *logp.shape[1:])
        avg = torch.logsumexp(logp, dim=0) - math.log(self.k)
        return types.SimpleNamespace(logits=avg, cache=getattr(out, "cache", None),
                                     past_key_values=getattr(out, "past_key_values", None))
