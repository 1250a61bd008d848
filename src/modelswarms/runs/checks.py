"""Legal but suspicious inputs: each is one warning on the console (and in run.log), printed
once per session, and a counted event in the report. None stops a run: a user may mean it,
but each has misled a benchmark of this project before (docs/RELIABILITY.md).

And the one refusal that needs the loaded model, made before the search on every split the
run scores: an item longer than the model reads (`check_lengths`)."""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from ..errors import DataError
from ..evaluation.evaluator import Overlong, text_fields
from .scorer import Scorer, fingerprint

log = logging.getLogger("modelswarms")
_console = Console(stderr=True, soft_wrap=True)

SMALL_DEV = 50  # below this a dev accuracy moves by >= 2 points per item: noise a search fits
# How far above an even spread the commonest answer position must be, in standard errors of
# a binomial share, to be called concentrated; a max over k positions needs a high bar.
POSITION_Z = 2.5


def warn(scorer: Scorer, event: str, message: str) -> None:
    if message in scorer.warned:  # compare runs many searches in one session
        return
    scorer.warned.add(message)
    counts = scorer.counts
    log.warning(message)
    _console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)
    counts[event] += 1


def check_session(pool: Any, experts: torch.Tensor, dev: list[dict], cfg: Any,
                  scorer: Scorer) -> None:
    """The checks that need only what Session.open loaded."""
    duplicate_experts(pool, experts, scorer)
    n = len(dev)
    if n < SMALL_DEV:
        warn(scorer, "small_dev", f"data: the dev split has {n} items; under {SMALL_DEV} one "
             f"item moves the utility by {1 / max(n, 1):.3f}, and a search fits that noise "
             "(use more dev items, or read its gains with care)")
    answer_position(dev, cfg, scorer)


def duplicate_experts(pool: Any, experts: torch.Tensor, scorer: Scorer) -> None:
    """The same expert twice makes the swarm search copies."""
    seen: dict[bytes, str] = {}
    for i, (expert, row) in enumerate(zip(pool.experts, experts, strict=True)):
        key = pool.identity(i) or fingerprint(row)
        if key in seen:
            warn(scorer, "duplicate_experts", f"experts: {seen[key]} and {expert.name} are the "
                 f"same ({expert.path}); the search gets a copy, not another expert")
        else:
            seen[key] = expert.name


def answer_position(dev: list[dict], cfg: Any, scorer: Scorer) -> None:
    """Dev answers piled on one option position: a letter prior scores well there (the first
    benchmark's 32-item dev sets rewarded exactly that)."""
    positions: Counter = Counter()
    chance = 0.0
    for item in dev:
        choices, answer = item.get("choices"), item.get("answer")
        if not isinstance(choices, dict) or answer not in choices:
            return  # not multiple choice
        positions[list(choices).index(answer)] += 1
        chance += 1 / len(choices)
    n = len(dev)
    if n < 2 or not positions:
        return
    chance /= n
    pos, top = positions.most_common(1)[0]
    share = top / n
    z = (share - chance) / math.sqrt(chance * (1 - chance) / n)
    if z < POSITION_Z:
        return
    letter = next((list(it["choices"])[pos] for it in dev if len(it["choices"]) > pos), pos)
    scoring = getattr(cfg.utility, "scoring", None)
    hint = ("letter scoring rewards always giving it; consider `utility.scoring: cloze_norm` or "
            "`permuted`" if scoring == "letter" else "a model that prefers that position "
            "scores well without knowing more")
    warn(scorer, "answer_position", f"data: {share:.0%} of the {n} dev answers are option "
         f"{pos + 1} ({letter!r}; an even spread gives {chance:.0%}): {hint}")


def check_budget(cfg: Any, search: Any, scorer: Scorer) -> None:
    """A budget that lets a swarm barely move: fewer than two iterations after the first,
    which scores the experts. (Other strategies have no iterations of a fixed size.)"""
    if cfg.budget is None or not getattr(search, "starts_at_experts", False):
        return
    n = search.n
    steps = cfg.budget // n - 1
    if steps < 2:
        warn(scorer, "small_budget", f"budget: {cfg.budget} evaluations allow {search.label} "
             f"{max(steps, 0)} iteration(s) of {n} particles after scoring the experts; it "
             f"can barely move (two iterations need a budget of {3 * n})")


def check_lengths(evaluator: Any, utility: Any, splits: dict[str, list[dict] | None],
                  source: str | None) -> None:
    """Refuse, before the search, an item longer than the model reads (its
    max_position_embeddings) as the utility scores it (its template, options and all), on
    every split the run scores: found while scoring, the test split's would stop the run only
    after the whole search."""
    overlong = getattr(evaluator, "overlong", None)
    if overlong is None:
        return  # an evaluator of the user's: it checks when it scores
    for split, items in splits.items():
        if items and (found := overlong(items, utility)) is not None:
            refuse_overlong(found, items, split, source)


def refuse_overlong(found: Overlong, items: list[dict], split: str, source: str | None) -> None:
    """The one line for an item too long: file, split, item and field."""
    item = items[found.index]
    ident = f" (id {item['id']!r})" if "id" in item else ""
    if found.field is not None:
        what = f"field {found.field!r} is {found.tokens} tokens"
    else:
        field, text = max(text_fields(item), key=lambda x: len(x[1]), default=("?", ""))
        what = (f"field {field!r} ({len(text)} characters, its longest) makes its prompt, "
                f"as the utility scores it, {found.tokens} tokens")
    raise DataError(f"{source or 'data'}: item {found.index}{ident} of split {split!r}: "
                    f"{what}, more than {found.reader} reads ({found.limit}, its "
                    "max_position_embeddings); shorten or drop it")
