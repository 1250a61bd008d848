"""The live display in a notebook: a bar where rich can draw one, else a line per iteration,
never nothing. (A terminal-less log is tests/test_run.py's.)"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys

import pytest
import rich.console

from modelswarms.runs.progress import Progress, duration


def records(n: int) -> list[dict]:
    return [{"iteration": i, "utilities": [0.5, 0.25], "global_best": 0.5, "step": 1.0,
             "evaluations": 2 * (i + 1), "seconds": 0.1, "wall_time": 0.1 * (i + 1)}
            for i in range(n)]


@pytest.fixture
def notebook(monkeypatch):
    """Rich believes it runs in a Jupyter kernel (it asks IPython's shell class)."""
    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    assert rich.console.Console().is_jupyter


def test_a_notebook_without_ipywidgets_gets_a_line_per_iteration(notebook, monkeypatch,
                                                                 capsys):
    # rich draws a notebook bar in an ipywidgets Output; without the package it draws
    # nothing and warns, so the run would be silent for hours
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with Progress(3, "swarm") as progress:
        for rec in records(4):
            progress.update(rec)
    lines = [x for x in capsys.readouterr().err.splitlines() if "iteration" in x]
    assert len(lines) == 4
    assert lines[-1].startswith("swarm: iteration 3/3  best 0.5000  mean 0.3750  step 1.000")


def test_a_notebook_with_ipywidgets_gets_the_bar(notebook, monkeypatch):
    # Only the choice is checked here: outside a kernel, IPython's display writes into the
    # stdout that rich's live display redirects, and recurses. In a real kernel (ipykernel
    # 7.4, ipywidgets 8.1, rich 15) the bar arrives in an Output widget at every iteration,
    # the last one included (Progress.update redraws at once).
    spec = importlib.machinery.ModuleSpec("ipywidgets", None)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: spec if name == "ipywidgets" else None)
    progress = Progress(3, "swarm")
    assert not progress.lines and not progress.bar.disable


def test_a_run_s_eta_is_bounded_by_its_budget(capsys):
    """max_iterations far above what the budget allows read "251175000.0 min": the search
    stops at the budget, so the ETA is the budget's, at the pace measured."""
    with Progress(251175000, "swarm", budget=50) as progress:
        progress.update({"iteration": 1, "utilities": [0.5], "global_best": 0.5,
                         "evaluations": 20, "seconds": 5.0, "wall_time": 10.0})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "evals 20/50" in line and "ETA ≤15 s" in line, line  # 30 left at 0.5 s each


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (None, 42, 600, 3 * 3600, 5 * 86400)] == [
        "?", "42 s", "10.0 min", "3.0 h", "5.0 days"]
