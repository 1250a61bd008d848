"""What a user watches while a run or a comparison works: a rich view on a terminal (or in a
notebook that can draw one); anywhere else (a log file, `nohup`, CI, `| tee`) one plain,
flushed line per search iteration and per finished comparison row, with the same counts and
ETA. Either way the state is also kept in the folder's `progress.json`, which
`modelswarms status` reads without touching anything else (runs/status.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

STATE = "progress.json"


def duration(seconds: float | None) -> str:
    """A span a person reads at a glance: 42 s, 12.5 min, 3.2 h, 2.1 days."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def search_eta(rec: dict[str, Any], max_iterations: int, budget: int | None) -> float:
    """Seconds left in a search after history record `rec`: the sooner of its iteration
    limit and its evaluation budget, each at the pace measured so far. (The iteration limit
    alone is absurd when the budget stops the search long before it.)"""
    it, wall, evals = rec["iteration"], rec["wall_time"], rec["evaluations"]
    left = wall / (it + 1) * max(max_iterations - it, 0)
    if budget is not None and evals > 0:
        left = min(left, wall / evals * max(budget - evals, 0))
    return left


def write_state(folder: Path | None, state: dict[str, Any]) -> None:
    """`progress.json`: the figures on screen, who writes them (pid, host) and when."""
    if folder is None:
        return
    # Renamed into place whole, so a reader never sees half of it; not fsynced as results
    # are (io.atomic_write_text): it is advisory and rewritten every iteration, and
    # a flush to disk per iteration buys nothing. A kill mid-write leaves a ".*.tmp" that
    # the next resume removes.
    tmp = Path(folder) / f".{STATE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({**state, "pid": os.getpid(), "host": socket.gethostname(),
                               "updated": time.time()}, indent=1))
    os.replace(tmp, Path(folder) / STATE)


class _View:
    """A rich view whose tasks show `description`, a bar, done/total and an `info` text; a
    plain line on stderr instead where no bar can be drawn."""

    def __init__(self, enabled: bool, elapsed: bool = True):
        self.enabled = enabled
        console = Console(stderr=True)
        # a bar redrawn in place is noise in a log: there, a line per step
        self.lines = enabled and not draws_bars(console)
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}")]
        self.bar = RichProgress(*columns, *([TimeElapsedColumn()] if elapsed else []),
                                console=console, disable=not enabled or self.lines,
                                transient=False)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def say(self, line: str) -> None:
        if self.lines:
            print(line, file=sys.stderr, flush=True)


class Progress(_View):
    """One search: a bar over iterations and the figures of the last one."""

    def __init__(self, max_iterations: int, label: str = "swarm", enabled: bool = True,
                 budget: int | None = None, folder: Path | None = None):
        super().__init__(enabled)
        self.max_iterations, self.label, self.budget = max_iterations, label, budget
        self.folder = folder
        # the bar counts what ends the search first where a budget bounds it: evaluations
        self._task = self.bar.add_task(label, total=budget or max_iterations,
                                       info="evaluating experts")

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if exc[0] is not None:
            write_state(self.folder, {"kind": "run", "state": "stopped",
                                      "error": f"{exc[0].__name__}: {exc[1]}"})

    def update(self, rec: dict[str, Any]) -> None:
        it = rec["iteration"]
        eta = search_eta(rec, self.max_iterations, self.budget)
        step = f"step {rec['step']:.3f}  " if "step" in rec else ""
        used = f"{rec['evaluations']}" + (f"/{self.budget}" if self.budget else "")
        utilities = rec["utilities"]
        info = (f"best {rec['global_best']:.4f}  mean {sum(utilities) / len(utilities):.4f}  "
                f"{step}evals {used}  {rec['seconds']:.1f} s/it  ETA ≤{duration(eta)}")
        # drawn now, not by the next tick: in a notebook the last iteration's state would
        # otherwise never show (rich does not redraw a notebook bar when it stops)
        self.bar.update(self._task, completed=rec["evaluations"] if self.budget else it,
                        info=info, refresh=True)
        self.say(f"{self.label}: iteration {it}/{self.max_iterations}  {info}")
        write_state(self.folder, {"kind": "run", "state": "running", "label": self.label,
                                  "iteration": it, "max_iterations": self.max_iterations,
                                  "evaluations": rec["evaluations"], "budget": self.budget,
                                  "best": rec["global_best"], "eta_s": eta, "line": info})


class CompareProgress(_View):
    """A whole comparison: rows done of all, the row in flight (a search: its iteration and
    evaluations of the budget), elapsed time and an ETA for what is left.

    The ETA prices every row in dev-evaluation equivalents (`cost`, an estimate per row kind
    from compare.py) and converts with the seconds per equivalent measured in this session:
    first on the experts' dev scoring, then on every finished row and the search in flight."""

    def __init__(self, folder: Path, units: list[tuple[str, float]], done: int,
                 enabled: bool = True):
        super().__init__(enabled, elapsed=False)
        self.folder, self.units, self.done = folder, units, done
        self.total = done + len(units)
        self.start = time.perf_counter()
        self.spent, self.priced = 0.0, 0.0  # measured seconds and their cost in equivalents
        self.row: dict[str, Any] | None = None  # the row in flight
        self.line = ""  # the last line shown
        self.before_rows = 0.0  # cost of the work before the first row still to do
        self._all = self.bar.add_task("comparison", total=self.total, completed=done,
                                      info="opening the model and the data")
        self._row = self.bar.add_task("", total=1, info="", visible=False)

    def __enter__(self):
        super().__enter__()
        self._show(f"{self.total} rows, {self.done} done before; opening the model and the "
                   "data")
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if exc[0] is None:
            self._state("finished")
        else:
            self._state("stopped", error=f"{exc[0].__name__}: {exc[1]}")

    def note(self, what: str) -> None:
        self._show(what)

    # what is measured
    def calibrate(self, seconds: float, cost: float, what: str, left: float = 0.0) -> None:
        """`cost` done in `seconds` before the rows start; `left` of it still to do."""
        self.spent += seconds
        self.priced += cost
        self.before_rows = left
        self._show(f"{what} in {duration(seconds)}")

    def start_row(self, label: str) -> None:
        cost = self.units[0][1] if self.units else 0.0
        self.row = {"label": label, "cost": cost, "evaluations": 0, "wall": 0.0}
        self.bar.update(self._row, description=label, total=1, completed=0, visible=True,
                        info="")
        self._state("running")

    def finish_row(self, seconds: float, summary: str) -> None:
        cost = self.units.pop(0)[1] if self.units else 0.0
        self.spent += seconds
        self.priced += cost
        self.done += 1
        label = self.row["label"] if self.row else "row"
        self.row = None
        self.bar.update(self._row, visible=False)
        self._show(f"{label} done in {duration(seconds)}: {summary}")

    def search_view(self, max_iterations: int, label: str, enabled: bool = True,
                    budget: int | None = None, folder: Path | None = None) -> _SearchInRow:
        """What the search loop of the row in flight reports to (runner.search_loop's
        `view`), in place of its own Progress."""
        return _SearchInRow(self, max_iterations, budget)

    def search_step(self, rec: dict[str, Any], max_iterations: int, budget: int | None) -> None:
        assert self.row is not None
        self.row.update(evaluations=rec["evaluations"], wall=rec["wall_time"])
        it = rec["iteration"]
        used = f"{rec['evaluations']}" + (f"/{budget}" if budget else "")
        info = f"iteration {it}/{max_iterations}, evaluations {used}, best {rec['global_best']:.4f}"
        self.bar.update(self._row, total=budget or max_iterations,
                        completed=rec["evaluations"] if budget else it, info=info)
        self._show(f"{self.row['label']}: {info}")

    # what is shown
    def eta(self) -> float | None:
        row = self.row or {"cost": 0.0, "evaluations": 0, "wall": 0.0}
        priced = self.priced + row["evaluations"]
        if priced <= 0:
            return None
        rate = (self.spent + row["wall"]) / priced
        left = self.before_rows + sum(c for _, c in self.units[1 if self.row else 0:])
        left += max(row["cost"] - row["evaluations"], 0.0)
        return rate * left

    def _figures(self) -> str:
        return (f"elapsed {duration(time.perf_counter() - self.start)}, "
                f"ETA {duration(self.eta()) if self.eta() is not None else '?'}")

    def _show(self, what: str) -> None:
        figures = self._figures()
        self.bar.update(self._all, completed=self.done, info=figures, refresh=True)
        self.line = f"[{self.done}/{self.total} rows] {what} | {figures}"
        self.say(f"compare: {self.line}")
        self._state("running")

    def _state(self, state: str, **extra: Any) -> None:
        write_state(self.folder, {"kind": "compare", "state": state, "rows_done": self.done,
                                  "rows_total": self.total, "in_flight": self.row,
                                  "elapsed_s": time.perf_counter() - self.start,
                                  "eta_s": self.eta(), "line": self.line, **extra})


class _SearchInRow:
    def __init__(self, parent: CompareProgress, max_iterations: int, budget: int | None):
        self.parent, self.max_iterations, self.budget = parent, max_iterations, budget

    def __enter__(self) -> _SearchInRow:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, rec: dict[str, Any]) -> None:
        self.parent.search_step(rec, self.max_iterations, self.budget)


# runner.search_loop's `view`: Progress, or a comparison's CompareProgress.search_view
SearchView = Callable[..., Any]


def draws_bars(console: Console) -> bool:
    """Whether rich can draw a live bar on `console`. In a notebook rich draws it inside an
    ipywidgets Output; without ipywidgets it draws nothing at all, only a warning."""
    if console.is_jupyter:
        return importlib.util.find_spec("ipywidgets") is not None
    return console.is_terminal
