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

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

import torch
from pydantic import Field, model_validator

from ..config import Section, StrictModel, UtilityConfig, register_section, section
from ..errors import DataError
from ..evaluation.data.prompts import encode, multiple_choice_prompt, render, uses_chat
from ..evaluation.engine import generation
from ..evaluation.objectives.utilities import ItemScores, Utility
from .graph import Dag


class HSwarmConfig(StrictModel):
    """Heterogeneous Swarms (ALGORITHMS.md section 2): a multi-LLM system is a DAG over the
    experts; its roles (the graph) and weights (the experts) are searched in turn."""

    graphs: int = Field(6, ge=2, description="role-step particles: adjacency matrices")
    trials: int = Field(6, ge=1, description="weight-step: random model-to-node assignments")
    max_rounds: int = Field(10, ge=1, description="role-step + weight-step rounds")
    patience: int = Field(5, ge=1, description="rounds without a better system before stopping")
    steps: Literal["both", "role", "weight"] = Field(
        "both", description="role: graphs only (weights frozen); weight: a fixed chain graph, "
        "weights only; both: the method")
    decode: Literal["argmax", "top_p"] = Field("argmax", description="adjacency -> DAG")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus of the top_p decoding")
    role_search: Annotated[StrictModel, Section("search")] = Field(
        default_factory=lambda: section("search", patience=4),
        description="PSO knobs of the role-step (the weight-step uses `search`)")
    node_answers: Literal["generate", "choice"] = Field(
        "generate", description="what a non-end node passes on: generated text (the paper), "
        "or, for multiple choice, the option it picks by log-likelihood ('B: Paris'); choice "
        "costs one forward per item instead of a generation")
    max_new_tokens: int = Field(48, ge=1, description="length of a non-end node's answer")
    node_prompt: str = Field(
        "{question}\nAnswer briefly.", description="what a source node is asked; {question} "
        "is the task's prompt (with the choices for multiple choice)")
    context_template: str = Field(
        "{question}\n\nResponses of other models to this question follow; they may be wrong, "
        "so use them only if they help.\n{responses}",
        description="the question a non-source node gets: {question}, {responses}")
    response_template: str = Field("Previous response {k}: {response}",
                                   description="one predecessor's answer: {k}, {response}")
    baselines: list[Literal["best_expert", "chain", "star", "random_dags", "role_only",
                            "weight_only"]] = Field(
        default_factory=lambda: ["best_expert", "chain", "star", "random_dags"],
        description="rows of the report beside the search (role_only / weight_only are whole "
        "searches at the same budget)")

    @model_validator(mode="after")
    def _templates(self) -> HSwarmConfig:
        for key, fields in (("node_prompt", ["{question}"]),
                            ("context_template", ["{question}", "{responses}"]),
                            ("response_template", ["{response}"])):
            missing = [f for f in fields if f not in getattr(self, key)]
            if missing:
                raise ValueError(f"{key} must contain {' and '.join(missing)}")
        return self


register_section("hswarm", HSwarmConfig)


class Scorer(Protocol):
    """What systems are scored through: the run's scorer (runs/scorer.py), so node answers
    and end nodes share its cache, counts and invalid-utility policy."""

    def score(self, vector: torch.Tensor | None, items: list[dict],
              utility: Utility | None = None) -> ItemScores: ...

    def score_many(self, vectors: torch.Tensor | None, items: list[dict],
                   utility: Utility | None = None) -> list[ItemScores]: ...


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


@dataclass(frozen=True)
class System:
    """A candidate of Heterogeneous Swarms: node i runs model `assignment[i]`, a row of
    `models`."""

    dag: Dag
    assignment: tuple[int, ...]
    models: torch.Tensor


class NodeAnswers:
    """A non-end node's job as a utility: its greedy answers to the node prompt are the
    predictions (the value is 0). Scored through the evaluator seam like any utility, so node
    answers get the score cache, the out-of-memory back-off and several particles per
    forward."""

    name = "hswarm_node_answers"
    required_fields: tuple[str, ...] = ()

    def __init__(self, cfg: HSwarmConfig, task: UtilityConfig):
        self.cfg = cfg
        self.chat_template = getattr(task, "chat_template", None)
        self.template = getattr(task, "prompt", None)
        # what the answers depend on, so searches with other hswarm knobs (a report's role-only
        # baseline) share them
        self.cache_key = (f"{cfg.node_prompt}|{cfg.max_new_tokens}|{self.chat_template}|"
                          f"{self.template}")

    def score(self, model: Any, tokenizer: Any, items: list[dict]) -> ItemScores:
        return self.score_many(model, tokenizer, items, 1)[0]

    def score_many(self, model: Any, tokenizer: Any, items: list[dict],
                   particles: int) -> list[ItemScores]:
        chat = uses_chat(tokenizer, self.chat_template)
        prompts = [encode(tokenizer, render(tokenizer, self.cfg.node_prompt.format(
            question=task_text(it, self.template)), chat), chat) for it in items]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
            tokenizer.eos_token_id
        outs = generation.generate(model, prompts, max_new_tokens=self.cfg.max_new_tokens,
                                   pad_id=pad, eos_id=tokenizer.eos_token_id,
                                   particles=particles)
        n = len(items)
        return [ItemScores(0.0, [0.0] * n,
                           [tokenizer.decode(ids, skip_special_tokens=True).strip()
                            for ids in per], {"node_generations": 1}) for per in outs]


class SystemScorer:
    """Scores multi-LLM systems node by node through a run's scorer (runs/scorer.py)."""

    def __init__(self, scorer: Scorer, cfg: HSwarmConfig, task: UtilityConfig):
        self.scorer, self.cfg = scorer, cfg
        self.node = NodeAnswers(cfg, task)

    def answers(self, weights: torch.Tensor, items: list[dict]) -> list[str]:
        """A non-end node's answers to `items` with `weights` loaded (cached by weights and
        inputs: a source node answers once per weight state, whatever graph it sits in)."""
        if self.cfg.node_answers == "choice":
            missing = next((i for i, it in enumerate(items) if "choices" not in it), None)
            if missing is not None:
                raise DataError(f"item {items[missing].get('id', missing)}: "
                                "hswarm.node_answers 'choice' needs multiple-choice items (a "
                                "'choices' field)")
            picks = self.scorer.score(weights, items).predictions
            return [f"{p}: {it['choices'].get(p, '')}" for p, it in zip(picks, items,
                                                                        strict=True)]
        return self.scorer.score(weights, items, self.node).predictions

    def evaluate(self, dag: Dag, assignment: list[int] | tuple[int, ...],
                 models: torch.Tensor, items: list[dict]) -> ItemScores:
        """The system's utility on `items`: node i runs model `assignment[i]`, a row of
        `models`; nodes run in topological order and the end node's answer is scored."""
        if len(assignment) != dag.n:
            raise ValueError(f"{len(assignment)} models assigned to {dag.n} nodes")
        answers: dict[int, list[str]] = {}
        result = None
        for node in dag.order():
            inputs = with_responses(items, [answers[p] for p in dag.predecessors(node)],
                                    self.cfg)
            weights = models[assignment[node]]
            if node == dag.end:
                result = self.scorer.score(weights, inputs)
            else:
                answers[node] = self.answers(weights, inputs)
        assert result is not None
        return result

    def utilities(self, systems: list[System], items: list[dict]) -> list[float]:
        """Each system's utility. The source nodes of all systems see the same inputs, so
        their models answer in one call first: several particles share its forwards."""
        if self.cfg.node_answers == "generate":
            sources = {(id(s.models), m): s.models[m] for s in systems
                       for node, m in enumerate(s.assignment)
                       if node != s.dag.end and not s.dag.predecessors(node)}
            if sources:
                self.scorer.score_many(torch.stack(list(sources.values())), items, self.node)
        return [self.evaluate(s.dag, s.assignment, s.models, items).value for s in systems]
