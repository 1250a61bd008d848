"""Top-k majority vote over particles' answers."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..evaluation.objectives.utilities import ItemScores


def majority_vote(results: Sequence[ItemScores], utilities: Sequence[float]) -> ItemScores:
    """Per item, the answer most particles gave; a tie goes to the answer of the particle with
    the highest utility among those tied (the reference code's tie-break read a stale loop
    variable). The item's score is the score that particle got for it."""
    order = sorted(range(len(results)), key=lambda k: -utilities[k])
    n_items = len(results[0].predictions)
    predictions, scores = [], []
    for j in range(n_items):
        counts: dict[str, int] = {}
        for k in order:
            counts[results[k].predictions[j]] = counts.get(results[k].predictions[j], 0) + 1
        top = max(counts.values())
        # `order` runs from the highest utility down, so the first tied answer met wins.
        winner = next(k for k in order if counts[results[k].predictions[j]] == top)
        predictions.append(results[winner].predictions[j])
        scores.append(results[winner].scores[j])
    # NaN marks an item the utility left out (a judge that failed under on_failure: exclude).
    kept = [x for x in scores if not math.isnan(x)]
    value = sum(kept) / len(kept) if kept else 0.0
    return ItemScores(value=value, scores=scores, predictions=predictions)
