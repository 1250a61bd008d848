"""The loop's seam for candidates. A strategy registers the type of one candidate
(search/registry.py: a weight row, `torch.Tensor`, or a multi-LLM `System`); the kind of that
type says how its candidates are scored on dev, how a finished search is reported (in memory,
or into a run folder), and how a result scores other items and is saved. The loop
(runner.py), the Python API and compare look the kind up here, so a strategy brings no hooks
of its own into the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from ..evaluation.objectives.utilities import ItemScores
from ..hetero.system import System
from ..search import SearchStrategy
from .report import final_report, summarize
from .rows import SearchLoop
from .session import Session
from .systems import Systems


class CandidateKind(Protocol):
    fewer_items: bool  # `utility.estimate` can score its candidates on anchor items

    def scorer(self, session: Session, cfg: Any) -> Callable[[Any], list[float]]:
        """A batch of candidates (what `ask` returns) -> their dev utilities."""
        ...

    def report(self, session: Session, search: SearchStrategy, history: list[dict[str, Any]],
               run_dir: Path | None, loop: SearchLoop) -> dict[str, Any]:
        """The finished search's report; with a `run_dir`, also its exports and files.
        `loop` runs the searches a report compares with."""
        ...

    def score(self, session: Session, candidate: Any, items: list[dict]) -> ItemScores: ...

    def save(self, session: Session, candidate: Any, folder: Path, meta: dict[str, str]
             ) -> Path: ...


class WeightRows:
    """Rows of the weight space (every strategy but hswarm)."""

    fewer_items = True

    def scorer(self, session: Session, cfg: Any) -> Callable[[torch.Tensor], list[float]]:
        return session.dev_utilities

    def report(self, session: Session, search: SearchStrategy, history: list[dict[str, Any]],
               run_dir: Path | None, loop: SearchLoop) -> dict[str, Any]:
        if run_dir is None:
            return summarize(session, search, history)
        return final_report(session, search, history, run_dir)

    def score(self, session: Session, vector: torch.Tensor, items: list[dict]) -> ItemScores:
        return session.score(vector, items)

    def save(self, session: Session, vector: torch.Tensor, folder: Path, meta: dict[str, str]
             ) -> Path:
        return session.export(vector, folder, meta)


KINDS: dict[type, CandidateKind] = {torch.Tensor: WeightRows(), System: Systems()}


def candidate_kind(candidate: type) -> CandidateKind:
    """The kind of a strategy's `candidate` type."""
    return KINDS[candidate]
