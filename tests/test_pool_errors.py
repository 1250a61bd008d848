"""Every way a pool can be wrong stops with one message naming the expert and the tensor."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modelswarms.errors import ExpertError
from modelswarms.pool import export_expert
from modelswarms.pool.kinds import load_pool
from modelswarms.testing import make_tiny_llama, make_tiny_lora_pool

ADAPTER = "adapter_model.safetensors"


def digest(folders) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest()
            for folder in folders for f in sorted(Path(folder).rglob("*")) if f.is_file()}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_lora_pool_loads_as_stored(lora_experts, tiny_base):
    pool = load_pool(lora_experts)
    assert pool.kind == "lora" and pool.names == ["expert_0", "expert_1", "expert_2"]
    assert pool.base_model == str(tiny_base)
    stored = load_file(lora_experts[1] / ADAPTER)
    assert all(torch.equal(stored[k], pool.experts[1].tensors[k]) for k in stored)
    assert pool.tensor_names == sorted(stored)


def test_full_pool_loads(full_experts):
    pool = load_pool(full_experts)
    assert pool.kind == "full" and pool.base_model is None and len(pool.tensor_names) > 5


def test_pool_of_one(lora_experts):
    with pytest.raises(ExpertError, match="at least 2 experts, got 1 .*expert_0"):
        load_pool(lora_experts[:1])


def test_missing_folder(lora_experts, tmp_path):
    with pytest.raises(ExpertError, match="nowhere: expert folder not found"):
        load_pool([lora_experts[0], tmp_path / "nowhere"])


def test_pickle_only_folder_is_refused_without_unpickling(lora_experts, tmp_path):
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((lora_experts[0] / "adapter_config.json").read_text())
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")  # never opened
    with pytest.raises(ExpertError, match="pickled: no safetensors weights, only "
                       "adapter_model.bin. Pickle files .* arbitrary code"):
        load_pool([lora_experts[0], bad])


def test_truncated_safetensors(lora_experts, tmp_path):
    bad = copy(lora_experts[1], tmp_path / "cut")
    data = (bad / ADAPTER).read_bytes()
    (bad / ADAPTER).write_bytes(data[: len(data) // 2])
    with pytest.raises(ExpertError, match=r"cut/adapter_model.safetensors: unreadable"):
        load_pool([lora_experts[0], bad])


@pytest.mark.parametrize("kwargs,key", [
    ({"rank": 2}, "r"), ({"alpha": 16}, "lora_alpha"),
    ({"target_modules": ("q_proj", "k_proj")}, "target_modules"),
])
def test_lora_config_mismatch(lora_experts, tiny_base, tmp_path, kwargs, key):
    other = make_tiny_lora_pool(tiny_base, tmp_path, n=1, **kwargs)[0]
    pattern = rf"expert_0: expert expert_0-1 has {key}=.* but expert_0 has {key}="
    with pytest.raises(ExpertError, match=pattern):
        load_pool([lora_experts[0], other])


def test_different_base_model(lora_experts, tmp_path):
    other_base = make_tiny_llama(tmp_path / "other-base", seed=9)
    other = make_tiny_lora_pool(other_base, tmp_path / "p", n=1)[0]
    with pytest.raises(ExpertError, match="has base_model_name_or_path="):
        load_pool([lora_experts[0], other])


def test_missing_tensor_and_wrong_shape_and_dtype(lora_experts, tmp_path):
    name = sorted(load_file(lora_experts[1] / ADAPTER))[0]
    for change, pattern in (
        ("drop", f"lacks tensor {name}"),
        ("shape", rf"tensor {name} has shape \(4, 33\) but expert_0 has \(4, 32\)"),
        ("dtype", rf"tensor {name} is torch.float16 but expert_0 has torch.float32"),
    ):
        bad = copy(lora_experts[1], tmp_path / change)
        tensors = load_file(bad / ADAPTER)
        if change == "drop":
            del tensors[name]
        elif change == "shape":
            tensors[name] = torch.zeros(4, 33)
        else:
            tensors[name] = tensors[name].half()
        save_file(tensors, bad / ADAPTER)
        with pytest.raises(ExpertError, match=pattern):
            load_pool([lora_experts[0], bad])


def test_full_pool_with_other_shapes(full_experts, tmp_path):
    wide = make_tiny_llama(tmp_path / "wide", hidden_size=48)
    with pytest.raises(ExpertError, match=r"wide: expert wide tensor .* has shape"):
        load_pool([full_experts[0], wide])


def test_mixed_kinds(lora_experts, full_experts):
    with pytest.raises(ExpertError, match="is a full checkpoint but expert_0 is a lora one"):
        load_pool([lora_experts[0], full_experts[0]])


def test_inputs_are_never_modified(lora_experts, full_experts, tmp_path):
    before = digest(lora_experts + full_experts)
    for experts in (lora_experts, full_experts):
        pool = load_pool(experts)
        doubled = {k: v * 2 for k, v in pool.experts[0].tensors.items()}
        export_expert(pool, doubled, tmp_path / pool.kind)
        export_expert(pool, doubled, tmp_path / pool.kind)  # replacing an export is fine too
    assert digest(lora_experts + full_experts) == before
    back = load_file(tmp_path / "lora" / ADAPTER)
    assert all(torch.equal(back[k], v * 2) for k, v in load_pool(
        lora_experts).experts[0].tensors.items())
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["base_model_name_or_path"]
