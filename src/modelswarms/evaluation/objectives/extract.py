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
        (rf"answer\s*(?:is|:)?\s*(?:option\s*)?[(\[]?([{group}])\b", re.IGNORECASE),
        (rf"(?:option|choice)\s*[(\[]?([{group}])\b", re.IGNORECASE),  # "option b"
        (rf"^\s*[(\[]?([{group}])(?:[)\].:,]|\s*$)", 0),                 # "C: Paris", "(B)"
        (rf"[(\[]([{group}])[)\]]", 0),
    )
    for pattern, flags in patterns:
        m = re.search(pattern, text, flags=flags)
        if m:
            return m.group(1).upper()
    for m in re.finditer(rf"(?<![\w'])([{group}])(?![\w'])", text):  # a lone capital letter
        # ...that is not the article in "A good guess is C"
        if not (m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end():])):
            return m.group(1)
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
