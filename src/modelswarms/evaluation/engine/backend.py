"""One model stays resident; particles are swapped into its live weights in place.

The searched parameters of the live model are re-pointed to views of one flat buffer laid out
like the weight space, so loading a particle is a single `copy_` and never touches disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch

from ...errors import ConfigError, ExpertError, first_line
from ...models import adapter_base, resolve_model
from ...pool import Expert
from ...pool.loading import load_expert, read_json
from ...space import FlatSpace

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str = "auto") -> torch.device:
    """The torch device `device` (model.device, --device) names; one that this machine does
    not have is a ConfigError, not a failure deep in the first model load."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r}: not a device; use auto, cpu, cuda or cuda:N") \
            from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this machine's torch sees no CUDA GPU; use auto "
                          "or cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                          "CUDA GPU(s)")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"device {device!r}: not a device the models run on; use auto, cpu, "
                          "cuda or cuda:N")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype the weights load in; int8 loads float32 and `quantize_int8` follows."""
    if dtype == "auto":
        # CPUs are slow at half precision; GPUs are fast at it and short of memory.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == "int8":
        if device.type != "cpu":
            raise ConfigError("model.dtype int8: dynamic int8 matmuls run on a CPU only; use "
                              "bfloat16 or float16 on a GPU")
        return torch.float32
    return _DTYPES[dtype]


def quantize_int8(model, keep: frozenset[int] = frozenset()) -> int:
    """Swap every linear layer of the base model (not a LoRA factor) for a dynamically
    quantised one: int8 weights with one scale per output channel, activations quantised per
    call, float32 out. The LoRA factors, the LM head, norms, embeddings and attention stay
    float32, so a
    particle's LoRA delta is computed exactly as in float32. A layer whose weight's id is in
    `keep` (a searched tensor of a full-model pool) stays float32. Returns how many were
    swapped."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # the LM head stays float32: it is tied to the embeddings, and its rounding would move
    # every option's log-likelihood directly
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    keep = keep | ({id(head.weight)} if isinstance(head, torch.nn.Linear) else set())
    names = {name for name, m in model.named_modules()
             if type(m) is torch.nn.Linear and ".lora_" not in f".{name}"
             and id(m.weight) not in keep}
    with warnings.catch_warnings():  # torch.ao's eager quantisation says it is moving to torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names},
                         dtype=torch.qint8, inplace=True)
    return len(names)


# What transformers and peft raise for files that are not what they should be (a corrupt
# config, a missing or mis-shaped tensor): the user's input, so one line naming the folder.
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as err:
        raise ExpertError(f"{source}: cannot load the tokenizer ({first_line(err)})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(source: str, dtype: torch.dtype, device: torch.device,
                   trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except LOAD_ERRORS as err:
        raise ExpertError(f"{source}: cannot load the model ({first_line(err)})") from None
    return model.to(device).eval()


class WeightPool(Protocol):
    """What the resident model needs of a pool whose particles are weights (pool/kinds.py:
    LoRA adapters, full checkpoints)."""

    experts: list[Expert]
    scores_base: bool  # a candidate of None is the model without its adapter
    batches_particles: bool  # LoRA factors: several particles share a forward

    @property
    def model_source(self) -> str: ...

    @property
    def adapter(self) -> Path | None: ...

    def live_name(self, name: str) -> str: ...


class ResidentModel:
    """The model of a pool held in memory, its searched weights bound to one flat buffer."""

    def __init__(self, pool: WeightPool, space: FlatSpace, *, device: str = "auto",
                 dtype: str = "auto", trust_remote_code: bool = False):
        self.pool, self.space = pool, space
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        source = pool.model_source
        self.tokenizer = load_tokenizer(source, trust_remote_code)
        self.model = load_causal_lm(source, self.dtype, self.device, trust_remote_code)
        if pool.adapter is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(pool.adapter),
                                                   is_trainable=False).eval()
        self.model.requires_grad_(False)
        self.flat = self._bind()
        if dtype == "int8":
            params = dict(self.model.named_parameters(remove_duplicate=False))
            quantize_int8(self.model, frozenset(id(params[pool.live_name(slot.name)])
                                                for slot in space.slots))

    def _bind(self) -> torch.Tensor:
        params = dict(self.model.named_parameters(remove_duplicate=False))
        first = self.pool.experts[0].tensors
        live = []
        for slot in self.space.slots:
            name = self.pool.live_name(slot.name)
            if name not in params:
                raise ExpertError(
                    f"{self.pool.experts[0].path}: tensor {slot.name} has no parameter "
                    f"{name} in the loaded model"
                )
            live.append(params[name])
        dtype = live[0].dtype
        flat = torch.empty(self.space.dim, dtype=dtype, device=self.device)
        for slot, param in zip(self.space.slots, live, strict=True):
            view = flat[slot.offset : slot.offset + slot.numel].view(slot.shape)
            # The expert's own values, not the loaded ones: peft may cast adapters on load.
            view.copy_(first[slot.name])
            param.data = view
        return flat

    def load(self, vector: torch.Tensor) -> None:
        """Make `vector` (a point of the weight space) the model's searched weights."""
        self.flat.copy_(vector)

    def current(self) -> torch.Tensor:
        return self.flat

    @contextlib.contextmanager
    def base_model(self) -> Iterator[object]:
        """The model without its adapter (LoRA pools only)."""
        if not self.pool.scores_base:
            raise ExpertError("the base model is only defined for pools of LoRA adapters")
        with self.model.disable_adapter():
            yield self.model


def load_standalone(path: str, base_model: str | None = None, *, device: str = "auto",
                    dtype: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer) for one adapter folder or model folder, as plain transformers/peft."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    folder = Path(path)
    adapter_cfg = folder / "adapter_config.json"
    if adapter_cfg.is_file():
        from peft import PeftModel

        load_expert(folder)  # safetensors only, readable: checked here, not deep in peft
        base = base_model or adapter_base(folder, read_json(adapter_cfg))
        if not base:
            raise ExpertError(f"{folder}: adapter names no base model; pass --base")
        base = resolve_model(base)
        model = load_causal_lm(base, dt, dev, trust_remote_code)
        try:
            model = PeftModel.from_pretrained(model, str(folder), is_trainable=False).eval()
        except LOAD_ERRORS as err:
            raise ExpertError(f"{folder}: not an adapter of {base} ({first_line(err)})") \
                from None
        if dtype == "int8":
            quantize_int8(model)
        return model, load_tokenizer(base, trust_remote_code)
    source = resolve_model(str(path))
    if source == str(path) and not folder.exists():
        if not _hub_id_like(str(path)):
            raise ExpertError(f"{path}: no such folder")
        try:
            model = load_causal_lm(source, dt, dev, trust_remote_code)
        except ExpertError as err:  # say first what a user most likely meant: a folder
            raise ExpertError(f"{path}: no such folder, and not a model on the Hugging Face "
                              f"hub either ({str(err).split(': ', 1)[-1]})") from None
    else:
        model = load_causal_lm(source, dt, dev, trust_remote_code)
    if dtype == "int8":
        quantize_int8(model)
    return model, load_tokenizer(source, trust_remote_code)


def _hub_id_like(name: str) -> bool:
    """Whether `name` could be a hub id ("org/model" or "model"), not only a path."""
    return (not name.startswith((".", "/", "~")) and name.count("/") <= 1
            and not name.endswith("/") and "\\" not in name)
