"""`modelswarms run | eval`: the command line. Errors print as one line; --debug shows why."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import ModelSwarmsError

console = Console()
errors = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _guard(debug: bool, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ModelSwarmsError as err:
        if debug:
            raise
        errors.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        sys.exit(2)


@click.group()
@click.version_option(package_name="modelswarms")
def main() -> None:
    """Adapt a pool of LLM experts to a task by particle swarm search in weight space."""


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run in this folder (its config.yaml is used).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def run(config: str | None, resume_dir: str | None, overwrite: bool, quiet: bool,
        debug: bool) -> None:
    """Run a Model Swarms search described by CONFIG (YAML)."""
    from .config import load_config
    from .runs.runner import run as run_search

    if (config is None) == (resume_dir is None):
        raise click.UsageError("give a CONFIG file, or --resume RUN_DIR")
    _quiet_libraries()
    cfg = _guard(debug, load_config, config) if config else None
    report = _guard(debug, run_search, cfg, resume=resume_dir, overwrite=overwrite,
                    show_progress=not quiet)
    print_report(report)


def print_report(report: dict) -> None:
    table = Table(title=f"{report['utility']} on {Path(report['dataset']).name}")
    table.add_column("model")
    table.add_column("dev", justify="right")
    table.add_column("test", justify="right")
    for row in report["rows"]:
        table.add_row(row["name"], *("-" if row[k] is None else f"{row[k]:.4f}"
                                     for k in ("dev", "test")))
    console.print(table)
    if report["correctness_emergence"] is not None:
        console.print(f"correctness emergence: {report['correctness_emergence']} test items")
    console.print(f"adapted model: {report['exports']['best']}")


@main.command("eval")
@click.argument("model_path")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Take data, utility and device from this run config.")
@click.option("--data", help="Dataset (JSON with splits, or JSONL).")
@click.option("--split", default="test", show_default=True)
@click.option("--utility", "utility_type", help="Utility name (default: multiple_choice).")
@click.option("--base", "base_model", help="Base model of a LoRA adapter (folder, id, smollm2).")
@click.option("--max-items", type=int, help="Score only the first N items.")
@click.option("--batch-size", type=int)
@click.option("--device", default=None)
@click.option("--as-json", is_flag=True, help="Print the result as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def eval_cmd(model_path: str, config: str | None, data: str | None, split: str,
             utility_type: str | None, base_model: str | None, max_items: int | None,
             batch_size: int | None, device: str | None, as_json: bool, debug: bool) -> None:
    """Score MODEL_PATH (an adapter or model folder, e.g. a run's export) on a dataset."""
    _quiet_libraries()
    result = _guard(debug, _evaluate, model_path, config, data, split, utility_type,
                    base_model, max_items, batch_size, device)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        console.print(f"{result['utility']} on {result['data']} [{split}], "
                      f"{result['items']} items: [bold]{result['value']:.4f}[/] "
                      f"({result['seconds']:.1f} s)")


def _evaluate(model_path, config, data, split, utility_type, base_model, max_items,
              batch_size, device) -> dict:
    from .config import UtilityConfig, load_config
    from .errors import ConfigError
    from .evaluation.backend import load_standalone
    from .evaluation.data import load_items
    from .evaluation.utilities import build_utility

    cfg = load_config(config) if config else None
    ucfg = cfg.utility if cfg else UtilityConfig()
    updates = {k: v for k, v in (("type", utility_type), ("batch_size", batch_size)) if v}
    ucfg = ucfg.model_copy(update=updates)
    data = data or (cfg.data.path if cfg else None)
    if not data:
        raise ConfigError("eval: give --data or --config")
    if cfg and split == cfg.data.test_split and cfg.data.test_path:
        data = cfg.data.test_path
    utility = build_utility(ucfg)
    items = load_items(data, split, required=utility.required_fields, limit=max_items)
    base = base_model or (cfg.experts.base_model if cfg else None)
    model, tok = load_standalone(model_path, base, device=device or (
        cfg.model.device if cfg else "auto"), dtype=cfg.model.dtype if cfg else "auto")
    start = time.perf_counter()
    scores = utility.score(model, tok, items)
    return {"model": model_path, "utility": utility.name, "data": data, "split": split,
            "items": len(items), "value": scores.value,
            "seconds": time.perf_counter() - start}
