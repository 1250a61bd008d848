"""The search loop: ask, evaluate, tell, checkpoint, one iteration at a time.

A run folder holds the config as used, an atomic checkpoint after every iteration, and
`history.jsonl`. Resuming loads the checkpoint, drops history lines written after it, and goes
on; since the search's random generator is in the checkpoint and evaluation is deterministic,
a resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import RunConfig, dump_config, load_config
from ..errors import ConfigError, RunError
from ..search import build_strategy
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .progress import Progress
from .report import final_report
from .session import Session

log = logging.getLogger("modelswarms")

CONFIG, CHECKPOINT = "config.yaml", "checkpoint.safetensors"
HISTORY, LOG = "history.jsonl", "run.log"


def prepare_run_dir(cfg: RunConfig, overwrite: bool) -> Path:
    run_dir = Path(cfg.output.dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(
                f"{run_dir}: run folder exists; resume it with `modelswarms run --resume "
                f"{run_dir}`, or pass --overwrite to start again"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG, dump_config(cfg))
    return run_dir


@contextlib.contextmanager
def logging_to(run_dir: Path) -> Iterator[None]:
    """Within the block, the package's log also goes to `run_dir`/run.log."""
    handler = logging.FileHandler(run_dir / LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file up to its first torn line (a kill mid-write)."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def _read_history(path: Path, upto: int) -> list[dict[str, Any]]:
    """History records up to iteration `upto` (the checkpoint's)."""
    return list(itertools.takewhile(lambda r: r["iteration"] <= upto, read_jsonl(path)))


def run(cfg: RunConfig | None = None, *, resume: str | Path | None = None,
        overwrite: bool = False, show_progress: bool = True,
        session: Session | None = None) -> dict[str, Any]:
    """Run (or resume) a search and return its report. `session` reuses a resident model,
    data and score cache opened for the same experts, data and utility (compare does)."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG).is_file():
            raise RunError(f"{run_dir}: not a run folder (no {CONFIG})")
        cfg = load_config(run_dir / CONFIG)
    else:
        assert cfg is not None
        run_dir = prepare_run_dir(cfg, overwrite)
    with logging_to(run_dir):
        return _run(cfg, run_dir, show_progress, session)


def remove_torn_writes(run_dir: Path) -> None:
    """A kill during an atomic write leaves its temporary file (".NAME.*.tmp") behind; the
    real file is untouched, so the leftover is only litter."""
    for tmp in run_dir.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _run(cfg: RunConfig, run_dir: Path, show_progress: bool,
         session: Session | None) -> dict[str, Any]:
    remove_torn_writes(run_dir)
    if session is None:
        session = Session.open(cfg, need_test=cfg.output.evaluate_test)
    else:
        session.cfg = cfg
    swarm = build_strategy(cfg, session.experts, session.space)
    wall = 0.0
    history: list[dict[str, Any]] = []
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists():
        tensors, meta = load_checkpoint(ckpt)
        swarm.load_state_dict(tensors, meta["swarm"])
        wall = meta["wall_time"]
        history = _read_history(run_dir / HISTORY, swarm.iteration)
        log.info("resumed at iteration %d (%d evaluations)", swarm.iteration, swarm.evaluations)
    # Rewrite history so it ends exactly at the checkpoint (drops work a kill interrupted).
    atomic_write_text(run_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in history))
    log.info("pool: %d %s experts, %d searched values in %d tensors; %s; device %s",
             len(session.pool.experts), session.pool.kind, session.space.dim,
             len(session.space.slots), swarm.label, session.backend.device)
    with Progress(_iterations(cfg), swarm.label, enabled=show_progress) as progress:
        for rec in history:
            progress.update(rec)
        while not swarm.done:
            start = time.perf_counter()
            utilities = session.dev_utilities(swarm.ask())
            swarm.tell(utilities)
            elapsed = time.perf_counter() - start
            wall += elapsed
            rec = {"iteration": swarm.iteration, **swarm.record(),
                   "evaluations": swarm.evaluations, "seconds": round(elapsed, 4),
                   "wall_time": round(wall, 4)}
            with open(run_dir / HISTORY, "a") as f:
                f.write(json.dumps(rec) + "\n")
            tensors, meta = swarm.state_dict()
            save_checkpoint(ckpt, tensors, {"swarm": meta, "wall_time": wall})
            history.append(rec)
            progress.update(rec)
            log.info("iteration %d: best %.4f mean %.4f evaluations %d (%.2f s)",
                     swarm.iteration, rec["global_best"], sum(utilities) / len(utilities),
                     swarm.evaluations, elapsed)
    if not history:
        # the budget did not fit even the first evaluation of the population
        raise ConfigError(f"budget: {cfg.budget} evaluations do not cover one round of "
                          f"{swarm.label} ({getattr(swarm, 'n', 'its first')} candidates); "
                          "raise the budget")
    report = final_report(session, swarm, history, run_dir)
    log.info("done: best dev utility %.4f; exported to %s", report["best_dev"],
             report["exports"]["best"])
    return report


def _iterations(cfg: RunConfig) -> int:
    if cfg.strategy == "swarm":
        return cfg.search.max_iterations
    if cfg.strategy == "greedy_soup":
        return len(cfg.experts.paths)
    return cfg.coefficients.max_iterations
