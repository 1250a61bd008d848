"""The merge-method registry: each method is declared where it is defined, mergekit style.

A method is a per-tensor function `fn(tensors, base, params, weights, generator) -> Tensor`
that sees the experts' copies of ONE tensor stacked as (n, *shape), in float32 (or float64),
and returns the merged tensor. `merge_tensors` validates and calls it for one tensor;
`merge_vectors` calls it slot by slot over flattened experts, as mergekit does per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from ..space import FlatSpace

MergeFn = Callable[
    [torch.Tensor, torch.Tensor | None, Any, torch.Tensor, torch.Generator], torch.Tensor
]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MergeFn
    params: type[BaseModel]
    paper: str
    description: str
    needs_base: bool
    min_experts: int = 2
    max_experts: int | None = None
    weighted: bool = True  # False: per-expert weights are meaningless and rejected
    stochastic: bool = False  # draws from its generator: compare runs it once per seed


MERGE_METHODS: dict[str, MergeMethod] = {}


def merge_method(
    name: str,
    *,
    params: type[BaseModel],
    paper: str,
    description: str,
    needs_base: bool = True,
    min_experts: int = 2,
    max_experts: int | None = None,
    weighted: bool = True,
    stochastic: bool = False,
) -> Callable[[MergeFn], MergeFn]:
    """Register the decorated per-tensor function under `name`."""

    def register(fn: MergeFn) -> MergeFn:
        if name in MERGE_METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        MERGE_METHODS[name] = MergeMethod(
            name, fn, params, paper, description, needs_base, min_experts, max_experts,
            weighted, stochastic,
        )
        return fn

    return register


def get_method(name: str) -> MergeMethod:
    try:
        return MERGE_METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown merge method {name!r}; known: {', '.join(sorted(MERGE_METHODS))}"
        ) from None


def parse_params(method: MergeMethod, params: Mapping[str, Any] | BaseModel | None) -> Any:
    """The method's frozen param model from a dict (unknown keys rejected) or a model."""
    if isinstance(params, BaseModel):
        if not isinstance(params, method.params):
            raise ConfigError(f"merge method {method.name!r} takes {method.params.__name__}, "
                              f"got {type(params).__name__}")
        return params
    try:
        return method.params.model_validate(dict(params or {}))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(params)'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"merge method {method.name!r}: invalid params: {problems}") from None


def _check(
    method: MergeMethod, n: int, base_given: bool, weights: Sequence[float] | None
) -> None:
    if n < method.min_experts or (method.max_experts is not None and n > method.max_experts):
        wanted = (f"exactly {method.min_experts}" if method.max_experts == method.min_experts
                  else f"at least {method.min_experts}" + (
                      f" and at most {method.max_experts}" if method.max_experts else ""))
        raise ConfigError(f"merge method {method.name!r} takes {wanted} experts, got {n}")
    if method.needs_base and not base_given:
        raise ConfigError(f"merge method {method.name!r} needs a base (for LoRA experts: zeros)")
    if weights is not None:
        if not method.weighted:
            raise ConfigError(f"merge method {method.name!r} takes no per-expert weights")
        if len(weights) != n:
            raise ConfigError(f"merge method {method.name!r}: {len(weights)} weights for "
                              f"{n} experts")
        if not all(math.isfinite(float(w)) for w in weights):
            raise ConfigError(f"merge method {method.name!r}: weights {list(weights)} must be "
                              "finite numbers")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def merge_tensors(
    method: str,
    tensors: torch.Tensor,
    base: torch.Tensor | None,
    params: Mapping[str, Any] | BaseModel | None = None,
    weights: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge the experts' copies of one tensor, `tensors` (n, *shape), into one (*shape).

    Arithmetic is done in float32 (float64 stays float64); the result has the input dtype.
    Random methods draw from `generator` (default: a fresh one seeded 0, so reproducible).
    """
    spec = get_method(method)
    parsed = parse_params(spec, params)
    _check(spec, tensors.shape[0] if tensors.dim() else 0, base is not None, weights)
    return _apply(spec, parsed, tensors, base, weights, generator)


def _apply(
    spec: MergeMethod,
    parsed: Any,
    tensors: torch.Tensor,
    base: torch.Tensor | None,
    weights: Sequence[float] | None,
    generator: torch.Generator | None,
    name: str = "",
) -> torch.Tensor:
    dtype = _work_dtype(tensors.dtype)
    if base is not None and base.shape != tensors.shape[1:]:
        raise ConfigError(f"merge method {spec.name!r}: base of shape {tuple(base.shape)} "
                          f"for experts of shape {tuple(tensors.shape[1:])}")
    n = tensors.shape[0]
    w = torch.tensor([1.0] * n if weights is None else [float(x) for x in weights],
                     dtype=dtype, device=tensors.device)
    if generator is None:
        generator = torch.Generator(device=tensors.device).manual_seed(0)
    out = spec.fn(
        tensors.to(dtype),
        None if base is None or not spec.needs_base else base.to(dtype),
        parsed, w, generator,
    )
    out = out.to(tensors.dtype)
    if not torch.isfinite(out).all():  # a merge never hands on (or writes) a NaN model
        what = f"tensor {name}" if name else "the merged tensor"
        source = ("the experts hold NaN or infinite values" if not torch.isfinite(tensors).all()
                  else f"params {parsed.model_dump()}, weights {w.tolist()} overflow")
        raise ConfigError(f"merge method {spec.name!r}: {what} comes out non-finite ({source}); "
                          "nothing written")
    return out


def merge_vectors(
    method: str,
    experts: torch.Tensor,
    base: torch.Tensor | None,
    space: FlatSpace,
    params: Mapping[str, Any] | BaseModel | None = None,
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Merge flattened experts (n x d) tensor by tensor, per slot of `space`, into (d).

    Per-tensor semantics as in mergekit: trimming, sign election, norms and angles are
    computed within each slot. One generator seeded once with `seed` serves all slots, in
    slot order, so a seed reproduces the whole merge.
    """
    spec = get_method(method)
    parsed = parse_params(spec, params)
    if experts.dim() != 2 or experts.shape[1] != space.dim:
        raise ConfigError(f"merge_vectors: experts of shape {tuple(experts.shape)}, expected "
                          f"(n, {space.dim})")
    if base is not None and base.shape != (space.dim,):
        raise ConfigError(f"merge_vectors: base of shape {tuple(base.shape)}, expected "
                          f"({space.dim},)")
    _check(spec, experts.shape[0], base is not None, weights)
    generator = torch.Generator(device=experts.device).manual_seed(seed)
    out = torch.empty(space.dim, dtype=experts.dtype, device=experts.device)
    n = experts.shape[0]
    for s in space.slots:
        cut = slice(s.offset, s.offset + s.numel)
        slot_base = None if base is None else base[cut].view(s.shape)
        merged = _apply(spec, parsed, experts[:, cut].reshape(n, *s.shape), slot_base,
                        weights, generator, s.name)
        out[cut] = merged.reshape(-1)
    return out
