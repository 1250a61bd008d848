"""What a run holds in memory: the pool, its weight space, an evaluator, the data, a scorer.

`Session.open` only composes the parts, each loaded where it lives (pool/, space/,
evaluation/evaluator.py, evaluation/data/items.py, runs/scorer.py); scoring goes through the scorer,
the loop's side of the evaluator seam.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ExpertsConfig, ModelConfig, RunConfig
from ..evaluation.data.items import load_split
from ..evaluation.evaluator import Evaluator
from ..evaluation.objectives.utilities import ItemScores, Utility, build_utility
from ..evaluation.ray_pool import RayEvaluator
from ..pool import Pool
from ..pool import open_pool as open_kind
from ..space import FlatSpace
from .checks import check_lengths, check_session
from .scorer import Scorer, fingerprint, items_key

__all__ = ["Session", "fingerprint", "items_key"]


def open_pool(e: ExpertsConfig) -> tuple[Pool, FlatSpace]:
    """The experts of a config (the pool kind `experts.compose` names) and their searched
    weight space (a Ray actor opens its own with this, from the same config)."""
    pool = open_kind(e)
    return pool, FlatSpace.select(pool.experts[0].tensors, e.include, e.exclude)


def open_local(e: ExpertsConfig, model: ModelConfig) -> tuple[FlatSpace, Evaluator]:
    """A Ray actor's evaluator and weight space, opened from the run's config."""
    pool, space = open_pool(e)
    return space, pool.evaluator(space, e, model)


@dataclass
class Session:
    cfg: RunConfig
    pool: Pool
    space: FlatSpace
    evaluator: Evaluator
    scorer: Scorer
    dev: list[dict]
    test: list[dict] | None
    experts: torch.Tensor  # (experts x parameters), on the evaluator's device

    @classmethod
    def open(cls, cfg: RunConfig, *, need_test: bool = True,
             evaluator: Evaluator | None = None) -> Session:
        """Load the pool, the evaluator (default: one resident model), the utility and the
        data a run of `cfg` scores on."""
        data = cfg.need_data("a search")
        pool, space = open_pool(cfg.experts)
        utility = build_utility(cfg.utility)
        if data is None:  # the utility's tasks bring their documents (lm_eval)
            dev = utility.split_items("dev")  # type: ignore[attr-defined]
            test = utility.split_items("test") if need_test else None  # type: ignore
        else:
            dev = load_split(data, data.dev_split, required=utility.required_fields,
                             limit=data.max_dev)
            test = load_split(data, data.test_split, required=utility.required_fields,
                              limit=data.max_test) if need_test else None
        if evaluator is None and cfg.model.workers is not None:
            evaluator = RayEvaluator.open(cfg.experts, cfg.model, space, open_local)
        elif evaluator is None:
            evaluator = pool.evaluator(space, cfg.experts, cfg.model)
        experts = space.stack([x.tensors for x in pool.experts], device=evaluator.device)
        scorer = Scorer(evaluator, utility, cfg.utility.on_invalid)
        scorer.source = data.name if data is not None else None
        check_lengths(evaluator, utility, {data.dev_split if data else "dev": dev,
                                  data.test_split if data else "test": test}, scorer.source)
        check_session(pool, experts, dev, cfg, scorer)
        return cls(cfg, pool, space, evaluator, scorer, dev, test, experts)

    # The loop's calls, all through the scorer.
    def score(self, vector: torch.Tensor | None, items: list[dict]) -> ItemScores:
        return self.scorer.score(vector, items)

    def score_many(self, vectors: torch.Tensor | None, items: list[dict]) -> list[ItemScores]:
        return self.scorer.score_many(vectors, items)

    def dev_utilities(self, vectors: torch.Tensor) -> list[float]:
        return self.scorer.utilities(vectors, self.dev)

    @property
    def utility(self) -> Utility:
        return self.scorer.utility

    @utility.setter
    def utility(self, value: Utility) -> None:
        self.scorer.utility = value

    @property
    def counts(self) -> Counter:
        return self.scorer.counts

    @property
    def evaluations(self) -> int:
        return self.scorer.evaluations

    # For tests and benchmarks that drive the resident model directly.
    @property
    def backend(self):
        return self.evaluator.backend  # type: ignore[attr-defined]

    @property
    def trunk(self):
        return getattr(self.evaluator, "trunk", None)

    @trunk.setter
    def trunk(self, value) -> None:
        self.evaluator.trunk = value  # type: ignore[attr-defined]

    def export(self, vector: torch.Tensor, folder, metadata: dict[str, str]) -> Path:
        """Write `vector` as a standard adapter / model folder (frozen tensors: expert 0's);
        a mixture's as mixture.json (its experts' folders and weights)."""
        return self.pool.export(self.space, vector, folder, metadata)

