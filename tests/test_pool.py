"""Expert pools: loading, validation errors that name the culprit, and loadable exports."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modelswarms.errors import ExpertError
from modelswarms.folders import mark
from modelswarms.pool import export_expert
from modelswarms.pool.kinds import FullPool, LoraPool, WeightPool, load_pool
from modelswarms.testing import make_tiny_full_pool, make_tiny_llama, make_tiny_lora_pool

ADAPTER = "adapter_model.safetensors"
TOKENS = torch.tensor([[1, 10, 20, 30, 40, 50, 60]])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("pool_base") / "tiny-llama")


@pytest.fixture(scope="module")
def loras(base, tmp_path_factory) -> list[Path]:
    return make_tiny_lora_pool(base, tmp_path_factory.mktemp("pool_lora"), n=3)


@pytest.fixture(scope="module")
def fulls(base, tmp_path_factory) -> list[Path]:
    return make_tiny_full_pool(base, tmp_path_factory.mktemp("pool_full"), n=2)


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def edit_tensors(path: Path, fn) -> None:
    tensors = load_file(path)
    fn(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def folder_hashes(*folders: Path) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest()
            for folder in folders for f in sorted(folder.rglob("*")) if f.is_file()}


def lora_logits(base: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        return model(TOKENS).logits


def full_logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(TOKENS).logits


def raises(sources, *needles: str, **kwargs) -> str:
    with pytest.raises(ExpertError) as info:
        load_pool(sources, **kwargs)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# --- loading ------------------------------------------------------------------------------


def test_load_lora_pool(base, loras):
    pool = load_pool(loras)
    assert isinstance(pool, LoraPool) and pool.names == ["expert_0", "expert_1", "expert_2"]
    assert pool.adapter == loras[0] and pool.scores_base and pool.batches_particles
    assert pool.base_model == json.loads((loras[0] / "adapter_config.json").read_text())[
        "base_model_name_or_path"]
    assert pool.adapter_config == json.loads((loras[0] / "adapter_config.json").read_text())
    assert pool.template == loras[0]
    assert any(n.endswith("q_proj.lora_A.weight") for n in pool.tensor_names)
    for expert, folder in zip(pool.experts, loras, strict=True):
        stored = load_file(folder / ADAPTER)
        assert sorted(expert.tensors) == pool.tensor_names == sorted(stored)
        assert all(torch.equal(expert.tensors[k], v) for k, v in stored.items())
    assert load_pool(loras, base_model="other/base").base_model == "other/base"


def test_load_full_pool(fulls):
    pool = load_pool([str(f) for f in fulls], names=["a", "b"])
    assert isinstance(pool, FullPool) and pool.names == ["a", "b"]
    assert pool.base_model is None and pool.adapter is None and pool.template == fulls[0]
    assert not pool.scores_base and not pool.batches_particles
    for expert, folder in zip(pool.experts, fulls, strict=True):
        stored = load_file(folder / "model.safetensors")
        assert sorted(expert.tensors) == pool.tensor_names == sorted(stored)
        assert all(torch.equal(expert.tensors[k], v) for k, v in stored.items())


def test_load_sharded_full_checkpoint(fulls, tmp_path):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(fulls[1]).save_pretrained(tmp_path / "sharded",
                                                                     max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    pool = load_pool([fulls[0], tmp_path / "sharded"])
    stored = load_file(fulls[1] / "model.safetensors")
    assert all(torch.equal(pool.experts[1].tensors[k], v) for k, v in stored.items())


def test_duplicate_folder_names_made_unique(loras, tmp_path):
    other = copy(loras[0], tmp_path / "elsewhere" / "expert_0")
    assert load_pool([loras[0], other, loras[1]]).names == ["expert_0", "expert_0-1", "expert_1"]
    raises([loras[0], loras[1]], "given twice", names=["x", "x"])


def test_target_module_order_is_irrelevant(loras, tmp_path):
    odd = copy(loras[1], tmp_path / "reordered")
    cfg = json.loads((odd / "adapter_config.json").read_text())
    edit_json(odd / "adapter_config.json", target_modules=sorted(cfg["target_modules"])[::-1])
    assert load_pool([loras[0], odd]).names == ["expert_0", "reordered"]


# --- errors naming the expert and tensor ---------------------------------------------------


@pytest.mark.parametrize(("option", "key"), [
    ({"rank": 2}, "r="), ({"alpha": 16}, "lora_alpha"),
    ({"target_modules": ("q_proj", "k_proj")}, "target_modules"),
])
def test_lora_structure_mismatch(base, loras, tmp_path, option, key):
    made = make_tiny_lora_pool(base, tmp_path / "made", n=1, **option)[0]
    odd = made.rename(tmp_path / "odd_expert")
    raises([loras[0], odd], "odd_expert", key)


@pytest.mark.parametrize("change", [{"use_dora": True}, {"use_rslora": True},
                                    {"base_model_name_or_path": "someone/else"}])
def test_lora_config_mismatch(loras, tmp_path, change):
    odd = copy(loras[1], tmp_path / "odd_config")
    edit_json(odd / "adapter_config.json", **change)
    key = next(iter(change))
    raises([loras[0], odd], "odd_config", key)
    raises([loras[0], odd], "odd_config", key, base_model="override/base")  # override no excuse


def test_full_shape_mismatch(fulls, tmp_path):
    wide = make_tiny_llama(tmp_path / "wide_model", hidden_size=48)
    first = load_file(fulls[0] / "model.safetensors")
    other = load_file(wide / "model.safetensors")
    tensor = next(k for k in first if first[k].shape != other[k].shape)
    raises([fulls[0], wide], "wide_model", tensor, str(tuple(other[tensor].shape)))


def test_full_architecture_mismatch(fulls, tmp_path):
    odd = copy(fulls[1], tmp_path / "odd_arch")
    edit_json(odd / "config.json", architectures=["MistralForCausalLM"])
    raises([fulls[0], odd], "odd_arch", "architectures")


def test_mixed_kinds(loras, fulls):
    raises([loras[0], fulls[0]], "full_0", "one kind")


def test_pickle_only_folders_refused(loras, tmp_path):
    full = tmp_path / "pickled_model"
    full.mkdir()
    (full / "config.json").write_text('{"model_type": "llama"}')
    (full / "pytorch_model.bin").write_bytes(b"not really a pickle")
    raises([loras[0], full], "pickled_model", "pytorch_model.bin", "never loaded",
           "arbitrary code", "safetensors")
    adapter = copy(loras[1], tmp_path / "pickled_adapter")
    (adapter / ADAPTER).rename(adapter / "adapter_model.bin")
    raises([loras[0], adapter], "pickled_adapter", "adapter_model.bin", "never loaded")
    bare = tmp_path / "bare_bin"
    bare.mkdir()
    (bare / "model.pt").write_bytes(b"\x80\x04")
    raises([loras[0], bare], "bare_bin", "model.pt", "safetensors")


def test_truncated_safetensors(loras, tmp_path):
    broken = copy(loras[1], tmp_path / "broken_expert")
    data = (broken / ADAPTER).read_bytes()
    (broken / ADAPTER).write_bytes(data[: len(data) // 2])
    raises([loras[0], broken], "broken_expert", ADAPTER, "unreadable")


def test_missing_and_non_expert_folders(loras, tmp_path, monkeypatch):
    raises([loras[0], tmp_path / "no_such_expert"], "no_such_expert", "not found")
    (tmp_path / "empty_dir").mkdir()
    raises([loras[0], tmp_path / "empty_dir"], "empty_dir", "not an expert")
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    raises([loras[0], "some-org/some-expert"], "some-org/some-expert", "neither a local folder",
           "offline")


def test_pool_of_one(loras):
    raises([loras[0]], "at least 2 experts", "expert_0")
    raises([], "at least 2 experts")


@pytest.mark.parametrize("how", ["missing", "extra", "dtype"])
def test_tensor_mismatch(loras, tmp_path, how):
    odd = copy(loras[2], tmp_path / f"odd_{how}")
    victim = sorted(load_file(odd / ADAPTER))[1]

    def change(tensors):
        if how == "missing":
            del tensors[victim]
        elif how == "extra":
            tensors[victim + ".extra"] = tensors[victim].clone()
        else:
            tensors[victim] = tensors[victim].half()

    edit_tensors(odd / ADAPTER, change)
    needle = victim + ".extra" if how == "extra" else victim
    msg = raises([loras[0], odd], f"odd_{how}", needle)
    if how == "dtype":
        assert "float16" in msg


# --- export ------------------------------------------------------------------------------


def test_lora_export_round_trip(base, loras, tmp_path):
    pool = load_pool(loras)
    expert = pool.experts[1]
    out = export_expert(pool, expert.tensors, tmp_path / "exported", metadata={"run": "x"})
    assert sorted(load_file(out / ADAPTER)) == pool.tensor_names
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        pool.base_model
    original = lora_logits(base, loras[1])
    assert torch.allclose(lora_logits(base, out), original, atol=1e-5)
    with safe_open(out / ADAPTER, "pt") as f:
        assert f.metadata() == {"run": "x", "format": "pt"}

    doubled = {k: v * 2 for k, v in expert.tensors.items()}
    out2 = export_expert(pool, doubled, tmp_path / "doubled")
    stored = load_file(out2 / ADAPTER)
    assert all(torch.equal(stored[k], v) for k, v in doubled.items())
    assert not torch.allclose(lora_logits(base, out2), original, atol=1e-3)


def test_lora_export_with_base_override(base, loras, tmp_path):
    pool = load_pool(loras, base_model=str(base))
    out = export_expert(pool, pool.experts[0].tensors, tmp_path / "exp")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(base)


def test_full_export_round_trip(fulls, tmp_path):
    from transformers import AutoTokenizer

    pool = load_pool(fulls)
    out = export_expert(pool, pool.experts[0].tensors, tmp_path / "full_export")
    original = full_logits(fulls[0])
    assert torch.allclose(full_logits(out), original, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out)("abc").input_ids == \
        AutoTokenizer.from_pretrained(fulls[0])("abc").input_ids

    # lm_head is linear without bias: doubling it doubles the logits exactly
    tensors = dict(pool.experts[0].tensors)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] * 2
    out2 = export_expert(pool, tensors, tmp_path / "full_doubled")
    assert torch.equal(load_file(out2 / "model.safetensors")["lm_head.weight"],
                       tensors["lm_head.weight"])
    assert torch.allclose(full_logits(out2), 2 * original, atol=1e-5)


def test_export_dtype_shared_storage_and_replace(fulls, tmp_path):
    pool = load_pool(fulls)
    tensors = {k: v.double() for k, v in pool.experts[0].tensors.items()}
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # one storage, two names
    target = tmp_path / "out"
    target.mkdir()
    mark(target)  # an earlier export of ours (a folder of the user's is refused: test_robust)
    (target / "stale.txt").write_text("old export")
    export_expert(pool, tensors, target)
    stored = load_file(target / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float32}  # the pool's stored dtype
    assert torch.equal(stored["lm_head.weight"], stored["model.embed_tokens.weight"])
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folders left
    export_expert(pool, tensors, target, dtype=torch.bfloat16)
    stored = load_file(target / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}


def test_export_refuses_bad_state_dicts(loras, tmp_path):
    pool = load_pool(loras)
    tensors = dict(pool.experts[0].tensors)
    victim = pool.tensor_names[0]
    with pytest.raises(ExpertError, match="lacks tensor"):
        export_expert(pool, {k: v for k, v in tensors.items() if k != victim}, tmp_path / "a")
    with pytest.raises(ExpertError, match=victim.replace(".", r"\.")):
        export_expert(pool, tensors | {victim: tensors[victim][:1]}, tmp_path / "b")
    with pytest.raises(ExpertError, match="never overwritten"):
        export_expert(pool, tensors, loras[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_inputs_never_modified(loras, fulls, tmp_path):
    before = folder_hashes(*loras, *fulls)
    for sources in (loras, fulls):
        pool: WeightPool = load_pool(sources)
        for expert in pool.experts:  # even in-place edits of loaded tensors stay in memory
            for t in expert.tensors.values():
                t.mul_(3)
        export_expert(pool, pool.experts[1].tensors, tmp_path / pool.kind)
    assert folder_hashes(*loras, *fulls) == before
