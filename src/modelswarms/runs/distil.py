"""`modelswarms distil` and `ms.distil`: a token swarm's mixture distilled into one of its
experts, and the report that puts the student beside the mixture and the experts."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ..config import DataConfig, ModelConfig, load_config, utility_config
from ..errors import ConfigError, DataError
from ..evaluation.data.items import load_split, load_text
from ..evaluation.objectives.utilities import build_utility
from ..folders import check_output, mark
from ..io import atomic_write_text
from ..mixture import load_mixture
from ..mixture.distil import distil, distillation_report, score_references
from ..mixture.pool import MIXTURE_FILE


def run_config_of(mixture: Path) -> Path | None:
    """The config.yaml of the run folder a mixture export sits in: the run its metadata
    names, else the folder above it (RUN/best) or two above (RUN/top/rank_k)."""
    try:
        run = json.loads((mixture / MIXTURE_FILE).read_text()).get("metadata", {}).get("run")
    except (OSError, ValueError, AttributeError):
        run = None
    for folder in ([Path(run)] if run else []) + [mixture.parent, mixture.parent.parent]:
        if (folder / "config.yaml").is_file() and (folder / "report.json").is_file():
            return folder / "config.yaml"
    return None


def distil_mixture(mixture: str | Path, student: str, out: str | Path, *,
                   data: str | Path | None = None, config: str | Path | None = None,
                   split: str | None = None, prompt_file: str | Path | None = None,
                   steps: int = 100, lr: float = 1e-3, rank: int = 8,
                   max_new_tokens: int = 32, max_items: int | None = None,
                   report: bool = True) -> dict[str, Any]:
    """Distil a token swarm's mixture (a folder with mixture.json) into `student`, one of its
    experts: a LoRA trained on prompts (`data`'s questions, or the lines of `prompt_file`) to
    match the mixture's next-token distributions, written to `out` as an adapter folder.
    With `report`, the student, the mixture and each expert are scored on dev and test with
    the run's utility and data (or `data`); `out/distillation.json` holds the result."""

    config = config or run_config_of(Path(mixture))
    cfg = load_config(config) if config else None
    ucfg = cfg.utility if cfg else utility_config()
    if data is not None:  # --data replaces the config's data, prompts and scores alike
        data_cfg: DataConfig | None = DataConfig(path=str(Path(data)))
    else:
        data_cfg = cfg.need_data("distil") if cfg else None
    if prompt_file is None and data_cfg is None:
        raise ConfigError("distil: give --data (its questions are the prompts), --prompts, or "
                          "--config (a run config with data)")
    for flag, value, least in (("--steps", steps, 1), ("--rank", rank, 1),
                               ("--max-new-tokens", max_new_tokens, 1),
                               ("--max-items", max_items, 1)):
        if value is not None and value < least:
            raise ConfigError(f"distil: {flag} must be at least {least} (given {value})")
    if not lr > 0 or lr == float("inf"):
        raise ConfigError(f"distil: --lr must be a positive number (given {lr})")
    mixture_experts = []
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError, KeyError):
        mixture_experts = [("expert", e["path"]) for e in
                           json.loads((Path(mixture) / MIXTURE_FILE).read_text())["experts"]]
    check_output(out, key="--out", inputs=[
        ("mixture", mixture), ("data", data), ("prompts", prompt_file), ("config", config),
        *mixture_experts], exists_hint="choose a new folder")
    source = prompt_file or data or (data_cfg.name if data_cfg else "")
    notes = []
    if prompt_file:
        prompts = [line for line in load_text(Path(prompt_file)).splitlines() if line.strip()]
    else:
        assert data_cfg is not None
        split = split or data_cfg.dev_split
        prompts = [str(it.get("question", it.get("prompt", "")))
                   for it in load_split(data_cfg, split)]
        if report and split == data_cfg.test_split:
            notes.append(f"the prompts are the {split!r} split's questions: the test rows are "
                         "not held out from the distillation")
    prompts = prompts[:max_items]
    if not prompts:
        raise ConfigError(f"distil: {source} gives no prompts")
    dev = test = None
    dataset = data_cfg.name if data_cfg else cfg.data_name if cfg else None
    with_test = cfg is None or cfg.output.evaluate_test
    if report and data_cfg is not None:  # loaded before training: a bad file fails first
        needs = build_utility(ucfg).required_fields
        dev = load_split(data_cfg, data_cfg.dev_split, required=needs, limit=data_cfg.max_dev)
        if with_test:
            try:
                test = load_split(data_cfg, data_cfg.test_split, required=needs,
                                  limit=data_cfg.max_test)
            except DataError as err:  # a dev-only file: the report has dev scores only
                notes.append(f"no test scores: {err}")
    elif report and cfg is not None:  # the utility's tasks bring their documents (lm_eval)
        utility = build_utility(ucfg)
        dev = utility.split_items("dev")  # type: ignore[attr-defined]
        test = utility.split_items("test") if with_test else None  # type: ignore
    engine = cfg.model if cfg else ModelConfig()
    mix = load_mixture(mixture, device=engine.device, dtype=engine.dtype,
                       batch_size=engine.batch_size)
    spec = json.loads((Path(mixture) / MIXTURE_FILE).read_text())
    names = [e["name"] for e in spec["experts"]]
    if student not in names:
        raise ConfigError(f"distil: --student {student!r} is not an expert of the mixture "
                          f"({', '.join(names)})")
    i = names.index(student)
    splits = {"dev": dev, **({"test": test} if test else {})} if dev is not None else None
    references = None
    if splits is not None:  # before training: an item the experts cannot read fails first
        try:
            references = score_references(mix, ucfg.model_dump(), splits, engine)
        except DataError as err:
            raise DataError(f"{dataset}: {err}") from None
    try:
        result = distil(mix, i, spec["experts"][i]["path"], prompts, out, rank=rank,
                        alpha=2 * rank, steps=steps, lr=lr, max_new_tokens=max_new_tokens)
    except DataError as err:  # a prompt too long for an expert: whose prompts they are
        raise DataError(f"{source}: {err}") from None
    if splits is not None and references is not None:
        result.update(distillation_report(mix, i, out, ucfg.model_dump(), splits, references,
                                          engine=engine, seed=cfg.seed if cfg else 0),
                      dataset=dataset, config=str(config) if config else None)
    result["notes"] = notes
    atomic_write_text(Path(out) / "distillation.json", json.dumps(result, indent=2))
    mark(out)
    return result
