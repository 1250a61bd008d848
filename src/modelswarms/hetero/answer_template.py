"""Answer questions with the multi-LLM system exported beside this file (graph.json, experts/).

Needs only torch, transformers and peft (not modelswarms):
    python answer.py "Which planet is largest?" --choice A=Mars --choice B=Jupiter
    python answer.py --items questions.jsonl          # one JSON item per line
Prints one JSON line per question: the end node's answer and every node's response.
"""

import argparse
import json
import pathlib

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = pathlib.Path(__file__).resolve().parent
SPEC = json.loads((HERE / "graph.json").read_text())
MC_INSTRUCTION = "Please choose an option that best answers the question."


class System:
    def __init__(self, base=None, device="cpu"):
        names = sorted({node["model"] for node in SPEC["nodes"]})
        folders = {n: HERE / "experts" / n for n in names}
        self.lora = (folders[names[0]] / "adapter_config.json").is_file()
        if self.lora:
            from peft import PeftModel

            base = base or SPEC["base_model"]
            self.tok = AutoTokenizer.from_pretrained(base)
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            model = PeftModel.from_pretrained(model, folders[names[0]], adapter_name=names[0])
            for n in names[1:]:
                model.load_adapter(folders[n], adapter_name=n)
            self.models = {n: model for n in names}
        else:
            self.tok = AutoTokenizer.from_pretrained(folders[names[0]])
            self.models = {n: AutoModelForCausalLM.from_pretrained(f, dtype=torch.float32)
                           for n, f in folders.items()}
        self.models = {n: m.to(device).eval() for n, m in self.models.items()}
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        chat = SPEC["chat_template"]
        self.chat = self.tok.chat_template is not None if chat is None else chat

    def _model(self, name):
        model = self.models[name]
        if self.lora:
            model.set_adapter(name)
        return model

    def _ids(self, text):
        if self.chat:
            text = self.tok.apply_chat_template([{"role": "user", "content": text}],
                                                tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=not self.chat, return_tensors="pt").input_ids

    def _task_text(self, item):
        if "choices" not in item:
            return item["question"]
        choices = "\n".join(f"{k}: {v}" for k, v in item["choices"].items())
        if SPEC["mc_prompt"]:
            return SPEC["mc_prompt"].format(question=item["question"], choices=choices)
        return f"{MC_INSTRUCTION}\nQuestion: {item['question']}\n{choices}"

    @torch.inference_mode()
    def _generate(self, model, text, max_new_tokens):
        ids = self._ids(text).to(model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=self.tok.pad_token_id,
                             eos_token_id=self.tok.eos_token_id)
        return self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    @torch.inference_mode()
    def _letter(self, model, item):
        prompt = self._task_text(item)
        if self.chat:
            prompt = self.tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                  tokenize=False, add_generation_prompt=True)
        prompt += "The answer is" if self.chat else "\nThe answer is"
        ids = self.tok(prompt, add_special_tokens=not self.chat, return_tensors="pt").input_ids
        logp = torch.log_softmax(model(input_ids=ids.to(model.device)).logits[0, -1].float(), -1)
        letters = list(item["choices"])
        for form in (" {}", "{}"):
            toks = [self.tok.encode(form.format(x), add_special_tokens=False) for x in letters]
            if all(len(t) == 1 for t in toks):
                return letters[int(torch.argmax(logp[[t[0] for t in toks]]))]
        raise SystemExit("the option letters are not single tokens for this tokenizer")

    def answer(self, item):
        nodes = {node["id"]: node for node in SPEC["nodes"]}
        responses = {}
        for node_id in SPEC["order"]:
            node = nodes[node_id]
            preds = sorted(a for a, b in SPEC["edges"] if b == node_id)
            asked = dict(item)
            if preds:
                lines = "\n".join(SPEC["response_template"].format(k=k + 1, response=responses[p])
                                  for k, p in enumerate(preds))
                asked["question"] = SPEC["context_template"].format(question=item["question"],
                                                                    responses=lines)
            model = self._model(node["model"])
            if node_id != SPEC["end"] and SPEC["node_answers"] == "choice":
                letter = self._letter(model, asked)
                responses[node_id] = f"{letter}: {asked['choices'][letter]}"
            elif node_id != SPEC["end"]:
                text = SPEC["node_prompt"].format(question=self._task_text(asked))
                responses[node_id] = self._generate(model, text, SPEC["max_new_tokens"])
            elif "choices" in asked:
                answer = self._letter(model, asked)
            else:
                answer = self._generate(model, SPEC["qa_prompt"].format(**asked),
                                        SPEC["answer_tokens"])
        return {"answer": answer, "responses": responses}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("question", nargs="?")
    ap.add_argument("--choice", action="append", default=[], help="LETTER=text, repeatable")
    ap.add_argument("--items", help="a JSON-lines file of items")
    ap.add_argument("--base", help="the base model folder, if not where it was at export")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.items:
        lines = pathlib.Path(args.items).read_text().splitlines()
        items = [json.loads(line) for line in lines if line.strip()]
    elif args.question:
        item = {"question": args.question}
        if args.choice:
            item["choices"] = dict(c.split("=", 1) for c in args.choice)
        items = [item]
    else:
        ap.error("give a question or --items")
    system = System(args.base, args.device)
    for item in items:
        print(json.dumps(system.answer(item)), flush=True)


if __name__ == "__main__":
    main()
