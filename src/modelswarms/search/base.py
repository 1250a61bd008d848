"""Search strategies propose candidates and are told their utilities (ask / tell).

A strategy never calls the evaluator, so evaluation can be local, batched or remote without
the strategy knowing, and its whole state is what a checkpoint saves.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class SearchStrategy(Protocol):
    label: str        # the name a report gives it
    evaluations: int  # utility evaluations asked for so far (what budgets count)
    iteration: int

    @property
    def done(self) -> bool: ...

    def ask(self) -> torch.Tensor:
        """Candidates to evaluate next, as rows of a (k x parameters) tensor."""
        ...

    def tell(self, utilities: list[float]) -> None:
        """The utilities of the rows returned by the last `ask`, in order."""
        ...

    def best(self) -> tuple[torch.Tensor, float]: ...

    def top(self, k: int) -> list[tuple[torch.Tensor, float]]:
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
