"""Tiny real models for tests and examples: a few-layer Llama, a character tokenizer, LoRA pools.

Everything is built in-process in well under a second, so tests run the real code paths
(transformers, peft, safetensors) with only the model being small.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from pathlib import Path

import torch

from .config import utility_config
from .evaluation.engine.batching import Batching, batching
from .evaluation.objectives.utilities import build_utility

CHARS = string.printable  # 100 characters: digits, letters, punctuation, whitespace
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def make_char_tokenizer(chat_template: bool = False):
    """A character-level fast tokenizer: every printable ASCII character is one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(CHARS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(.|\n)"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>",
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_llama(
    folder: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    chat_template: bool = False,
) -> Path:
    """Save a random tiny LlamaForCausalLM with its tokenizer to `folder` (safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tok = make_char_tokenizer(chat_template=chat_template)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def random_lora_adapters(
    model,
    folder: str | Path,
    n: int,
    *,
    rank: int = 4,
    alpha: int | None = None,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    scale: float = 0.5,
    seeds: Sequence[int] | None = None,
    layers_to_transform: Sequence[int] | None = None,
) -> list[Path]:
    """Save `n` LoRA adapters of the in-memory `model` with random (non-zero) A and B factors
    (generator seeds `seeds`, default 0..n-1) as folder/expert_i; `model` is left as it was.
    With `layers_to_transform`, only those decoder layers are adapted (like the shipped
    pool)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha,
                     target_modules=list(target_modules), lora_dropout=0.0,
                     task_type="CAUSAL_LM",
                     layers_to_transform=None if layers_to_transform is None
                     else list(layers_to_transform))
    peft_model = get_peft_model(model, cfg)
    paths = []
    for i, seed in enumerate(range(n) if seeds is None else seeds):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_((torch.randn(p.shape, generator=gen) * scale).to(p.dtype))
        out = Path(folder) / f"expert_{i}"
        peft_model.save_pretrained(out)
        paths.append(out)
    peft_model.unload()
    return paths


def make_tiny_lora_pool(
    base: str | Path,
    folder: str | Path,
    n: int = 3,
    *,
    rank: int = 4,
    alpha: int = 8,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    scale: float = 0.5,
    seed: int = 0,
    layers_to_transform: tuple[int, ...] | None = None,
) -> list[Path]:
    """Save `n` LoRA adapters of the model folder `base` with random (non-zero) factors."""
    from transformers import AutoModelForCausalLM

    return random_lora_adapters(
        AutoModelForCausalLM.from_pretrained(base), folder, n, rank=rank, alpha=alpha,
        target_modules=target_modules, scale=scale,
        seeds=[seed * 1000 + i for i in range(n)], layers_to_transform=layers_to_transform)


def make_tiny_full_pool(
    base: str | Path, folder: str | Path, n: int = 3, *, scale: float = 0.02, seed: int = 0
) -> list[Path]:
    """Save `n` full-weight fine-tunes of `base`: the base weights plus seeded noise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    paths = []
    for i in range(n):
        model = AutoModelForCausalLM.from_pretrained(base)
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale)
        out = Path(folder) / f"full_{i}"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        paths.append(out)
    return paths


def make_tiny_reward_model(folder: str | Path, *, seed: int = 0, hidden_size: int = 32) -> Path:
    """Save a random tiny LlamaForSequenceClassification with one output (a reward model)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    folder = Path(folder)
    tok = make_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, pad_token_id=tok.pad_token_id, num_labels=1,
    )
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class _Batched:
    """A utility called within fixed engine batch limits, as an evaluator calls it."""

    def __init__(self, utility, limits):
        self._utility, self._limits = utility, limits

    def __getattr__(self, name):
        return getattr(self._utility, name)

    def score(self, *args, **kwargs):
        with batching(self._limits):
            return self._utility.score(*args, **kwargs)

    def score_many(self, *args, **kwargs):
        with batching(self._limits):
            return self._utility.score_many(*args, **kwargs)


def make_utility(*, batch_size: int | None = None, max_batch_tokens: int | None = None,
                 **fields):
    """A utility from config fields; batch limits (the engine's, not the utility's) given
    here apply to its calls."""
    utility = build_utility(utility_config(**fields))
    if batch_size is None and max_batch_tokens is None:
        return utility
    return _Batched(utility, Batching(batch_size or 16, max_batch_tokens or 4096))


CORPUS = ("the quick brown fox jumps over the lazy dog. question: what is two plus two? "
          "answer: four. the capital of france is paris. 0123456789 ") * 4


def make_byte_bpe_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer (GPT-2's kind: 'Ġ' marks a space) trained in-process on a
    few sentences; every byte is a token, so it can spell any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def make_tiny_gpt2(folder: str | Path, *, seed: int = 1, hidden_size: int = 32,
                   layers: int = 2) -> Path:
    """Save a random tiny GPT2LMHeadModel with a byte-level BPE tokenizer: another
    architecture and another vocabulary than make_tiny_llama's."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = Path(folder)
    tok = make_byte_bpe_tokenizer()
    config = GPT2Config(vocab_size=len(tok), n_embd=hidden_size, n_layer=layers, n_head=4,
                        n_positions=512, bos_token_id=tok.eos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_tiny_gemma3(folder: str | Path, *, seed: int = 2, hidden_size: int = 32,
                     sliding_window: int = 64) -> Path:
    """Save a random tiny Gemma3ForCausalLM (a sliding-window layer, then a full-attention
    one, as Gemma 3 270M alternates them) with make_char_tokenizer's vocabulary."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = Path(folder)
    tok = make_char_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=hidden_size // 4, query_pre_attn_scalar=hidden_size // 4,
        sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        final_logit_softcapping=None, attn_implementation="sdpa")
    torch.manual_seed(seed)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def arith_items(n: int, rng: random.Random | int, id_prefix: str = "") -> list[dict]:
    """n multiple-choice sums ("What is 3+4?", four options around the answer, in a random
    order) drawn from `rng` (or a generator seeded with it): tiny data for tests and bench
    smoke runs. Ids are id_prefix + the item's index."""
    rng = random.Random(rng) if isinstance(rng, int) else rng
    items = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        offsets = rng.sample([-2, -1, 0, 1], 4)
        choices = {k: str(a + b + d) for k, d in zip("ABCD", offsets, strict=True)}
        answer = next(k for k, v in choices.items() if v == str(a + b))
        items.append({"id": f"{id_prefix}{i}", "question": f"What is {a}+{b}?",
                      "choices": choices, "answer": answer})
    return items
