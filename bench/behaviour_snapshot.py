"""A behaviour snapshot: every weight-space strategy, Heterogeneous Swarms and a comparison on
tiny models, their reports written to OUT/result.json without timings or paths. Run it on two
commits and diff the files to show that a refactor changed no result:

    git worktree add /tmp/old <commit>
    (cd /tmp/old && PYTHONPATH=/tmp/old/src python $PWD/bench/behaviour_snapshot.py /tmp/a)
    python bench/behaviour_snapshot.py /tmp/b && diff /tmp/a/result.json /tmp/b/result.json

Run it from a checkout's root: it takes its items from tests/conftest.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

VOLATILE = ("seconds", "wall_time", "search_seconds", "exports", "export")
COMPARED = ["base", "experts", "best_expert", "linear", "ties", "dare_ties", "expert_vote",
            "logit_average", "swarm", "random"]


def strip(x: Any, out: Path) -> Any:
    """The report without what differs between two runs of the same search."""
    if isinstance(x, dict):
        return {k: strip(v, out) for k, v in x.items() if k not in VOLATILE and "dir" not in k}
    if isinstance(x, list):
        return [strip(v, out) for v in x]
    return "<path>" if isinstance(x, str) and str(out) in x else x


def main(out: Path) -> None:
    sys.path.insert(0, str(Path.cwd() / "tests"))
    from conftest import make_mc_items

    from modelswarms.config import parse_config
    from modelswarms.runs.compare import compare
    from modelswarms.runs.runner import run
    from modelswarms.testing import make_tiny_llama, make_tiny_lora_pool

    out.mkdir(parents=True, exist_ok=True)
    experts = make_tiny_lora_pool(make_tiny_llama(out / "base"), out / "lora", n=3)
    data = out / "d.json"
    data.write_text(json.dumps({"dev": make_mc_items(12, 0), "test": make_mc_items(16, 1)}))
    common = {"experts": {"paths": [str(p) for p in experts]}, "data": {"path": str(data)},
              "utility": {"type": "multiple_choice"}, "model": {"batch_size": 4}}
    result = {}
    for strategy in ("swarm", "cmaes", "random", "greedy_soup"):
        cfg = parse_config({**common, "strategy": strategy, "budget": 24,
                            "search": {"max_iterations": 5},
                            "output": {"dir": str(out / strategy)}})
        result[strategy] = strip(run(cfg, show_progress=False), out)
    cfg = parse_config({**common, "strategy": "hswarm", "output": {"dir": str(out / "h")},
                        "hswarm": {"graphs": 3, "trials": 3, "max_rounds": 3,
                                   "baselines": ["best_expert", "chain", "random_dags",
                                                 "role_only"]}})
    result["hswarm"] = strip(run(cfg, show_progress=False), out)
    cfg = parse_config({**common, "output": {"dir": str(out / "c")},
                        "compare": {"budget": 12, "seeds": [0, 1], "methods": COMPARED}})
    result["compare"] = strip(compare(cfg), out)
    (out / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote {out / 'result.json'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
