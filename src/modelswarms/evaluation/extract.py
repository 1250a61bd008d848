"""Answers out of generated text.

The reference parser looked for a letter in the first five characters, so "Answer: C" read
as A; these extractors look for the answer where people write it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"


def extract_letter(text: str, letters: Sequence[str] = "ABCD") -> str | None:
    """The option letter a model chose, or None."""
    group = "".join(re.escape(x) for x in letters)
    patterns = (
        rf"answer\s*(?:is|:)?\s*(?:option\s*)?[(\[]?([{group}])\b",  # "the answer is (C)"
        rf"^\s*[(\[]?([{group}])(?:[)\].:,]|\s|$)",                   # "C: Paris", "(B) ..."
        rf"(?:option|choice)\s*[(\[]?([{group}])\b",
        rf"[(\[]([{group}])[)\]]",
        rf"(?<![\w'])([{group}])(?![\w'])",                          # a lone capital letter
    )
    for pattern in patterns:
        m = re.search(pattern, text, flags=re.IGNORECASE if pattern is patterns[0] else 0)
        if m:
            return m.group(1).upper()
    return None


def normalize_number(text: str) -> str | None:
    s = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(s)
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else repr(value)


def extract_number(text: str) -> str | None:
    """A GSM8K-style final answer: after '####' or 'answer is', else the last number."""
    for marker in (r"####\s*", r"answer\s*(?:is|:)\s*"):
        m = re.search(marker + f"({_NUMBER})", text, flags=re.IGNORECASE)
        if m:
            return normalize_number(m.group(1))
    numbers = re.findall(_NUMBER, text)
    return normalize_number(numbers[-1]) if numbers else None
