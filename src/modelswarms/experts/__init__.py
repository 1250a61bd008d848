"""Training LoRA experts, and the starter pool of SmolLM2-135M-Instruct experts."""

from .train import encode_item, item_kind, render_item, train_lora

__all__ = ["encode_item", "item_kind", "render_item", "train_lora"]
