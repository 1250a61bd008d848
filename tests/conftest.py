"""Shared fixtures: a tiny Llama, a LoRA pool over it, a small multiple-choice dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelswarms.testing import (
    arith_items,
    make_tiny_full_pool,
    make_tiny_llama,
    make_tiny_lora_pool,
)

SHARED_EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture(scope="session")
def lora_experts(tiny_base, tmp_path_factory) -> list[Path]:
    return make_tiny_lora_pool(tiny_base, tmp_path_factory.mktemp("lora"), n=3)


@pytest.fixture(scope="session")
def full_experts(tiny_base, tmp_path_factory) -> list[Path]:
    return make_tiny_full_pool(tiny_base, tmp_path_factory.mktemp("full"), n=3)


def make_mc_items(n: int, seed: int) -> list[dict]:
    return arith_items(n, seed, f"q{seed}-")


@pytest.fixture(scope="session")
def mc_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "arith.json"
    path.write_text(json.dumps({"dataset": "arith", "dev": make_mc_items(12, 0),
                                "test": make_mc_items(16, 1)}))
    return path


@pytest.fixture
def checkpoint_dies(monkeypatch):
    """`checkpoint_dies(n)`: the search loop's n-th checkpoint write raises KeyboardInterrupt
    (as a kill inside it would stop it); `checkpoint_dies(None)` puts the real writer back."""
    from modelswarms.runs import runner

    original = runner.save_checkpoint

    def arm(n: int | None) -> None:
        if n is None:
            monkeypatch.setattr(runner, "save_checkpoint", original)
            return
        calls = [0]

        def dying_save(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(runner, "save_checkpoint", dying_save)

    return arm


def pytest_configure(config) -> None:
    # Under pytest-xdist (scripts/test.sh runs two workers on CI's two cores) each worker and
    # every process it starts computes on one thread: two workers of two threads on two cores
    # slow each other down many times over.
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items) -> None:
    # Longest first: xdist hands out the first tests one per worker in turn, so the kill tests
    # (minutes each) start at once on different workers instead of queueing at the end.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
