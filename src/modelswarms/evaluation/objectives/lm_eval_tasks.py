"""lm-evaluation-harness tasks as the utility: `utility: {type: lm_eval, tasks: [...]}`.

lm-eval keeps everything that defines a task: its TaskManager loads it (a registered task, or
the user's YAML from `include_path`, over local data files too), its doc_to_text,
doc_to_choice, doc_to_target, target delimiter and few-shot sampler turn each document into
the requests `lm_eval` would send a model (Task.fewshot_context, Task.construct_requests),
and its filters and process_results turn the answers into the metric. Only the model calls
are ours: our engine answers the requests (generation.py: the resident model, length-sorted
batches, a context run once for all of its options, several particles per forward),
tokenised as lm-eval's HFLM tokenises them, so a score is the one `lm_eval` reports
(tests/test_lm_eval.py compares the two with lm-eval's simple_evaluate).

The tasks bring their documents, so a run has no `data:` section: `split_items("dev")` and
`split_items("test")` give them (LmEvalConfig says which split is which).

Covered: output type multiple_choice with the metrics acc, acc_norm (log-likelihood per
character of the option, lm-eval's definition), acc_bytes and acc_mutual_info; output type
generate_until, greedy, with the task's `until`, `max_gen_toks` and filter pipeline, and
exact_match or any other metric lm-eval averages per document. Refused with a ConfigError:
loglikelihood / loglikelihood_rolling tasks, corpus-level metrics (f1, mcc, bleu,
perplexity, ...), sampling (do_sample, temperature > 0), image or audio inputs. Not
offered: chat templates, system instructions and multi-turn few-shot (lm-eval's
apply_chat_template, system_instruction, fewshot_as_multiturn): contexts are plain text.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ...config import UtilityBase
from ...errors import ConfigError, DataError, first_line
from ..engine import generation
from .utilities import ItemScores, ScoresEachParticle, pad_id, register_utility

LmEvalSplit = Literal["auto", "train", "validation", "test"]


class LmEvalConfig(UtilityBase):
    """Tasks of lm-evaluation-harness (pip install 'modelswarms[lm-eval]'): lm-eval turns each
    document into its prompt, options and target and computes the metric; our engine runs the
    model (below). The tasks bring their documents: a run with this utility has no `data:`
    section."""

    brings_documents: ClassVar[bool] = True

    type: Literal["lm_eval"]
    tasks: list[str] = Field(min_length=1, description="lm-eval task names (registered, or "
                             "defined in include_path) or task YAML files")
    include_path: list[str] = Field(
        default_factory=list, description="folders of your own task YAML files (lm-eval's "
        "include_path); relative to the config file")
    metric: str | dict[str, str] | None = Field(
        None, description="the metric maximised, for every task or per task: acc, acc_norm, "
        "acc_bytes, acc_mutual_info (multiple_choice), exact_match or another per-document "
        "mean (generate_until); default: each task's first metric")
    filter: str | None = Field(
        None, description="generate_until: the task's filter pipeline whose answer is scored "
        "(e.g. strict-match); default: its first")
    num_fewshot: int | None = Field(
        None, ge=0, description="few-shot examples; default: the task's own, else 0 (as in "
        "lm-eval, a task whose config says 0 stays at 0)")
    fewshot_seed: int = Field(1234, description="seed of lm-eval's few-shot sampler "
                              "(lm-eval's default)")
    dev_split: LmEvalSplit = Field(
        "auto", description="the task split the search scores; auto: validation, else "
        "train, else test")
    test_split: LmEvalSplit = Field(
        "auto", description="the split of the report's test scores; auto: test, else the "
        "documents of the dev split after the dev documents")
    max_dev: int | None = Field(None, ge=1, description="first documents of the dev split, "
                                "per task")
    max_test: int | None = Field(None, ge=1, description="first documents of the test split, "
                                 "per task")
    add_bos_token: bool | None = Field(
        None, description="lm-eval's add_bos_token: prepend BOS to every context; None: what "
        "the tokenizer does by default (as lm-eval)")

    @model_validator(mode="before")
    @classmethod
    def _one_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("include_path"), str):
            data = {**data, "include_path": [data["include_path"]]}
        return data

    @property
    def documents_name(self) -> str:
        """What the items are, for reports."""
        return "lm_eval " + ", ".join(Path(t).stem if t.endswith((".yaml", ".yml")) else t
                                      for t in self.tasks)

    def resolved(self, root: Path) -> LmEvalConfig:
        """include_path and task YAML files relative to `root` (the config's folder)."""
        def local(p: str) -> str:
            return str((root / Path(p).expanduser()).resolve())

        return self.model_copy(update={
            "include_path": [local(p) for p in self.include_path],
            "tasks": [local(t) if t.endswith((".yaml", ".yml")) else t for t in self.tasks]})


CHOICE_METRICS = ("acc", "acc_norm", "acc_bytes", "acc_mutual_info")
OUTPUT_TYPES = ("multiple_choice", "generate_until")
SPLIT_DOCS = {"train": "training", "validation": "validation", "test": "test"}
ROLES = ("dev", "test")
# generation settings that greedy decoding honours or that do not apply to it
GREEDY_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k"}


def _require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError("utility lm_eval needs lm-evaluation-harness: pip install "
                          "'modelswarms[lm-eval]'")


def _is_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def load_tasks(names: list[str], include_path: list[str]) -> dict[str, Any]:
    """lm-eval Task objects by task name (a group gives all of its tasks), through lm-eval's
    own TaskManager."""
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    # lm-eval indexes its ~15k bundled task files in ~15 s; the user's folder (or a YAML
    # file) alone takes well under one, so it is tried first and the full index built only
    # for a name it does not hold, or a task of it that names one of lm-eval's own
    local = TaskManager(include_path=include_path, include_defaults=False) \
        if include_path or any(_is_file(n) for n in names) else None
    full: list[Any] = []

    def full_index() -> Any:
        if not full:
            full.append(TaskManager(include_path=include_path or None))
        return full[0]

    def load(manager: Any, name: str) -> dict[str, Any]:
        try:
            return manager.load([name])["tasks"]
        except KeyError:
            if manager is local:
                raise
            raise DataError(f"lm-eval task {name}: names a task lm-eval does not have") \
                from None
        except Exception as err:  # lm-eval and `datasets` raise every kind of error
            raise DataError(f"lm-eval task {name}: could not be loaded "
                            f"({first_line(err, with_type=True)})") from err

    tasks: dict[str, Any] = {}
    for name in names:
        if _is_file(name) and not Path(name).is_file():
            raise ConfigError(f"utility.tasks: {name}: task file not found")
        if local is not None and (_is_file(name) or name in local.all_tasks):
            try:
                tasks.update(load(local, name))
                continue
            except KeyError:
                pass  # a group of the user's over lm-eval's tasks: the full index has them
        elif not _is_file(name) and name not in full_index().all_tasks:
            raise ConfigError(f"utility.tasks: {name!r} is not an lm-eval task, group or tag"
                              + (" (nor one in include_path)" if include_path else ""))
        tasks.update(load(full_index(), name))
    return tasks


def _mean_aggregation() -> Any:
    from lm_eval.api.metrics import mean

    return mean


@dataclass
class _Encoder:
    """lm-eval's HFLM tokenisation (api/model.py, models/huggingface.py), so a request is
    the same token sequence in both."""

    tokenizer: Any
    add_bos_token: bool | None
    # a search scores the same documents for every candidate: each request is tokenised once
    _pairs: dict[tuple[str, str], tuple[list[int], list[int]]] = field(default_factory=dict)
    _texts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def prefix_id(self) -> int:
        # HFLM's prefix_token_id: what stands for an empty context
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        kwargs: dict[str, bool] = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kwargs["add_special_tokens"] = self.add_bos_token
        if add_special_tokens is None and text.startswith(
                self.tokenizer.decode(self.prefix_id)):
            kwargs["add_special_tokens"] = False  # the text carries its BOS already
        return self.tokenizer.encode(text, **kwargs)

    def context(self, text: str) -> list[int]:
        if text not in self._texts:
            self._texts[text] = self.encode(text)
        return self._texts[text]

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if (context, continuation) not in self._pairs:
            self._pairs[context, continuation] = self._pair(context, continuation)
        return self._pairs[context, continuation]

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            return ([self.prefix_id], cont) if not cont or cont[0] != self.prefix_id else \
                (cont[:1], cont[1:])
        # the context's trailing spaces belong to the continuation (word-boundary tokens)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        head = self.encode(context)
        return head, whole[len(head):]


@dataclass
class TaskSpec:
    """One lm-eval task and how this utility scores it."""

    name: str
    task: Any
    kind: str                 # multiple_choice | generate_until
    metric: str
    filter: Any = None        # generate_until: the lm-eval FilterEnsemble applied
    gen_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def repeats(self) -> int:
        return int(self.task.config.repeats or 1)

    def splits(self, cfg: Any) -> dict[str, tuple[str, int, int | None]]:
        """role -> (lm-eval split, first document, end): dev and test; when both are one
        split, test takes the documents after dev's."""
        task = self.task

        def has(split: str) -> bool:
            return bool(getattr(task, f"has_{SPLIT_DOCS[split]}_docs")())

        present = [s for s in SPLIT_DOCS if has(s)]
        if not present:
            raise DataError(f"lm-eval task {self.name}: no train, validation or test split")
        dev = cfg.dev_split if cfg.dev_split != "auto" else next(
            s for s in ("validation", "train", "test") if has(s))
        test = cfg.test_split if cfg.test_split != "auto" else (
            "test" if has("test") and dev != "test" else dev)
        for role, split in (("dev", dev), ("test", test)):
            if not has(split):
                raise DataError(f"lm-eval task {self.name}: no {split} split for "
                                f"utility.{role}_split (its splits: {', '.join(present)})")
        if dev != test:
            return {"dev": (dev, 0, cfg.max_dev), "test": (test, 0, cfg.max_test)}
        if cfg.max_dev is None:
            raise ConfigError(f"lm-eval task {self.name}: dev and test are both its {dev} "
                              "split; set utility.max_dev, and test takes the documents after")
        end = None if cfg.max_test is None else cfg.max_dev + cfg.max_test
        return {"dev": (dev, 0, cfg.max_dev), "test": (dev, cfg.max_dev, end)}

    def items(self, split: str, start: int, end: int | None, seed: int) -> list[dict]:
        """Documents [start, end) of `split` as items, their requests built as lm-eval's
        build_all_requests builds them: in document order from a freshly seeded few-shot
        sampler, so document k gets the few-shot examples it gets under `--limit`."""
        task = self.task
        docs = getattr(task, f"{SPLIT_DOCS[split]}_docs")()
        end = len(docs) if end is None else min(end, len(docs))
        if start >= end:
            raise DataError(f"lm-eval task {self.name}: its {split} split has {len(docs)} "
                            f"documents, none left for documents {start} onwards")
        task.set_fewshot_seed(seed=seed)
        shots = task.config.num_fewshot or 0
        name = getattr(task.config, f"{SPLIT_DOCS[split]}_split")
        # lm-eval leaves a document out of its own few-shot examples only when they are drawn
        # from its evaluated (test) split by an explicit fewshot_split; drawn from the split
        # being built in any way, a document here never sees its own answer (lm-eval's
        # default rule would show it, and a search would learn to copy it). Its rule is
        # used by pointing both of its names at the split being built.
        kept = task.config.test_split, task.fewshot_cfg.split
        if shots and _fewshot_pool(task) == name:
            task.config.test_split = task.fewshot_cfg.split = name
        try:
            items = []
            for doc_id in range(end):
                doc = docs[doc_id]
                ctx = task.fewshot_context(doc=doc, num_fewshot=shots,
                                           gen_prefix=task.doc_to_prefix(doc))
                if doc_id < start:
                    continue  # built all the same: the sampler's draws follow document order
                requests = task.construct_requests(doc=doc, ctx=ctx,
                                                   metadata=(self.name, doc_id, self.repeats))
                requests = requests if isinstance(requests, list) else [requests]
                items.append({
                    "id": f"{self.name}/{split}/{doc_id}", "task": self.name, "split": split,
                    "doc_id": doc_id, "doc": dict(doc),
                    "requests": [list(r.arguments) for r in requests]})
        finally:
            task.config.test_split, task.fewshot_cfg.split = kept
        return items

    def prediction(self, doc: dict, lls: list[float]) -> str:
        """The option the metric picks (the same argmax process_results takes)."""
        import numpy as np

        choices = self.task.doc_to_choice(doc)
        n = len(choices)
        scores = np.array(lls[:n])
        if self.metric == "acc_norm":
            scores = scores / np.array([float(len(c)) for c in choices])
        elif self.metric == "acc_bytes":
            scores = scores / np.array([float(len(c.encode("utf-8"))) for c in choices])
        elif self.metric == "acc_mutual_info":
            scores = scores - np.array(lls[n:])
        return str(int(np.argmax(scores)))

    def value(self, doc: dict, results: list[Any]) -> float:
        out = self.task.process_results(doc, results)
        if self.metric not in out:
            raise DataError(f"lm-eval task {self.name}: process_results gave no {self.metric} "
                            f"for a document (it gave {', '.join(out) or 'nothing'})")
        try:
            return float(out[self.metric])
        except (TypeError, ValueError):
            raise ConfigError(f"lm-eval task {self.name}: metric {self.metric} is not a number "
                              "per document; the utility takes per-document means only") from None


def _fewshot_pool(task: Any) -> str | None:
    """The split lm-eval draws few-shot examples from (Task.fewshot_docs); None: a list of
    its own."""
    if task.fewshot_cfg.split is not None:
        return task.fewshot_cfg.split
    if task.config.fewshot_config is not None and task.fewshot_cfg.samples is not None:
        return None
    return next((getattr(task.config, f"{s}_split") for s in SPLIT_DOCS.values()
                 if getattr(task.config, f"{s}_split") is not None), None)


def _metric_of(cfg: Any, name: str) -> str | None:
    return cfg.metric.get(name) if isinstance(cfg.metric, dict) else cfg.metric


def task_spec(name: str, task: Any, cfg: Any) -> TaskSpec:
    """Check that this utility can score `task` as lm-eval does, and how."""
    kind = task.config.output_type
    if kind not in OUTPUT_TYPES:
        raise ConfigError(f"lm-eval task {name}: output type {kind} is not supported; the "
                          f"lm_eval utility scores {' and '.join(OUTPUT_TYPES)} tasks")
    if task.config.doc_to_image or task.config.doc_to_audio:
        raise ConfigError(f"lm-eval task {name}: image and audio inputs are not supported")
    metrics = list(task.aggregation())
    metric = _metric_of(cfg, name) or (metrics[0] if metrics else None)
    if metric not in metrics:
        raise ConfigError(f"lm-eval task {name}: no metric {metric!r} (its metrics: "
                          f"{', '.join(metrics) or 'none'})")
    if kind == "multiple_choice" and metric not in CHOICE_METRICS:
        raise ConfigError(f"lm-eval task {name}: metric {metric} is not supported for "
                          f"multiple_choice (supported: {', '.join(CHOICE_METRICS)})")
    if task.aggregation()[metric] is not _mean_aggregation():
        raise ConfigError(f"lm-eval task {name}: metric {metric} is aggregated over the "
                          "corpus, not averaged per document; the utility needs a "
                          "per-document mean (acc, acc_norm, exact_match, ...)")
    if task.higher_is_better().get(metric) is False:
        raise ConfigError(f"lm-eval task {name}: metric {metric} is better when lower; a "
                          "utility is maximised")
    spec = TaskSpec(name, task, kind, metric)
    if kind == "generate_until":
        from lm_eval.models.utils import normalize_gen_kwargs

        kwargs = normalize_gen_kwargs(dict(task.config.generation_kwargs or {}), 256)
        if kwargs.get("do_sample"):
            raise ConfigError(f"lm-eval task {name}: sampled generation (do_sample / "
                              "temperature > 0) is not supported; the utility decodes greedily")
        if other := sorted(set(kwargs) - GREEDY_KWARGS):
            raise ConfigError(f"lm-eval task {name}: generation_kwargs {', '.join(other)} not "
                              f"supported (supported: {', '.join(sorted(GREEDY_KWARGS))})")
        spec.gen_kwargs = kwargs
        filters = {f.name: f for f in task._filters}
        chosen = cfg.filter or next(iter(filters))
        if chosen not in filters:
            raise ConfigError(f"lm-eval task {name}: no filter {chosen!r} (its filters: "
                              f"{', '.join(filters)})")
        spec.filter = filters[chosen]
    return spec


@register_utility("lm_eval", config=LmEvalConfig)
class LmEvalTasks(ScoresEachParticle):
    """lm-evaluation-harness tasks, scored by our engine; the utility is the mean of the
    chosen metric over all documents of all tasks (lm-eval's size-weighted group mean)."""

    required_fields = ("task", "doc", "requests")

    def __init__(self, cfg: Any):
        _require_lm_eval()
        self.cfg = cfg
        self._specs: dict[str, TaskSpec] | None = None
        self._encoder: _Encoder | None = None

    def _encoder_for(self, tokenizer: Any) -> _Encoder:
        if self._encoder is None or self._encoder.tokenizer is not tokenizer:
            self._encoder = _Encoder(tokenizer, self.cfg.add_bos_token)
        return self._encoder

    @property
    def specs(self) -> dict[str, TaskSpec]:
        if self._specs is None:
            tasks = load_tasks(list(self.cfg.tasks), list(self.cfg.include_path))
            if isinstance(self.cfg.metric, dict):
                unknown = sorted(set(self.cfg.metric) - set(tasks))
                if unknown:
                    raise ConfigError(f"utility.metric: no task {unknown[0]!r} among the "
                                      f"loaded tasks ({', '.join(tasks)})")
            for task in tasks.values():
                _set_fewshot(task, self.cfg.num_fewshot)
            self._specs = {name: task_spec(name, task, self.cfg) for name, task in tasks.items()}
        return self._specs

    def split_items(self, role: str) -> list[dict]:
        """The documents of every task for `role` (dev or test), as items."""
        if role not in ROLES:
            raise ConfigError(f"utility lm_eval: split {role!r}; give dev or test (the task "
                              "splits behind them are utility.dev_split and test_split)")
        items: list[dict] = []
        for spec in self.specs.values():
            split, start, end = spec.splits(self.cfg)[role]
            items += spec.items(split, start, end, self.cfg.fewshot_seed)
        return items

    def score_many(self, model: Any, tokenizer: Any, items: list[dict],
                   particles: int) -> list[ItemScores]:
        specs = self._specs_of(items)
        counts: Counter = Counter()
        scores = [[0.0] * len(items) for _ in range(particles)]
        preds = [[""] * len(items) for _ in range(particles)]
        choice = [i for i, it in enumerate(items) if specs[it["task"]].kind == "multiple_choice"]
        if choice:
            lls = self.loglikelihoods(model, tokenizer, [items[i] for i in choice], particles,
                                      counts)
            for p in range(particles):
                for i, item_lls in zip(choice, lls[p], strict=True):
                    spec, doc = specs[items[i]["task"]], items[i]["doc"]
                    # is_greedy is not computed: no supported metric reads it
                    scores[p][i] = spec.value(doc, [(ll, False) for ll in item_lls])
                    preds[p][i] = spec.prediction(doc, item_lls)
        generated = [i for i, it in enumerate(items) if specs[it["task"]].kind != "multiple_choice"]
        if generated:
            texts = self.responses(model, tokenizer, [items[i] for i in generated], particles,
                                   counts)
            for p in range(particles):
                for name, spec in specs.items():
                    rows = [k for k, i in enumerate(generated) if items[i]["task"] == name]
                    if not rows:
                        continue
                    docs = [items[generated[k]]["doc"] for k in rows]
                    answers = [[texts[p][k]] * spec.repeats for k in rows]
                    for step in spec.filter.filters:  # the task's filter pipeline, in order
                        answers = step().apply(answers, docs)
                    for k, doc, answer in zip(rows, docs, answers, strict=True):
                        scores[p][generated[k]] = spec.value(doc, [answer])
                        preds[p][generated[k]] = answer if isinstance(answer, str) else \
                            json.dumps(answer, default=str)
        events = {k: v for k, v in counts.items() if v}
        return [ItemScores(sum(s) / len(s), s, pr, dict(events))
                for s, pr in zip(scores, preds, strict=True)]

    def _specs_of(self, items: list[dict]) -> dict[str, TaskSpec]:
        specs = self.specs
        for it in items:
            if it.get("task") not in specs:
                raise DataError(f"item {it.get('id', '?')}: task {it.get('task')!r} is not one "
                                f"of the utility's tasks ({', '.join(specs)})")
        return specs

    def loglikelihoods(self, model: Any, tokenizer: Any, items: list[dict], particles: int = 1,
                       counts: Counter | None = None) -> list[list[list[float]]]:
        """[particle][item][request]: log p(continuation | context) of every request of these
        multiple-choice items (lm-eval's loglikelihood answers), in one option_logprobs call:
        requests with the same context tokens share one prompt, so a question runs once for
        all of its options (and lm-eval's unconditional requests once for all documents)."""
        self._specs_of(items)
        enc = self._encoder_for(tokenizer)
        counts = Counter() if counts is None else counts
        limit = _max_length(model, tokenizer) + 1
        prompts: list[list[int]] = []
        options: list[list[list[int]]] = []
        where: dict[tuple[int, ...], tuple[int, dict[tuple[int, ...], int]]] = {}
        slots: list[list[tuple[int, int]]] = []
        for it in items:
            item_slots = []
            for ctx, cont in it["requests"]:
                head, tail = enc.pair(ctx, cont)
                if not tail:
                    raise DataError(f"lm-eval task {it['task']}: document {it['doc_id']} has "
                                    f"an option with no tokens ({cont!r})")
                if len(head) + len(tail) > limit:  # lm-eval's left truncation
                    head = head[len(head) + len(tail) - limit:]
                    counts["lm_eval_truncated"] += 1
                p, seen = where.setdefault(tuple(head), (len(prompts), {}))
                if p == len(prompts):
                    prompts.append(head)
                    options.append([])
                if tuple(tail) not in seen:
                    seen[tuple(tail)] = len(options[p])
                    options[p].append(tail)
                item_slots.append((p, seen[tuple(tail)]))
            slots.append(item_slots)
        per_particle = generation.option_logprobs(model, prompts, options,
                                                  pad_id=pad_id(tokenizer), particles=particles)
        return [[[logps[a][b] for a, b in item_slots] for item_slots in slots]
                for logps in per_particle]

    def responses(self, model: Any, tokenizer: Any, items: list[dict], particles: int = 1,
                  counts: Counter | None = None) -> list[list[str]]:
        """[particle][item]: the greedy answer to each generate_until item, cut at the first
        of its task's `until` strings (lm-eval's generate_until answers, before filters)."""
        from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text

        specs = self._specs_of(items)
        enc = self._encoder_for(tokenizer)
        counts = Counter() if counts is None else counts
        out = [[""] * len(items) for _ in range(particles)]
        eos_text = tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False) \
            if tokenizer.eos_token_id is not None else None
        # lm-eval stops at the tokenizer's EOS (in `until`) and at the model's own EOS ids
        # (transformers' generate reads them from the generation config)
        eos = {tokenizer.eos_token_id} - {None}
        config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(config_eos if isinstance(config_eos, list) else
                   [] if config_eos is None else [config_eos])
        for name, spec in specs.items():
            rows = [k for k, it in enumerate(items) if it["task"] == name]
            if not rows:
                continue
            until = handle_stop_sequences(list(spec.gen_kwargs.get("until") or []), eos=eos_text)
            max_gen = int(spec.gen_kwargs["max_gen_toks"])
            room = _max_length(model, tokenizer) - max_gen
            if room <= 0:
                raise ConfigError(f"lm-eval task {name}: max_gen_toks {max_gen} leaves no room "
                                  "for a context within the model's maximum length")
            prompts = []
            for k in rows:
                ids = enc.context(items[k]["requests"][0][0])
                if len(ids) > room:  # lm-eval's left truncation
                    ids = ids[-room:]
                    counts["lm_eval_truncated"] += 1
                prompts.append(ids)
            per_particle = generation.generate(
                model, prompts, max_new_tokens=max_gen, pad_id=pad_id(tokenizer),
                eos_id=sorted(eos) or None, particles=particles, stop_strings=until,
                tokenizer=tokenizer)
            for p, outs in enumerate(per_particle):
                for k, ids in zip(rows, outs, strict=True):
                    out[p][k] = postprocess_generated_text(
                        tokenizer.decode(ids, skip_special_tokens=True), until, None)
        return out


def _set_fewshot(task: Any, num_fewshot: int | None) -> None:
    """lm-eval's simple_evaluate rule: an override replaces the task's number unless its
    config says 0; without one, a task that sets none gets 0."""
    own = task.get_config("num_fewshot")
    if num_fewshot is not None and own != 0:
        task.set_config(key="num_fewshot", value=num_fewshot)
    elif own is None:
        task.set_config(key="num_fewshot", value=0)


def _max_length(model: Any, tokenizer: Any) -> int:
    """The context limit lm-eval's HFLM takes from the model's config (or the tokenizer)."""
    from lm_eval.models.utils import resolve_max_length

    return resolve_max_length(getattr(model, "config", None), tokenizer)
