"""The live view of a run: one bar over iterations plus the figures a user watches; where no
terminal or notebook shows a bar (a CI log, `| tee`, a file), one plain line per iteration."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, max_iterations: int, label: str = "swarm", enabled: bool = True):
        self.max_iterations = max_iterations
        self.enabled = enabled
        self.label = label
        console = Console(stderr=True)
        # a bar redrawn in place is noise in a log: there, a line per iteration
        self.lines = enabled and not draws_bars(console)
        self._bar = RichProgress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
            console=console, disable=not enabled or self.lines, transient=False,
        )
        self._task = self._bar.add_task("swarm", total=max_iterations, stats="evaluating experts")

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def update(self, rec: dict[str, Any]) -> None:
        utilities = rec["utilities"]
        it = rec["iteration"]
        per_iter = rec["wall_time"] / (it + 1)
        eta = per_iter * max(self.max_iterations - it, 0)
        step = f"step {rec['step']:.3f}  " if "step" in rec else ""
        stats = (
            f"best {rec['global_best']:.4f}  mean {sum(utilities) / len(utilities):.4f}  "
            f"{step}evals {rec['evaluations']}  "
            f"{rec['seconds']:.1f} s/it  ETA ≤{eta / 60:.1f} min"
        )
        # drawn now, not by the next tick: in a notebook the last iteration's state would
        # otherwise never show (rich does not redraw a notebook bar when it stops)
        self._bar.update(self._task, completed=it, stats=stats, refresh=True)
        if self.lines:
            print(f"{self.label}: iteration {it}/{self.max_iterations}  {stats}",
                  file=sys.stderr, flush=True)


def draws_bars(console: Console) -> bool:
    """Whether rich can draw a live bar on `console`. In a notebook rich draws it inside an
    ipywidgets Output; without ipywidgets it draws nothing at all, only a warning."""
    if console.is_jupyter:
        return importlib.util.find_spec("ipywidgets") is not None
    return console.is_terminal
