"""Everything a run needs in memory: the pool, its weight space, the resident model, the data.

Built once per process; the search loop then only moves vectors and calls the utility.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import RunConfig
from ..errors import UtilityError
from ..evaluation.backend import ResidentModel
from ..evaluation.data import load_items
from ..evaluation.multiplex import ParticleBatch
from ..evaluation.utilities import ItemScores, Utility, build_utility
from ..pool import ExpertPool, export_expert, load_pool
from ..space import FlatSpace


@dataclass
class Session:
    cfg: RunConfig
    pool: ExpertPool
    space: FlatSpace
    backend: ResidentModel
    utility: Utility
    dev: list[dict]
    test: list[dict] | None
    experts: torch.Tensor  # (experts x parameters), on the model's device
    evaluations: int = 0
    _batch: ParticleBatch | None = None

    @classmethod
    def open(cls, cfg: RunConfig, *, need_test: bool = True) -> Session:
        e = cfg.experts
        pool = load_pool(e.paths, base_model=e.base_model)
        space = FlatSpace.select(pool.experts[0].tensors, e.include, e.exclude)
        backend = ResidentModel(pool, space, device=cfg.model.device, dtype=cfg.model.dtype,
                                trust_remote_code=e.trust_remote_code)
        utility = build_utility(cfg.utility)
        d = cfg.data
        dev = load_items(d.path, d.dev_split, required=utility.required_fields, limit=d.max_dev)
        test = None
        if need_test:
            test = load_items(d.test_path or d.path, d.test_split,
                              required=utility.required_fields, limit=d.max_test)
        experts = space.stack([x.tensors for x in pool.experts], device=backend.device)
        return cls(cfg, pool, space, backend, utility, dev, test, experts)

    def score(self, vector: torch.Tensor | None, items: list[dict]) -> ItemScores:
        """Score a point of the weight space (None: the base model without adapters)."""
        if vector is None:
            with self.backend.base_model() as model:
                result = self.utility.score(model, self.backend.tokenizer, items)
        else:
            self.backend.load(vector)
            result = self.utility.score(self.backend.model, self.backend.tokenizer, items)
        self.evaluations += 1
        if not math.isfinite(result.value):
            raise UtilityError(f"utility {self.utility.name} returned {result.value}")
        return result

    def score_many(self, vectors: torch.Tensor, items: list[dict]) -> list[ItemScores]:
        """Score rows of `vectors`, several per forward pass when the pool and utility allow."""
        batch = self._particle_batch()
        if batch is None:
            return [self.score(v, items) for v in vectors]
        results: list[ItemScores] = []
        for start in range(0, len(vectors), batch.k):
            group = vectors[start : start + batch.k]
            batch.load(group)
            with batch.active(len(group)) as model:
                results += self.utility.score_many(  # type: ignore[attr-defined]
                    model, self.backend.tokenizer, items, len(group))
        self.evaluations += len(vectors)
        for r in results:
            if not math.isfinite(r.value):
                raise UtilityError(f"utility {self.utility.name} returned {r.value}")
        return results

    def _particle_batch(self) -> ParticleBatch | None:
        k = self.cfg.model.particles_per_forward
        if k == "auto":
            # On a CPU the forward is compute-bound either way; on a GPU small batches leave
            # it idle, and several particles per forward fill it.
            k = 8 if self.backend.device.type == "cuda" else 1
        if k <= 1 or self.pool.kind != "lora" or not hasattr(self.utility, "score_many"):
            return None
        if self._batch is None or self._batch.k != k:
            self._batch = ParticleBatch(self.backend, k)
        return self._batch

    def dev_utilities(self, vectors: torch.Tensor) -> list[float]:
        return [r.value for r in self.score_many(vectors, self.dev)]

    def export(self, vector: torch.Tensor, folder, metadata: dict[str, str]) -> None:
        """Write `vector` as a standard adapter / model folder (frozen tensors: expert 0's)."""
        tensors = dict(self.pool.experts[0].tensors)
        for name, value in self.space.unflatten(vector.detach().cpu()).items():
            tensors[name] = value.to(tensors[name].dtype)
        export_expert(self.pool, tensors, folder, metadata=metadata)
