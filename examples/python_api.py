"""The README's Python API example: a swarm over the shipped experts with a Python function
as the utility, in memory. Run from the repository root: python examples/python_api.py"""

from pathlib import Path

import torch

import modelswarms as ms


def answer_likelihood(model, tokenizer, items):  # any function of the model is a utility
    total = 0.0
    for it in items:
        q = tokenizer(f"Question: {it['question']}\nAnswer:", return_tensors="pt").input_ids
        a = tokenizer(" " + it["choices"][it["answer"]], return_tensors="pt",
                      add_special_tokens=False).input_ids
        with torch.no_grad():
            logp = model(input_ids=torch.cat([q, a], 1)).logits[0, q.shape[1] - 1 : -1]
        total += logp.log_softmax(-1).gather(1, a[0, :, None]).mean().item()
    return total / len(items)


experts = sorted(p for p in Path("experts/smollm2").iterdir() if p.is_dir())
cfg = ms.config(experts=experts, utility=answer_likelihood, budget=40,
                data={"path": "examples/capitals.json", "max_dev": 30, "max_test": 30})
result = ms.search(cfg)                          # Model Swarms, in memory: writes nothing
print(result.best_dev, [(r["name"], r["dev"]) for r in result.report["rows"]])
result.save("adapted")                           # a standard PEFT adapter folder
