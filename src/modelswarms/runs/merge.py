"""`modelswarms merge`: one classic merge of a pool, written as a standard adapter / model
folder. No model is loaded: a merge is arithmetic on the experts' tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..folders import check_output, config_inputs
from ..merge import MERGE_METHODS, merge_vectors
from ..merge.base import need_base
from ..pool import pool_kind
from .session import open_pool


def merge_to_folder(cfg: RunConfig, *, overwrite: bool = False) -> Path:
    if cfg.merge is None:
        raise ConfigError("merge: the config has no `merge:` section (method, params, weights)")
    spec = cfg.merge
    if not pool_kind(cfg.experts.compose).adds_weights:
        raise ConfigError(f"merge: experts.compose is {cfg.experts.compose}; a merge adds "
                          "weights of one architecture")
    if spec.method not in MERGE_METHODS:
        raise ConfigError(f"merge.method: unknown method {spec.method!r}; known: "
                          f"{', '.join(sorted(MERGE_METHODS))}")
    out = Path(cfg.output.dir)
    check_output(out, inputs=config_inputs(cfg), overwrite=overwrite)
    e = cfg.experts
    pool, space = open_pool(e)
    if spec.weights is not None and len(spec.weights) != len(pool.experts):
        raise ConfigError(f"merge.weights: {len(spec.weights)} weights for "
                          f"{len(pool.experts)} experts")
    experts = space.stack([x.tensors for x in pool.experts], device=torch.device("cpu"))
    base = None
    if MERGE_METHODS[spec.method].needs_base:
        base = need_base(spec.method, pool.base_vector(space))
    vec = merge_vectors(spec.method, experts.float(), base, space, params=spec.params,
                        weights=spec.weights, seed=cfg.seed)
    return pool.export(space, vec, out, metadata={
        "merge": spec.method, "params": str(spec.params), "seed": str(cfg.seed)})
