"""The classic merge methods, per tensor, following mergekit's definitions and defaults.

Each function gets the experts' copies of one tensor as `tensors` (n, *shape) in float32,
the base's copy (or None), its frozen params, the per-expert `weights` (n,) (ones when none
were given) and a generator, and returns the merged tensor.

Task-vector methods work on `tensors - base`. For a LoRA pool the base vector is zeros: an
expert's A and B factors are its own task vector, and every slot (each A, each B) is merged
on its own, so the merged adapter's B @ A is NOT the merge of the experts' B_i @ A_i, and
trimming / sign election act on factor entries. For full checkpoints the base is the base
model's weights.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from .registry import merge_method


class MergeParams(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
        allow_inf_nan=False,
    )


class LinearParams(MergeParams):
    normalize: bool = Field(True, description="divide by the sum of the weights")


class TaskArithmeticParams(MergeParams):
    scale: float = Field(1.0, alias="lambda", description="lambda: factor on the merged delta")
    normalize: bool = Field(False, description="divide the delta by the sum of the weights")


class TiesParams(TaskArithmeticParams):
    density: float = Field(1.0, gt=0, le=1, description="fraction of each delta kept")
    normalize: bool = Field(True, description="disjoint mean: divide by the sum of the "
                            "weights of the experts agreeing with the elected sign")


class DareParams(TaskArithmeticParams):
    density: float = Field(1.0, gt=0, le=1, description="probability of keeping an entry")
    rescale: Literal["density", "l1", "none"] = Field(
        "density", description="survivors / density (DARE paper), or match the delta's L1 "
        "norm (mergekit >= 0.1.5), or no rescaling")


class BreadcrumbsParams(TaskArithmeticParams):
    density: float = Field(1.0, gt=0, le=1, description="fraction of each delta kept")
    gamma: float = Field(0.01, ge=0, lt=1, description="fraction of largest entries dropped")


class SlerpParams(MergeParams):
    t: float = Field(0.5, ge=0, le=1, description="0: the first expert, 1: the second")


class KarcherParams(MergeParams):
    max_iter: int = Field(10, ge=1)
    tol: float = Field(1e-5, gt=0)


class ModelStockParams(MergeParams):
    filter_wise: bool = Field(False, description="one ratio per row instead of per tensor")


def _keep_top(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of largest magnitudes (at least one; ties: lower index)."""
    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[torch.argsort(delta.abs().reshape(-1), descending=True, stable=True)[:k]] = 1
    return delta * mask.view(delta.shape)


def _keep_middle(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Drop the `gamma` fraction of largest magnitudes, then the smallest, keeping `density`."""
    if density >= 1:
        return delta
    n = delta.numel()
    target, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)  # fewer outliers dropped when density needs them
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[torch.argsort(delta.abs().reshape(-1), stable=True)[n_bot : n_bot + target]] = 1
    return delta * mask.view(delta.shape)


def _drop_random(
    delta: torch.Tensor, density: float, rescale: str, generator: torch.Generator
) -> torch.Tensor:
    """DARE: keep each entry with probability `density` (no draw at all when density is 1)."""
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full_like(delta, density), generator=generator)
    kept = delta * mask
    if rescale == "density":
        return kept / density
    if rescale == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
        return kept if before < 1e-7 or after < 1e-7 else kept * (before / after)
    return kept


def _task_vectors(tensors, base, weights, params, elect, sparsify):
    """Generalized task arithmetic (mergekit): sparsify, weight, elect signs, sum, scale."""
    deltas = torch.stack([sparsify(x - base) for x in tensors])
    w = weights.view(-1, *([1] * base.dim()))
    deltas = deltas * w
    if elect:  # TIES: the elected sign is the sign of the summed weighted deltas (0 -> +)
        elected = torch.where(deltas.sum(0) >= 0, 1.0, -1.0).to(deltas.dtype)
        agree = (deltas.sign() == elected).to(deltas.dtype)
        mixed = (deltas * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(0)
        divisor = w.sum()
        divisor = divisor if divisor.abs() >= 1e-8 else torch.ones_like(divisor)
    if params.normalize:
        mixed = mixed / divisor
    return base + params.scale * mixed


@merge_method(
    "linear", params=LinearParams, paper="https://arxiv.org/abs/2203.05482", needs_base=False,
    description="Weighted average of the experts (model soups); weights default to equal.")
def linear(tensors, base, params, weights, generator):
    """sum_i w_i x_i / sum_i w_i. Ignores the base; LoRA A and B factors averaged apart."""
    w = weights.view(-1, *([1] * (tensors.dim() - 1)))
    merged = (tensors * w).sum(0)
    if params.normalize:
        if abs(float(weights.sum())) < 1e-12:
            raise ConfigError("merge method 'linear': the weights sum to zero")
        merged = merged / weights.sum()
    return merged


@merge_method(
    "task_arithmetic", params=TaskArithmeticParams, paper="https://arxiv.org/abs/2212.04089",
    description="base + scale * sum_i w_i (x_i - base); weights default to 1.")
def task_arithmetic(tensors, base, params, weights, generator):
    """Sum of weighted task vectors; for LoRA (base zeros) a weighted sum of the factors."""
    return _task_vectors(tensors, base, weights, params, False, lambda d: d)


@merge_method(
    "ties", params=TiesParams, paper="https://arxiv.org/abs/2306.01708",
    description="TIES: trim task vectors to top-density magnitudes, elect signs by the sum, "
    "disjoint mean of the agreeing entries.")
def ties(tensors, base, params, weights, generator):
    """Trim, elect, disjoint merge; trimming and election per tensor (per LoRA factor)."""
    return _task_vectors(tensors, base, weights, params, True,
                         lambda d: _keep_top(d, params.density))


@merge_method(
    "dare_linear", params=DareParams, paper="https://arxiv.org/abs/2311.03099",
    description="DARE: drop task-vector entries with probability 1-density, rescale by "
    "1/density, then task arithmetic.", stochastic=True)
def dare_linear(tensors, base, params, weights, generator):
    """Random drop and rescale per expert (in expert order, one generator), then a sum."""
    return _task_vectors(tensors, base, weights, params, False,
                         lambda d: _drop_random(d, params.density, params.rescale, generator))


@merge_method(
    "dare_ties", params=DareParams, paper="https://arxiv.org/abs/2311.03099",
    description="DARE drop and rescale, then TIES sign election.", stochastic=True)
def dare_ties(tensors, base, params, weights, generator):
    """As dare_linear, with TIES sign election on the rescaled deltas."""
    return _task_vectors(tensors, base, weights, params, True,
                         lambda d: _drop_random(d, params.density, params.rescale, generator))


@merge_method(
    "breadcrumbs", params=BreadcrumbsParams, paper="https://arxiv.org/abs/2312.06795",
    description="Model Breadcrumbs: drop the largest gamma and the smallest entries of each "
    "task vector so that density remain, then task arithmetic.")
def breadcrumbs(tensors, base, params, weights, generator):
    """Both-ends trimming per tensor (mergekit magnitude_outliers), then a sum."""
    return _task_vectors(tensors, base, weights, params, False,
                         lambda d: _keep_middle(d, params.density, params.gamma))


@merge_method(
    "breadcrumbs_ties", params=BreadcrumbsParams, paper="https://arxiv.org/abs/2312.06795",
    description="Model Breadcrumbs trimming, then TIES sign election.")
def breadcrumbs_ties(tensors, base, params, weights, generator):
    """Both-ends trimming per tensor, then TIES sign election."""
    return _task_vectors(tensors, base, weights, params, True,
                         lambda d: _keep_middle(d, params.density, params.gamma))


@merge_method(
    "slerp", params=SlerpParams, paper="https://en.wikipedia.org/wiki/Slerp", needs_base=False,
    min_experts=2, max_experts=2, weighted=False,
    description="Spherical interpolation between two experts, per tensor; linear when the "
    "tensors are nearly colinear (|cos| > 0.9995).")
def slerp(tensors, base, params, weights, generator):
    """mergekit's slerp: the angle from normalised tensors, coefficients on the raw ones.

    For LoRA experts each A and each B factor is interpolated on its own angle."""
    v0, v1, t = tensors[0], tensors[1], params.t
    n0, n1 = torch.linalg.vector_norm(v0), torch.linalg.vector_norm(v1)
    n0, n1 = (n if n > 1e-8 else torch.ones_like(n) for n in (n0, n1))
    dot = ((v0 / n0) * (v1 / n1)).sum().clamp(-1, 1)
    if dot.abs() > 0.9995:
        return (1 - t) * v0 + t * v1
    theta = torch.acos(dot)
    return (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)


@merge_method(
    "karcher", params=KarcherParams, paper="https://arxiv.org/abs/2603.04972",
    needs_base=False,
    description="Karcher (Riemannian) mean of the normalised experts on the sphere, "
    "rescaled by their weighted mean norm.")
def karcher(tensors, base, params, weights, generator):
    """mergekit's karcher, weights as the mean's alphas; LoRA factors averaged apart."""
    if (weights <= 0).any():
        raise ConfigError("merge method 'karcher': weights must be positive")
    alphas = weights / weights.sum()
    norms = torch.linalg.vector_norm(tensors.reshape(len(tensors), -1), dim=1)
    valid = norms > params.tol
    if not valid.any():
        return torch.zeros_like(tensors[0])
    units = tensors[valid] / norms[valid].view(-1, *([1] * (tensors.dim() - 1)))
    a = alphas[valid] / alphas[valid].sum()
    mean = sum(ai * u for ai, u in zip(a, units, strict=True))
    m_norm = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if m_norm < params.tol else mean / m_norm
    for _ in range(params.max_iter):
        tangent = torch.zeros_like(mean)
        for ai, u in zip(a, units, strict=True):
            dot = (mean * u).sum().clamp(-1, 1)
            theta = torch.arccos(dot)
            if theta >= params.tol:
                tangent += ai * (theta / torch.sin(theta)) * (u - dot * mean)
        t_norm = torch.linalg.vector_norm(tangent)
        if t_norm < params.tol:
            break
        mean = torch.cos(t_norm) * mean + torch.sin(t_norm) * (tangent / t_norm)
        u_norm = torch.linalg.vector_norm(mean)
        if u_norm > params.tol:
            mean = mean / u_norm
    return (alphas * norms).sum() * mean


@merge_method(
    "model_stock", params=ModelStockParams, paper="https://arxiv.org/abs/2403.19522",
    weighted=False,
    description="Model Stock: t = N cos / (1 + (N-1) cos) from the task vectors' mean "
    "pairwise cosine; t * mean(experts) + (1 - t) * base, per tensor.")
def model_stock(tensors, base, params, weights, generator):
    """Per tensor (or per row with filter_wise). For LoRA the cosines are between factors."""
    shape, n = base.shape, len(tensors)
    if params.filter_wise and base.dim() >= 2:
        w0, ws = base, tensors
    elif params.filter_wise:
        w0, ws = base.unsqueeze(0), tensors.unsqueeze(1)
    else:
        w0, ws = base.reshape(-1), tensors.reshape(n, -1)
    offsets = ws - w0
    norms = torch.linalg.vector_norm(offsets, dim=-1)
    cos = [((offsets[i] * offsets[j]).sum(-1) / (norms[i] * norms[j]).clamp(min=1e-6))
           .clamp(-1, 1) for i in range(n) for j in range(i + 1, n)]
    c = torch.stack(cos).mean(0).unsqueeze(-1)
    denominator = 1 + (n - 1) * c
    singular = denominator.abs() < 1e-6  # no finite estimate: keep the base
    t = torch.where(singular, 0.0, n * c / torch.where(singular, 1.0, denominator))
    return (t * ws.mean(0) + (1 - t) * w0).reshape(shape)
