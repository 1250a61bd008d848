"""The rows a Heterogeneous Swarms report shows beside the search: every expert alone, a chain
and a star of all experts, the best of as many random DAGs as the search evaluated systems,
and the role-only and weight-only searches at the same budget and seed. Each finished row is
appended to baselines.jsonl, so a killed run does not redo it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..io import atomic_write_text
from ..runs.runner import read_jsonl, search_loop
from ..runs.session import Session
from .graph import Dag, chain, decode, random_adjacency, star
from .search import HeteroSwarm
from .system import SystemScorer

BASELINES = "baselines.jsonl"


def row(name: str, dev: float | None, test: float | None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "dev": dev, "test": test, **extra}


def baselines(run_dir: Path, cfg: RunConfig, session: Session, ev: SystemScorer,
               search: HeteroSwarm, singles: list[float]) -> list[dict[str, Any]]:
    """The rows a user weighs the search against, each recorded in baselines.jsonl once done
    (a resumed run does not redo them)."""
    assert cfg.hswarm is not None
    records = read_jsonl(run_dir / BASELINES)
    # rewritten whole: a line torn by a kill must not swallow the next record appended
    atomic_write_text(run_dir / BASELINES, "".join(json.dumps(r) + "\n" for r in records))
    done = {r["key"]: r for r in records}
    names, n, x0 = session.pool.names, len(session.pool.names), session.experts
    identity = list(range(n))
    best_single = max(range(n), key=singles.__getitem__)
    rows = []
    for key in cfg.hswarm.baselines:
        if key in done:
            rows.append(done[key])
            continue
        extra: dict[str, Any] = {}
        dev = None
        models = x0
        if key == "best_expert":
            label, dag, assignment = (f"best single expert ({names[best_single]})",
                                      Dag(1, 0, ()), [best_single])
            dev = singles[best_single]
        elif key == "chain":
            label, dag, assignment = "chain of all experts", chain(n), identity
        elif key == "star":
            label, dag, assignment = (f"star of all experts into {names[best_single]}",
                                      star(n, best_single), identity)
        elif key == "random_dags":
            # as many random graphs as the search evaluated systems, experts on own nodes
            gen = torch.Generator().manual_seed(cfg.seed + 3)
            dags = [decode(a, "argmax") for a in
                    random_adjacency(max(search.evaluations, 1), n, gen)]
            utils = [ev.evaluate(d, identity, x0, session.dev).value for d in dags]
            i = max(range(len(dags)), key=utils.__getitem__)
            label, dag, assignment, dev = (f"best of {len(dags)} random DAGs", dags[i],
                                           identity, utils[i])
            extra["systems"] = len(dags)
        else:  # a whole search with one of the two steps, same budget and seed
            steps = "role" if key == "role_only" else "weight"
            sub = cfg.model_copy(update={
                "hswarm": cfg.hswarm.model_copy(update={"steps": steps, "baselines": []})})
            folder = run_dir / "baselines" / key
            folder.mkdir(parents=True, exist_ok=True)
            s, _ = search_loop(sub, folder, session)
            assert isinstance(s, HeteroSwarm)
            assert s.best_dag is not None
            label = "role-step only (weights frozen)" if steps == "role" else \
                "weight-step only (chain graph)"
            dag, assignment, models, dev = s.best_dag, s.best_assignment, s.best_models, \
                s.best_util
            extra["systems"] = s.evaluations
        if dev is None:
            dev = ev.evaluate(dag, assignment, models, session.dev).value
        test = ev.evaluate(dag, assignment, models, session.test).value if session.test \
            else None
        done[key] = {"key": key, **row(label, dev, test, graph=dag.to_json(),
                                        assignment=[names[m] for m in assignment], **extra)}
        with open(run_dir / BASELINES, "a") as f:
            f.write(json.dumps(done[key]) + "\n")
        rows.append(done[key])
    return rows
