"""Items from a dataset of the Hugging Face `datasets` library (data.hf): a hub id, a local
folder (of data files, or written by save_to_disk) or local parquet / JSON / CSV / arrow files.

Rows become our items once, when a split is loaded: the mapped columns become `question`,
`choices` (letter -> option text) and `answer` (a letter), whatever the dataset's layout
(choices as a list, ARC's {"text": [...], "label": [...]}, or one column per option; the
answer as an index, a letter, a label or the option's text). The search loop never sees a row.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...config import HF_BUILDERS, HFDataConfig
from ...errors import DataError

INSTALL = "data.hf needs the `datasets` library: pip install 'modelswarms[datasets]'"
LETTERS = string.ascii_uppercase
ITEM_FIELDS = ("question", "choices", "answer", "id", "prompt")
_SCALARS = (str, int, float, bool, type(None))


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(INSTALL) from None
    return datasets


def source_of(hf: HFDataConfig) -> str:
    """How messages name the dataset: its files, or its hub id / folder and config."""
    if hf.path in HF_BUILDERS:
        return f"{hf.path} files {', '.join(hf.files) or '(none given)'}"
    return f"dataset {hf.path}" + (f" (config {hf.name})" if hf.name else "")


@contextmanager
def _quiet(datasets: Any):
    # its per-split progress bars would interleave with the run's own display
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def _open(hf: HFDataConfig) -> dict[str, Any]:
    """split name -> datasets.Dataset."""
    datasets = _datasets()
    source = source_of(hf)
    folder = Path(hf.path)
    saved = folder.is_dir() and any((folder / f).is_file()
                                    for f in ("dataset_dict.json", "state.json"))
    with _quiet(datasets):
        if saved:
            if hf.name or hf.data_files:
                raise DataError(f"{source}: a folder written by save_to_disk has no config "
                                "name or data files; drop data.hf.name / data.hf.data_files")
            try:
                loaded = datasets.load_from_disk(str(folder))
            except Exception as err:  # any reader failure is the data's fault
                raise DataError(f"{source}: load_from_disk failed: {_reason(err)}") from err
            if isinstance(loaded, datasets.Dataset):
                return {str(loaded.split) if loaded.split else "train": loaded}
            return dict(loaded)
        # trust_remote_code is never passed: a dataset's own loading script does not run here
        try:
            loaded = datasets.load_dataset(hf.path, hf.name, data_files=hf.data_files,
                                           revision=hf.revision)
        except Exception as err:  # hub, network and file errors alike
            hint = ("; offline, HF_DATASETS_OFFLINE=1 reads a dataset cached earlier, and local "
                    "files need no network" if isinstance(err, ConnectionError) else "")
            raise DataError(f"{source}: load_dataset failed: {_reason(err)}{hint}") from err
    return dict(loaded)


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}"


def load_hf_split(hf: HFDataConfig, split: str, *, required: Sequence[str] = (),
                  limit: int | None = None) -> list[dict[str, Any]]:
    """The items of `split`, converted to our fields (the first `limit` rows)."""
    source = source_of(hf)
    splits = _open(hf)
    if split not in splits:
        raise DataError(f"{source}: no split {split!r} (splits: {', '.join(splits) or 'none'}); "
                        "set data.dev_split / data.test_split")
    table = splits[split]
    columns = _columns(hf, list(table.column_names), required, f"{source} [{split}]")
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    return [_item(hf, row, columns, f"{source}: item {i}", split)
            for i, row in enumerate(table.to_list())]


def _columns(hf: HFDataConfig, available: list[str], required: Sequence[str],
             where: str) -> dict[str, str | list[str]]:
    """Our field -> its column(s). A field named in data.hf.fields must be a column; one left
    out is its own name, taken when the dataset has it (needed when the utility requires it)."""
    given = hf.fields.model_dump(exclude_none=True)
    mapping: dict[str, str | list[str]] = {}
    wrong = []
    for field in ITEM_FIELDS:
        column = given.get(field, field)
        names = column if isinstance(column, list) else [column]
        missing = [c for c in names if c not in available]
        if not missing:
            mapping[field] = column
        elif field in given or field in required:
            wrong.append(f"data.hf.fields.{field}: no column {', '.join(map(repr, missing))}")
    if wrong:
        raise DataError(f"{where}: {'; '.join(wrong)} (columns: {', '.join(available)})")
    return mapping


def _item(hf: HFDataConfig, row: dict[str, Any], columns: dict[str, str | list[str]],
          where: str, split: str) -> dict[str, Any]:
    # the dataset's other plain columns ride along (a subject, a domain) for utilities that
    # read them; our fields come from the mapping, never from a same-named unmapped column
    item = {k: v for k, v in row.items() if isinstance(v, _SCALARS) and k not in ITEM_FIELDS}
    for field, column in columns.items():
        if field != "choices":
            item[field] = row[column]  # type: ignore[index]
    ident = f" (id {item['id']!r})" if "id" in item else ""
    where = f"{where}{ident} of {split!r}"
    if "choices" in columns:
        column = columns["choices"]
        raw = [row[c] for c in column] if isinstance(column, list) else row[column]
        texts, labels = _options(raw, where)
        item["choices"] = dict(zip(LETTERS, texts, strict=False))
        if "answer" in item:
            item["answer"] = LETTERS[_answer_position(hf, item["answer"], texts, labels, where)]
    return item


def _options(raw: Any, where: str) -> tuple[list[str], list[str] | None]:
    """Option texts in order, and the labels the dataset gives them (None: by position)."""
    if isinstance(raw, dict) and set(raw) >= {"text", "label"}:  # ARC: parallel lists
        texts, labels = list(raw["text"]), [str(x) for x in raw["label"]]
        if len(texts) != len(labels):
            raise DataError(f"{where}: choices has {len(texts)} texts and {len(labels)} labels")
    elif isinstance(raw, dict):  # our own layout: label -> text
        texts, labels = list(raw.values()), [str(k) for k in raw]
    elif isinstance(raw, list | tuple):
        texts, labels = list(raw), None
    else:
        raise DataError(f"{where}: choices must be a list of options, a mapping label -> option "
                        f"or {{'text': [...], 'label': [...]}}, not {type(raw).__name__}")
    if len(texts) > len(LETTERS):
        raise DataError(f"{where}: {len(texts)} options; at most {len(LETTERS)} can be lettered")
    return [str(t) for t in texts], labels


def _answer_position(hf: HFDataConfig, answer: Any, texts: list[str],
                     labels: list[str] | None, where: str) -> int:
    """Where the gold option stands. In `auto` a dataset's own labels decide; else every
    reading of the value (index, letter, text) that fits is tried, and two that disagree are
    an error rather than a silent guess."""
    fmt = hf.answer_format
    if fmt == "auto" and labels is not None and str(answer) in labels:
        return labels.index(str(answer))
    if isinstance(answer, float) and answer.is_integer():  # CSV columns with gaps read as floats
        answer = int(answer)
    readings: dict[str, int] = {}
    number = (isinstance(answer, int) and not isinstance(answer, bool)) or (
        isinstance(answer, str) and answer.strip().isdecimal())
    if fmt in ("auto", "index") and number and 0 <= int(answer) - hf.index_base < len(texts):
        readings["index"] = int(answer) - hf.index_base
    # an integer gold is an index (MMLU's, HellaSwag's): read it as a text only when told to
    if isinstance(answer, str) or fmt == "text":
        value = str(answer).strip()
        if fmt in ("auto", "letter") and value in list(LETTERS[:len(texts)]):
            readings["letter"] = LETTERS.index(value)
        if fmt == "letter" and labels is not None and value in labels:
            readings["letter"] = labels.index(value)
        if fmt in ("auto", "text") and value in [t.strip() for t in texts]:
            readings["text"] = [t.strip() for t in texts].index(value)
    found = set(readings.values())
    if len(found) == 1:
        return found.pop()
    if not found:
        how = "" if fmt == "auto" else f" as {'an' if fmt == 'index' else 'a'} {fmt}"
        raise DataError(f"{where}: answer {answer!r} cannot be mapped{how} to one of its "
                        f"{len(texts)} options ({'; '.join(_show(texts, labels, hf.index_base))})")
    read = ", ".join(f"as {k} option {LETTERS[p]}" for k, p in readings.items())
    raise DataError(f"{where}: answer {answer!r} is ambiguous ({read}); set "
                    "data.hf.answer_format to index, letter or text")


def _show(texts: list[str], labels: list[str] | None, base: int, width: int = 30) -> list[str]:
    keys = labels or [str(i + base) for i in range(len(texts))]
    return [f"{k}: {t[:width]!r}" for k, t in zip(keys, texts, strict=True)]
