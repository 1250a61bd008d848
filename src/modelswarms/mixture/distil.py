"""Distribution-level merging (Unconstrained Model Merging, seed 003, heterogeneous): distil a
mixture into one deployable model.

The student is one of the experts (or any model folder): a LoRA adapter on it (its own
adapter, trained further, when the student is an adapter folder) is trained so that its
next-token distribution matches the mixture's. The training text is each prompt followed by
the mixture's greedy continuation; at every position of that continuation the target is the
mixture's next-token distribution given the text so far (each expert reading it with its own
tokenizer), restricted to the student's vocabulary through the union vocabulary and
renormalised. The loss is KL(target || student), summed over positions. The result is a
standard PEFT adapter folder.

Its report puts the student beside the mixture and every expert on the run's utility
(score_references before training, distillation_report after), as a run's report puts its
global best beside the experts.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, utility_config
from ..errors import ConfigError, UtilityError
from ..evaluation.engine.backend import load_causal_lm, load_standalone, load_tokenizer
from ..evaluation.engine.batching import Batching, batching
from ..evaluation.engine.batching import pad as pad_rows
from ..evaluation.objectives.utilities import ItemScores, build_utility
from ..models import resolve_model
from ..pool.loading import read_json
from ..stats import pack_scores, paired_bootstrap
from .evaluator import MixtureEvaluator
from .model import MixtureLM


def _student(path: Path, rank: int, alpha: int):
    """(trainable PEFT model, tokenizer, base it names) for the student folder."""
    from peft import LoraConfig, PeftModel, get_peft_model

    adapter = path / "adapter_config.json"
    if adapter.is_file():
        base = read_json(adapter).get("base_model_name_or_path")
        if not base:
            raise ConfigError(f"{path}: the student adapter names no base model")
        source = resolve_model(base)
        model = load_causal_lm(source, torch.float32, torch.device("cpu"))
        return PeftModel.from_pretrained(model, str(path), is_trainable=True), \
            load_tokenizer(source), base
    # an embedded model (mixture.json names it: smollm2, gemma3-270m) is its cached folder,
    # and the adapter names it as the shipped pool's adapters name smollm2
    source = resolve_model(str(path))
    model = load_causal_lm(source, torch.float32, torch.device("cpu"))
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config), load_tokenizer(source), str(path)


def distillation_targets(mixture: MixtureLM, student: int, prompts: Sequence[str],
                         max_new_tokens: int) -> list[tuple[list[int], int, torch.Tensor]]:
    """Per prompt: the student's tokens of prompt + the mixture's continuation, where the
    continuation starts, and the target distributions (continuation tokens x the student's
    vocabulary)."""
    vocab = mixture.vocab
    own = vocab.experts[student]
    keys = [vocab.keys[int(u)] for u in own.to_union]
    tok = mixture.tokenizers[student]
    conts = mixture.generate([p.encode() for p in prompts], max_new_tokens)
    out = []
    for prompt, cont in zip(prompts, conts, strict=True):
        head = tok.encode(prompt)
        text = prompt.encode() + vocab.text_bytes(cont)
        ids = tok.encode(text.decode("utf-8", errors="replace"))
        if ids[: len(head)] != head or len(ids) <= len(head):
            continue  # the continuation changed the prompt's tokens, or is empty
        prefixes = [b"".join(k for k in (keys[t] for t in ids[:k]) if isinstance(k, bytes))
                    for k in range(len(head), len(ids))]
        probs = mixture.next_token_probs(prefixes, memo=False)[
            :, own.to_union.to(mixture.device)]
        probs = (probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)).float().cpu()
        out.append((ids, len(head), probs))
    if not out:
        empty = sum(1 for c in conts if not vocab.text_bytes(c))
        raise ConfigError(
            "distillation: no prompt gave a continuation to learn from"
            + (f" (the mixture ended {empty} of {len(conts)} at once: an instruct model "
               "asked outside its chat format often does; give prompts it continues, e.g. "
               "with a worked example, in --prompts)" if empty else ""))
    return out


def kl_to_targets(model, batch: list[tuple[list[int], int, torch.Tensor]], pad: int
                  ) -> torch.Tensor:
    """Mean over continuation tokens of KL(target || student)."""
    ids, mask = pad_rows([row for row, _, _ in batch], pad, left=False, device=model.device)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    total, count = logits.new_zeros(()), 0
    for r, (row, start, target) in enumerate(batch):
        # logits at k - 1 predict token k: the continuation is tokens start .. len - 1
        logq = torch.log_softmax(logits[r, start - 1 : len(row) - 1, : target.shape[1]], -1)
        total = total + (target * (target.clamp_min(1e-30).log() - logq)).sum()
        count += target.shape[0]
    return total / max(1, count)


def distil(mixture: MixtureLM, student: int, student_path: str | Path, prompts: Sequence[str],
           out: str | Path, *, rank: int = 8, alpha: int = 16, steps: int = 50,
           lr: float = 1e-3, batch_size: int = 4, max_new_tokens: int = 32, seed: int = 0,
           log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the student toward the mixture; write the adapter to `out`. Returns the mean
    KL(target || student) per token before and after, on the training targets (runs/distil.py
    writes it to distillation.json with the report)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    targets = distillation_targets(mixture, student, prompts, max_new_tokens)
    model, tok, base = _student(Path(student_path), rank, alpha)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr)
    with torch.no_grad():
        before = float(kl_to_targets(model.eval(), targets, pad))
    model.train()
    for step in range(steps):
        batch = rng.sample(targets, min(batch_size, len(targets)))
        loss = kl_to_targets(model, batch, pad)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        if log and (step % 10 == 0 or step == steps - 1):
            log(f"distil step {step + 1}/{steps}: KL {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        after = float(kl_to_targets(model, targets, pad))
    if not math.isfinite(after):  # before anything is written: no half result to clean up
        raise ConfigError(f"distillation diverged (KL is not finite); lower the learning rate "
                          f"(--lr, now {lr:g})")
    out = Path(out)
    model.save_pretrained(str(out), safe_serialization=True)
    cfg_path = out / "adapter_config.json"
    spec = json.loads(cfg_path.read_text())
    spec["base_model_name_or_path"] = base  # what the student was loaded from, as given
    cfg_path.write_text(json.dumps(spec, indent=2))
    tok.save_pretrained(str(out))
    result = {"student": mixture.names[student], "prompts": len(targets), "steps": steps,
              "kl_before": before, "kl_after": after,
              "weights": [float(w) for w in mixture.weights]}
    return result


def score_references(mixture: MixtureLM, utility: dict[str, Any],
                     splits: dict[str, list[dict]], engine: Any = None
                     ) -> dict[str, list[ItemScores]]:
    """Per split: each expert's scores (its one-hot mixture, exactly as the token swarm scored
    it), then the mixture's, through the mixture's evaluator. Done before training, so an
    item the experts cannot read fails before anything is written."""
    engine = engine or ModelConfig()
    scorer = build_utility(utility_config(**utility))
    evaluator = MixtureEvaluator(mixture, Batching(engine.batch_size, engine.max_batch_tokens))
    weights = mixture.weights.clone()
    candidates = torch.cat([torch.eye(mixture.n, dtype=torch.float64), weights[None]])
    try:
        scored = {split: evaluator.score_many(candidates, items, scorer)
                  for split, items in splits.items()}
    finally:
        mixture.weights = weights  # as it was, bit for bit (set_weights would renormalise)
    for results in scored.values():
        for r in results:
            if r.error:
                raise UtilityError(f"scoring the mixture: {r.error}")
    return scored


def distillation_report(mixture: MixtureLM, student: int, folder: str | Path,
                        utility: dict[str, Any], splits: dict[str, list[dict]],
                        references: dict[str, list[ItemScores]], *, engine: Any = None,
                        seed: int = 0) -> dict[str, Any]:
    """The distillation's report: every expert, the best expert (chosen by dev), the mixture
    (`references`, from score_references) and the distilled student in `folder`, each on dev
    and test, and the student's test gains over the mixture and over the best expert with
    paired bootstrap intervals (as a run's report gives its global best's). The student is
    scored as `modelswarms eval` scores an adapter folder."""
    engine = engine or ModelConfig()
    scorer = build_utility(utility_config(**utility))
    # loaded once for both splits, as `evaluate` (api.py) loads an adapter folder
    model, tok = load_standalone(str(folder), device=engine.device, dtype=engine.dtype)
    with batching(Batching(engine.batch_size, engine.max_batch_tokens)):
        scored = {split: [*references[split], scorer.score(model, tok, items)]
                  for split, items in splits.items()}
    del model
    test = "test" in scored

    def row(name: str, k: int) -> dict[str, Any]:
        out = {"name": name, "dev": scored["dev"][k].value, "test": None}
        if test:
            out["test"] = scored["test"][k].value
            out["test_scores"] = pack_scores(scored["test"][k].scores)
        return out

    names, n = mixture.names, mixture.n
    best = max(range(n), key=lambda i: scored["dev"][i].value)  # the first on a tie
    rows = [row(f"expert: {name}", i) for i, name in enumerate(names)]
    rows += [row(f"best expert ({names[best]})", best), row("mixture", n),
             row(f"distilled: {names[student]}", n + 1)]
    gains = {}
    if test:
        mine = scored["test"][n + 1].scores
        gains = {"mixture": paired_bootstrap(mine, scored["test"][n].scores, seed=seed),
                 "best expert": paired_bootstrap(mine, scored["test"][best].scores, seed=seed)}
    return {"utility": utility.get("type", "multiple_choice"),
            "dev_items": len(splits["dev"]), "test_items": len(splits.get("test") or []),
            "rows": rows, "test_gains": gains, "correctness_emergence": None}
