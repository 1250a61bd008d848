"""Running a multi-LLM system on a dataset, one node at a time over all items.

One resident model serves every node: a node's expert is copied into the live weights, then
that node answers every item in length-sorted batches. Non-end nodes generate; the end node is
scored by the task's own utility, on items whose question carries its predecessors' answers,
so any utility (multiple choice, exact match, a judge, ...) scores a system as it scores a
model. For multiple choice a node may instead pass on the option it picks (`node_answers:
choice`), which costs a scoring pass instead of a generation. A node's answers are cached by
(weights, inputs): a source node with the same expert answers once per weight state, whatever
graph it sits in.
"""

from __future__ import annotations

import torch

from ..config import HSwarmConfig
from ..errors import DataError
from ..evaluation import generation
from ..evaluation.prompts import encode, multiple_choice_prompt, render, uses_chat
from ..evaluation.utilities import ItemScores
from ..runs.session import Session, fingerprint, items_key
from .graph import Dag


def task_text(item: dict, template: str | None = None) -> str:
    """What the task asks: the multiple-choice prompt with its options, or the question."""
    return multiple_choice_prompt(item, template) if "choices" in item else str(item["question"])


def with_responses(items: list[dict], responses: list[list[str]], cfg: HSwarmConfig
                   ) -> list[dict]:
    """Items whose question also shows the predecessors' answers (one list per predecessor)."""
    if not responses:
        return items
    out = []
    for j, item in enumerate(items):
        lines = "\n".join(cfg.response_template.format(k=k + 1, response=r[j])
                          for k, r in enumerate(responses))
        out.append({**item, "question": cfg.context_template.format(
            question=item["question"], responses=lines)})
    return out


class SystemEvaluator:
    def __init__(self, session: Session, cfg: HSwarmConfig):
        self.session, self.cfg = session, cfg
        self.systems = 0  # systems evaluated (what budgets count)
        self._answers: dict[tuple[bytes, bytes], list[str]] = {}

    def answers(self, weights: torch.Tensor, items: list[dict]) -> list[str]:
        """A non-end node's answers to `items` with `weights` loaded (cached)."""
        key = (fingerprint(weights), items_key(items))
        if key in self._answers:
            self.session.counts["node_cache_hits"] += 1
            return self._answers[key]
        s = self.session
        if self.cfg.node_answers == "choice":
            texts = self._choices(weights, items)
            self._answers[key] = texts
            return texts
        tok, ucfg = s.backend.tokenizer, s.cfg.utility
        chat = uses_chat(tok, ucfg.chat_template)
        prompts = [encode(tok, render(tok, self.cfg.node_prompt.format(
            question=task_text(it, ucfg.prompt)), chat), chat) for it in items]
        s.backend.load(weights)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        outs = generation.generate(
            s.backend.model, prompts, max_new_tokens=self.cfg.max_new_tokens, pad_id=pad,
            eos_id=tok.eos_token_id, batch_size=ucfg.batch_size,
            max_tokens=ucfg.max_batch_tokens)[0]
        texts = [tok.decode(ids, skip_special_tokens=True).strip() for ids in outs]
        s.counts["node_generations"] += 1
        self._answers[key] = texts
        return texts

    def _choices(self, weights: torch.Tensor, items: list[dict]) -> list[str]:
        missing = next((i for i, it in enumerate(items) if "choices" not in it), None)
        if missing is not None:
            raise DataError(f"item {items[missing].get('id', missing)}: hswarm.node_answers "
                            "'choice' needs multiple-choice items (a 'choices' field)")
        picks = self.session.score(weights, items).predictions
        return [f"{p}: {it['choices'].get(p, '')}" for p, it in zip(picks, items, strict=True)]

    def evaluate(self, dag: Dag, assignment: list[int], models: torch.Tensor,
                 items: list[dict]) -> ItemScores:
        """The system's utility on `items`: node i runs model `assignment[i]`, a row of
        `models`; nodes run in topological order and the end node's answer is scored."""
        if len(assignment) != dag.n:
            raise ValueError(f"{len(assignment)} models assigned to {dag.n} nodes")
        self.systems += 1
        answers: dict[int, list[str]] = {}
        result = None
        for node in dag.order():
            inputs = with_responses(items, [answers[p] for p in dag.predecessors(node)],
                                    self.cfg)
            weights = models[assignment[node]]
            if node == dag.end:
                result = self.session.score(weights, inputs)
            else:
                answers[node] = self.answers(weights, inputs)
        assert result is not None
        return result
