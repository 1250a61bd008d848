"""Hugging Face datasets as data (data.hf): local parquet / JSONL / CSV files and save_to_disk
folders in the layouts of MMLU, HellaSwag, ARC and others become our items once, a tiny search
reads them, and every bad input is one message naming what is wrong."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import modelswarms as ms
from modelswarms.cli import main
from modelswarms.config import load_config
from modelswarms.errors import ConfigError, DataError
from modelswarms.evaluation.data.items import load_split

from .conftest import make_mc_items

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

MC = ("question", "choices", "answer")
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    # datasets caches what it reads as arrow files; keep them in the test's folder
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def mmlu_rows(items: list[dict]) -> list[dict]:
    """Our items in MMLU's layout: choices a list, the answer an index."""
    return [{"question": it["question"], "subject": "arithmetic",
             "choices": list(it["choices"].values()),
             "answer": list(it["choices"]).index(it["answer"])} for it in items]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_config(tmp_path: Path, data: dict, **extra) -> Path:
    """A config file whose data section is `data` (relative paths: relative to tmp_path)."""
    path = tmp_path / "swarm.yaml"
    path.write_text(yaml.safe_dump({"experts": {"paths": ["unused"]}, "data": data, **extra},
                                   sort_keys=False))
    return path


def load(tmp_path: Path, data: dict, split: str, required=MC, limit=None) -> list[dict]:
    cfg = load_config(data_config(tmp_path, data)).data
    return load_split(cfg, split, required=required, limit=limit)


HELLASWAG = [
    {"ind": 4, "ctx": "A man is sitting on a roof. He", "activity_label": "Roof shingle removal",
     "endings": ["is using wrap.", "is ripping shingles.", "is holding a rubik's cube.",
                 "starts pulling up roofing."], "label": "3"},
    {"ind": 9, "ctx": "A woman lifts a barbell. She", "activity_label": "Weight lifting",
     "endings": ["drops it.", "sings.", "flies away.", "paints it."], "label": "0"},
]
HELLASWAG_HF = {"path": "json",
                "data_files": {"validation": "hs_val.jsonl", "test": "hs_test.jsonl"},
                "fields": {"question": "ctx", "choices": "endings", "answer": "label", "id": "ind"}}


def test_mmlu_layout_from_parquet_files_beside_the_config(tmp_path):
    items = make_mc_items(6, 0)
    write_parquet(tmp_path / "mmlu" / "dev.parquet", mmlu_rows(items))
    write_parquet(tmp_path / "mmlu" / "test.parquet", mmlu_rows(make_mc_items(3, 1)))
    data = {"hf": {"path": "parquet",
                   "data_files": {"dev": "mmlu/dev.parquet", "test": "mmlu/test.parquet"}}}
    got = load(tmp_path, data, "dev", limit=4)
    assert [(it["question"], it["choices"], it["answer"]) for it in got] == [
        (it["question"], it["choices"], it["answer"]) for it in items[:4]]
    assert got[0]["subject"] == "arithmetic"  # other plain columns ride along
    cfg = load_config(tmp_path / "swarm.yaml").data
    assert cfg.hf.data_files["dev"] == str(tmp_path / "mmlu" / "dev.parquet")
    assert cfg.name == "dev.parquet, test.parquet"
    assert len(load_split(cfg, "test", required=MC)) == 3


def test_hellaswag_layout_from_jsonl_with_a_field_mapping(tmp_path):
    write_jsonl(tmp_path / "hs_val.jsonl", HELLASWAG)
    write_jsonl(tmp_path / "hs_test.jsonl", HELLASWAG[:1])
    got = load(tmp_path, {"hf": HELLASWAG_HF, "dev_split": "validation"}, "validation")
    assert got[0]["question"] == "A man is sitting on a roof. He" and got[0]["id"] == 4
    assert got[0]["choices"] == dict(zip("ABCD", HELLASWAG[0]["endings"], strict=True))
    assert [it["answer"] for it in got] == ["D", "A"]  # "3" and "0" are 0-based indices
    assert got[1]["activity_label"] == "Weight lifting"


def test_arc_layout_from_a_save_to_disk_folder(tmp_path):
    def arc(qid, labels, key):
        return {"id": qid, "question": f"Which one ({qid})?", "answerKey": key,
                "choices": {"text": ["sand", "clay", "silt", "rock"], "label": labels}}

    rows = [arc("Mercury_1", ["A", "B", "C", "D"], "C"), arc("NYSED_2", ["1", "2", "3", "4"], "1")]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(
        str(tmp_path / "arc"))
    data = {"hf": {"path": "arc", "fields": {"answer": "answerKey"}}, "dev_split": "validation"}
    got = load(tmp_path, data, "validation")
    assert load_config(tmp_path / "swarm.yaml").data.hf.path == str(tmp_path / "arc")
    assert [it["answer"] for it in got] == ["C", "A"]  # the labels decide, "1" is the first
    assert got[1]["choices"] == {"A": "sand", "B": "clay", "C": "silt", "D": "rock"}
    assert len(load(tmp_path, data, "test")) == 1


def test_options_in_columns_answers_as_text_and_one_based_indices_from_csv(tmp_path):
    (tmp_path / "med.csv").write_text("question,opa,opb,opc,correct\n"
                                      "Which is a bone?,femur,liver,lung,femur\n"
                                      "Which pumps blood?,kidney,heart,skin,heart\n")
    data = {"hf": {"path": "csv", "data_files": {"test": "med.csv"},
                   "fields": {"choices": ["opa", "opb", "opc"], "answer": "correct"}}}
    got = load(tmp_path, data, "test")
    assert got[0]["choices"] == {"A": "femur", "B": "liver", "C": "lung"}
    assert [it["answer"] for it in got] == ["A", "B"]
    (tmp_path / "wino.csv").write_text("sentence,option1,option2,answer\n"
                                       "The cup fell off the shelf because _ was wobbly.,"
                                       "cup,shelf,2\n")
    wino = {"hf": {"path": "csv", "data_files": {"test": "wino.csv"}, "index_base": 1,
                   "fields": {"question": "sentence", "choices": ["option1", "option2"]}}}
    assert load(tmp_path, wino, "test")[0]["answer"] == "B"


def test_a_string_that_reads_two_ways_is_an_error_unless_the_format_is_given(tmp_path):
    rows = [{"question": "2 + 1?", "choices": ["4", "3", "1", "2"], "answer": "3"}]
    write_jsonl(tmp_path / "num.jsonl", rows)
    data = {"hf": {"path": "json", "data_files": {"test": "num.jsonl"}}}
    with pytest.raises(DataError, match=r"item 0 of 'test': answer '3' is ambiguous \(as index "
                       r"option D, as text option B\); set data.hf.answer_format"):
        load(tmp_path, data, "test")
    data["hf"]["answer_format"] = "text"
    assert load(tmp_path, data, "test")[0]["answer"] == "B"


def test_exact_match_items_keep_their_answer(tmp_path):
    write_jsonl(tmp_path / "gsm.jsonl", [{"question": "What is 2+2?", "answer": 4}])
    data = {"hf": {"path": "json", "data_files": {"test": "gsm.jsonl"}}}
    assert load(tmp_path, data, "test", required=("question", "answer")) == [
        {"question": "What is 2+2?", "answer": 4}]


def test_bad_inputs_are_one_message_naming_what_is_wrong(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "hs_val.jsonl", [HELLASWAG[0], {**HELLASWAG[1], "label": "7"}])
    write_jsonl(tmp_path / "hs_test.jsonl", HELLASWAG)
    wrong = {**HELLASWAG_HF, "fields": {**HELLASWAG_HF["fields"], "question": "context"}}
    with pytest.raises(DataError) as err:
        load(tmp_path, {"hf": wrong, "dev_split": "validation"}, "validation")
    msg = str(err.value)
    assert "hs_val.jsonl" in msg and "[validation]" in msg
    assert "data.hf.fields.question: no column 'context'" in msg
    assert "(columns: ind, ctx, activity_label, endings, label)" in msg
    # a default field the utility needs, absent from the dataset, is named the same way
    with pytest.raises(DataError, match="data.hf.fields.choices: no column 'choices'"):
        load(tmp_path, {"hf": {**HELLASWAG_HF, "fields": {"question": "ctx"}}}, "test")
    with pytest.raises(DataError, match=r"item 1 \(id 9\) of 'validation': answer '7' cannot be "
                       r"mapped to one of its 4 options \(0: 'drops it.'; 1: 'sings.'"):
        load(tmp_path, {"hf": HELLASWAG_HF}, "validation")
    with pytest.raises(DataError, match=r"no split 'dev' \(splits: validation, test\); set "
                       r"data.dev_split"):
        load(tmp_path, {"hf": HELLASWAG_HF}, "dev")
    with pytest.raises(DataError, match="gone.jsonl.*load_dataset failed"):
        load(tmp_path, {"hf": {"path": "json", "data_files": {"test": "gone.jsonl"}}}, "test")
    with pytest.raises(ConfigError, match=r"give exactly one of data.path, data.tasks, "
                       r"data.preset, data.hf \(given: path, hf\)"):
        load_config(data_config(tmp_path, {"path": "x.json", "hf": {"path": "json"}}))
    with pytest.raises(ConfigError, match="data.hf.fields.context: unknown key"):
        load_config(data_config(tmp_path, {"hf": {"path": "json", "fields": {"context": "c"}}}))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(DataError, match=r"^data.hf needs the `datasets` library: pip install "
                       r"'modelswarms\[datasets\]'$"):
        load(tmp_path, {"hf": HELLASWAG_HF}, "test")


def test_a_tiny_run_and_eval_read_hf_data_through_the_cli(tmp_path, lora_experts):
    write_parquet(tmp_path / "dev.parquet", mmlu_rows(make_mc_items(8, 0)))
    write_parquet(tmp_path / "test.parquet", mmlu_rows(make_mc_items(6, 1)))
    hf = {"path": "parquet", "data_files": {"dev": "dev.parquet", "test": "test.parquet"}}
    cfg = str(data_config(tmp_path, {"hf": hf, "max_dev": 6},
                          experts={"paths": [str(p) for p in lora_experts]},
                          search={"max_iterations": 2, "particles": 3},
                          output={"dir": str(tmp_path / "run")}))
    runner = CliRunner()
    result = runner.invoke(main, ["run", cfg, "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["dataset"] == "dev.parquet, test.parquet"
    out = runner.invoke(main, ["eval", str(tmp_path / "run" / "best"), "--config", cfg,
                               "--split", "test", "--as-json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["items"] == 6
    assert json.loads(out.output)["value"] == report["best_test"]
    bad = str(data_config(tmp_path, {"hf": {**hf, "fields": {"answer": "gold"}}},
                          experts={"paths": [str(p) for p in lora_experts]},
                          output={"dir": str(tmp_path / "bad")}))
    failed = runner.invoke(main, ["run", bad])
    assert failed.exit_code != 0
    assert "data.hf.fields.answer: no column 'gold' (columns: question, subject, choices, " \
           "answer)" in failed.output
    assert "Traceback" not in failed.output


def test_the_readme_example_runs(tmp_path, lora_experts):
    section = README.read_text().split("## Data from Hugging Face datasets", 1)[1]
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    for seed, file in enumerate(example["data"]["hf"]["data_files"].values()):
        write_parquet(tmp_path / file, mmlu_rows(make_mc_items(5, seed)))
    path = data_config(tmp_path, example["data"],
                       experts={"paths": [str(p) for p in lora_experts]},
                       search={"max_iterations": 2, "particles": 3})
    result = ms.search(path)
    assert len(result.session.dev) == 5 and result.session.dev[0]["answer"] in "ABCD"
    assert result.report["dataset"] == "validation.parquet, test.parquet"
