"""A result found in a space of merge coefficients, written as a mergekit config.

A candidate of CMA-ES, random search or the layer-wise swarm is sum_i c[i, g] * expert_i, with
g the tensor's group: one group, or one per decoder layer ("layers.N.") plus "other". mergekit's
`linear` method with `normalize: false` computes exactly that for full models, and its
conditional parameters (a list of `filter` substrings with a fallback `value`) give each layer
its own coefficient. For LoRA adapters there is no such config: our merges combine the A and B
factors apart, mergekit merges whole weights (B A), a different point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError


def coefficients_config(models: Sequence[str], coefficients: dict[str, Any],
                        dtype: str = "float32") -> dict[str, Any]:
    """The mergekit config for `coefficients` ({"groups": [...], "coefficients":
    [[c per group] per expert]}, as the coefficient searches describe their best)."""
    groups, rows = coefficients["groups"], coefficients["coefficients"]
    if len(rows) != len(models):
        raise ConfigError(f"{len(rows)} coefficient rows for {len(models)} models")
    entries = []
    for model, row in zip(models, rows, strict=True):
        by_group = dict(zip(groups, (float(c) for c in row), strict=True))
        if list(by_group) == ["all"]:
            weight: Any = by_group["all"]
        else:
            weight = [{"filter": f"layers.{g.split()[1]}.", "value": c}
                      for g, c in by_group.items() if g.startswith("layer ")]
            # every tensor outside the decoder layers (embeddings, final norm, head)
            weight.append({"value": by_group.get("other", 0.0)})
        entries.append({"model": str(model), "parameters": {"weight": weight}})
    return {"merge_method": "linear", "models": entries, "parameters": {"normalize": False},
            "dtype": dtype, "out_dtype": dtype}
