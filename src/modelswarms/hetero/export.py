"""Writing a multi-LLM system out: its adapted experts, its graph as JSON and as a picture, and
a small runner (answer.py) that answers questions with it using only transformers and peft."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import RunConfig
from ..evaluation.data.prompts import QA_TEMPLATE
from ..models import resolve_model
from .graph import render
from .system import System

# writes one expert's weights as an adapter / model folder: (weights, folder, metadata)
ExportWeights = Callable[[torch.Tensor, Path, dict[str, str]], Path]


def export_system(system: System, names: list[str], base_model: str | None, cfg: RunConfig,
                  export: ExportWeights, folder: Path, meta: dict[str, str]) -> Path:
    """Export to `folder` (replaced whole, via a temporary sibling, so a kill mid-export
    leaves the previous export or none, never half of one)."""
    h, u = cfg.hswarm, cfg.utility
    assert h is not None
    dag, assignment, models = system.dag, system.assignment, system.models
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*"):  # left by a kill mid-export
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    tmp.chmod(0o755)
    used = sorted(set(assignment))
    for m in used:
        export(models[m], tmp / "experts" / names[m],
               {**meta, "expert": names[m], "role": "heterogeneous swarms node"})
    base = resolve_model(base_model) if base_model else None
    if base and Path(base).exists():  # answer.py may run from anywhere
        base = str(Path(base).resolve())
    spec = {
        "base_model": base,
        "nodes": [{"id": i, "model": names[assignment[i]]} for i in range(dag.n)],
        "edges": [list(e) for e in dag.edges], "end": dag.end, "order": dag.order(),
        "node_prompt": h.node_prompt, "context_template": h.context_template,
        "response_template": h.response_template, "max_new_tokens": h.max_new_tokens,
        "node_answers": h.node_answers,
        "chat_template": u.chat_template, "mc_prompt": u.prompt,
        "qa_prompt": u.prompt or QA_TEMPLATE, "answer_tokens": u.max_new_tokens,
        "utility": u.type, **meta,
    }
    (tmp / "graph.json").write_text(json.dumps(spec, indent=2))
    render(dag, [names[assignment[i]] for i in range(dag.n)], tmp / "graph.png",
           title=f"dev utility {meta.get('dev_utility', '')}")
    shutil.copyfile(Path(__file__).with_name("answer_template.py"), tmp / "answer.py")
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


