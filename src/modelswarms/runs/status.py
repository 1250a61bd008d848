"""`modelswarms status DIR`: where a run or a comparison stands, read from its folder alone.

It only reads (config.yaml, results.jsonl, history.jsonl, report.json, progress.json): the
process writing the folder, if any, is not disturbed, and a killed one's folder is read as
it was left. Whether a writer is alive is asked of the kernel's lock table: a writer holds
the folder's lock (folders.py) for its whole life, and the kernel drops it when the
process dies, so a recycled pid or a progress.json left by a killed run is not mistaken for a
live writer. A folder without the lock's marker (an older version's), or a system without
/proc/locks, falls back to the pid progress.json names (on the same host only)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import RunError
from ..folders import probe_lock
from ..io import read_jsonl
from ..search import strategy_spec
from .compare import comparison_table, render_markdown
from .progress import STATE, duration, search_eta
from .rows import row_spec
from .runner import HISTORY


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or caught between two writes of a non-atomic one
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def writer(folder: Path) -> dict[str, Any]:
    """Who last wrote `folder`'s progress.json and whether it still runs: state is
    "running", "stopped" (an error or Ctrl-C, said in `error`), "gone" (the process ended
    without a word: killed, or a crash), "elsewhere" (another host: unknown) or "unknown"
    (no progress.json: a folder of an older version)."""
    owner = folder
    if folder.name.startswith("seed_") and folder.parents[1].name == "runs" and \
            not (folder / STATE).is_file():
        # a search row of a comparison (FOLDER/runs/METHOD/seed_N): its comparison writes it
        owner = folder.parents[2]
    state = _read_json(owner / STATE)
    lock = probe_lock(owner)
    if lock is not None and lock[0]:
        # held: a writer lives, whatever progress.json last said (it may not have written yet)
        out = dict(state or {})
        out.update(state="running", pid=lock[1], host=socket.gethostname())
        out["age_s"] = time.time() - out.get("updated", time.time())
        return out
    if state is None:
        return {"state": "unknown"}
    out = dict(state)
    out["age_s"] = time.time() - state.get("updated", time.time())
    if state.get("state") == "running":
        if state.get("host") != socket.gethostname():
            out["state"] = "elsewhere"
        elif lock is not None or not _alive(int(state.get("pid", -1))):
            out["state"] = "gone"  # the lock is free: its holder died
    return out


def folder_status(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise RunError(f"{folder}: not a run or comparison folder (no config.yaml)")
    cfg = load_config(folder / "config.yaml")
    if cfg.compare is not None:  # a run of a comparison has `compare: null`
        return _compare_status(folder, cfg)
    return _run_status(folder, cfg)


def _compare_status(folder: Path, cfg: Any) -> dict[str, Any]:
    methods = cfg.compare.methods
    units = [(m, s) for m in methods for s in (cfg.compare.seeds if row_spec(m).seeded
                                                  else [0])]
    done = {(r["method"], r["seed"]): r for r in read_jsonl(folder / "results.jsonl")}
    last = _read_json(folder / "compare.json") or {}
    finished = bool(last) and "partial" not in last and len(done) >= len(units)
    who = writer(folder)
    if finished:
        who["state"] = "finished"
    partial = None if finished else {"rows_done": len(done), "rows_total": len(units)}
    report = comparison_table(cfg, methods, done, last.get("items"), partial=partial)
    in_flight = None
    todo = [u for u in units if u not in done]
    if todo and who["state"] != "finished":
        method, seed = todo[0]
        in_flight = {"method": method, "seed": seed if row_spec(method).seeded else None}
        history = folder / "runs" / method / f"seed_{seed}" / "history.jsonl"
        if recs := _history(history):
            in_flight.update(iteration=recs[-1]["iteration"],
                             evaluations=recs[-1]["evaluations"], budget=cfg.compare.budget,
                             best=recs[-1]["global_best"])
    return {"kind": "compare", "folder": str(folder), "rows_done": len(done),
            "rows_total": len(units), "in_flight": in_flight, "writer": who,
            "table": render_markdown(report), "report": report}


# what status reads from each history record; a record without them was not written by us
HISTORY_KEYS = ("iteration", "evaluations", "global_best", "wall_time")


def _history(path: Path) -> list[dict[str, Any]]:
    """The history's records, or one line naming the file and the record that is not ours."""
    records = read_jsonl(path)
    for i, rec in enumerate(records, 1):
        missing = [k for k in HISTORY_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise RunError(f"{path}: record {i} lacks {', '.join(missing)}: not a history "
                           "this package wrote (edited by hand?); status reads nothing else")
    return records


def _run_status(folder: Path, cfg: Any) -> dict[str, Any]:
    history = _history(folder / HISTORY)
    who = writer(folder)
    report = _read_json(folder / "report.json")
    if report is not None:
        who["state"] = "finished"
    spec = strategy_spec(cfg.strategy)
    try:
        max_iterations = spec.iterations(spec.prepare(cfg))
    except Exception:  # a strategy whose length needs more than the config: not shown
        max_iterations = None
    last = history[-1] if history else None
    out = {"kind": "run", "folder": str(folder), "strategy": cfg.strategy,
           "iterations_done": len(history), "max_iterations": max_iterations,
           "budget": cfg.budget, "last": last, "writer": who, "report": report}
    if last is not None and max_iterations is not None and report is None:
        out["eta_s"] = search_eta(last, max_iterations, cfg.budget)
    return out


def _writer_line(who: dict[str, Any], folder: str, command: str) -> str:
    age = f"last update {duration(who.get('age_s'))} ago"
    state = who["state"]
    resume = f"resume with `modelswarms {command} --resume {folder}`"
    if state == "running":
        return f"running (pid {who['pid']}), {age}"
    if state == "finished":
        return "finished"
    if state == "gone":
        return f"not running: process {who.get('pid')} ended without finishing (killed?), " \
               f"{age}; {resume}"
    if state == "stopped":
        return f"stopped ({who.get('error', 'an error')}), {age}; {resume}"
    if state == "elsewhere":
        return f"written by {who.get('host')} (pid {who.get('pid')}), {age}"
    return f"no progress.json (state unknown); {resume} if it is not running"


def render(status: dict[str, Any]) -> str:
    who, folder = status["writer"], status["folder"]
    if status["kind"] == "compare":
        lines = [f"{folder}: comparison, {status['rows_done']} of {status['rows_total']} rows "
                 f"done; {_writer_line(who, folder, 'compare')}"]
        if (f := status["in_flight"]) is not None:
            where = ""
            if "iteration" in f:
                where = (f": iteration {f['iteration']}, evaluations {f['evaluations']}/"
                         f"{f['budget']}, best {f['best']:.4f}")
            busy = who["state"] == "running" and who.get("in_flight")
            lines.append(f"{'in flight' if busy else 'next'}: "
                         f"{f['method']}"
                         + (f" seed {f['seed']}" if f["seed"] is not None else "") + where)
        if who["state"] == "running":
            if who.get("eta_s") is not None:
                lines.append(f"ETA {duration(who['eta_s'])} at its last update (elapsed "
                             f"{duration(who.get('elapsed_s'))} in this session)")
            lines.append(f"last line: {who.get('line', '')}")
        return "\n".join(lines) + "\n\n" + status["table"]
    lines = [f"{folder}: {status['strategy']} run, {status['iterations_done']} iterations "
             f"recorded; {_writer_line(who, folder, 'run')}"]
    if (last := status["last"]) is not None:
        budget = f"/{status['budget']}" if status["budget"] else ""
        lines.append(f"iteration {last['iteration']}/{status['max_iterations'] or '?'}, "
                     f"evaluations {last['evaluations']}{budget}, best dev "
                     f"{last['global_best']:.4f}, {duration(last['wall_time'])} of search")
    if status.get("eta_s") is not None and who["state"] == "running":
        lines.append(f"ETA ≤{duration(status['eta_s'])}")
    if (report := status["report"]) is not None:
        test = report.get("best_test")
        lines.append(f"best dev {report['best_dev']:.4f}"
                     + (f", test {test:.4f}" if test is not None else "")
                     + f"; report: {Path(folder) / 'report.md'}")
    return "\n".join(lines) + "\n"
