"""The evaluator seam (evaluation/evaluator.py) for mixtures: a candidate is a vector of
mixing weights, one per expert, and any utility scores the mixture it decodes to.

Particles live in R^n, so every strategy (Model Swarms, CMA-ES, random search) searches them
unchanged; `mixing_weights` decodes a row onto the simplex by clipping at zero and
normalising (the experts' one-hot rows are exactly the experts; a row with no positive entry
is the uniform mixture). Clipping keeps a one-hot start exact, which a softmax would not.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from ..evaluation.engine.backend import load_standalone
from ..evaluation.engine.batching import Batching, batching
from ..evaluation.evaluator import CountingEvaluator
from ..evaluation.objectives.utilities import ItemScores, Utility
from .model import MixtureLM


def mixing_weights(row: torch.Tensor) -> torch.Tensor:
    w = row.detach().double().cpu().clamp(min=0)
    return w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1.0 / w.numel())


class MixtureEvaluator(CountingEvaluator):
    """Scores rows of mixing weights over a resident MixtureLM."""

    @classmethod
    def open(cls, pool: Any, model: Any) -> MixtureEvaluator:
        """Load every expert of a mixture pool (mixture/pool.py) as its own model."""
        experts = [(e.name, *load_standalone(str(e.path), device=model.device,
                                              dtype=model.dtype)) for e in pool.experts]
        mixture = MixtureLM(experts, batch_size=model.batch_size)
        return cls(mixture, Batching(model.batch_size, model.max_batch_tokens))

    def __init__(self, mixture: MixtureLM, batching: Batching | None = None):
        self.mixture, self.device = mixture, mixture.device
        self.tokenizer = mixture.tokenizer
        self.batching = batching or Batching()
        self.events: Counter = Counter()

    @property
    def model(self) -> MixtureLM:
        return self.mixture

    def score_many(self, vectors: torch.Tensor | None, items: list[dict],
                   utility: Utility) -> list[ItemScores]:
        rows = [torch.full((self.mixture.n,), 1.0)] if vectors is None else list(vectors)
        out = []
        with batching(self.batching):
            self.mixture.batch_size = self.batching.batch_size
            for row in rows:
                self.mixture.set_weights(mixing_weights(row))
                out.append(self.score_one(utility, self.mixture, self.tokenizer, items))
        return out
