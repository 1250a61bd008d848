"""Reward-model utility: the particle answers each prompt, a reward model scores the answers.

The reward model is a local Hugging Face sequence-classification model with one output
(e.g. a Skywork / ArmoRM-style RM), loaded once on the policy model's device and kept
resident. It sees (prompt, answer) as a chat when its tokenizer has a template, else as
"prompt\\n\\nanswer". Normalisation and variants: see RewardConfig below.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from ...config import PromptedUtility, StrictModel, UtilityConfig
from ...errors import ConfigError
from ...models import resolve_model
from ..data.prompts import encode, render, uses_chat
from ..engine import generation
from ..engine.backend import load_tokenizer
from ..engine.batching import batches, pad
from .utilities import ItemScores, ScoresEachParticle, mean, pad_id, register_utility


def normalise(raw: float, low: float, high: float) -> float:
    return min(1.0, max(0.0, (raw - low) / (high - low)))


def combine(reward: float, length: float, variant: str, weight: float) -> float:
    """Utility of one answer from its normalised reward and relative length in [0, 1]."""
    if variant == "concise":
        return (1 - weight) * reward + weight * (1 - length)
    if variant == "verbose":
        return (1 - weight) * reward + weight * length
    if variant == "reverse":
        return 1 - reward
    return reward


class RewardConfig(StrictModel):
    """A local Hugging Face sequence-classification reward model; its raw score r becomes
    clip((r - low) / (high - low), 0, 1). The variants mix in the answer's length
    l = new tokens / max_new_tokens: concise (1-w)*reward + w*(1 - l), verbose
    (1-w)*reward + w*l, reverse 1 - reward."""

    model: str = Field(description="folder or hub id of the reward model")
    variant: Literal["plain", "concise", "verbose", "reverse"] = "plain"
    low: float = Field(-5.0, description="raw reward mapped to 0")
    high: float = Field(5.0, description="raw reward mapped to 1")
    length_weight: float = Field(0.5, ge=0, le=1, description="w of concise / verbose")
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _range(self) -> RewardConfig:
        if self.high <= self.low:
            raise ValueError("reward.high must be greater than reward.low")
        return self


class RewardModelConfig(PromptedUtility):
    type: Literal["reward_model"]
    reward: RewardConfig = Field(description="the reward model")


@register_utility("reward_model", config=RewardModelConfig)
class RewardModel(ScoresEachParticle):
    required_fields = ("prompt",)

    def __init__(self, cfg: UtilityConfig):
        if cfg.reward is None:
            raise ConfigError("utility.reward: give the reward model (reward.model) for "
                              "utility type reward_model")
        self.cfg = cfg
        self._rm: Any = None
        self._rm_tok: Any = None

    def _load(self, device: torch.device) -> None:
        from transformers import AutoModelForSequenceClassification

        path = resolve_model(self.cfg.reward.model)
        try:
            rm = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
        except OSError as err:
            raise ConfigError(f"utility.reward.model: cannot load {path}: {err}") from None
        if rm.config.num_labels != 1:
            raise ConfigError(f"utility.reward.model: {path} has {rm.config.num_labels} "
                              "outputs; a reward model has one")
        self._rm_tok = load_tokenizer(path)
        if rm.config.pad_token_id is None:  # needed to find each row's last token
            rm.config.pad_token_id = self._rm_tok.pad_token_id
        self._rm = rm.to(device).eval()

    @torch.inference_mode()
    def rewards(self, prompts: list[str], answers: list[str], device: torch.device) -> list[float]:
        """Raw rewards, batched by length (right padding: the RM reads each row's last token)."""
        if self._rm is None:
            self._load(device)
        tok = self._rm_tok
        chat = getattr(tok, "chat_template", None) is not None
        rows = []
        for p, a in zip(prompts, answers, strict=True):
            if chat:
                text = tok.apply_chat_template([{"role": "user", "content": p},
                                                {"role": "assistant", "content": a}],
                                               tokenize=False)
                rows.append(tok(text, add_special_tokens=False)["input_ids"])
            else:
                rows.append(tok(f"{p}\n\n{a}")["input_ids"])
        out = [0.0] * len(rows)
        for batch in batches([len(r) for r in rows], self.cfg.reward.batch_size):
            ids, mask = pad([rows[i] for i in batch], tok.pad_token_id, left=False,
                                        device=device)
            scores = self._rm(input_ids=ids, attention_mask=mask).logits[:, 0].float()
            for row, i in enumerate(batch):
                out[i] = float(scores[row])
        return out

    def score_many(self, model: Any, tokenizer: Any, items: list[dict],
                   particles: int) -> list[ItemScores]:
        chat = uses_chat(tokenizer, self.cfg.chat_template)
        prompts = [encode(tokenizer, render(tokenizer, str(it["prompt"]), chat), chat)
                   for it in items]
        per_particle = generation.generate(
            model, prompts, max_new_tokens=self.cfg.max_new_tokens, pad_id=pad_id(tokenizer),
            eos_id=tokenizer.eos_token_id, particles=particles)
        device = next(model.parameters()).device
        r = self.cfg.reward
        results = []
        for outs in per_particle:
            answers = [tokenizer.decode(ids, skip_special_tokens=True) for ids in outs]
            raw = self.rewards([str(it["prompt"]) for it in items], answers, device)
            scores = [combine(normalise(x, r.low, r.high),
                              min(1.0, len(ids) / self.cfg.max_new_tokens), r.variant,
                              r.length_weight) for x, ids in zip(raw, outs, strict=True)]
            results.append(ItemScores(mean(scores), scores, answers))
        return results
