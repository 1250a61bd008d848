"""Utilities: what a swarm maximises. A registry, so users add their own in one place.

A utility is a pure function of (model, tokenizer, items): it never knows which particle is
loaded, so the same code scores experts, particles, merges and exports.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import Field

from ...config import PromptedUtility, UtilityBase, UtilityConfig, register_utility_config
from ...errors import ConfigError, UtilityError
from ..data.prompts import (
    cloze_continuation,
    cloze_prompt,
    encode,
    multiple_choice_prompt,
    qa_prompt,
    render,
    uses_chat,
)
from ..engine import generation
from .extract import extract_letter, extract_number, normalize_number
from .judges import JudgeConfig, build_judge

# The configs of the utilities defined here (each registered with its utility below).

Scoring = Literal["letter", "cloze", "cloze_norm", "permuted", "generate"]
SCORING_HELP = (
    "multiple choice: the option letter's log-likelihood after the lettered list (letter); the "
    "option text's log-likelihood after the question, summed (cloze, lm-eval's acc) or per "
    "character (cloze_norm, lm-eval's acc_norm); letter scoring averaged over the cyclic "
    "rotations of the options (permuted: cancels a letter prior); or greedy generation parsed "
    "for a letter (generate, the paper's way)")


class ChoiceScoring(PromptedUtility):
    scoring: Scoring = Field("letter", description=SCORING_HELP)


class MultipleChoiceConfig(ChoiceScoring):
    type: Literal["multiple_choice"] = "multiple_choice"

    @property
    def log_likelihood(self) -> bool:
        return self.scoring != "generate"


class ExactMatchConfig(PromptedUtility):
    type: Literal["exact_match"]


class PythonUtilityConfig(UtilityBase):
    type: Literal["python"]
    function: str = Field(pattern=r"^[^:\s]+:[^:\s]+$",
                          description="'module:function', called as fn(model, tokenizer, items)")


class HumanInterestConfig(PromptedUtility):
    type: Literal["human_interest"]
    judge: JudgeConfig = Field(description="the LLM that rates the answers")
    topic: str = Field(min_length=1, description="the interest the judge rates for, e.g. "
                       "'finance'")


class CustomUtilityConfig(PromptedUtility):
    """A utility of the user's: a name given to `register_utility`, or 'module:Class' (a class
    or factory called with this config). Its own settings go under `params`."""

    type: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict, description="the utility's settings")
    judge: JudgeConfig | None = Field(None, description="a rater, for judged utilities")


@dataclass(frozen=True)
class ItemScores:
    value: float            # the utility
    scores: list[float]     # per item (accuracy: 0.0 or 1.0)
    predictions: list[str]  # the answer given per item, for majority votes
    # Events the report counts, e.g. {"judge_timeout": 2}: nothing degrades silently.
    counts: dict[str, int] = field(default_factory=dict)
    # Why the utility could not score this candidate (a user's function raised); the
    # caller's `utility.on_invalid` policy decides what that costs.
    error: str | None = None


class Utility(Protocol):
    name: str
    required_fields: tuple[str, ...]

    def score(self, model: Any, tokenizer: Any, items: list[dict]) -> ItemScores: ...


# One sequence a utility runs for an item: its prompt's tokens, then the continuation scored
# after them (None: one token is read there, or generation starts).
Row = tuple[list[int], list[int] | None]


class RowsUtility(Utility, Protocol):
    def rows(self, tokenizer: Any, items: list[dict]) -> list[list[Row]]:
        """Per item, the rows scoring it runs, built by the code that scores it: what the
        length check before a search measures (runs/checks.py)."""
        ...


class BatchedUtility(Utility, Protocol):
    def score_many(self, model: Any, tokenizer: Any, items: list[dict],
                   particles: int) -> list[ItemScores]:
        """One ItemScores per particle, for a model running `particles` particles on row
        blocks of every batch (evaluation/engine/multiplex.py)."""
        ...


class ScoresEachParticle:
    def score(self, model: Any, tokenizer: Any, items: list[dict]) -> ItemScores:
        return self.score_many(model, tokenizer, items, 1)[0]  # type: ignore[attr-defined]


UTILITIES: dict[str, Callable[[UtilityConfig], Utility]] = {}
register_utility_config("custom", CustomUtilityConfig)


def register_utility(name: str, fn: Callable[..., Any] | None = None, *,
                     config: type[UtilityBase] | None = None):
    """`@register_utility("mine")` on a class makes `utility.type: mine` available (the class
    is called with the utility's config). `register_utility("mine", fn)` does the same for a
    plain function fn(model, tokenizer, items) returning a float, per-item floats or
    ItemScores. `config`: the utility's own config class (a UtilityBase with `type:
    Literal["mine"]`), so its keys are checked like a built-in utility's; without one its
    settings go under `params`."""
    if config is not None:
        register_utility_config(name, config)
    if fn is not None:
        def factory(cfg: Any) -> Utility:
            utility = FunctionUtility(fn, name)
            utility.name = name
            return utility

        UTILITIES[name] = factory  # type: ignore[assignment]
        return fn

    def deco(cls):
        cls.name = name
        UTILITIES[name] = cls
        return cls
    return deco


BUILTIN_MODULES = ("multitask", "reward", "abstain", "judges", "lm_eval_tasks")


def build_utility(cfg: UtilityConfig) -> Utility:
    """The utility `cfg.type` names: a registered name, or 'module:Class' for a class (or
    factory) of the user's own, called with the UtilityConfig."""
    for module in BUILTIN_MODULES:  # they register themselves on import
        importlib.import_module(f"{__package__}.{module}")
    if ":" in cfg.type and cfg.type not in UTILITIES:
        module, _, attr = cfg.type.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"utility.type: cannot import {cfg.type} ({err})") from None
        utility = factory(cfg)
        if not hasattr(utility, "name"):
            utility.name = cfg.type
        return utility
    if cfg.type not in UTILITIES:
        raise ConfigError(f"utility.type: unknown utility {cfg.type!r}; registered: "
                          f"{', '.join(sorted(UTILITIES))}")
    return UTILITIES[cfg.type](cfg)


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id


def mean(scores: list[float]) -> float:
    return sum(scores) / len(scores)


def per_character(items: list[dict], logps: list[list[float]]) -> list[list[float]]:
    """Option log-likelihoods divided by the option's length in characters, without the
    delimiter: lm-eval's acc_norm."""
    return [[v / max(1, len(str(t).strip())) for v, t in zip(lp, it["choices"].values(),
                                                             strict=True)]
            for lp, it in zip(logps, items, strict=True)]


def pick_options(items: list[dict], logps: list[list[float]]) -> ItemScores:
    """Accuracy when each item answers its option of highest score (the first on a tie)."""
    letters = [list(it["choices"]) for it in items]
    preds = [ls[max(range(len(lp)), key=lp.__getitem__)] for ls, lp in
             zip(letters, logps, strict=True)]
    scores = [float(p == it["answer"]) for p, it in zip(preds, items, strict=True)]
    return ItemScores(mean(scores), scores, preds)


@register_utility("multiple_choice", config=MultipleChoiceConfig)
class MultipleChoice(ScoresEachParticle):
    """Accuracy on multiple-choice items; `scoring` says how an option is chosen.

    - letter: the option letter with the highest log-likelihood after the paper's prompt
      (the lettered list, then "The answer is"); " A" when that is one token, else "A".
    - cloze / cloze_norm: the option whose text is most likely as the continuation of the
      question (no list shown), summed over its tokens (lm-eval's acc) or divided by its
      length in characters (acc_norm). The question runs once for all of its options.
    - permuted: letter scoring averaged over the cyclic rotations of the option order, so a
      model's preference for a letter is cancelled; costs one prompt per option.
    - generate: greedy generation parsed for a letter (the paper's way).
    """

    required_fields = ("question", "choices", "answer")

    def __init__(self, cfg: UtilityConfig):
        self.cfg = cfg

    def _letter_ids(self, tokenizer: Any, letters: list[str]) -> list[int] | None:
        for form in (" {}", "{}"):
            ids = [tokenizer.encode(form.format(x), add_special_tokens=False) for x in letters]
            if all(len(i) == 1 for i in ids):
                return [i[0] for i in ids]
        return None

    def rows(self, tokenizer: Any, items: list[dict]) -> list[list[Row]]:
        mode = self.cfg.scoring
        if mode in ("cloze", "cloze_norm"):
            prompts, options = self._cloze_inputs(tokenizer, items)
            return [[(p, o) for o in opts] for p, opts in zip(prompts, options, strict=True)]
        chat = uses_chat(tokenizer, self.cfg.chat_template)
        shown, where = self._rotations(items) if mode == "permuted" else (
            items, [(i, 0) for i in range(len(items))])
        one_token = mode == "generate" or self._letter_ids(
            tokenizer, sorted({x for it in shown for x in it["choices"]})) is not None
        out: list[list[Row]] = [[] for _ in items]
        for (i, _), it in zip(where, shown, strict=True):
            prompt = self._letter_prompt(tokenizer, it, chat)
            out[i] += [(prompt, None)] if one_token else [
                (prompt, c) for c in self._letter_continuations(tokenizer, list(it["choices"]))]
        return out

    def score_many(self, model: Any, tokenizer: Any, items: list[dict],
                   particles: int) -> list[ItemScores]:
        letters = [list(it["choices"]) for it in items]
        mode = self.cfg.scoring
        if mode in ("cloze", "cloze_norm"):
            per_particle = self._cloze(model, tokenizer, items, particles, mode == "cloze_norm")
        elif mode == "permuted":
            per_particle = self._permuted(model, tokenizer, items, particles)
        else:
            chat = uses_chat(tokenizer, self.cfg.chat_template)
            prompts = [self._letter_prompt(tokenizer, it, chat) for it in items]
            if mode == "generate":
                return self._generate_and_parse(model, tokenizer, items, prompts, letters,
                                                particles)
            per_particle = self._letter_logprobs(model, tokenizer, prompts, letters, particles)
        return [pick_options(items, logps) for logps in per_particle]

    def _letter_prompt(self, tokenizer: Any, item: dict, chat: bool) -> list[int]:
        text = render(tokenizer, multiple_choice_prompt(item, self.cfg.prompt), chat)
        return encode(tokenizer, text + ("The answer is" if chat else "\nThe answer is"), chat)

    def _letter_logprobs(self, model: Any, tokenizer: Any, prompts: list[list[int]],
                         letters: list[list[str]], particles: int) -> list[list[list[float]]]:
        """[particle][item][option]: log p(letter | prompt)."""
        pad = pad_id(tokenizer)
        # Items with different option sets (TruthfulQA: 2 to 13 options) still need one
        # forward each: read every letter any item uses at the prompt's end and keep each
        # item's own, instead of one sequence per option (5-6x the work there).
        union = sorted({x for ls in letters for x in ls})
        if ids := self._letter_ids(tokenizer, union):
            column = {x: i for i, x in enumerate(union)}
            return [
                [[lp[column[x]] for x in ls] for ls, lp in zip(letters, logps, strict=True)]
                for logps in generation.next_token_logprobs(
                    model, prompts, ids, pad_id=pad, particles=particles)]
        conts = [self._letter_continuations(tokenizer, ls) for ls in letters]
        return generation.continuation_logprobs(
            model, prompts, conts, pad_id=pad, particles=particles)

    @staticmethod
    def _letter_continuations(tokenizer: Any, letters: list[str]) -> list[list[int]]:
        """The letters as scored when one is not a single token: whole words after a space."""
        return [tokenizer.encode(" " + x, add_special_tokens=False) for x in letters]

    def _cloze_inputs(self, tokenizer: Any, items: list[dict]
                      ) -> tuple[list[list[int]], list[list[list[int]]]]:
        """Each item's context tokens and its options' tokens after it."""
        # lm-eval scores continuations of the raw text; a chat turn is used only when asked
        chat = bool(self.cfg.chat_template)
        prompts = [encode(tokenizer, render(tokenizer, cloze_prompt(it, self.cfg.prompt), chat),
                          chat) for it in items]
        texts = [[str(v) for v in it["choices"].values()] for it in items]
        options = [[tokenizer.encode(cloze_continuation(t), add_special_tokens=False)
                    for t in ts] for ts in texts]
        return prompts, options

    def _cloze(self, model: Any, tokenizer: Any, items: list[dict], particles: int,
               per_char: bool) -> list[list[list[float]]]:
        prompts, options = self._cloze_inputs(tokenizer, items)
        per_particle = generation.option_logprobs(
            model, prompts, options, pad_id=pad_id(tokenizer), particles=particles)
        if not per_char:
            return per_particle
        return [per_character(items, logps) for logps in per_particle]

    def _permuted(self, model: Any, tokenizer: Any, items: list[dict],
                  particles: int) -> list[list[list[float]]]:
        """Mean over rotations r of log p(letter showing option s in rotation r)."""
        chat = uses_chat(tokenizer, self.cfg.chat_template)
        shown, where = self._rotations(items)
        prompts = [self._letter_prompt(tokenizer, it, chat) for it in shown]
        rotated = self._letter_logprobs(model, tokenizer, prompts,
                                        [list(it["choices"]) for it in shown], particles)
        out = []
        for logps in rotated:
            sums = [[0.0] * len(it["choices"]) for it in items]
            for (i, r), lp in zip(where, logps, strict=True):
                n = len(lp)
                for t in range(n):
                    sums[i][(t + r) % n] += lp[t]
            out.append([[v / len(s) for v in s] for s in sums])
        return out

    @staticmethod
    def _rotations(items: list[dict]) -> tuple[list[dict], list[tuple[int, int]]]:
        """Every item under every cyclic rotation of its options; (item, rotation) of each."""
        shown, where = [], []
        for i, it in enumerate(items):
            keys, values = list(it["choices"]), list(it["choices"].values())
            n = len(keys)
            for r in range(n):
                # rotation r shows option (t + r) mod n under letter t
                shown.append({**it, "choices": {keys[t]: values[(t + r) % n]
                                                for t in range(n)}})
                where.append((i, r))
        return shown, where

    def _generate_and_parse(self, model: Any, tokenizer: Any, items: list[dict],
                            prompts: list[list[int]], letters: list[list[str]],
                            particles: int) -> list[ItemScores]:
        per_particle = generation.generate(
            model, prompts, max_new_tokens=self.cfg.max_new_tokens, pad_id=pad_id(tokenizer),
            eos_id=tokenizer.eos_token_id, particles=particles)
        results = []
        for outs in per_particle:
            texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in outs]
            preds = [extract_letter(t, ls) or "" for t, ls in zip(texts, letters, strict=True)]
            scores = [float(p == it["answer"]) for p, it in zip(preds, items, strict=True)]
            # No letter found is a wrong answer, as in the paper, but the report counts it.
            results.append(ItemScores(mean(scores), scores, preds,
                                      {"mc_unparsed": preds.count("")}))
        return results


@register_utility("exact_match", config=ExactMatchConfig)
class ExactMatch(ScoresEachParticle):
    """Greedy answer; numeric golds compare as numbers (GSM8K), others by containment."""

    required_fields = ("question", "answer")

    def __init__(self, cfg: UtilityConfig):
        self.cfg = cfg

    def _prompts(self, tokenizer: Any, items: list[dict]) -> list[list[int]]:
        chat = uses_chat(tokenizer, self.cfg.chat_template)
        return [encode(tokenizer, render(tokenizer, qa_prompt(it, self.cfg.prompt), chat), chat)
                for it in items]

    def rows(self, tokenizer: Any, items: list[dict]) -> list[list[Row]]:
        return [[(p, None)] for p in self._prompts(tokenizer, items)]

    def score_many(self, model: Any, tokenizer: Any, items: list[dict],
                   particles: int) -> list[ItemScores]:
        prompts = self._prompts(tokenizer, items)
        per_particle = generation.generate(
            model, prompts, max_new_tokens=self.cfg.max_new_tokens, pad_id=pad_id(tokenizer),
            eos_id=tokenizer.eos_token_id, particles=particles)
        return [self._judge(tokenizer, items, outs) for outs in per_particle]

    def _judge(self, tokenizer: Any, items: list[dict], outs: list[list[int]]) -> ItemScores:
        preds, scores = [], []
        for it, ids in zip(items, outs, strict=True):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            gold = str(it["answer"])
            if (number := normalize_number(gold)) is not None:
                pred = extract_number(text) or ""
                ok = pred == number
            else:
                pred = " ".join(text.split())
                ok = " ".join(gold.lower().split()) in pred.lower()
            preds.append(pred)
            scores.append(float(ok))
        return ItemScores(mean(scores), scores, preds)


class FunctionUtility:
    """A Python function as the utility: fn(model, tokenizer, items) -> a float, a list of
    per-item floats, or ItemScores."""

    name = "function"
    required_fields: tuple[str, ...] = ()

    def __init__(self, fn: Callable[..., Any], label: str):
        self.fn, self.label = fn, label

    def score(self, model: Any, tokenizer: Any, items: list[dict]) -> ItemScores:
        try:
            out = self.fn(model, tokenizer, items)
        except Exception as err:
            raise UtilityError(f"utility {self.label} raised {type(err).__name__}: {err}") \
                from err
        if isinstance(out, ItemScores):
            result = out
        elif isinstance(out, list | tuple):
            scores = [float(x) for x in out]
            result = ItemScores(mean(scores), scores, [repr(x) for x in scores])
        else:
            value = float(out)
            result = ItemScores(value, [value] * len(items), [""] * len(items))
        if not math.isfinite(result.value):
            raise UtilityError(f"utility {self.label} returned {result.value}")
        return result


@register_utility("python", config=PythonUtilityConfig)
class PythonUtility(FunctionUtility):
    """`function: module:name`, called as fn(model, tokenizer, items)."""

    def __init__(self, cfg: UtilityConfig):
        module, _, attr = cfg.function.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"utility.function: cannot import {cfg.function} ({err})") from None
        super().__init__(fn, cfg.function)
        self.cfg = cfg


@register_utility("human_interest", config=HumanInterestConfig)
class HumanInterest(ScoresEachParticle):
    """The paper's human-interest objective: the model answers each prompt, an LLM judge rates
    how well the answer serves someone interested in `topic` (1-10); utility = mean rating / 10.

    `judge.on_failure` decides what a failed, timed-out or unparseable rating does: "exclude"
    leaves the item out of the mean (its per-item score is NaN), "lowest" counts it as 1/10,
    "error" raises. Every outcome is counted in ItemScores.counts either way.
    """

    required_fields = ("prompt",)

    def __init__(self, cfg: UtilityConfig):
        self.cfg = cfg
        self.judge = build_judge(cfg.judge)  # once: a local judge loads its model once

    def score_many(self, model: Any, tokenizer: Any, items: list[dict],
                   particles: int) -> list[ItemScores]:
        chat = uses_chat(tokenizer, self.cfg.chat_template)
        texts = [(self.cfg.prompt or "{prompt}").format(**it) for it in items]
        prompts = [encode(tokenizer, render(tokenizer, t, chat), chat) for t in texts]
        per_particle = generation.generate(
            model, prompts, max_new_tokens=self.cfg.max_new_tokens, pad_id=pad_id(tokenizer),
            eos_id=tokenizer.eos_token_id, particles=particles)
        answers = [[tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outs]
                   for outs in per_particle]
        # All particles in one call: the judge's requests overlap and repeated answers are
        # asked once.
        ratings = self.judge.rate_all([it["prompt"] for it in items] * particles,
                                      [a for outs in answers for a in outs], self.cfg.topic)
        n = len(items)
        return [self._combine(items, answers[p], ratings[p * n : (p + 1) * n])
                for p in range(particles)]

    def _combine(self, items: list[dict], answers: list[str], ratings: list) -> ItemScores:
        policy = self.cfg.judge.on_failure  # type: ignore[union-attr]
        counts = dict.fromkeys(("judge_ok", "judge_cached", "judge_failed", "judge_timeout",
                                "judge_unparseable"), 0)
        scores: list[float] = []
        for i, (it, r) in enumerate(zip(items, ratings, strict=True)):
            counts[f"judge_{r.status}"] += 1
            if r.value is not None:
                scores.append(r.value / 10)
            elif policy == "error":
                raise UtilityError(f"human_interest: item {it.get('id', f'#{i}')}: the judge's "
                                   f"rating is {r.status} ({r.detail})")
            else:
                scores.append(0.1 if policy == "lowest" else math.nan)
        rated = [s for s in scores if not math.isnan(s)]
        value = mean(rated) if rated else 0.0
        return ItemScores(value, scores, answers, counts)
