"""The bad-input matrix through the command line, as a user meets it: one line naming what is
at fault (no traceback; --debug shows one), exit code 2, and the input experts unchanged."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from modelswarms.cli import main
from modelswarms.testing import make_tiny_lora_pool

from .conftest import make_mc_items


def digest(folders) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest()
            for folder in folders for f in sorted(Path(folder).rglob("*")) if f.is_file()}


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _case(name: str, tmp: Path, experts: list[Path], data: Path, base: Path):
    """(config overrides, text the message must hold) for one bad input."""
    pool = [str(p) for p in experts]
    if name == "missing expert folder":
        return {"experts": {"paths": [pool[0], str(tmp / "gone")]}}, "gone: expert folder not found"
    if name == "pickle instead of safetensors":
        bad = tmp / "pickled"
        shutil.copytree(experts[1], bad)
        (bad / "adapter_model.safetensors").unlink()
        (bad / "adapter_model.bin").write_bytes(pickle.dumps({"x": 1}))
        return {"experts": {"paths": [pool[0], str(bad)]}}, "pickled: no safetensors weights"
    if name == "truncated safetensors":
        bad = tmp / "cut"
        shutil.copytree(experts[1], bad)
        f = bad / "adapter_model.safetensors"
        f.write_bytes(f.read_bytes()[:100])
        return {"experts": {"paths": [pool[0], str(bad)]}}, "cut/adapter_model.safetensors"
    if name == "different rank":
        other = make_tiny_lora_pool(base, tmp / "rank8", n=1, rank=8)[0]
        return {"experts": {"paths": [pool[0], str(other)]}}, "rank"
    if name == "different target modules":
        other = make_tiny_lora_pool(base, tmp / "tm", n=1, target_modules=("k_proj",))[0]
        return {"experts": {"paths": [pool[0], str(other)]}}, "target"
    if name == "pool of one":
        return {"experts": {"paths": [pool[0]]}}, "at least 2 experts"
    if name == "empty dataset":
        return {"data": {"path": str(_write(tmp / "empty.json", {"dev": [], "test": []}))}}, \
            "has no items"
    if name == "item missing a field":
        items = make_mc_items(4, 0)
        del items[2]["choices"]
        return {"data": {"path": str(_write(tmp / "holes.json", {"dev": items,
                                                                 "test": items}))}}, \
            "item 2 (id 'q0-2') of 'dev' has no field 'choices'"
    if name == "unknown config key":
        return {"search": {"particles": 3, "intertia": 0.5}}, "search.intertia: unknown key"
    if name == "wrong type":
        return {"search": {"max_iterations": "many"}}, "search.max_iterations"
    if name == "utility returns NaN":
        (tmp / "nan_utility.py").write_text("def score(m, t, items):\n    return float('nan')\n")
        return {"utility": {"type": "python", "function": "nan_utility:score"}}, \
            "returned nan"
    raise AssertionError(name)


CASES = ["missing expert folder", "pickle instead of safetensors", "truncated safetensors",
         "different rank", "different target modules", "pool of one", "empty dataset",
         "item missing a field", "unknown config key", "wrong type", "utility returns NaN"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_one_clear_line(name, tmp_path, tiny_base, mc_data, monkeypatch):
    experts = make_tiny_lora_pool(tiny_base, tmp_path / "pool", n=2)
    before = digest(experts)
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides, expected = _case(name, tmp_path, experts, mc_data, tiny_base)
    cfg = {"experts": {"paths": [str(p) for p in experts]}, "data": {"path": str(mc_data)},
           "search": {"max_iterations": 1, "particles": 3},
           "output": {"dir": str(tmp_path / "run")}}
    for key, value in overrides.items():
        cfg[key] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["run", str(path), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr  # several faults are joined on one line
    assert expected in errors[0], errors[0]
    debug = CliRunner().invoke(main, ["run", str(path), "--quiet", "--debug"])
    assert debug.exception is not None  # --debug lets the exception (and its traceback) out
    assert digest(experts) == before  # the input experts are never modified


@pytest.mark.parametrize(("item", "says"), [
    ({"question": "q", "choices": {"A": "x", "B": "y"}, "answer": "C"},
     "'answer' 'C' is not one of its choices (A, B)"),
    ({"question": "q", "choices": {"A": "x"}, "answer": "A"}, "has 1 option"),
    ({"question": "q", "choices": ["x", "y"], "answer": "A"}, "must map letters"),
])
def test_an_unscorable_multiple_choice_item_is_named(tmp_path, item, says):
    from modelswarms.errors import DataError
    from modelswarms.evaluation.data.items import load_items

    path = tmp_path / "d.json"
    good = {"question": "p", "choices": {"A": "1", "B": "2"}, "answer": "B"}
    path.write_text(json.dumps({"dev": [good, {"id": "q7", **item}]}))
    with pytest.raises(DataError) as err:
        load_items(path, "dev", required=("question", "choices", "answer"))
    assert "d.json: item 1 (id 'q7') of 'dev': " in \
        str(err.value) and says in str(err.value)
