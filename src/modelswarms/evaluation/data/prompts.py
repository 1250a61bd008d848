"""Prompts of the Model Swarms paper, and chat templates where the model has one."""

from __future__ import annotations

from typing import Any

MC_INSTRUCTION = "Please choose an option that best answers the question."
QA_TEMPLATE = "Please answer the following question.\nQuestion: {question}\nAnswer:"
# Cloze scoring reads an option's text as the continuation of the question, with no lettered
# list (lm-evaluation-harness's `acc` / `acc_norm`); HellaSwag-like items whose question is the
# start of a sentence take the template "{question}".
CLOZE_TEMPLATE = "Question: {question}\nAnswer:"


def multiple_choice_prompt(item: dict[str, Any], template: str | None = None) -> str:
    """The paper's prompt; `template` may use {question} and {choices} (the lettered lines)."""
    choices = "\n".join(f"{k}: {v}" for k, v in item["choices"].items())
    if template:
        return template.format(question=item["question"], choices=choices)
    return f"{MC_INSTRUCTION}\nQuestion: {item['question']}\n{choices}"


def cloze_prompt(item: dict[str, Any], template: str | None = None) -> str:
    """The context an option's text continues; `template` may use {question}."""
    return (template or CLOZE_TEMPLATE).format(question=item["question"])


def cloze_continuation(text: str) -> str:
    """An option as scored after the context: one space, then its text (lm-eval's target
    delimiter), so BPE vocabularies see the word boundary they saw in training."""
    return " " + str(text).strip()


def qa_prompt(item: dict[str, Any], template: str | None = None) -> str:
    return (template or QA_TEMPLATE).format(**item)


def uses_chat(tokenizer: Any, chat_template: bool | None) -> bool:
    if chat_template is None:
        return getattr(tokenizer, "chat_template", None) is not None
    return chat_template


def render(tokenizer: Any, text: str, chat_template: bool | None) -> str:
    """The text a model sees: a user turn plus the assistant's opening when chatting."""
    if not uses_chat(tokenizer, chat_template):
        return text
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def encode(tokenizer: Any, text: str, chat: bool) -> list[int]:
    # A rendered chat already holds its special tokens; plain text gets the tokenizer's own.
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]
