"""LoRA fine-tuning of one expert on CPU: a plain torch loop, loss on the answer tokens only.

Items are rendered the way the evaluation prompts them (the Model Swarms paper's prompts, in
the tokenizer's chat template when it has one), so an expert learns the answer format that
the utilities score:

- multiple choice ``{question, choices: {letter: text}, answer: letter}``: user turn
  "Please choose an option that best answers the question.\\nQuestion: ...\\nA: ...", the
  assistant turn opens with "The answer is" (prompt side, as the multiple-choice utility scores
  the letter right after it) and the trained answer is " {letter}: {choice text}";
- exact match ``{question, answer}``: user turn "Please answer the following question.\\n
  Question: ...\\nAnswer:", the trained answer is the answer string;
- open prompts ``{prompt | question, response}``: user turn = the prompt, answer = the response.

The result is a standard PEFT adapter folder (``adapter_model.safetensors`` in bfloat16,
``adapter_config.json``) plus a data card (``DATA_CARD.md``, ``data_card.json``) saying what it
was trained on, under which licence, and how. The same seed gives bit-identical tensors.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, ModelSwarmsError

MC_INSTRUCTION = "Please choose an option that best answers the question."
MC_ANSWER_PREFIX = "The answer is"
QA_TEMPLATE = "Please answer the following question.\nQuestion: {question}\nAnswer:"
SMOLLM2 = "smollm2"
IGNORE = -100


class TrainError(ModelSwarmsError):
    """A training run could not start or finish (bad arguments, unusable output folder)."""


def item_kind(item: dict[str, Any]) -> str:
    """'multiple_choice', 'exact_match' or 'open' for one item; DataError when none fits."""
    if not isinstance(item, dict):
        raise DataError(f"item is not an object: {item!r:.80}")
    if "response" in item and ("prompt" in item or "question" in item):
        return "open"
    if "question" in item and "answer" in item:
        if "choices" in item:
            choices = item["choices"]
            if not isinstance(choices, dict) or str(item["answer"]) not in choices:
                raise DataError(f"item {item.get('id', '?')}: answer {item['answer']!r} is not "
                                "one of its choices")
            return "multiple_choice"
        return "exact_match"
    raise DataError(f"item {item.get('id', '?')}: needs question+choices+answer, question+answer "
                    "or prompt+response")


def render_item(item: dict[str, Any]) -> tuple[str, str, str]:
    """(user text, assistant prefix, trained answer text) of one item."""
    kind = item_kind(item)
    if kind == "multiple_choice":
        choices = "\n".join(f"{k}: {v}" for k, v in item["choices"].items())
        user = f"{MC_INSTRUCTION}\nQuestion: {item['question']}\n{choices}"
        letter = str(item["answer"])
        return user, MC_ANSWER_PREFIX, f" {letter}: {item['choices'][letter]}"
    if kind == "exact_match":
        return QA_TEMPLATE.format(question=item["question"]), "", str(item["answer"]).strip()
    return str(item.get("prompt", item.get("question"))), "", str(item["response"]).strip()


def _has_chat(tokenizer: Any) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def encode_item(tokenizer: Any, item: dict[str, Any], max_length: int,
                chat: bool | None = None) -> tuple[list[int], list[int], bool]:
    """(input ids, labels, truncated): labels are IGNORE except on the answer tokens.

    A sequence over `max_length` keeps the answer (at most half the budget), the prompt's
    first quarter and its end (the options and the answer cue), dropping the prompt's middle.
    """
    chat = _has_chat(tokenizer) if chat is None else chat
    user, prefix, answer = render_item(item)
    if chat:
        turn = [{"role": "user", "content": user}]
        prompt_text = tokenizer.apply_chat_template(turn, tokenize=False,
                                                    add_generation_prompt=True) + prefix
        full = tokenizer.apply_chat_template(
            [*turn, {"role": "assistant", "content": prefix + answer}], tokenize=False)
        if full.startswith(prompt_text):
            answer_text = full[len(prompt_text):]  # the answer and the end-of-turn marker
        else:
            answer_text = answer + (tokenizer.eos_token or "")
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    else:
        prompt_text = f"{user}\n{prefix}" if prefix else user
        prompt = tokenizer(prompt_text)["input_ids"]
        completion = tokenizer(answer if prefix or answer.startswith(" ") else " " + answer,
                               add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion = [*completion, tokenizer.eos_token_id]
    truncated = len(prompt) + len(completion) > max_length
    if truncated:
        completion = completion[: max(1, max_length // 2)]
        keep = max_length - len(completion)
        head = keep // 4
        prompt = prompt[:head] + (prompt[len(prompt) - (keep - head):] if keep > head else [])
    ids = prompt + completion
    labels = [IGNORE] * len(prompt) + completion
    return ids, labels, truncated


def _collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int):
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (i, lab) in enumerate(batch):  # right padding
        ids[row, : len(i)] = torch.tensor(i)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(i)] = 1
    return ids, labels, mask


def _answer_loss(causal_lm, ids, labels, mask) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens; the LM head runs on those positions only."""
    hidden = causal_lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def _batches(n: int, batch_size: int, steps: int, rng: random.Random):
    """`steps` batches of indices: shuffled passes over the data, a new order every pass."""
    order: list[int] = []
    for _ in range(steps):
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = list(range(n))
                rng.shuffle(order)
            batch.append(order.pop())
        yield batch


def _layers_text(layers: Sequence[int] | None) -> str:
    if layers is None:
        return "all"
    layers = sorted(layers)
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def _write_card(folder: Path, card: dict[str, Any]) -> None:
    (folder / "data_card.json").write_text(json.dumps(card, indent=2) + "\n")
    hp = card["hyperparameters"]
    kinds = ", ".join(f"{k}: {v}" for k, v in card["kinds"].items())
    lines = [
        f"# Expert `{card['name']}`",
        "",
        f"LoRA adapter of `{card['base_model']}`, fine-tuned with "
        "`modelswarms.experts.train_lora`.",
        "",
        "## Data",
        "",
        f"- source: {card['source']}",
        f"- licence: {card['licence']}",
        f"- examples: {card['examples']} ({kinds}; {card['truncated']} truncated to "
        f"{hp['max_length']} tokens)",
    ]
    if card.get("description"):
        lines.append(f"- description: {card['description']}")
    lines += [
        "",
        "## Training",
        "",
        "| hyper-parameter | value |",
        "| --- | --- |",
        *(f"| {k} | {', '.join(v) if isinstance(v, list) else v} |" for k, v in hp.items()),
        f"| seed | {card['seed']} |",
        "",
        f"- trainable parameters: {card['trainable_parameters']:,}",
        f"- answer tokens seen: {card['answer_tokens_seen']:,}; tokens seen: "
        f"{card['tokens_seen']:,}",
        f"- loss (mean answer-token cross-entropy): first {card['first_loss']:.4f}, "
        f"final {card['final_loss']:.4f}",
        f"- wall time: {card['wall_seconds']:.1f} s on {card['device']} "
        f"({card['threads']} threads)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in card['versions'].items())}",
        "",
    ]
    (folder / "DATA_CARD.md").write_text("\n".join(lines))


def train_lora(
    base_model: str,
    items: list[dict[str, Any]],
    out: str | Path,
    *,
    rank: int = 8,
    alpha: int = 16,
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    layers: Sequence[int] | None = None,
    steps: int = 100,
    lr: float = 1e-3,
    batch_size: int = 8,
    max_length: int = 192,
    seed: int = 0,
    source: str = "unknown",
    licence: str = "unknown",
    description: str = "",
    name: str | None = None,
    warmup: float = 0.1,
    overwrite: bool = False,
    threads: int | None = None,
    log=None,
) -> Path:
    """Fine-tune a LoRA adapter of `base_model` ("smollm2", a folder or hub id) on `items`.

    Writes the adapter folder `out` (bf16 safetensors, adapter_config.json whose
    base_model_name_or_path is `base_model` as given, e.g. "smollm2") and its data card.
    Linear warm-up over `warmup` of the steps, then linear decay to zero; AdamW, gradient
    norm clipped at 1. `layers` adapts only those layer indices (all by default: adapting
    only the top layers makes the backward pass, and the adapter, smaller). `threads` sets
    torch's CPU threads for the run (on a shared, busy machine 1 is often faster). Returns `out`.
    """
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import resolve_model

    out = Path(out)
    if not items:
        raise TrainError(f"{out}: no training items")
    if steps < 1 or batch_size < 1 or max_length < 8 or rank < 1:
        raise TrainError(f"{out}: steps, batch_size, rank must be >= 1 and max_length >= 8")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TrainError(f"{out}: folder exists and is not empty (use overwrite)")
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    path = resolve_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = [encode_item(tokenizer, it, max_length) for it in items]
    kinds: dict[str, int] = {}
    for it in items:
        kinds[item_kind(it)] = kinds.get(item_kind(it), 0) + 1
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id or 0)

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                      layers_to_transform=list(layers) if layers is not None else None,
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    causal_lm = peft_model.get_base_model()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    n_warm = max(1, round(warmup * steps)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return max(0.0, (steps - step) / max(1, steps - n_warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses: list[float] = []
    tokens = answer_tokens = 0
    for step, batch in enumerate(_batches(len(encoded), batch_size, steps, rng)):
        ids, labels, mask = _collate([encoded[i][:2] for i in batch], pad_id)
        loss = _answer_loss(causal_lm, ids, labels, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int(mask.sum())
        answer_tokens += int((labels != IGNORE).sum())
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(f"step {step + 1}/{steps} loss {losses[-1]:.4f} "
                f"({time.perf_counter() - start:.0f} s)")
    if not all(math.isfinite(x) for x in losses):
        raise TrainError(f"{out}: training diverged (loss {losses[-1]})")

    window = max(1, steps // 10)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        peft_model.save_pretrained(tmp)
        weights = tmp / "adapter_model.safetensors"
        tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(weights).items()}
        save_file(tensors, weights, metadata={"format": "pt"})
        cfg_path = tmp / "adapter_config.json"
        adapter_cfg = json.loads(cfg_path.read_text())
        adapter_cfg["base_model_name_or_path"] = base_model
        cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card; ours follows
        card = {
            "name": name or out.name,
            "base_model": base_model,
            "source": source,
            "licence": licence,
            "description": description,
            "examples": len(items),
            "kinds": kinds,
            "truncated": sum(t for *_, t in encoded),
            "hyperparameters": {
                "rank": rank, "alpha": alpha, "target_modules": list(target_modules),
                "layers": _layers_text(layers),
                "steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup,
                "schedule": "linear warm-up, linear decay", "optimizer": "AdamW (wd 0)",
                "max_length": max_length, "dtype_trained": "float32", "dtype_saved": "bfloat16",
            },
            "seed": seed,
            "trainable_parameters": n_trainable,
            "tokens_seen": tokens,
            "answer_tokens_seen": answer_tokens,
            "first_loss": sum(losses[:window]) / window,
            "final_loss": sum(losses[-window:]) / window,
            "losses": [round(x, 4) for x in losses],
            "wall_seconds": round(time.perf_counter() - start, 1),
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "versions": _versions(),
        }
        _write_card(tmp, card)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an adapter folder is ordinary data
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
