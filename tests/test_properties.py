"""Property-based tests of the swarm arithmetic and of config parsing."""

import math
import re

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelswarms.config import parse_config
from modelswarms.errors import ConfigError
from modelswarms.search.swarm import ModelSwarm, SwarmConfig, coefficients

weights = st.floats(0.0, 2.0, allow_nan=False)
factors = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=4, max_size=4)


@given(weights, weights, weights, weights, st.booleans(), factors)
def test_coefficients_are_normalised(inertia, cognitive, social, repel, use_repel, r):
    if inertia + cognitive + social + (repel if use_repel else 0) <= 0:
        return
    cfg = SwarmConfig(inertia=inertia, cognitive=cognitive, social=social, repel=repel,
                      use_repel=use_repel)
    a, b, c, d = coefficients(cfg, torch.tensor(r))
    assert math.isclose(a + b + c + d, 1.0, rel_tol=1e-9)
    assert min(a, b, c, d) >= 0
    if not use_repel:
        assert d == 0.0


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5), st.integers(1, 8), st.integers(0, 10_000), st.floats(0.05, 1.0))
def test_particle_at_global_best_with_zero_velocity_stays_put(n, dim, seed, step):
    # No random factors, zero velocity, x = p = g: every term of the update is zero (the repel
    # term is zero too when the global worst is the same point, as with identical experts).
    x = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    swarm = ModelSwarm(x.expand(n, dim).clone(), SwarmConfig(
        random_factors=False, start_velocity="zero", step_length=step), seed=seed)
    swarm.ask()
    swarm.tell([0.5] * n)
    moved = swarm.ask()
    torch.testing.assert_close(moved, x.expand(n, dim))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 5), st.integers(1, 8), st.integers(0, 10_000))
def test_restart_restores_personal_best(n, dim, seed):
    cfg = SwarmConfig(patience=2, restart_patience=0.5)
    swarm = ModelSwarm(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)),
                       cfg, seed=seed)
    swarm.ask()
    swarm.tell([float(i) for i in range(n)])
    p = swarm.p.clone()
    swarm.ask()
    swarm.tell([-1.0] * n)  # nobody improves: stall 1 >= 0.5 * 2, so everybody restarts
    assert swarm.restarted == list(range(n))
    torch.testing.assert_close(swarm.x, p)
    assert torch.count_nonzero(swarm.v) == 0


keys = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=12)


@given(keys)
def test_unknown_search_keys_are_rejected_by_name(key):
    known = set(SwarmConfig.model_fields)
    data = {"experts": {"paths": ["a", "b"]}, "data": {"path": "d.json"}, "search": {key: 1}}
    if key in known:
        return
    try:
        parse_config(data)
    except ConfigError as err:
        assert f"search.{key}: unknown key" in str(err)
    else:
        raise AssertionError("unknown key accepted")


@given(st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.none()))
def test_wrong_types_are_rejected_by_name(value):
    data = {"experts": {"paths": ["a", "b"]}, "data": {"path": "d.json"},
            "search": {"max_iterations": value}}
    if isinstance(value, str):
        try:  # pydantic's lax mode reads "12" and "12.0" as 12, as YAML users expect
            int(re.sub(r"\.0+$", "", value.strip()))
            return
        except ValueError:
            pass
    try:
        parse_config(data)
    except ConfigError as err:
        assert "search.max_iterations" in str(err)
    else:
        raise AssertionError(f"max_iterations={value!r} accepted")
