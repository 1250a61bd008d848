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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig, dump_config, load_config
from ..errors import ConfigError, ModelSwarmsError, RunError
from ..folders import Claim, FolderLock, claim, config_inputs, lock_existing
from ..io import atomic_write_text, read_jsonl
from ..search import SearchStrategy, strategy_spec
from ..trackers import Trackers
from .candidates import candidate_kind
from .checkpoint import CheckpointWriter, load_checkpoint, save_checkpoint
from .checks import check_budget
from .estimate import FewItems
from .inputs import check_resume
from .inputs import record as record_inputs
from .progress import Progress, SearchView
from .session import Session

log = logging.getLogger("modelswarms")

CONFIG, CHECKPOINT = "config.yaml", "checkpoint.safetensors"
HISTORY, LOG = "history.jsonl", "run.log"


def prepare_run_dir(cfg: RunConfig, overwrite: bool) -> Claim:
    """Claim the run folder (checked apart from every input, locked, emptied with
    --overwrite when a run of ours made it) and write the config into it."""
    run_dir = Path(cfg.output.dir)
    held = claim(run_dir, inputs=config_inputs(cfg), overwrite=overwrite,
                 exists_hint=f"resume it with `modelswarms run --resume {run_dir}`, or pass "
                 "--overwrite to start again", what="run folder")
    try:
        atomic_write_text(run_dir / CONFIG, dump_config(cfg))
    except BaseException:
        held.abandon()
        raise
    return held


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


def _read_history(path: Path, upto: int) -> list[dict[str, Any]]:
    """History records up to iteration `upto` (the checkpoint's)."""
    return list(itertools.takewhile(lambda r: r["iteration"] <= upto,
                                    read_jsonl(path)))


@dataclass
class Finished:
    """A finished search: its report, the strategy (its best), the history and the session
    that scored it (resident model, data, score cache)."""

    report: dict[str, Any]
    search: SearchStrategy
    history: list[dict[str, Any]]
    session: Session


def run(cfg: RunConfig | None = None, *, resume: str | Path | None = None,
        overwrite: bool = False, show_progress: bool = True,
        session: Session | None = None, strategy: str | None = None,
        accept_changes: bool = False, view: SearchView = Progress) -> dict[str, Any]:
    """Run (or resume) a search and return its report. `session` reuses a resident model,
    data and score cache opened for the same experts, data and utility (compare does, and
    checks its inputs itself). `strategy` overrides the config's (the `hswarm` alias);
    `view` shows the progress (compare: a row of its own view). A resume whose inputs
    changed since the run started stops, unless `accept_changes`."""
    return execute(cfg, resume=resume, overwrite=overwrite, show_progress=show_progress,
                   session=session, strategy=strategy, accept_changes=accept_changes,
                   view=view).report


def execute(cfg: RunConfig | None = None, *, resume: str | Path | None = None,
            overwrite: bool = False, show_progress: bool = True,
            session: Session | None = None, strategy: str | None = None,
            accept_changes: bool = False, view: SearchView = Progress) -> Finished:
    """`run`, keeping what the report was made from (the Python API's result)."""
    held: FolderLock | None = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG).is_file():
            raise RunError(f"{run_dir}: not a run folder (no {CONFIG})")
        held = lock_existing(run_dir)  # before anything in the folder is read or changed
    try:
        return _run(cfg, resume, overwrite, show_progress, session, strategy, accept_changes,
                    held, view)
    finally:
        if held is not None:
            held.release()


def _run(cfg, resume, overwrite, show_progress, session, strategy, accept_changes,
         held, view) -> Finished:
    if resume is not None:
        run_dir = Path(resume)
        cfg = load_config(run_dir / CONFIG)
    assert cfg is not None
    if strategy is not None:
        cfg = cfg.model_copy(update={"strategy": strategy})
    spec = strategy_spec(cfg.strategy)
    cfg = spec.prepare(cfg)
    cfg.need_data(f"strategy {cfg.strategy}")
    if resume is not None and session is None:
        check_resume(run_dir, cfg, accept_changes)
    # a missing tracker package fails here, before a folder is made
    trackers = Trackers(cfg, Path(resume if resume is not None else cfg.output.dir))
    if resume is None:
        held = prepare_run_dir(cfg, overwrite)
        run_dir = held.folder
    try:
        with logging_to(run_dir), trackers:
            remove_torn_writes(run_dir)
            try:
                if session is None:
                    session = Session.open(cfg, need_test=cfg.output.evaluate_test)
                    if resume is None:
                        record_inputs(run_dir, cfg)
                else:
                    session.cfg = cfg
                search, history = search_loop(cfg, run_dir, session, show_progress, trackers,
                                              view)
            except ModelSwarmsError:
                trackers.close(failed=True)  # before its files go with the folder
                # a run that could not start (a missing expert, bad data, a utility failing
                # on the first candidates) leaves no folder that would refuse the corrected
                # config until --overwrite; one with a checkpoint holds work and stays
                if resume is None and not (run_dir / CHECKPOINT).exists():
                    held.abandon()
                raise
            report = candidate_kind(spec.candidate).report(session, search, history, run_dir,
                                                           search_loop)
            trackers.log_report(report)
            log.info("done: best dev utility %.4f", report["best_dev"])
            return Finished(report, search, history, session)
    finally:
        if resume is None:
            held.release()


def remove_torn_writes(run_dir: Path) -> None:
    """A kill during an atomic write leaves its temporary file (".NAME.*.tmp") behind; the
    real file is untouched, so the leftover is only litter."""
    for tmp in run_dir.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def search_loop(cfg: RunConfig, run_dir: Path | None, session: Session,
                show_progress: bool = False, trackers: Trackers | None = None,
                view: SearchView = Progress) -> tuple[SearchStrategy, list[dict[str, Any]]]:
    """Every strategy's loop: ask, score, tell, checkpoint after every tell, a history line
    after every completed iteration (also to `trackers`, which it starts); resumes from
    `run_dir`'s checkpoint. Without a `run_dir` the search runs in memory only (the Python
    API)."""
    spec = strategy_spec(cfg.strategy)
    search = spec.build(cfg, session.experts, session.space)
    kind = candidate_kind(spec.candidate)
    score = kind.scorer(session, cfg)
    estimator = None
    if (est := getattr(cfg.utility, "estimate", None)) is not None:
        if not kind.fewer_items:
            raise ConfigError(f"utility.estimate: strategy {cfg.strategy} scores its own "
                              "candidates, not weight rows; remove utility.estimate")
        score = estimator = FewItems(session, est, cfg.seed)
    wall = 0.0
    history: list[dict[str, Any]] = []
    ckpt = run_dir / CHECKPOINT if run_dir is not None else None
    if ckpt is not None and ckpt.exists():
        tensors, meta = load_checkpoint(ckpt)
        search.load_state_dict(tensors, meta.get("search", meta.get("swarm")))
        wall = meta["wall_time"]
        if estimator is not None and "estimate" in meta:
            estimator.load(meta["estimate"])
        history = _read_history(run_dir / HISTORY, search.iteration)
        log.info("resumed at iteration %d (%d evaluations)", search.iteration,
                 search.evaluations)
    if run_dir is not None:
        # Rewrite history so it ends exactly at the checkpoint (drops work a kill interrupted).
        atomic_write_text(run_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in history))
    log.info("pool: %d %s experts, %d searched values in %d tensors; %s; device %s",
             len(session.pool.experts), session.pool.kind, session.space.dim,
             len(session.space.slots), search.label, session.evaluator.device)
    check_budget(cfg, search, session.scorer)
    if trackers is not None:
        trackers.start(history)
    # checkpoints are written while the next iteration scores; save_checkpoint is looked up
    # here, where tests replace it
    writer = CheckpointWriter(ckpt, save_checkpoint) if ckpt is not None else None
    in_flight: list[dict[str, Any]] = []  # records whose checkpoint is being written

    def checkpointed() -> None:
        # trackers hold only iterations a resume keeps, so a killed run's resume never logs
        # an iteration twice: a record is logged once its checkpoint is on disk
        if writer is not None:
            writer.wait()
        if trackers is not None:
            for rec in in_flight:
                trackers.log_iteration(rec)
        in_flight.clear()

    try:
        with view(spec.iterations(cfg), search.label, enabled=show_progress,
                  budget=cfg.budget, folder=run_dir) as progress:
            if history:  # a resumed run: where it stands, once
                progress.update(history[-1])
            pending = 0.0  # seconds of the iteration in progress (a round may take two tells)
            while not search.done:
                start = time.perf_counter()
                utilities = score(search.ask())
                search.tell(utilities)
                elapsed = time.perf_counter() - start
                wall += elapsed
                pending += elapsed
                done = search.record()
                if done is not None:
                    rec = {"iteration": search.iteration, **done,
                           "evaluations": search.evaluations, "seconds": round(pending, 4),
                           "wall_time": round(wall, 4)}
                    if estimator is not None:
                        rec["item_evaluations"] = estimator.item_evaluations
                    if run_dir is not None:
                        with open(run_dir / HISTORY, "a") as f:
                            f.write(json.dumps(rec) + "\n")
                    history.append(rec)
                    progress.update(rec)
                    log.info("iteration %d: best %.4f mean %.4f evaluations %d (%.2f s)",
                             search.iteration, rec["global_best"],
                             sum(rec["utilities"]) / max(1, len(rec["utilities"])),
                             search.evaluations, pending)
                    pending = 0.0
                checkpointed()  # the previous tell's checkpoint is on disk
                if done is not None:
                    in_flight.append(rec)
                if writer is not None:
                    tensors, meta = search.state_dict()
                    extra = {} if estimator is None else {"estimate": estimator.state()}
                    writer.submit(tensors, {"search": meta, "wall_time": wall, **extra})
                else:
                    checkpointed()  # in memory: nothing to wait for
            checkpointed()
    except BaseException:
        if writer is not None:  # never leave a write running under a caller that cleans up
            with contextlib.suppress(BaseException):
                writer.wait()
        raise
    if not history:
        # the budget did not fit even the first evaluation of the population
        cost = getattr(search, "round_cost", getattr(search, "n", "its first"))
        raise ConfigError(f"budget: {cfg.budget} evaluations do not cover one round of "
                          f"{search.label} ({cost} candidates); raise the budget")
    if estimator is not None:  # nothing is reported or exported on an estimate
        return estimator.rescore(search, cfg.output.top_k), history
    return search, history
