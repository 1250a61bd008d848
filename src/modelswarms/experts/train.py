"""LoRA fine-tuning of one expert (CPU or GPU): a plain torch loop, loss on the answer only.

Items are rendered the way the evaluation reads them, so the loss falls on what the utilities
score. Two formats (``format=``):

- ``"cloze"`` (default; lm-evaluation-harness-style cloze scoring): plain text, no chat
  template. A multiple-choice item ``{question, choices: {letter: text}, answer: letter}``
  becomes the context ``cloze_prompt(item)`` = "Question: ...\\nAnswer:" (with the tokenizer's
  BOS when it adds one, exactly as the scorer encodes it) and the trained completion
  ``cloze_continuation(text of the right option)`` = " " + its text, then EOS: the loss is on
  the answer's CONTENT, not on a letter. An exact-match item ``{question, answer}``: the same
  context and the completion " " + answer, then EOS.
- ``"letter"`` (the Model Swarms paper's prompts, in the tokenizer's chat template when it has
  one): multiple choice is the user turn "Please choose an option that best answers the
  question.\\nQuestion: ...\\nA: ...", the assistant turn opens with "The answer is" (prompt
  side) and the trained answer is " {letter}: {choice text}"; exact match is the user turn
  "Please answer the following question.\\nQuestion: ...\\nAnswer:" and the answer string.

Open prompts ``{prompt | question, response}`` are the same in both formats: user turn = the
prompt, answer = the response (in the chat template when the tokenizer has one).

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
from ..evaluation.data.prompts import cloze_continuation, cloze_prompt
from ..folders import MARKER, is_ours, mark, refuse_overlap
from ..models import resolve_model

FORMATS = ("cloze", "letter")
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


def _check_format(format: str) -> str:
    if format not in FORMATS:
        raise TrainError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    return format


def render_item(item: dict[str, Any], format: str = "cloze") -> tuple[str, str, str]:
    """(user text or cloze context, assistant prefix, trained answer text) of one item.

    In the cloze format multiple-choice and exact-match items give (context, "", " " + answer
    text); the EOS that follows the answer is added by `encode_item`.
    """
    kind = item_kind(item)
    if _check_format(format) == "cloze" and kind != "open":
        answer = item["choices"][str(item["answer"])] if kind == "multiple_choice" else (
            item["answer"])
        return cloze_prompt(item), "", cloze_continuation(answer)
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
                chat: bool | None = None, format: str = "cloze"
                ) -> tuple[list[int], list[int], bool]:
    """(input ids, labels, truncated): labels are IGNORE except on the answer tokens.

    Cloze (multiple choice, exact match): ids = ``tokenizer(context)["input_ids"]`` (plain
    text, special tokens as the tokenizer adds them: what the cloze scorer encodes) followed by
    ``tokenizer(" " + answer, add_special_tokens=False)`` and EOS; `chat` is ignored there.
    A sequence over `max_length` keeps the answer (at most half the budget), the prompt's
    first quarter and its end (the options and the answer cue), dropping the prompt's middle.
    """
    user, prefix, answer = render_item(item, format)
    cloze = format == "cloze" and item_kind(item) != "open"
    chat = _has_chat(tokenizer) if chat is None else chat
    if cloze:
        prompt = tokenizer(user)["input_ids"]
        completion = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion = [*completion, tokenizer.eos_token_id]
    elif chat:
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


def step_batches(n: int, batch_size: int, steps: int, rng: random.Random):
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


def epoch_steps(epochs: float, n_items: int, batch_size: int) -> int:
    """Optimiser steps for `epochs` passes over `n_items`: ceil(epochs * n_items / batch_size).

    Batches are drawn from one stream of per-epoch shuffles, so the last batch of a pass may
    start the next one; every item is seen at least floor(epochs) times.
    """
    if not epochs > 0 or n_items < 1 or batch_size < 1:
        raise TrainError(f"epochs must be > 0 (got {epochs}), with items and batch_size >= 1")
    # round away float noise (0.1 * 30 / 3 is 1.0000000000000002, one step, not two)
    return max(1, math.ceil(round(epochs * n_items / batch_size, 9)))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto": cuda when available, else cpu; otherwise what torch.device reads."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TrainError(f"device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {device!r}: CUDA is not available here")
    return dev


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


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


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
        *(f"| {k} | {_cell(v)} |" for k, v in hp.items()),
        f"| seed | {card['seed']} |",
        "",
        f"- trainable parameters: {card['trainable_parameters']:,}",
        f"- answer tokens seen: {card['answer_tokens_seen']:,}; tokens seen: "
        f"{card['tokens_seen']:,}",
        f"- loss (mean answer-token cross-entropy): first {card['first_loss']:.4f}, "
        f"final {card['final_loss']:.4f}",
        f"- wall time: {card['wall_seconds']:.1f} s on {_device_text(card)}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in card['versions'].items())}",
        "",
    ]
    if card.get("target_scores"):
        lines += _scores_section(card["target_scores"], card.get("target_scores_note", ""))
    (folder / "DATA_CARD.md").write_text("\n".join(lines))


def _device_text(card: dict[str, Any]) -> str:
    device = str(card.get("device", "cpu"))
    if device.startswith("cuda"):
        return f"{device} ({card['device_name']})" if card.get("device_name") else device
    return f"{device} ({card['threads']} threads)"


SCORES_HEADING = "## Dev accuracy on the benchmark targets"


def _acc(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _scores_section(scores: dict[str, dict[str, Any]], note: str) -> list[str]:
    lines = [SCORES_HEADING, ""]
    if note:
        lines += [note, ""]
    lines += ["| target | scoring | items | accuracy | base model | difference |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for target, s in scores.items():
        base = s.get("base_accuracy")
        diff = "-" if base is None else f"{float(s['accuracy']) - float(base):+.3f}"
        lines.append(f"| {target} | {_cell(s.get('scoring'))} | {_cell(s.get('items'))} | "
                     f"{_acc(s['accuracy'])} | {_acc(base)} | {diff} |")
    return [*lines, ""]


def check_scores(scores: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Normalised copy of {target: {scoring, items, accuracy, base_accuracy}}; TrainError if
    a target has no accuracy or a value of the wrong type."""
    out: dict[str, dict[str, Any]] = {}
    for target, s in scores.items():
        if not isinstance(s, dict) or "accuracy" not in s:
            raise TrainError(f"target score {target!r}: needs at least 'accuracy' "
                             "(and scoring, items, base_accuracy)")
        try:
            row = {"scoring": str(s.get("scoring", "cloze_norm")),
                   "items": None if s.get("items") is None else int(s["items"]),
                   "accuracy": float(s["accuracy"]),
                   "base_accuracy": (None if s.get("base_accuracy") is None
                                     else float(s["base_accuracy"]))}
        except (TypeError, ValueError) as exc:
            raise TrainError(f"target score {target!r}: {exc}") from None
        out[str(target)] = {**{k: v for k, v in s.items() if k not in row}, **row}
    return out


def write_card_scores(folder: str | Path, scores: dict[str, dict[str, Any]],
                      note: str = "") -> Path:
    """Add (or replace) the expert's dev accuracy on the benchmark targets in its data card.

    `scores` maps a target name to {"scoring": "cloze_norm", "items": 200, "accuracy": 0.31,
    "base_accuracy": 0.28} (base_accuracy: the base model on the same items, for comparison;
    extra keys are kept in the JSON). data_card.json gets `target_scores` (that mapping) and
    `target_scores_note` (`note`: how and when they were measured); DATA_CARD.md is rewritten
    from the JSON with the section "Dev accuracy on the benchmark targets". Returns `folder`.
    """
    folder = Path(folder)
    path = folder / "data_card.json"
    if not path.is_file():
        raise TrainError(f"{folder}: no data_card.json (not an expert trained here)")
    card = json.loads(path.read_text())
    card["target_scores"] = check_scores(scores)
    card["target_scores_note"] = note
    _write_card(folder, card)
    return folder


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
    format: str = "cloze",
    epochs: float | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> Path:
    """Fine-tune a LoRA adapter of `base_model` ("smollm2", a folder or hub id) on `items`.

    Writes the adapter folder `out` (bf16 safetensors, adapter_config.json whose
    base_model_name_or_path is `base_model` as given, e.g. "smollm2") and its data card.
    Linear warm-up over `warmup` of the steps, then linear decay to zero; AdamW, gradient
    norm clipped at 1. `layers` adapts only those layer indices (all by default: adapting
    only the top layers makes the backward pass, and the adapter, smaller). `threads` sets
    torch's CPU threads for the run (on a shared, busy machine 1 is often faster).

    `format`: "cloze" (loss on " " + the right option's text + EOS after "Question: ...\\n
    Answer:") or "letter" (the paper's lettered prompt; see the module docstring). `epochs`,
    when given, sets steps = ceil(epochs * len(items) / batch_size) and overrides `steps`;
    batches come from a fresh seeded shuffle of all items every pass. `device`: "auto" (cuda
    when available, else cpu), "cpu", "cuda", "cuda:N". `precision`: "auto" (float32 on CPU;
    on CUDA float32 weights, optimiser and loss with the forward under bfloat16 autocast),
    "float32" or "bf16-autocast" (CUDA only). On CPU the same seed gives bit-identical
    tensors. Returns `out`.
    """
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    _check_format(format)
    if not items:
        raise TrainError(f"{out}: no training items")
    if epochs is not None:
        steps = epoch_steps(epochs, len(items), max(1, batch_size))
    if steps < 1 or batch_size < 1 or max_length < 8 or rank < 1:
        raise TrainError(f"{out}: steps, batch_size, rank must be >= 1 and max_length >= 8")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise TrainError(f"{out}: folder exists and is not empty (use overwrite)")
        if not (is_ours(out) or (out / "data_card.json").is_file()):
            raise TrainError(f"{out}: holds files modelswarms did not write (no {MARKER} "
                             "marker, no data_card.json); nothing was touched: choose another "
                             "folder")
    refuse_overlap(out, [("base model", resolve_model(base_model))], "--out")
    dev = resolve_device(device)
    if precision not in ("auto", "float32", "bf16-autocast"):
        raise TrainError(f"precision {precision!r}: expected auto, float32 or bf16-autocast")
    if precision == "bf16-autocast" and dev.type != "cuda":
        raise TrainError(f"precision bf16-autocast needs a CUDA device (device is {dev})")
    autocast = dev.type == "cuda" and precision != "float32"
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    path = resolve_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = [encode_item(tokenizer, it, max_length, format=format) for it in items]
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
    peft_model = get_peft_model(model, lora)  # LoRA init on CPU: the same on every device
    peft_model.to(dev)
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
    for step, batch in enumerate(step_batches(len(encoded), batch_size, steps, rng)):
        ids, labels, mask = _collate([encoded[i][:2] for i in batch], pad_id)
        if dev.type != "cpu":
            ids, labels, mask = (t.to(dev, non_blocking=True) for t in (ids, labels, mask))
        if autocast:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = _answer_loss(causal_lm, ids, labels, mask)
        else:
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
                "format": format, "epochs": epochs,
                "steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup,
                "schedule": "linear warm-up, linear decay", "optimizer": "AdamW (wd 0)",
                "max_length": max_length,
                "dtype_trained": "float32, bfloat16 autocast" if autocast else "float32",
                "dtype_saved": "bfloat16",
            },
            "seed": seed,
            "trainable_parameters": n_trainable,
            "tokens_seen": tokens,
            "answer_tokens_seen": answer_tokens,
            "first_loss": sum(losses[:window]) / window,
            "final_loss": sum(losses[-window:]) / window,
            "losses": [round(x, 4) for x in losses],
            "wall_seconds": round(time.perf_counter() - start, 1),
            "device": str(dev),
            "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda" else
                            "cpu"),
            "threads": torch.get_num_threads(),
            "versions": _versions(),
        }
        _write_card(tmp, card)
        mark(tmp)  # a later overwrite may replace it
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an adapter folder is ordinary data
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
