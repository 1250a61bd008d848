"""`utility.scoring: auto`, the default: the multiple-choice scoring mode a run uses, chosen
once per run as OLMES chooses between its formulations: the mode in which the base model is
most accurate on dev (a pool without a base model, full models or a mixture: the experts'
mean). A fixed letter default left small models at chance (SmolLM2-135M on the demo task:
letter 0.200, cloze 0.783), where no search can tell one candidate from another.

The choice is written to the run folder (`scoring.json`) and read back on resume, so a resumed
run scores as it started even if scoring the base model again would tie differently; it is in
the report and the log.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..evaluation.objectives.utilities import AUTO_SCORING, build_utility
from ..io import atomic_write_text
from .scorer import Scorer

log = logging.getLogger("modelswarms")

CHOICE = "scoring.json"


def is_auto(cfg: RunConfig) -> bool:
    return getattr(cfg.utility, "scoring", None) == "auto"


def with_scoring(cfg: RunConfig, choice: dict[str, Any] | None) -> RunConfig:
    """`cfg` scoring as `choice` says (unchanged without one, or when it names its mode)."""
    if choice is None or not is_auto(cfg):
        return cfg
    return cfg.model_copy(update={
        "utility": cfg.utility.model_copy(update={"scoring": choice["scoring"]})})


def choose_scoring(scorer: Scorer, cfg: RunConfig, dev: list[dict], kind: str,
                   experts: Any) -> dict[str, Any]:
    """Score the base model (`kind` "lora") or every expert on `dev` in each mode of
    AUTO_SCORING and keep the most accurate (the first on a tie). These scores are not
    search evaluations: no budget pays for them."""
    if cfg.strategy == "hswarm":
        # its exported system (system/answer.py) picks options by their letters, as the
        # paper's nodes do; a system searched under another mode would not answer as searched
        return {"scoring": "letter", "by": "strategy hswarm, whose exported system/answer.py "
                "reads option letters", "dev_items": len(dev), "dev_accuracy": {}}
    if not any(isinstance(it.get("choices"), dict) for it in dev):
        # exact-match items only (a multi_task of such tasks): no mode changes a score
        return {"scoring": AUTO_SCORING[0], "by": "no multiple-choice items on dev",
                "dev_items": len(dev), "dev_accuracy": {}}
    accuracy: dict[str, float] = {}
    for mode in AUTO_SCORING:
        utility = build_utility(cfg.utility.model_copy(update={"scoring": mode}))
        if kind == "lora":
            accuracy[mode] = scorer.score(None, dev, utility).value
        else:
            values = [r.value for r in scorer.score_many(experts, dev, utility)]
            accuracy[mode] = sum(values) / len(values)
    best = max(AUTO_SCORING, key=accuracy.__getitem__)
    return {"scoring": best, "by": "the base model" if kind == "lora" else "the experts on average",
            "dev_items": len(dev), "dev_accuracy": accuracy}


def describe(choice: dict[str, Any]) -> str:
    """One line for the log and report.md."""
    scores = ", ".join(f"{m} {v:.3f}" for m, v in choice["dev_accuracy"].items())
    if not scores:
        return f"scoring: {choice['scoring']} (auto; {choice['by']})"
    return (f"scoring: {choice['scoring']} (auto, chosen by the accuracy of {choice['by']} "
            f"on {choice['dev_items']} dev items: {scores})")


def read_choice(run_dir: Path) -> dict[str, Any] | None:
    """The choice a run folder recorded, or None (not an auto run, or killed before it was
    written: choosing again gives the same, scoring being deterministic)."""
    path = run_dir / CHOICE
    if not path.is_file():
        return None
    try:
        choice = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # written atomically, so only a hand-edited file; choose again
    return choice if isinstance(choice, dict) and choice.get("scoring") in AUTO_SCORING \
        else None


def record_choice(run_dir: Path, choice: dict[str, Any]) -> None:
    atomic_write_text(run_dir / CHOICE, json.dumps(choice, indent=2))


def export_scoring(ucfg: Any, folder: str | Path) -> Any:
    """`ucfg` with the scoring its run chose, when `folder` is a run's export (`RUN/best`,
    `RUN/top/rank_k`) and `ucfg` says auto: an export is scored as its run scored it, not
    by a mode chosen again on the split being reported."""
    if getattr(ucfg, "scoring", None) != "auto":
        return ucfg
    folder = Path(folder)
    for run_dir in (folder.parent, folder.parent.parent):
        if (choice := read_choice(run_dir)) is not None:
            return ucfg.model_copy(update={"scoring": choice["scoring"]})
    return ucfg
