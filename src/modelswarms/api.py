"""The Python API: what `import modelswarms` gives. The commands that search, compare, merge,
evaluate and distil (`run` and its alias `hswarm`, `compare`, `merge`, `eval`, `distil`) are
thin layers over these functions.

    import modelswarms as ms

    def brevity(model, tokenizer, items):          # any Python function is a utility
        ...
        return score

    cfg = ms.config(experts=["adapters/a", "adapters/b", "adapters/c"],
                    data="dev.json", utility=brevity, budget=60)
    result = ms.search(cfg)                         # in memory: no run folder
    print(result.best_dev, result.report["rows"])
    result.save("adapted/")                         # a standard PEFT adapter folder

    systems = ms.search(cfg, strategy="hswarm")     # Heterogeneous Swarms, also in memory
    systems.best.dag, systems.save("system/")       # a multi-LLM system and its runner
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, engine_config, load_config, parse_config, utility_config
from .errors import ConfigError, ExpertError
from .evaluation.data.items import load_items
from .evaluation.engine.backend import load_standalone
from .evaluation.engine.batching import Batching, batching
from .evaluation.evaluator import first_overlong, reads_of
from .evaluation.objectives.utilities import ItemScores, build_utility, register_utility
from .hetero import System
from .mixture import load_mixture
from .pool import Pool
from .runs.candidates import candidate_kind
from .runs.checks import refuse_overlong
from .runs.compare import compare as run_compare
from .runs.distil import distil_mixture
from .runs.merge import merge_to_folder
from .runs.runner import execute, search_loop
from .runs.session import Session
from .search import strategy_names, strategy_spec
from .trackers import Trackers


def config(*, experts: list[str | Path] | dict[str, Any] | Pool,
           data: str | Path | dict[str, Any] | None = None,
           utility: str | Callable[..., Any] | dict[str, Any] = "multiple_choice",
           **sections: Any) -> RunConfig:
    """A run config built in code; the same keys as a YAML config, validated the same way.

    `experts`: adapter or model folders, the `experts:` mapping, or a pool `load_pool`
    returned (its experts' folders and base model). `data`: a dataset file
    (or the `data:` mapping). `utility`: a registered name, the `utility:` mapping, or a
    Python function fn(model, tokenizer, items) -> float | per-item floats | ItemScores,
    registered under its qualified name. Other keywords are the config's other sections
    (strategy, budget, search, coefficients, model, output, compare, hswarm, seed).
    """
    utility = _utility_fields(utility)
    raw: dict[str, Any] = {"experts": _experts_fields(experts), "utility": utility, **sections}
    if data is not None:
        raw["data"] = data if isinstance(data, dict) else {"path": str(data)}
    return parse_config(raw, "modelswarms.config()")


def _experts_fields(experts: list[str | Path] | dict[str, Any] | Pool
                   ) -> dict[str, Any]:
    """The `experts:` mapping for folders, a mapping, or a loaded pool."""
    if isinstance(experts, dict):
        return experts
    if isinstance(experts, Pool):
        fields: dict[str, Any] = {"paths": [str(e.path) for e in experts.experts],
                                  "compose": experts.compose}
        if experts.base_model is not None:
            fields["base_model"] = experts.base_model
        return fields
    return {"paths": [str(p) for p in experts]}


def _utility_fields(utility: str | Callable[..., Any] | dict[str, Any]) -> dict[str, Any]:
    """The `utility:` mapping for a name, a mapping, or a Python function: a `python` utility
    naming it when it can be imported by that name (so a run folder resumes in another
    process), else registered under its qualified name (this process only)."""
    if callable(utility):
        module = getattr(utility, "__module__", None) or "__main__"
        qualname = getattr(utility, "__qualname__", "")
        name = f"{module}:{qualname}"
        if qualname and "<" not in qualname and "." not in qualname:
            return {"type": "python", "function": name}
        register_utility(name, utility)
        return {"type": name}
    return {"type": utility} if isinstance(utility, str) else utility


def _as_config(cfg: RunConfig | str | Path) -> RunConfig:
    return cfg if isinstance(cfg, RunConfig) else load_config(cfg)


def _in_folder(cfg: RunConfig, folder: str | Path) -> RunConfig:
    """`cfg` writing to `folder` (output.dir)."""
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": str(folder)})})


@dataclass
class SearchResult:
    """A finished search: its best candidate and its report. The best is a flat vector of the
    searched tensors, or, for Heterogeneous Swarms, a `System` (graph, node assignment and
    the experts' weights)."""

    best: torch.Tensor | System
    best_dev: float
    report: dict[str, Any]        # what report.json holds (rows with dev / test, intervals)
    history: list[dict[str, Any]]
    session: Any = field(repr=False)  # the resident model, data and score cache

    def save(self, folder: str | Path) -> Path:
        """Write the best as a standard adapter / model folder (plain transformers / peft);
        a system as its experts' folders, graph.json and the runner answer.py."""
        return self._kind.save(self.session, self.best, Path(folder),
                               {"dev_utility": repr(self.best_dev)})

    def score(self, items: list[dict]) -> ItemScores:
        """The best's utility on other items."""
        return self._kind.score(self.session, self.best, items)

    @property
    def _kind(self):
        return candidate_kind(strategy_spec(self.session.cfg.strategy).candidate)


def search(cfg: RunConfig | str | Path | None = None, *, run_dir: str | Path | None = None,
           resume: bool = False, overwrite: bool = False, progress: bool = False,
           accept_changes: bool = False, strategy: str | None = None) -> SearchResult:
    """Run the config's strategy (or `strategy`). Without `run_dir`, in memory: nothing is
    written (`output.trackers` still log, under output.tracking_dir or output.dir). With
    `run_dir`, as `modelswarms run` does: checkpoints, report, exports; `overwrite` replaces
    a folder a run of ours made; `resume=True` continues the folder's run (no `cfg` needed),
    refused when its data, experts or config changed since it started, unless
    `accept_changes`. Every strategy runs either way, Heterogeneous Swarms (`hswarm`)
    included."""
    if resume:
        if run_dir is None:
            raise ConfigError("search: resume=True needs the run_dir to resume")
        done = execute(resume=run_dir, show_progress=progress, accept_changes=accept_changes)
        return _result(done.search, done.report, done.history, done.session)
    if cfg is None:
        raise ConfigError("search: give a config (or a run_dir with resume=True)")
    cfg = _as_config(cfg)
    if run_dir is not None:
        done = execute(_in_folder(cfg, run_dir), overwrite=overwrite, show_progress=progress,
                       strategy=strategy)
        return _result(done.search, done.report, done.history, done.session)
    if strategy is not None:
        cfg = cfg.model_copy(update={"strategy": strategy})
    spec = strategy_spec(cfg.strategy)
    cfg = spec.prepare(cfg)
    trackers = Trackers(cfg, None)  # a missing tracker package fails before any work
    with trackers:
        session = Session.open(cfg, need_test=cfg.output.evaluate_test)
        found, history = search_loop(cfg, None, session, show_progress=progress,
                                     trackers=trackers)
        report = candidate_kind(spec.candidate).report(session, found, history, None,
                                                       search_loop)
        trackers.log_report(report)
    return _result(found, report, history, session)


def _result(found: Any, report: dict[str, Any], history: list[dict[str, Any]],
            session: Any) -> SearchResult:
    best, best_dev = found.best()
    if isinstance(best, torch.Tensor):
        best = best.detach().clone()
    return SearchResult(best, best_dev, report, history, session)


def compare(cfg: RunConfig | str | Path | None, *, out: str | Path | None = None,
            resume: bool = False, overwrite: bool = False, accept_changes: bool = False,
            progress: bool = False) -> dict[str, Any]:
    """`modelswarms compare`: every row of `compare.methods` at one budget, in a folder
    (`out`, default output.dir) so that a killed comparison resumes (`resume=True`; `cfg`
    may then be None); `overwrite` replaces a folder a comparison of ours made; `progress`
    shows rows done, the search in flight and an ETA as the command does."""
    if resume:
        if out is None and cfg is None:
            raise ConfigError("compare: resume=True needs `out` (or the config)")
        folder = out if out is not None else _as_config(cfg).output.dir  # type: ignore[arg-type]
        return run_compare(resume=folder, accept_changes=accept_changes,
                           show_progress=progress)
    if cfg is None:
        raise ConfigError("compare: give a config (or `out` with resume=True)")
    cfg = _as_config(cfg)
    if out is not None:
        cfg = _in_folder(cfg, out)
    return run_compare(cfg, overwrite=overwrite, show_progress=progress)


def merge(cfg: RunConfig | str | Path, *, out: str | Path | None = None,
          overwrite: bool = False) -> Path:
    """`modelswarms merge`: the config's `merge:` written as an adapter / model folder (no
    model is loaded; no data is read)."""
    cfg = _as_config(cfg)
    if out is not None:
        cfg = _in_folder(cfg, out)
    return merge_to_folder(cfg, overwrite=overwrite)


def evaluate(model: str | Path, items: list[dict] | str | Path, *,
             utility: str | Callable[..., Any] | dict[str, Any] = "multiple_choice",
             split: str = "test", base_model: str | None = None, device: str = "auto",
             dtype: str = "auto", batch_size: int = 16, max_batch_tokens: int = 4096,
             max_items: int | None = None, source: str | None = None) -> ItemScores:
    """Score one adapter or model folder (say, a search's export) with a utility on items
    (a list, or a dataset file and its split). `source` names a list's origin in messages."""
    # a zero or negative limit would score nothing, or loop: refused here, as in a config
    engine_config("evaluate", device=device, dtype=dtype, batch_size=batch_size,
                  max_batch_tokens=max_batch_tokens)
    if max_items is not None and max_items < 1:
        raise ConfigError(f"evaluate: max_items: {max_items} scores no item; give 1 or more")
    utility = _utility_fields(utility)
    scorer = build_utility(utility_config(**utility))
    source = str(items) if isinstance(items, str | Path) else source
    if isinstance(items, str | Path):
        items = load_items(items, split, required=scorer.required_fields, limit=max_items)
    elif max_items is not None:
        items = items[:max_items]
    if (Path(model) / "mixture.json").is_file():  # a token swarm's export
        loaded = load_mixture(model, device=device, dtype=dtype, batch_size=batch_size)
        tok = loaded.tokenizer
    else:
        loaded, tok = load_standalone(str(model), base_model, device=device, dtype=dtype)
        for name, p in loaded.named_parameters():
            if not torch.isfinite(p).all():  # a NaN model still answers, and scores
                raise ExpertError(f"{model}: parameter {name} holds NaN or infinite values; "
                                  "a non-finite model is not scored")
    # the whole split is measured before any is scored: one line naming the item, not a
    # count of rows found too long inside a batch
    if (found := first_overlong(tok, scorer, items, reads_of(loaded))) is not None:
        refuse_overlong(found, items, split, source)
    with batching(Batching(batch_size, max_batch_tokens)):
        return scorer.score(loaded, tok, items)


def distil(mixture: str | Path, student: str, out: str | Path, **options: Any) -> dict[str, Any]:
    """Distil a token swarm's mixture (a folder with mixture.json, e.g. a run's `best/`) into
    `student`, one of its experts, as a LoRA adapter folder `out`; options as the `distil`
    command's flags (`data`, `config`, `split`, `prompt_file`, `steps`, `lr`, `rank`,
    `max_new_tokens`, `max_items`, `report`). Returns what `out/distillation.json` holds."""
    return distil_mixture(mixture, student, out, **options)


def strategies() -> list[str]:
    """The registered search strategies (`strategy:` values)."""
    return strategy_names()
