"""AbstainQA: answer, then ask the model whether its own answer is true; abstain if it says
false. Effective reliability = (answered right - answered wrong) / N, in [-1, 1].

Both steps use log-likelihoods: the answer is the option letter scored highest after "The
answer is" (as multiple_choice), the verdict compares " true" with " false" after the
self-check question. Each particle's self-check prompts hold its own answers, so particles
are scored one at a time (no score_many).
"""

from __future__ import annotations

from typing import Any, Literal

from ...config import UtilityConfig, as_utility
from ..data.prompts import encode, multiple_choice_prompt, render, uses_chat
from ..engine import generation
from .utilities import ChoiceScoring, ItemScores, build_utility, pad_id, register_utility

CHECK = ("{question}\nProposed answer: {letter}: {text}\n"
         "Is the proposed answer true or false?")


class AbstainQAConfig(ChoiceScoring):
    type: Literal["abstain_qa"]


@register_utility("abstain_qa", config=AbstainQAConfig)
class AbstainQA:
    required_fields = ("question", "choices", "answer")

    def __init__(self, cfg: UtilityConfig):
        self.cfg = cfg

    def _verdicts(self, tokenizer: Any) -> list[list[int]]:
        """Token ids of " true" and " false": one token each where the vocabulary allows."""
        for words in ((" true", " false"), (" True", " False"), ("true", "false")):
            ids = [tokenizer.encode(w, add_special_tokens=False) for w in words]
            if all(len(i) == 1 for i in ids):
                return ids
        return [tokenizer.encode(w, add_special_tokens=False) for w in (" true", " false")]

    def score(self, model: Any, tokenizer: Any, items: list[dict]) -> ItemScores:
        mc = build_utility(as_utility(self.cfg, "multiple_choice"))
        answered = mc.score(model, tokenizer, items)
        chat = uses_chat(tokenizer, self.cfg.chat_template)
        prompts = []
        for it, letter in zip(items, answered.predictions, strict=True):
            text = CHECK.format(question=multiple_choice_prompt(it, self.cfg.prompt),
                                letter=letter, text=it["choices"][letter])
            prompts.append(encode(tokenizer, render(tokenizer, text, chat) + (
                "The proposed answer is" if chat else "\nThe proposed answer is"), chat))
        verdicts = self._verdicts(tokenizer)
        limits = dict(pad_id=pad_id(tokenizer))
        if all(len(v) == 1 for v in verdicts):
            logps = generation.next_token_logprobs(
                model, prompts, [v[0] for v in verdicts], **limits)[0]
        else:  # whole-word log-likelihoods (e.g. character vocabularies)
            logps = generation.continuation_logprobs(
                model, prompts, [verdicts] * len(prompts), **limits)[0]
        scores, preds = [], []
        abstained = 0
        for lp, right, letter in zip(logps, answered.scores, answered.predictions, strict=True):
            if lp[1] > lp[0]:
                scores.append(0.0)
                preds.append("abstain")
                abstained += 1
            else:
                scores.append(1.0 if right > 0 else -1.0)
                preds.append(letter)
        return ItemScores(sum(scores) / len(scores), scores, preds, {"abstained": abstained})
