"""`modelswarms hswarm`: a Heterogeneous Swarms run in a run folder like a swarm run's.

The folder holds config.yaml, an atomic checkpoint after every round, history.jsonl (one line a
round), baselines.jsonl (baselines.py), report.json / report.md / utility_curves.png and
system/: the best system, exported (report.py, export.py).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..config import HSwarmConfig, RunConfig, load_config
from ..errors import ConfigError, RunError
from ..runs.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from ..runs.progress import Progress
from ..runs.runner import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    logging_to,
    prepare_run_dir,
    read_jsonl,
    remove_torn_writes,
)
from ..runs.session import Session
from .graph import Dag
from .report import final_report, progress_view
from .search import HeteroSwarm
from .system import SystemEvaluator

log = logging.getLogger("modelswarms")


def hswarm(cfg: RunConfig | None = None, *, resume: str | Path | None = None,
           overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) Heterogeneous Swarms and return its report."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG).is_file():
            raise RunError(f"{run_dir}: not a run folder (no {CONFIG})")
        cfg = load_config(run_dir / CONFIG)
    assert cfg is not None
    if cfg.hswarm is None:  # the defaults of every hswarm knob
        cfg = cfg.model_copy(update={"hswarm": HSwarmConfig()})
    if len(cfg.experts.paths) < 2:
        raise ConfigError("hswarm: a multi-LLM system needs at least 2 experts")
    if cfg.search.particles not in (None, len(cfg.experts.paths)):
        raise ConfigError("search.particles: the weight-step's particles are the experts (the "
                          "nodes' models); leave it unset for hswarm")
    if resume is None:
        run_dir = prepare_run_dir(cfg, overwrite)
    with logging_to(run_dir):
        remove_torn_writes(run_dir)
        session = Session.open(cfg, need_test=cfg.output.evaluate_test)
        evaluator = SystemEvaluator(session, cfg.hswarm)
        search = search_in(run_dir, cfg, evaluator, show_progress)
        return final_report(run_dir, cfg, session, evaluator, search)


def search_in(run_dir: Path, cfg: RunConfig, evaluator: SystemEvaluator,
              show_progress: bool = False) -> HeteroSwarm:
    """The search loop, checkpointed after every round; resumes from the folder's checkpoint."""
    session = evaluator.session
    search = HeteroSwarm(session.experts, cfg)
    ckpt, wall, history = run_dir / CHECKPOINT, 0.0, []
    if ckpt.exists():
        tensors, meta = load_checkpoint(ckpt)
        search.load_state_dict(tensors, meta["search"])
        wall = meta["wall_time"]
        history = [r for r in read_jsonl(run_dir / HISTORY) if r["round"] <= search.round]
        log.info("resumed at round %d (%d systems evaluated)", search.round, search.evaluations)
    atomic_write_text(run_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in history))
    log.info("%s: %d experts, steps %s, %d graphs x %d trials a round; device %s",
             search.label, search.n, cfg.hswarm.steps, cfg.hswarm.graphs, cfg.hswarm.trials,
             session.backend.device)

    def evaluate(dag: Dag, assignment: list[int], models: torch.Tensor) -> float:
        return evaluator.evaluate(dag, assignment, models, session.dev).value

    with Progress(cfg.hswarm.max_rounds, search.label, enabled=show_progress) as progress:
        for rec in history:
            progress.update(progress_view(rec))
        while not search.done:
            start = time.perf_counter()
            rec = search.run_round(evaluate)
            elapsed = time.perf_counter() - start
            wall += elapsed
            rec.update(seconds=round(elapsed, 4), wall_time=round(wall, 4))
            with open(run_dir / HISTORY, "a") as f:
                f.write(json.dumps(rec) + "\n")
            tensors, meta = search.state_dict()
            save_checkpoint(ckpt, tensors, {"search": meta, "wall_time": wall})
            history.append(rec)
            progress.update(progress_view(rec))
            log.info("round %d: best system %.4f, %d systems evaluated (%.2f s)",
                     search.round, search.best_util, search.evaluations, elapsed)
    search.history = history
    return search
