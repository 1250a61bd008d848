"""One vocabulary for experts whose tokenizers differ (the token-level ensembling of GaC).

Every token of every expert is normalised to the bytes it stands for: SentencePiece's space
marker '▁' is a space, byte-level BPE's printable stand-ins ('Ġ' for a space, 'Ċ' for a
newline, ...) are mapped back to their bytes, byte-fallback tokens '<0xNN>' are that byte, and
the special tokens that end or pad a sequence are one shared entry each. The union of these
byte strings is the mixture's vocabulary; each expert has a map from its ids into it, so its
next-token distribution scatters onto the union. A union token chosen by the mixture is fed
to an expert as its own token when it has one, else as the longest-match split of its bytes
into the expert's tokens (always possible when the expert can spell every byte).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from ..errors import ExpertError

BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
EOS, PAD = "<|eos|>", "<|pad|>"  # the shared entries of every expert's end and padding tokens


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character -> the byte it stands for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    codes = list(printable)
    for b in range(256):
        if b not in printable:
            codes.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(codes, chars, strict=True)}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in repr(backend.decoder)


def token_keys(tokenizer: Any) -> list[bytes | str]:
    """Each id's key in the union: the bytes it stands for, or a shared special entry."""
    return _keys(tokenizer)[0]


def _keys(tokenizer: Any) -> tuple[list[bytes | str], set[int]]:
    """(token_keys, the ids of byte-fallback tokens '<0xNN>')."""
    byte_level = _is_byte_level(tokenizer)
    fallback: set[int] = set()
    decoder = _byte_level_decoder()
    specials = {tokenizer.eos_token_id: EOS}
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in specials:
        specials[tokenizer.pad_token_id] = PAD
    special_ids = set(getattr(tokenizer, "all_special_ids", []))
    keys: list[bytes | str] = []
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in specials:
            keys.append(specials[i])
        elif i in special_ids or tok is None:
            keys.append(f"<|special:{tok}|>")  # other specials stay the expert's own
        elif m := BYTE_TOKEN.match(tok):
            keys.append(bytes([int(m.group(1), 16)]))
            fallback.add(i)
        elif byte_level and all(c in decoder for c in tok):
            keys.append(bytes(decoder[c] for c in tok))
        else:
            keys.append(tok.replace("▁", " ").encode("utf-8"))
    return keys, fallback


@dataclass
class ExpertVocab:
    """One expert's place in the union vocabulary."""

    name: str
    to_union: torch.Tensor            # (its vocabulary,) -> union id
    ids: dict[bytes, int] = field(repr=False)  # its token for a byte string (the first id)
    longest: int                      # bytes in its longest token
    eos_id: int

    def encode(self, data: bytes) -> list[int]:
        """Its tokens spelling `data`: greedy longest match (exact bytes, not necessarily the
        tokenizer's own segmentation)."""
        out, i = [], 0
        while i < len(data):
            for j in range(min(len(data), i + self.longest), i, -1):
                if (tok := self.ids.get(data[i:j])) is not None:
                    out.append(tok)
                    i = j
                    break
            else:
                raise ExpertError(f"{self.name}: its vocabulary cannot spell byte "
                                  f"0x{data[i]:02x} (no byte fallback); the mixture cannot "
                                  "feed it the other experts' text")
        return out


@dataclass
class UnionVocab:
    keys: list[bytes | str]
    index: dict[bytes | str, int]
    experts: list[ExpertVocab]

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def eos(self) -> int:
        return self.index[EOS]

    def text_bytes(self, union_ids: list[int]) -> bytes:
        """The bytes of a union-token sequence (specials spell nothing)."""
        return b"".join(k for i in union_ids if isinstance(k := self.keys[i], bytes))


def align(named_tokenizers: list[tuple[str, Any]]) -> UnionVocab:
    """The union vocabulary of several experts' tokenizers (first seen, first numbered)."""
    keys: list[bytes | str] = []
    index: dict[bytes | str, int] = {}
    experts = []
    for name, tok in named_tokenizers:
        if tok.eos_token_id is None:
            raise ExpertError(f"{name}: its tokenizer has no end-of-sequence token; a mixture "
                              "cannot tell when its generations end")
        own, fallback = _keys(tok)
        ids: dict[bytes, int] = {}
        for i, k in enumerate(own):
            if k not in index:
                index[k] = len(keys)
                keys.append(k)
            # a byte's own token rather than its fallback '<0xNN>' (SentencePiece numbers the
            # fallbacks first): the model has rarely seen a fallback where the byte has a
            # token, and fed one it drifts (Gemma 3 continued '.' as '...')
            if isinstance(k, bytes) and k and (k not in ids or ids[k] in fallback):
                ids[k] = i
        experts.append(ExpertVocab(name, torch.tensor([index[k] for k in own]), ids,
                                   max((len(k) for k in ids), default=1), tok.eos_token_id))
    for e, (name, _) in zip(experts, named_tokenizers, strict=True):
        others = [o for o in experts if o is not e]
        shared = sum(1 for k in e.ids if any(k in o.ids for o in others))
        if others and shared == 0:
            raise ExpertError(f"{name}: its vocabulary shares no token with the other "
                              "experts'; their distributions cannot be mixed")
    return UnionVocab(keys, index, experts)
