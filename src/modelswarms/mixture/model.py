"""A mixture of experts of any architecture, composed at their output.

Every expert stays resident with its own tokenizer. The mixture works on text: a prompt is
given to each expert as its own tokens, and

- next-token distributions mix in the union vocabulary (vocab.py):
  p(t | x) = sum_i w_i p_i(t | x), each p_i scattered onto the union;
- the log-likelihood of a continuation is a mixture of sequence likelihoods:
  log sum_i w_i p_i(c | x), each p_i(c | x) computed with expert i's own tokens of c. Token-
  level mixing would need the experts' token boundaries to agree, which they do not; the
  sequence mixture is what the mixture model assigns to the whole string, it is exact for a
  one-hot mixture, and it needs no alignment at all;
- greedy generation picks the union token of highest mixture probability and feeds it to each
  expert as its own tokens (vocab.ExpertVocab.encode), one key/value cache per expert, rows
  batched (a token that is several tokens for an expert is fed as a left-padded chunk).

Utilities run on a mixture unchanged: `MixtureLM` is what they get as the model and
`UnionTokenizer` as the tokenizer; the scoring helpers of evaluation/engine/generation.py see a
mixture and call the methods below.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..evaluation.engine import generation
from ..evaluation.engine.batching import cache_kwarg
from ..evaluation.engine.batching import pad as pad_rows
from ..evaluation.engine.generation import fits_context
from .vocab import PAD, UnionVocab, align


class UnionTokenizer:
    """The tokenizer utilities see: text in the first expert's tokens, as union ids."""

    def __init__(self, mixture: MixtureLM):
        self.mixture = mixture
        first = mixture.tokenizers[0]
        self._first, self._map = first, mixture.vocab.experts[0].to_union.tolist()
        templates = {getattr(t, "chat_template", None) for t in mixture.tokenizers}
        # One chat format for every expert, or none: a prompt rendered for one expert is text
        # the others would read as plain words.
        self.chat_template = templates.pop() if len(templates) == 1 else None
        self.eos_token_id = mixture.vocab.eos
        self.pad_token_id = mixture.vocab.index.get(PAD, self.eos_token_id)

    def __len__(self) -> int:
        return len(self.mixture.vocab)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self._map[i] for i in self._first.encode(
            text, add_special_tokens=add_special_tokens)]

    def __call__(self, text: str, add_special_tokens: bool = True, **_: Any) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.mixture.vocab.text_bytes(list(ids)).decode("utf-8", errors="replace")

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        if self.chat_template is None:
            raise ConfigError("the mixture's experts do not share one chat template; set "
                              "utility.chat_template: false")
        return self._first.apply_chat_template(*args, **kwargs)


class MixtureLM:
    """Experts (name, model, tokenizer) of any architectures, mixed with `weights`."""

    is_mixture = True

    def __init__(self, experts: Sequence[tuple[str, Any, Any]], batch_size: int = 16):
        if len(experts) < 1:
            raise ConfigError("a mixture needs at least one expert")
        self.names = [n for n, _, _ in experts]
        self.models = [m for _, m, _ in experts]
        self.tokenizers = [t for _, _, t in experts]
        self.vocab: UnionVocab = align(list(zip(self.names, self.tokenizers, strict=True)))
        self.device = next(self.models[0].parameters()).device
        self.weights = torch.full((len(experts),), 1.0 / len(experts), dtype=torch.float64)
        self.batch_size = batch_size
        self.tokenizer = UnionTokenizer(self)
        # An expert's scores of given texts do not depend on the mixing weights: computed once,
        # every further mixture of them is arithmetic (a token swarm over log-likelihood
        # utilities runs each expert once per item set).
        self._memo: dict[tuple, Any] = {}
        self.config = getattr(self.models[0], "config", None)
        # Greedy generation, per expert name: chosen tokens fed to it, and how many of them
        # were not one token of its own vocabulary (spelled in several of its tokens, or
        # another expert's special fed as its end of text): the cost of the tokenizers
        # differing.
        self.fed: Counter = Counter()

    @property
    def n(self) -> int:
        return len(self.models)

    def set_weights(self, weights: torch.Tensor | Sequence[float]) -> None:
        """Mixing weights: non-negative, not all zero; normalised to sum to one."""
        w = torch.as_tensor(weights, dtype=torch.float64).flatten().cpu()
        if w.shape != (self.n,) or not torch.isfinite(w).all() or (w < 0).any() \
                or float(w.sum()) <= 0:
            raise ValueError(f"mixture weights must be {self.n} non-negative numbers, not all "
                             f"zero; got {w.tolist()}")
        self.weights = w / w.sum()

    # -------------------------------------------------------------- each expert's own tokens
    def _own(self, i: int, data: bytes, specials: bool = True) -> list[int]:
        ids = self._own_ids(i, data, specials)
        fits_context(self.models[i], [len(ids) + 1])
        return ids

    def _own_ids(self, i: int, data: bytes, specials: bool = True) -> list[int]:
        """Expert i's tokens of `data`: its tokenizer's own segmentation when the bytes are
        whole characters, else the byte-exact split."""
        try:
            return self.tokenizers[i].encode(data.decode("utf-8"), add_special_tokens=specials)
        except UnicodeDecodeError:
            return self.vocab.experts[i].encode(data)

    def reads(self, ids: Sequence[int]) -> tuple[int, int | None, str]:
        """The longest a row of union `ids` is in any expert's own tokens (as `_own` counts
        it while scoring), that expert's limit, and its name; each expert reads the text in
        its own tokens, so one with a shorter context or a finer vocabulary may not fit."""
        data = self.vocab.text_bytes(list(ids))
        worst = (0, None, "the model")
        for i, model in enumerate(self.models):
            limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
            if not isinstance(limit, int):
                continue
            n = len(self._own_ids(i, data)) + 1
            if worst[1] is None or n - limit > worst[0] - worst[1]:
                worst = (n, limit, f"expert {self.names[i]}")
        return worst

    def _batches(self, n: int) -> list[range]:
        size = max(1, self.batch_size)
        return [range(s, min(n, s + size)) for s in range(0, n, size)]

    @torch.inference_mode()
    def _last_logprobs(self, i: int, rows: list[list[int]]) -> torch.Tensor:
        """(rows, its vocabulary) log-probabilities after each row, as float32."""
        model, tok = self.models[i], self.tokenizers[i]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids, mask = pad_rows(rows, pad, left=True, device=self.device)
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                       logits_to_keep=1).logits[:, -1, : len(tok)]
        return torch.log_softmax(logits.float(), dim=-1)

    def _scatter(self, i: int, logp: torch.Tensor) -> torch.Tensor:
        """Expert i's probabilities (rows, its vocabulary) on the union vocabulary."""
        out = torch.zeros(logp.shape[0], len(self.vocab), dtype=torch.float64,
                          device=logp.device)
        index = self.vocab.experts[i].to_union.to(logp.device).expand(logp.shape[0], -1)
        return out.scatter_add_(1, index, logp.double().exp())

    # -------------------------------------------------------------------------- mixing
    def next_token_probs(self, prompts: Sequence[bytes], memo: bool = True) -> torch.Tensor:
        """(prompts, union vocabulary) mixture probabilities of the next token. `memo=False`
        for prompts seen once (distillation's prefixes): each kept distribution is a row of
        the whole union vocabulary, in float64."""
        out = torch.zeros(len(prompts), len(self.vocab), dtype=torch.float64,
                          device=self.device)
        for i in range(self.n):
            w = float(self.weights[i])
            if w == 0.0:
                continue
            out += w * self._expert_next(i, tuple(prompts), memo)
        return out

    def _expert_next(self, i: int, prompts: tuple[bytes, ...], memo: bool = True
                     ) -> torch.Tensor:
        key = ("next", i, prompts)
        if key in self._memo:
            return self._memo[key]
        probs = torch.cat([self._scatter(i, self._last_logprobs(
            i, [self._own(i, prompts[j]) for j in batch]))
            for batch in self._batches(len(prompts))])
        if memo:
            self._memo[key] = probs
        return probs

    @torch.inference_mode()
    def continuation_logprobs(self, prompts: Sequence[bytes],
                              continuations: Sequence[Sequence[bytes]]) -> list[list[float]]:
        """[prompt][continuation]: log sum_i w_i p_i(continuation | prompt)."""
        per_expert = []
        active = [i for i in range(self.n) if float(self.weights[i]) > 0]
        for i in active:
            per_expert.append(self._expert_continuations(i, prompts, continuations))
        log_w = self.weights[active].log()
        out = []
        for j, conts in enumerate(continuations):
            row = []
            for c in range(len(conts)):
                lls = torch.tensor([per_expert[a][j][c] for a in range(len(active))],
                                   dtype=torch.float64)
                row.append(float(torch.logsumexp(lls + log_w, 0)))
            out.append(row)
        return out

    def _expert_continuations(self, i: int, prompts: Sequence[bytes],
                              continuations: Sequence[Sequence[bytes]]) -> list[list[float]]:
        key = ("cont", i, tuple(prompts), tuple(tuple(c) for c in continuations))
        if key not in self._memo:
            self._memo[key] = self._score_continuations(i, prompts, continuations)
        return self._memo[key]

    def _score_continuations(self, i: int, prompts: Sequence[bytes],
                             continuations: Sequence[Sequence[bytes]]) -> list[list[float]]:
        tok = self.tokenizers[i]
        own_prompts, own_conts = [], []
        for p, conts in zip(prompts, continuations, strict=True):
            head = self._own(i, p)
            own_prompts.append(head)
            # the continuation's tokens: those of prompt + continuation beyond the prompt's,
            # so a word is split as the expert splits it in context
            own_conts.append([self._tail(i, p, head, c) for c in conts])
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        # each prompt once for all of its continuations, as a single model scores options
        return generation.option_logprobs(
            self.models[i], own_prompts, own_conts, pad_id=pad, batch_size=self.batch_size)[0]

    def _tail(self, i: int, prompt: bytes, head: list[int], cont: bytes) -> list[int]:
        whole = self._own(i, prompt + cont)
        if whole[: len(head)] == head and len(whole) > len(head):
            return whole[len(head):]
        return self._own(i, cont, specials=False) or self.vocab.experts[i].encode(cont)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[bytes], max_new_tokens: int) -> list[list[int]]:
        """Greedy union tokens after each prompt, cut at the first end of sequence."""
        out: list[list[int]] = []
        for batch in self._batches(len(prompts)):
            out += self._generate_batch([prompts[j] for j in batch], max_new_tokens)
        return out

    def _generate_batch(self, prompts: list[bytes], max_new: int) -> list[list[int]]:
        from transformers import DynamicCache

        active = [i for i in range(self.n) if float(self.weights[i]) > 0]
        b = len(prompts)
        states = []  # per expert: cache, attention mask so far, next position per row
        pending: list[list[list[int]]] = []  # per expert, per row: tokens to feed next
        for i in active:
            tok = self.tokenizers[i]
            states.append({"cache": DynamicCache(config=self.models[i].config),
                           "mask": torch.zeros(b, 0, dtype=torch.long, device=self.device),
                           "pos": torch.zeros(b, dtype=torch.long, device=self.device),
                           "pad": tok.pad_token_id if tok.pad_token_id is not None
                           else tok.eos_token_id})
            pending.append([self._own(i, p) for p in prompts])
        done = [False] * b
        result: list[list[int]] = [[] for _ in range(b)]
        eos = self.vocab.eos
        for step in range(max_new):
            probs = torch.zeros(b, len(self.vocab), dtype=torch.float64, device=self.device)
            for a, i in enumerate(active):
                logp = self._feed(i, states[a], pending[a])
                probs += float(self.weights[i]) * self._scatter(i, logp)
            choice = probs.argmax(-1).tolist()
            for r, t in enumerate(choice):
                if done[r]:
                    continue
                if t == eos:
                    done[r] = True
                else:
                    result[r].append(t)
            if all(done) or step == max_new - 1:
                break
            for a, i in enumerate(active):
                ev = self.vocab.experts[i]
                pending[a] = [[ev.eos_id] if done[r] else self._as_own(i, choice[r])
                              for r in range(b)]
                live = [r for r in range(b) if not done[r]]
                self.fed[(self.names[i], "tokens")] += len(live)
                self.fed[(self.names[i], "retokenised")] += sum(
                    1 for r in live if not self._is_own(i, choice[r]))
        return result

    def _is_own(self, i: int, union_id: int) -> bool:
        """Whether the union token is one token of expert i (fed unchanged)."""
        key = self.vocab.keys[union_id]
        return isinstance(key, bytes) and key in self.vocab.experts[i].ids

    def _as_own(self, i: int, union_id: int) -> list[int]:
        key = self.vocab.keys[union_id]
        ev = self.vocab.experts[i]
        if isinstance(key, bytes):
            return ev.encode(key)
        return [ev.eos_id]  # a special token of another expert: this one's end of text

    def _feed(self, i: int, state: dict, rows: list[list[int]]) -> torch.Tensor:
        """Append each row's tokens (a left-padded chunk) to expert i's cache; its
        log-probabilities after each row's last token."""
        ids, chunk_mask = pad_rows(rows, state["pad"], left=True, device=self.device)
        mask = torch.cat([state["mask"], chunk_mask], dim=1)
        positions = state["pos"][:, None] + (chunk_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.models[i](input_ids=ids, attention_mask=mask, position_ids=positions,
                             use_cache=True, logits_to_keep=1,
                             **{cache_kwarg(self.models[i]): state["cache"]})
        state["mask"], state["pos"] = mask, state["pos"] + chunk_mask.sum(-1)
        logits = out.logits[:, -1, : len(self.tokenizers[i])]
        return torch.log_softmax(logits.float(), dim=-1)
