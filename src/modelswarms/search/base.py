"""Search strategies propose candidates and are told their utilities (ask / tell).

A strategy never calls the evaluator, so evaluation can be local, batched or remote without
the strategy knowing, and its whole state is what a checkpoint saves. What a candidate is
depends on the strategy: a row of the weight space for most (`WeightSearch`), a multi-LLM
system for Heterogeneous Swarms; the run loop scores each kind through its own seam
(runs/candidates.py), chosen by the type the strategy registers (`candidate=`).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import torch

Batch = TypeVar("Batch", covariant=True)  # what one ask() proposes
C = TypeVar("C", covariant=True)          # one candidate (what best() and top() give)


class SearchStrategy(Protocol[Batch, C]):
    label: str        # the name a report gives it
    evaluations: int  # utility evaluations asked for so far (what budgets count)
    iteration: int

    @property
    def done(self) -> bool: ...

    def ask(self) -> Batch:
        """Candidates to evaluate next: rows of a (k x parameters) tensor for a search of
        the weight space, a list of systems for Heterogeneous Swarms."""
        ...

    def tell(self, utilities: list[float]) -> None:
        """The utilities of the candidates returned by the last `ask`, in order."""
        ...

    def best(self) -> tuple[C, float]: ...

    def top(self, k: int) -> list[tuple[C, float]]:
        """Up to k best candidates seen, best first (exports and the ensemble vote)."""
        ...

    def record(self) -> dict[str, Any] | None:
        """JSON-able figures of the iteration the last `tell` completed, for history.jsonl:
        at least `global_best` and `utilities`; None when that tell completed none (a
        Heterogeneous Swarms round takes two)."""
        ...

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON-able scalars that restore the strategy bit-exactly."""
        ...

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...


# A search of the weight space: asks for rows of a (k x parameters) tensor, gives one row back.
WeightSearch = SearchStrategy[torch.Tensor, torch.Tensor]
