"""Experiment trackers (`output.trackers`): TensorBoard, MLflow, Weights & Biases.

Each logs every iteration of a search (global best, the iteration's best / mean / worst
utility, step length, evaluations, seconds) and, at the end, the report's scalar figures.
A tracker is one class in TRACKERS; its package is an optional extra, checked before a run
folder is made, so a missing one fails at once instead of after an hour of search.

Once a search has started, tracking never stops it: a tracker that fails is logged as a
warning and dropped. Backends open when the search loop starts, after the model and data
have loaded, so a run whose experts or data are wrong leaves no tracker run behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import statistics
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from .errors import ConfigError
from .io import atomic_write_text

log = logging.getLogger("modelswarms")

STATE = "trackers.json"  # in the run folder: each tracker's run id, so a resume continues it


@dataclass
class TrackingRun:
    """Where and under what names a search is tracked."""

    folder: Path                     # tracker files: TensorBoard logs, MLflow store, W&B runs
    project: str                     # MLflow experiment, W&B project
    name: str                        # the run's name (and its TensorBoard sub-folder)
    config: dict[str, Any]           # the run's config, JSON-able
    run_dir: Path | None             # holds STATE; None: in memory, never resumed
    resumed: list[dict[str, Any]] = field(default_factory=list)  # history before a resume

    def state(self) -> dict[str, Any]:
        if self.run_dir is None or not (self.run_dir / STATE).is_file():
            return {}
        return json.loads((self.run_dir / STATE).read_text())

    def save_state(self, key: str, value: Any) -> None:
        if self.run_dir is not None:
            atomic_write_text(self.run_dir / STATE, json.dumps({**self.state(), key: value}))


class Tracker:
    """One backend. Subclasses set `modules` (the imports they need) and `extra`."""

    modules: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""

    def __init__(self, run: TrackingRun):
        self.run = run

    def log_iteration(self, rec: dict[str, Any]) -> None:
        raise NotImplementedError

    def log_report(self, report: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError

    @classmethod
    def missing(cls) -> list[str]:
        """The modules this tracker needs that are not installed (checked without importing
        them: mlflow takes seconds to import)."""
        return [m for m in cls.modules if importlib.util.find_spec(m) is None]


TRACKERS: dict[str, type[Tracker]] = {}


def register_tracker(name: str):
    def decorate(cls: type[Tracker]) -> type[Tracker]:
        TRACKERS[name] = cls
        return cls
    return decorate


def iteration_metrics(rec: dict[str, Any]) -> dict[str, float]:
    """The figures of one history record that every tracker logs, by metric name."""
    out = {"utility/global_best": rec["global_best"]}
    # invalid candidates may score -inf or NaN; they would swamp a mean
    utilities = [u for u in rec.get("utilities", []) if math.isfinite(u)]
    if utilities:
        out.update({"utility/best": max(utilities), "utility/mean": statistics.fmean(utilities),
                    "utility/worst": min(utilities)})
    for key, name in (("step", "search/step"), ("sigma", "search/sigma"),
                      ("evaluations", "search/evaluations"),
                      ("seconds", "time/seconds_per_iteration"), ("wall_time", "time/wall")):
        if isinstance(rec.get(key), int | float):
            out[name] = rec[key]
    return {k: float(v) for k, v in out.items()}


ODD = re.compile(r"[^A-Za-z0-9_.\- /]")  # characters some tracker refuses in a metric name


def report_metrics(report: dict[str, Any], prefix: str = "report") -> dict[str, float]:
    """Every number of a report (nested dicts flattened: test_gains, events), by metric
    name; lists (rows, per-item scores) are the report files' business."""
    out: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}/{ODD.sub('_', str(key))}"
        if isinstance(value, dict):
            out.update(report_metrics(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as flat `a.b` keys with string values (MLflow's params)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = (value if isinstance(value, str) else json.dumps(value))[:500]
    return out


@register_tracker("tensorboard")
class TensorBoardTracker(Tracker):
    """Event files in `<folder>/tensorboard/<name>`; `tensorboard --logdir <folder>`."""

    modules = ("tensorboard",)
    extra = "tensorboard"

    def __init__(self, run: TrackingRun):
        super().__init__(run)
        from torch.utils.tensorboard import SummaryWriter

        purge = None
        if run.resumed:
            # TensorBoard discards events at or after purge_step when it reads the files:
            # what the killed process logged at the checkpoint's iteration (a half-logged
            # report shares its step) goes, and that iteration is logged again below (the
            # kill may also have come between the checkpoint and its logging).
            purge = run.resumed[-1]["iteration"]
        self.writer = SummaryWriter(str(run.folder / "tensorboard" / run.name), purge_step=purge)
        if run.resumed:
            self.log_iteration(run.resumed[-1])
        else:
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(run.config) + "```")
        self.last = run.resumed[-1]["iteration"] if run.resumed else 0

    def log_iteration(self, rec: dict[str, Any]) -> None:
        self.last = rec["iteration"]
        for name, value in iteration_metrics(rec).items():
            self.writer.add_scalar(name, value, rec["iteration"])

    def log_report(self, report: dict[str, Any]) -> None:
        for name, value in report_metrics(report).items():
            self.writer.add_scalar(name, value, self.last)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


@register_tracker("mlflow")
class MLflowTracker(Tracker):
    """An MLflow run: at MLFLOW_TRACKING_URI when set, else a SQLite store
    `<folder>/mlflow.db` (MLflow 3 refuses new file stores: `./mlruns` is in maintenance);
    `mlflow ui --backend-store-uri sqlite:///<folder>/mlflow.db`."""

    modules = ("mlflow",)
    extra = "mlflow"

    @classmethod
    def missing(cls) -> list[str]:
        # the local store needs SQLAlchemy and alembic, which mlflow-skinny leaves out
        local = () if os.environ.get("MLFLOW_TRACKING_URI") else ("sqlalchemy", "alembic")
        return [m for m in (*cls.modules, *local) if importlib.util.find_spec(m) is None]

    def __init__(self, run: TrackingRun):
        super().__init__(run)
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        local = uri is None
        if local:
            run.folder.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(run.folder / 'mlflow.db').resolve()}"
            # a new store's schema migrations narrate at INFO, between the run's own lines
            for name in ("alembic", "mlflow.store.db.utils"):
                logging.getLogger(name).setLevel(logging.WARNING)
        self.client = client = MlflowClient(tracking_uri=uri)
        run_id = run.state().get("mlflow")
        fresh = run_id is None
        if not fresh:
            # A resume continues the same run and logs the checkpointed iterations it lacks
            # (a kill between a checkpoint and its logging); MLflow would keep a step twice.
            client.update_run(run_id, status="RUNNING")
            logged = {m.step for m in client.get_metric_history(run_id, "utility/global_best")}
        else:
            exp = client.get_experiment_by_name(run.project)
            if exp is not None:
                exp_id = exp.experiment_id
            else:
                # artifacts beside the store, not in ./mlartifacts of the working directory
                where = (run.folder / "mlartifacts").resolve().as_uri() if local else None
                exp_id = client.create_experiment(run.project, artifact_location=where)
            run_id = client.create_run(exp_id, run_name=run.name).info.run_id
            run.save_state("mlflow", run_id)
            logged = set()
        self.run_id, self.last, self.logged = run_id, 0, logged
        if fresh:
            self._batch(params=flat_config(run.config))
        for rec in run.resumed:
            self.log_iteration(rec)

    def _batch(self, metrics: dict[str, float] | None = None, step: int = 0,
               params: dict[str, str] | None = None) -> None:
        import time

        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ms = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
        ps = [Param(k, v) for k, v in (params or {}).items()]
        for i in range(0, max(len(ms), len(ps)), 100):  # MLflow takes 100 params a batch
            self.client.log_batch(self.run_id, metrics=ms[i:i + 100], params=ps[i:i + 100])

    def log_iteration(self, rec: dict[str, Any]) -> None:
        self.last = rec["iteration"]
        if rec["iteration"] not in self.logged:
            self._batch(iteration_metrics(rec), rec["iteration"])

    def log_report(self, report: dict[str, Any]) -> None:
        self._batch(report_metrics(report), self.last)

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


@register_tracker("wandb")
class WandbTracker(Tracker):
    """A W&B run in `<folder>/wandb/`: offline unless WANDB_MODE says otherwise (upload an
    offline run later with `wandb sync <folder>/wandb/offline-run-*`)."""

    modules = ("wandb",)
    extra = "wandb"

    def __init__(self, run: TrackingRun):
        super().__init__(run)
        import wandb

        run_id = run.state().get("wandb")
        if run_id is None:
            run_id = uuid.uuid4().hex[:8]  # W&B's own ids look like this
            run.save_state("wandb", run_id)
        run.folder.mkdir(parents=True, exist_ok=True)
        self.wb = wandb.init(
            project=run.project, name=run.name, id=run_id, resume="allow",
            dir=str(run.folder), config=run.config,
            mode=None if os.environ.get("WANDB_MODE") else "offline",
            # the run's own display owns the terminal
            settings=wandb.Settings(console="off", silent=True),
            reinit="create_new")
        # An offline run cannot ask what the killed process logged, so a resume logs from
        # the iteration after the checkpoint on: a kill in the instant between a checkpoint
        # and its logging loses that one point (never a duplicate). The resumed process
        # writes a second offline folder with the same run id; `wandb sync` joins them.
        self.last = run.resumed[-1]["iteration"] if run.resumed else 0

    def log_iteration(self, rec: dict[str, Any]) -> None:
        self.last = rec["iteration"]
        self.wb.log(iteration_metrics(rec), step=rec["iteration"])

    def log_report(self, report: dict[str, Any]) -> None:
        self.wb.summary.update(report_metrics(report))

    def close(self, failed: bool = False) -> None:
        self.wb.finish(exit_code=1 if failed else 0)


def check_trackers(names: list[str]) -> None:
    """A ConfigError naming the extra to install, before any folder or search exists."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"output.trackers: unknown tracker {name!r}; known: "
                              f"{', '.join(TRACKERS)}")
        if missing := TRACKERS[name].missing():
            raise ConfigError(
                f"output.trackers: {name} needs {', '.join(missing)}, not installed: "
                f"pip install 'modelswarms[{TRACKERS[name].extra}]'")


class TrackedConfig(Protocol):
    """What Trackers reads of a RunConfig (config.py imports this module for the registry's
    names, so this one does not import it)."""

    @property
    def output(self) -> Any: ...

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...


class Trackers:
    """The run's trackers as one: checked on creation, opened by the search loop (`start`),
    closed by `with`. Any call that fails drops that tracker with a warning."""

    def __init__(self, cfg: TrackedConfig, run_dir: Path | None):
        self.names = list(cfg.output.trackers)
        check_trackers(self.names)
        self.cfg, self.run_dir = cfg, run_dir
        self.open: dict[str, Tracker] = {}

    def _run(self, resumed: list[dict[str, Any]]) -> TrackingRun:
        out = self.cfg.output
        where = Path(self.run_dir if self.run_dir is not None else out.dir).resolve()
        folder = Path(out.tracking_dir).resolve() if out.tracking_dir else where
        # a run inside the tracking folder (compare's rows) is named by its path there
        name = where.relative_to(folder).as_posix() if where.is_relative_to(folder) else "."
        return TrackingRun(folder, folder.name, where.name if name == "." else name,
                           self.cfg.model_dump(mode="json"), self.run_dir, resumed)

    def start(self, resumed: list[dict[str, Any]]) -> None:
        """Open every tracker; `resumed` is the history a resumed run already has."""
        if not self.names:
            return
        run = self._run(resumed)
        for name in self.names:
            try:
                self.open[name] = TRACKERS[name](run)
            except Exception as err:  # tracking must not stop a search
                log.warning("tracker %s could not start (%s: %s); the run goes on without it",
                            name, type(err).__name__, err)

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.open.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # tracking must not stop a search
                log.warning("tracker %s failed (%s: %s); the run goes on without it",
                            name, type(err).__name__, err)
                del self.open[name]
                with contextlib.suppress(Exception):
                    tracker.close(failed=True)

    def log_iteration(self, rec: dict[str, Any]) -> None:
        self._each("log_iteration", rec)

    def log_report(self, report: dict[str, Any]) -> None:
        self._each("log_report", report)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        for name, tracker in self.open.items():
            try:
                tracker.close(failed=failed)
            except Exception as err:  # the run's result stands regardless
                log.warning("tracker %s did not close cleanly (%s: %s)", name,
                            type(err).__name__, err)
        self.open.clear()
