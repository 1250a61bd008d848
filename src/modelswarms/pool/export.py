"""Write a particle as a folder that plain transformers / peft load, atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

if TYPE_CHECKING:
    from .loading import ExpertPool

# Non-weight files a model folder needs to load and to tokenise like the original.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
               "chat_template.jinja", "added_tokens.json")


def export_expert(pool: ExpertPool, tensors: dict[str, torch.Tensor], folder: str | Path, *,
                  dtype: torch.dtype | None = None,
                  metadata: dict[str, str] | None = None) -> Path:
    """Export `tensors` (a full state dict of the pool's kind) to `folder`.

    The folder is written beside the target and renamed into place, so an interrupted export
    never leaves a half-written folder where a complete one is expected.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        # clone: tied or sliced tensors share storage, which safetensors refuses to save
        out = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous().clone()
               for k, v in tensors.items()}
        meta = {"format": "pt", **(metadata or {})}
        if pool.kind == "lora":
            save_file(out, tmp / "adapter_model.safetensors", metadata=meta)
            config = dict(pool.adapter_config or {})
            config["base_model_name_or_path"] = pool.base_model
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        else:
            save_file(out, tmp / "model.safetensors", metadata=meta)
            for name in MODEL_FILES:
                if (pool.template / name).is_file():
                    shutil.copy2(pool.template / name, tmp / name)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
