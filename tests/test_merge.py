"""Merge methods against hand-computed values on 3 experts x 6 values."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import BaseModel

from modelswarms.errors import ConfigError
from modelswarms.merge import MERGE_METHODS, TiesParams, merge_tensors, merge_vectors
from modelswarms.space import FlatSpace

BASE = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, -0.5])
# Task vectors with distinct magnitudes inside each row, so trimming has no ties.
DELTAS = torch.tensor([
    [3.0, -1.0, 2.0, 0.5, -4.0, 1.5],
    [-2.5, -3.0, 1.0, 0.5, 2.0, -0.75],
    [-1.5, 2.0, -0.5, 1.25, 1.0, 3.0],
])
EXPERTS = BASE + DELTAS


def close(a: torch.Tensor, b, atol: float = 1e-6) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=0)


def test_registry_declares_every_method_with_paper_and_strict_params():
    assert set(MERGE_METHODS) == {
        "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
        "breadcrumbs_ties", "slerp", "karcher", "model_stock"}
    for m in MERGE_METHODS.values():
        assert m.paper.startswith("https://") and m.description
        assert m.params.model_config["frozen"] and m.params.model_config["extra"] == "forbid"


def test_linear_plain_and_weighted_mean():
    assert close(merge_tensors("linear", EXPERTS, None), BASE + DELTAS.sum(0) / 3)
    out = merge_tensors("linear", EXPERTS, None, weights=[1, 2, 1])
    assert close(out, BASE + torch.tensor([-0.875, -1.25, 0.875, 0.6875, 0.25, 0.75]))


def test_task_arithmetic_sum_scale_and_lambda_alias():
    out = merge_tensors("task_arithmetic", EXPERTS, BASE)
    assert close(out, BASE + torch.tensor([-1.0, -2.0, 2.5, 2.25, -1.0, 3.75]))
    expected = BASE + torch.tensor([-1.75, -2.5, 1.75, 1.375, 0.5, 1.5])
    for params in ({"scale": 0.5}, {"lambda": 0.5}):
        assert close(merge_tensors("task_arithmetic", EXPERTS, BASE, params, [1, 2, 1]),
                     expected)


def test_ties_trims_elects_signs_and_takes_the_disjoint_mean():
    # Top-3 by magnitude: [3,0,2,0,-4,0], [-2.5,-3,0,0,2,0], [-1.5,2,0,0,0,3]. Entry 0: the
    # largest value (+3) loses the vote (sum -1), the two negatives are averaged: -2 (plain
    # mean -1/3). Entry 3 is trimmed in every expert.
    out = merge_tensors("ties", EXPERTS, BASE, {"density": 0.5})
    assert close(out, BASE + torch.tensor([-2.0, -3.0, 2.0, 0.0, -4.0, 3.0]))
    # Weight 3 on expert 0 flips the vote at entry 0: +9 alone, divided by its weight 3.
    out = merge_tensors("ties", EXPERTS, BASE, {"density": 0.5}, weights=[3, 1, 1])
    assert close(out, BASE + torch.tensor([3.0, -3.0, 2.0, 0.0, -4.0, 3.0]))
    # normalize=False sums the agreeing entries instead of averaging them.
    out = merge_tensors("ties", EXPERTS, BASE, {"density": 0.5, "normalize": False})
    assert close(out, BASE + torch.tensor([-4.0, -3.0, 2.0, 0.0, -4.0, 3.0]))


def _dare_by_hand(seed: int, density: float, elect: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    kept = [[v / density if keep else 0.0 for v, keep in zip(row.tolist(), torch.bernoulli(
        torch.full((6,), density), generator=gen).tolist(), strict=True)] for row in DELTAS]
    out = []
    for j in range(6):
        column = [row[j] for row in kept]
        sign = 1.0 if sum(column) >= 0 else -1.0
        agreeing = [v for v in column if v != 0 and math.copysign(1.0, v) == sign]
        out.append(sum(agreeing) if elect else sum(column))
    return BASE + torch.tensor(out)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_drops_and_rescales_with_the_generator(method):
    gen = torch.Generator().manual_seed(7)
    out = merge_tensors(method, EXPERTS, BASE, {"density": 0.5}, generator=gen)
    expected = _dare_by_hand(7, 0.5, elect=method == "dare_ties")
    assert close(out, expected)
    assert not close(out, merge_tensors("task_arithmetic", EXPERTS, BASE))
    # Density 1 keeps everything: task arithmetic / TIES without trimming.
    full = merge_tensors(method, EXPERTS, BASE, {"density": 1.0})
    assert close(full, merge_tensors("task_arithmetic" if method == "dare_linear" else "ties",
                                     EXPERTS, BASE, {"normalize": False}))


def test_breadcrumbs_trims_both_ends():
    # density 0.5, gamma 0.2 on 6 values: drop the largest and the 2 smallest magnitudes.
    params = {"density": 0.5, "gamma": 0.2}
    out = merge_tensors("breadcrumbs", EXPERTS, BASE, params)
    assert close(out, BASE + torch.tensor([-1.0, 2.0, 3.0, 1.25, 2.0, 1.5]))
    out = merge_tensors("breadcrumbs_ties", EXPERTS, BASE, params)
    assert close(out, BASE + torch.tensor([-4.0, 2.0, 3.0, 1.25, 2.0, 1.5]))


def test_slerp_endpoints_midpoint_and_colinear_fallback():
    v0, v1 = EXPERTS[0], EXPERTS[1]
    pair = torch.stack([v0, v1])
    assert close(merge_tensors("slerp", pair, None, {"t": 0.0}), v0)
    assert close(merge_tensors("slerp", pair, None, {"t": 1.0}), v1)
    theta = math.acos(float(v0 @ v1 / (v0.norm() * v1.norm())))
    mid = (v0 + v1) * math.sin(theta / 2) / math.sin(theta)
    assert close(merge_tensors("slerp", pair, None, {"t": 0.5}), mid, atol=1e-5)
    ortho = torch.tensor([[2.0, 0, 0, 0, 0, 0], [0, 2.0, 0, 0, 0, 0]])
    assert close(merge_tensors("slerp", ortho, None), [math.sqrt(2)] * 2 + [0] * 4)
    colinear = torch.stack([v0, 2 * v0])
    assert close(merge_tensors("slerp", colinear, None, {"t": 0.5}), 1.5 * v0, atol=1e-5)


def test_karcher_two_vectors_is_the_geodesic_midpoint_times_mean_norm():
    v0, v1 = EXPERTS[0], 3 * EXPERTS[2]
    u0, u1 = v0 / v0.norm(), v1 / v1.norm()
    expected = (u0 + u1) / (u0 + u1).norm() * (v0.norm() + v1.norm()) / 2
    assert close(merge_tensors("karcher", torch.stack([v0, v1]), None), expected, atol=1e-5)


def test_karcher_three_vectors_satisfies_the_mean_condition():
    out = merge_tensors("karcher", EXPERTS, None, {"max_iter": 100, "tol": 1e-7})
    norms = EXPERTS.norm(dim=1)
    assert out.norm().item() == pytest.approx(norms.mean().item(), rel=1e-5)
    m = out / out.norm()
    grad = torch.zeros(6)  # Riemannian gradient of the sum of squared geodesic distances
    for u in EXPERTS / norms[:, None]:
        c = float(m @ u)
        grad += math.acos(c) / math.sqrt(1 - c * c) * (u - c * m)
    assert grad.norm() < 1e-4
    assert not close(m, EXPERTS.mean(0) / EXPERTS.mean(0).norm(), atol=1e-3)


def test_model_stock_matches_the_formula():
    d = [DELTAS[i].tolist() for i in range(3)]
    cos = [sum(a * b for a, b in zip(d[i], d[j], strict=True))
           / math.sqrt(sum(a * a for a in d[i]) * sum(b * b for b in d[j]))
           for i, j in ((0, 1), (0, 2), (1, 2))]
    c = sum(cos) / 3
    t = 3 * c / (1 + 2 * c)
    expected = t * EXPERTS.mean(0) + (1 - t) * BASE
    assert close(merge_tensors("model_stock", EXPERTS, BASE), expected, atol=1e-5)


SPACE = FlatSpace(["a", "b"], [(2, 3), (4,)])
SPACE_EXPERTS = torch.cat([EXPERTS, torch.tensor([[1.0, -2, 3, 0.25], [-1, 0.5, 2, -3],
                                                  [2, 1, -0.5, 0.75]])], dim=1)
SPACE_BASE = torch.cat([BASE, torch.tensor([0.1, 0.2, -0.3, 0.4])])


@pytest.mark.parametrize("method,params", [
    ("ties", {"density": 0.5}), ("model_stock", {}), ("dare_ties", {"density": 0.5}),
    ("slerp", {"t": 0.3})])
def test_merge_vectors_merges_slot_by_slot(method, params):
    experts = SPACE_EXPERTS[:2] if method == "slerp" else SPACE_EXPERTS
    out = merge_vectors(method, experts, SPACE_BASE, SPACE, params, seed=3)
    gen = torch.Generator().manual_seed(3)
    per_slot = torch.cat([
        merge_tensors(method, experts[:, s.offset:s.offset + s.numel].reshape(-1, *s.shape),
                      SPACE_BASE[s.offset:s.offset + s.numel].view(s.shape), params,
                      generator=gen).reshape(-1)
        for s in SPACE.slots])
    assert close(out, per_slot)
    whole = merge_tensors(method, experts, SPACE_BASE, params,
                          generator=torch.Generator().manual_seed(3))
    assert not close(out, whole, atol=1e-3)


def test_merge_vectors_is_deterministic_for_a_seed_and_keeps_dtype():
    params = {"density": 0.5}
    a = merge_vectors("dare_linear", SPACE_EXPERTS, SPACE_BASE, SPACE, params, seed=1)
    assert torch.equal(a, merge_vectors("dare_linear", SPACE_EXPERTS, SPACE_BASE, SPACE,
                                        params, seed=1))
    assert not torch.equal(a, merge_vectors("dare_linear", SPACE_EXPERTS, SPACE_BASE, SPACE,
                                            params, seed=2))
    half = merge_vectors("ties", SPACE_EXPERTS.bfloat16(), SPACE_BASE.bfloat16(), SPACE,
                         {"density": 0.5})
    assert half.dtype == torch.bfloat16
    full = merge_vectors("ties", SPACE_EXPERTS.bfloat16().float(),
                         SPACE_BASE.bfloat16().float(), SPACE, {"density": 0.5})
    assert torch.equal(half, full.bfloat16())
    one = merge_tensors("linear", EXPERTS.half(), None)
    assert one.dtype == torch.float16 and close(one.float(), EXPERTS.half().float().mean(0), 1e-3)


def test_params_can_be_a_model_and_are_frozen():
    p = TiesParams(density=0.5)
    assert close(merge_tensors("ties", EXPERTS, BASE, p),
                 merge_tensors("ties", EXPERTS, BASE, {"density": 0.5}))
    with pytest.raises(Exception):  # noqa: B017  (pydantic's frozen-instance error)
        p.density = 0.3  # type: ignore[misc]
    assert isinstance(p, BaseModel)


@pytest.mark.parametrize("call,words", [
    (lambda: merge_tensors("tiez", EXPERTS, BASE), ["tiez", "ties", "linear"]),
    (lambda: merge_tensors("ties", EXPERTS, BASE, {"densty": 0.5}), ["ties", "densty"]),
    (lambda: merge_tensors("ties", EXPERTS, BASE, {"density": 1.5}), ["ties", "density"]),
    (lambda: merge_tensors("ties", EXPERTS, BASE, {"gamma": 0.1}), ["gamma"]),
    (lambda: merge_tensors("slerp", EXPERTS, None), ["slerp", "exactly 2", "3"]),
    (lambda: merge_tensors("linear", EXPERTS[:1], None), ["linear", "at least 2"]),
    (lambda: merge_tensors("ties", EXPERTS, None), ["ties", "base"]),
    (lambda: merge_tensors("model_stock", EXPERTS, BASE, weights=[1, 1, 1]), ["weights"]),
    (lambda: merge_tensors("linear", EXPERTS, None, weights=[1, 2]), ["2 weights", "3"]),
    (lambda: merge_vectors("ties", EXPERTS, BASE, SPACE), ["(n, 10)"]),
])
def test_errors_name_the_method_and_key(call, words):
    with pytest.raises(ConfigError) as err:
        call()
    for w in words:
        assert w in str(err.value)


def test_the_docs_merge_table_names_what_the_config_takes():
    """Each method's `merge.params` in docs/STRATEGIES.md are its params' fields, and
    `merge.weights` says whether it takes per-expert weights (the table once listed `weights`
    as a parameter, which `params: {weights: ...}` rejects)."""
    from pathlib import Path

    from modelswarms.config import parse_config

    readme = (Path(__file__).resolve().parents[1] / "docs" / "STRATEGIES.md").read_text()
    head = "| method | `merge.params` | `merge.weights` |"
    rows = readme.split(head, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    seen = set()
    for row in rows:
        names, params, weights = (c.strip() for c in row.strip("|").split("|"))
        listed = {p.split(" ")[0] for p in params.split(", ")}
        for method in names.split("`")[1::2]:
            spec = MERGE_METHODS[method]
            assert listed == set(spec.params.model_fields), method
            assert weights == ("yes" if spec.weighted else "no"), method
            seen.add(method)
    assert seen == set(MERGE_METHODS)
    cfg = {"experts": {"paths": ["a", "b"]}, "data": {"path": "d.json"}}
    parse_config({**cfg, "merge": {"method": "ties", "weights": [1.0, 0.5]}})
    with pytest.raises(ConfigError, match="invalid params: weights"):
        merge_tensors("ties", BASE + DELTAS[:2], BASE, params={"weights": [1.0, 0.5]})
