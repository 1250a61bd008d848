"""Multi-task utility: the harmonic mean of per-task accuracies, so no task can be traded away.

Items carry a `task` field (set by `data.tasks` or `data.preset`, see
evaluation/data/items.py); each task is scored by multiple choice when its items have choices,
else by exact match, with the run's utility settings. The four domain presets that tag them are
data (evaluation/data/presets.py).
"""

from __future__ import annotations

from typing import Any, Literal

from ...config import UtilityConfig, as_utility
from ...errors import DataError
from .utilities import (
    ChoiceScoring,
    ItemScores,
    ScoresEachParticle,
    build_utility,
    register_utility,
)


def harmonic_mean(values: list[float]) -> float:
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


class MultiTaskConfig(ChoiceScoring):
    """The harmonic mean over tasks: multiple choice where items have choices, else exact
    match; `scoring` is the multiple-choice tasks'."""

    type: Literal["multi_task"]


@register_utility("multi_task", config=MultiTaskConfig)
class MultiTask(ScoresEachParticle):
    """Harmonic mean over tasks; per item the task utility's score."""

    required_fields = ("task",)

    def __init__(self, cfg: UtilityConfig):
        self.cfg = cfg
        self._subs: dict[str, Any] = {}

    def _sub(self, kind: str):
        if kind not in self._subs:
            self._subs[kind] = build_utility(as_utility(self.cfg, kind))
        return self._subs[kind]

    def _groups(self, items: list[dict]) -> list[tuple[list[int], Any]]:
        """Each task's item indices and the utility that scores them."""
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(str(it["task"]), []).append(i)
        if len(groups) < 2:
            raise DataError(f"multi_task needs items of at least two tasks, got "
                            f"{', '.join(groups) or 'none'}")
        return [(idx, self._sub("multiple_choice" if all("choices" in items[i] for i in idx)
                                else "exact_match")) for idx in groups.values()]

    def rows(self, tokenizer: Any, items: list[dict]) -> list[list[Any]]:
        out: list[list[Any]] = [[] for _ in items]
        for idx, sub in self._groups(items):
            for i, rows in zip(idx, sub.rows(tokenizer, [items[i] for i in idx]), strict=True):
                out[i] = rows
        return out

    def score_many(self, model: Any, tokenizer: Any, items: list[dict],
                   particles: int) -> list[ItemScores]:
        scores = [[0.0] * len(items) for _ in range(particles)]
        preds = [[""] * len(items) for _ in range(particles)]
        per_task: list[list[float]] = [[] for _ in range(particles)]
        counts: list[dict[str, int]] = [{} for _ in range(particles)]
        for idx, sub in self._groups(items):
            sub_items = [items[i] for i in idx]
            for p, r in enumerate(sub.score_many(model, tokenizer, sub_items, particles)):
                per_task[p].append(r.value)
                for k, v in r.counts.items():
                    counts[p][k] = counts[p].get(k, 0) + v
                for j, i in enumerate(idx):
                    scores[p][i], preds[p][i] = r.scores[j], r.predictions[j]
        return [ItemScores(harmonic_mean(per_task[p]), scores[p], preds[p], counts[p])
                for p in range(particles)]
