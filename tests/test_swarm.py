"""The PSO update rule, growth, restart and determinism, on small random vectors."""

import math

import pytest
import torch

from modelswarms.search.swarm import ModelSwarm, SwarmConfig, coefficients


def experts(n=4, d=6, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_update_matches_hand_computation():
    cfg = SwarmConfig(random_factors=False, start_velocity="zero", step_length=0.7)
    x0 = experts(3, 5)
    swarm = ModelSwarm(x0, cfg, seed=1)
    swarm.ask()
    swarm.tell([0.5, 0.9, 0.1])  # g = x0[1], w = x0[2], p = x0, v = 0
    x_before = swarm.x.clone()
    v_before = swarm.v.clone()
    new = swarm.ask().clone()
    s = 0.4 + 0.3 + 0.3 + 0.3
    a, b, c, d = 0.4 / s, 0.3 / s, 0.3 / s, 0.3 / s
    for i in range(3):
        v = (a * v_before[i] + b * (x0[i] - x_before[i]) + c * (x0[1] - x_before[i])
             + d * (x_before[i] - x0[2]))
        torch.testing.assert_close(swarm.v[i], v, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(new[i], x_before[i] + 0.7 * v, atol=1e-6, rtol=1e-6)


def test_update_with_random_factors_matches_hand_computation():
    cfg = SwarmConfig(start_velocity="random", use_repel=False)
    x0 = experts(4, 3)
    swarm = ModelSwarm(x0, cfg, seed=5)
    swarm.ask()
    swarm.tell([0.1, 0.2, 0.3, 0.4])
    state = swarm.gen.get_state()
    v0, xb, g = swarm.v.clone(), swarm.x.clone(), swarm.g.clone()
    swarm.ask()
    gen = torch.Generator()
    gen.set_state(state)
    r = torch.rand(4, 4, generator=gen)
    for i in range(4):
        a, b, c, d = coefficients(cfg, r[i])
        assert d == 0.0 and math.isclose(a + b + c, 1.0)
        assert math.isclose(a, r[i, 0] * 0.4 / (r[i, 0] * 0.4 + r[i, 1] * 0.3 + r[i, 2] * 0.3),
                            rel_tol=1e-6)
        v = a * v0[i] + b * (x0[i] - xb[i]) + c * (g - xb[i])
        torch.testing.assert_close(swarm.v[i], v, atol=1e-6, rtol=1e-6)


def test_random_start_velocity_points_at_another_expert():
    x0 = experts(3, 4)
    swarm = ModelSwarm(x0, SwarmConfig(), seed=0)
    for i in range(3):
        diffs = [torch.allclose(swarm.v[i], x0[j] - x0[i]) for j in range(3) if j != i]
        assert any(diffs)


def test_best_start_velocity():
    x0 = experts(3, 4)
    swarm = ModelSwarm(x0, SwarmConfig(start_velocity="best"), seed=0)
    swarm.ask()
    swarm.tell([0.2, 0.8, 0.5])
    torch.testing.assert_close(swarm.v, x0[1] - x0)


def test_growth_children_are_on_lines_through_parents():
    x0 = experts(3, 8)
    swarm = ModelSwarm(x0, SwarmConfig(particles=7), seed=3)
    assert swarm.n == 7
    torch.testing.assert_close(swarm.x[:3], x0)
    pool = list(swarm.x[:3])
    for k in range(3, 7):
        child = swarm.x[k]
        found = False
        for i, a in enumerate(pool):
            for j, b in enumerate(pool):
                if i == j:
                    continue
                # child = t a + (1 - t) b  =>  child - b = t (a - b)
                t = torch.dot(child - b, a - b) / torch.dot(a - b, a - b)
                if 0 <= t <= 2 and torch.allclose(child, t * a + (1 - t) * b, atol=1e-5):
                    found = True
        assert found, f"particle {k} is not t*a+(1-t)*b of two earlier particles"
        pool.append(child)


def test_personal_best_needs_strict_improvement_and_global_worst_only_worsens():
    swarm = ModelSwarm(experts(2, 3), SwarmConfig(), seed=0)
    swarm.ask()
    swarm.tell([0.5, 0.2])
    p_before = swarm.p.clone()
    swarm.ask()
    swarm.tell([0.5, 0.3])  # ties do not replace p_0; p_1 improves
    torch.testing.assert_close(swarm.p[0], p_before[0])
    torch.testing.assert_close(swarm.p[1], swarm.x[1])
    assert swarm.w_util == 0.2 and swarm.g_util == 0.5 and swarm.since_best == 1


def test_restart_sends_stalled_particle_to_personal_best_with_cooldown():
    cfg = SwarmConfig(patience=4, restart_patience=0.5, restart_cooldown=1, max_iterations=50)
    swarm = ModelSwarm(experts(3, 4), cfg, seed=0)
    swarm.ask()
    swarm.tell([0.1, 0.2, 0.3])
    p0 = swarm.p[0].clone()
    restarts = []
    for it in range(6):
        swarm.ask()
        swarm.tell([0.0, 0.2 + 0.01 * (it + 1), 0.3 + 0.01 * (it + 1)])  # particle 0 stalls
        restarts.append(0 in swarm.restarted)
        if swarm.restarted == [0]:
            torch.testing.assert_close(swarm.x[0], p0)
            assert torch.count_nonzero(swarm.v[0]) == 0
    # threshold 2 iterations; after a restart the count starts over and the cool-down adds 1
    assert restarts == [False, True, False, False, True, False]


def test_stops_on_patience_and_max_iterations():
    swarm = ModelSwarm(experts(2, 3), SwarmConfig(patience=3), seed=0)
    swarm.ask()
    swarm.tell([0.5, 0.4])
    n = 0
    while not swarm.done:
        swarm.ask()
        swarm.tell([0.1, 0.1])
        n += 1
    assert n == 3
    swarm = ModelSwarm(experts(2, 3), SwarmConfig(max_iterations=2), seed=0)
    swarm.ask()
    swarm.tell([0.1, 0.1])
    k = 0
    while not swarm.done:
        swarm.ask()
        swarm.tell([0.2 + k, 0.1])
        k += 1
    assert k == 2


def test_step_decays_to_minimum():
    cfg = SwarmConfig(step_length=0.2, step_decay=0.5, min_step=0.06)
    swarm = ModelSwarm(experts(2, 3), cfg, seed=0)
    swarm.ask()
    swarm.tell([0.1, 0.2])
    steps = []
    for k in range(3):
        swarm.ask()
        swarm.tell([0.3 + k, 0.2])
        steps.append(swarm.step)
    assert steps == pytest.approx([0.1, 0.06, 0.06])


def run_swarm(seed, iters=5, state=None):
    swarm = ModelSwarm(experts(4, 10), SwarmConfig(particles=6), seed=seed)
    if state is not None:
        swarm.load_state_dict(*state)
    f = lambda v: float(-(v - 1.0).pow(2).sum())  # noqa: E731
    while not swarm.done and swarm.iteration < iters:
        swarm.tell([f(row) for row in swarm.ask()])
    return swarm


def test_same_seed_same_result_and_different_seed_differs():
    a, b, c = run_swarm(0), run_swarm(0), run_swarm(1)
    assert torch.equal(a.x, b.x) and a.g_util == b.g_util
    assert not torch.equal(a.x, c.x)


def test_state_dict_round_trip_continues_identically():
    full = run_swarm(0, iters=6)
    half = run_swarm(0, iters=3)
    tensors, meta = half.state_dict()
    tensors = {k: v.clone() for k, v in tensors.items()}
    resumed = run_swarm(0, iters=6, state=(tensors, dict(meta)))
    assert torch.equal(full.x, resumed.x) and torch.equal(full.g, resumed.g)
    assert full.g_util == resumed.g_util and full.evaluations == resumed.evaluations


def test_swarm_improves_a_simple_objective():
    swarm = run_swarm(0, iters=30)
    start = ModelSwarm(experts(4, 10), SwarmConfig(particles=6), seed=0)
    f = lambda v: float(-(v - 1.0).pow(2).sum())  # noqa: E731
    assert swarm.g_util > max(f(r) for r in start.x)
