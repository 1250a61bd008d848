"""Task data: the JSON format of the Model Swarms data ({"dev": [...], "test": [...]}) and JSONL;
Hugging Face datasets (data.hf) are converted to these items in hf_data.py.

Every problem names the file and, for an item, its index, its id and the field at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import DataError
from .hf_data import load_hf_split, source_of
from .presets import PRESETS


def load_text(path: Path) -> str:
    """A text file's contents; a missing, unreadable or non-UTF-8 file is a DataError."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None


def _read_jsonl(path: Path) -> list[Any]:
    items = []
    for n, line in enumerate(load_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {n} is not valid JSON ({err.msg})") from None
    return items


def load_items(path: str | Path, split: str, *, required: Sequence[str] = (),
               limit: int | None = None) -> list[dict[str, Any]]:
    """The items of `split`: a JSON file's list under that key, or a JSONL file's lines (those
    whose "split" field equals `split` when items carry one)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    if path.suffix == ".jsonl":
        items = _read_jsonl(path)
        if any(isinstance(x, dict) and "split" in x for x in items):
            items = [x for x in items if isinstance(x, dict) and x.get("split") == split]
    else:
        try:
            data = json.loads(load_text(path))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
        if isinstance(data, list):
            items = data
        elif isinstance(data, dict) and isinstance(data.get(split), list):
            items = data[split]
        else:
            splits = [k for k, v in data.items() if isinstance(v, list)] if isinstance(
                data, dict) else []
            raise DataError(f"{path}: no split {split!r} (splits: {', '.join(splits) or 'none'})")
    if limit is not None:
        items = items[:limit]
    return check_items(path, items, split, required)


def check_items(source: Any, items: list[Any], split: str,
                required: Sequence[str]) -> list[dict[str, Any]]:
    """`items` if every one is scorable; else the first fault, named by `source` and item."""
    if not items:
        raise DataError(f"{source}: split {split!r} has no items")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{source}: item {i} of {split!r} is not an object")
        ident = f" (id {item['id']!r})" if "id" in item else ""
        for key in required:
            if key not in item:
                raise DataError(f"{source}: item {i}{ident} of {split!r} has no field {key!r}")
        scored_as_choice = "choices" in required and "answer" in required
        if scored_as_choice and (problem := _choice_problem(item)):
            raise DataError(f"{source}: item {i}{ident} of {split!r}: {problem}")
        if problem := _text_problem(item, required):
            raise DataError(f"{source}: item {i}{ident} of {split!r}: {problem}")
    return items


# Fields a prompt shows as text: a number or NaN there would be rendered as "42" or "nan"
# and scored as if the user had written it.
TEXT_FIELDS = ("question", "prompt")


def _text_problem(item: dict, required: Sequence[str]) -> str | None:
    """A field the utility reads whose value is not what it will be read as (None: none)."""
    for key in TEXT_FIELDS:
        if key in required and not isinstance(item[key], str):
            return f"field {key!r} is {item[key]!r}, not text"
    if "choices" in required and isinstance(item["choices"], dict):
        for letter, text in item["choices"].items():
            if not isinstance(text, str):
                return f"field 'choices.{letter}' is {text!r}, not text"
    if "answer" in required and "choices" not in required:
        answer = item["answer"]
        # a gold answer compares as text or as a number (GSM8K): NaN and None match nothing
        if isinstance(answer, bool) or not isinstance(answer, str | int | float) or (
                isinstance(answer, float) and not math.isfinite(answer)):
            return f"field 'answer' is {answer!r}, not text or a finite number"
    return None


def _choice_problem(item: dict) -> str | None:
    """What makes a multiple-choice item unscorable (None: nothing)."""
    choices = item["choices"]
    if not isinstance(choices, dict):
        return "'choices' must map letters to option texts, e.g. {\"A\": \"Paris\", ...}"
    if len(choices) < 2:
        return f"'choices' has {len(choices)} option; a question needs at least 2"
    if not isinstance(item["answer"], str) or item["answer"] not in choices:
        return (f"'answer' {item['answer']!r} is not one of its choices "
                f"({', '.join(map(str, choices))})")
    return None


def load_split(data: Any, split: str, *, required: Sequence[str] = (),
               limit: int | None = None) -> list[dict[str, Any]]:
    """The items of `split` for a DataConfig: its file, or every task's items tagged with
    `task` (data.tasks, data.preset), `limit` items per task."""
    is_test = split == data.test_split
    if data.hf:
        items = load_hf_split(data.hf, split, required=required, limit=limit)
        return check_items(source_of(data.hf), items, split, required)
    if not data.tasks and not data.preset:
        path = data.test_path if is_test and data.test_path else data.path
        return load_items(path, split, required=required, limit=limit)
    if data.preset:
        specs = {name: (Path(data.root) / file, subjects)
                 for name, (file, subjects) in PRESETS[data.preset].items()}
    else:
        specs = {name: (Path(path), None) for name, path in data.tasks.items()}
    items: list[dict[str, Any]] = []
    for name, (path, subjects) in specs.items():
        part = load_items(path, split, required=[k for k in required if k != "task"])
        if subjects:
            part = [it for it in part if it.get("domain") in subjects]
            if not part:
                raise DataError(f"{path}: no {split!r} items of the subjects of task {name!r}")
        items += [{**it, "task": name} for it in part[:limit]]
    return items
