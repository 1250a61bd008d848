"""`modelswarms merge`: one classic merge of a pool, written as a standard adapter / model
folder. No model is loaded: a merge is arithmetic on the experts' tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..folders import check_output, config_inputs
from ..merge import MERGE_METHODS, merge_vectors
from ..merge.base import base_vector, need_base
from ..pool import export_vector, load_pool
from ..space import FlatSpace


def merge_to_folder(cfg: RunConfig, *, overwrite: bool = False) -> Path:
    if cfg.merge is None:
        raise ConfigError("merge: the config has no `merge:` section (method, params, weights)")
    spec = cfg.merge
    if cfg.experts.compose != "weights":
        raise ConfigError("merge: experts.compose is mixture; a merge adds weights of one "
                          "architecture")
    if spec.method not in MERGE_METHODS:
        raise ConfigError(f"merge.method: unknown method {spec.method!r}; known: "
                          f"{', '.join(sorted(MERGE_METHODS))}")
    out = Path(cfg.output.dir)
    check_output(out, inputs=config_inputs(cfg), overwrite=overwrite)
    e = cfg.experts
    pool = load_pool(e.paths, base_model=e.base_model)
    if spec.weights is not None and len(spec.weights) != len(pool.experts):
        raise ConfigError(f"merge.weights: {len(spec.weights)} weights for "
                          f"{len(pool.experts)} experts")
    space = FlatSpace.select(pool.experts[0].tensors, e.include, e.exclude)
    experts = space.stack([x.tensors for x in pool.experts], device=torch.device("cpu"))
    base = None
    if MERGE_METHODS[spec.method].needs_base:
        base = need_base(spec.method, base_vector(pool, space))
    vec = merge_vectors(spec.method, experts.float(), base, space, params=spec.params,
                        weights=spec.weights, seed=cfg.seed)
    return export_vector(pool, space, vec, out, metadata={
        "merge": spec.method, "params": str(spec.params), "seed": str(cfg.seed)})
