"""`modelswarms hswarm`: a Heterogeneous Swarms run in a run folder like a swarm run's.

The search is the registered strategy `hswarm` (search.py), run by the one loop every strategy
uses (runs/runner.py). The folder holds config.yaml, an atomic checkpoint after every step,
history.jsonl (one line a round), baselines.jsonl (baselines.py), report.json / report.md /
utility_curves.png and system/: the best system, exported (report.py, export.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..runs.runner import run


def hswarm(cfg: RunConfig | None = None, *, resume: str | Path | None = None,
           overwrite: bool = False, show_progress: bool = True,
           accept_changes: bool = False) -> dict[str, Any]:
    """Run (or resume) Heterogeneous Swarms and return its report."""
    return run(cfg, resume=resume, overwrite=overwrite, show_progress=show_progress,
               accept_changes=accept_changes,
               strategy="hswarm")
