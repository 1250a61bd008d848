"""LLM judges: rate answers 1-10, as the Model Swarms paper does for its human-interest tasks.

Two kinds: any OpenAI-compatible chat-completions endpoint (standard library only) and a local
Hugging Face causal LM. Both share an on-disk rating cache, so a particle whose answers did not
change since the last iteration costs no request. The endpoint's API key lives only in the
environment variable the config names; it is read per call and never stored on the judge.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ...config import StrictModel
from ...errors import ConfigError
from ...models import cache_dir, resolve_model
from ..data.prompts import encode, render, uses_chat
from ..engine import generation
from ..engine.backend import load_causal_lm, load_tokenizer, pick_device, pick_dtype


class JudgeConfig(StrictModel):
    """An LLM that rates answers 1-10: a local Hugging Face chat model or any
    OpenAI-compatible chat-completions endpoint. The API key is never part of the config:
    `api_key_env` names the environment variable that holds it."""

    kind: Literal["endpoint", "local"] = Field(
        "endpoint", description="endpoint: an OpenAI-compatible server; local: a Hugging Face "
        "chat model run here")
    model: str = Field(description="endpoint model name, or a local folder / hub id / smollm2")
    base_url: str | None = Field(None, description="endpoint base URL, e.g. http://host:8000/v1")
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    retries: int = Field(3, ge=0, description="retries after a failed or timed-out request")
    backoff: float = Field(1.0, ge=0, description="first retry delay in seconds; doubles")
    max_tokens: int = Field(64, ge=1, description="tokens the judge may write")
    cache_dir: str | None = Field(
        None, description="on-disk rating cache; default $MODELSWARMS_CACHE/judge")
    on_failure: Literal["exclude", "lowest", "error"] = Field(
        "exclude", description="a failed, timed-out or unparseable rating: left out of the "
        "mean, counted as the lowest rating, or stops the run; always counted in the report")
    template: str | None = Field(
        None, description="judge prompt with {topic}, {prompt}, {answer}")

    @model_validator(mode="after")
    def _endpoint_needs_url(self) -> JudgeConfig:
        if self.kind == "endpoint" and not self.base_url:
            raise ValueError("judge.base_url is required for an endpoint judge")
        return self


log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = (
    "Please act as an impartial judge and evaluate how well the response below serves "
    "someone interested in {topic}: is it relevant, helpful, accurate and engaging for them?\n\n"
    "[Instruction]\n{prompt}\n\n[Response]\n{answer}\n\n"
    "Rate the response on a scale of 1 to 10. End your reply with the rating in exactly this "
    'format: "Rating: ?/10", where ? is a whole number from 1 to 10.'
)
DEFAULT_TOPIC = "the subject of the instruction"
STATUSES = ("ok", "cached", "failed", "timeout", "unparseable")

_HEAD = re.compile(r"\brating\s*\**\s*:", re.IGNORECASE)
# After the head: optional markdown/brackets, the number, optional closing brackets and "/10".
_VALUE = re.compile(r"[\s*\[]*(\d+(?:\.\d+)?)\s*\]*\s*(?:/\s*(\d+))?")


def parse_rating(text: str) -> int | None:
    """The whole number 1..10 after the last "Rating:" in `text`, else None.

    Only the last head counts, so numbers a judge mentions while reasoning ("I'd say 9, but
    ...") never leak in. Fractions and other scales ("7.5", "7/100") are refused rather than
    guessed at, and are counted as unparseable.
    """
    heads = list(_HEAD.finditer(text))
    if not heads:
        return None
    m = _VALUE.match(text, heads[-1].end())
    if m is None or "." in m[1] or m[2] not in (None, "10"):
        return None
    value = int(m[1])
    return value if 1 <= value <= 10 else None


@dataclass(frozen=True)
class Rating:
    value: int | None  # 1..10 when status is "ok" or "cached"
    status: str        # one of STATUSES
    detail: str = ""   # why it failed, for error messages and logs


class RatingCache:
    """sqlite, so it survives runs and concurrent processes; a connection per call, so threads
    never share one."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "ratings.sqlite"
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.execute("CREATE TABLE IF NOT EXISTS ratings (key TEXT PRIMARY KEY, value INTEGER)")
            db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, int]:
        keys, found = list(dict.fromkeys(keys)), {}
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            for i in range(0, len(keys), 500):  # under sqlite's bound-parameter limit
                chunk = keys[i : i + 500]
                rows = db.execute("SELECT key, value FROM ratings WHERE key IN "
                                  f"({','.join('?' * len(chunk))})", chunk)
                found.update(rows)
        return found

    def put(self, key: str, value: int) -> None:
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.execute("INSERT OR REPLACE INTO ratings VALUES (?, ?)", (key, value))
            db.commit()


class Judge:
    """Common part: templating, de-duplication and the cache. Subclasses rate judge prompts."""

    kind = ""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.template = cfg.template or DEFAULT_TEMPLATE
        try:
            self.template.format(topic="", prompt="", answer="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"judge.template: use only {{topic}}, {{prompt}} and {{answer}} "
                              f"({type(err).__name__}: {err})") from None
        folder = Path(cfg.cache_dir) if cfg.cache_dir else cache_dir() / "judge"
        self.cache = RatingCache(folder)
        # Any change to who judges, or how they are asked, must miss the cache.
        self.identity = [self.kind, cfg.base_url, cfg.model, self.template]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.cfg.model!r}, base_url={self.cfg.base_url!r})"

    def _key(self, topic: str, prompt: str, answer: str) -> str:
        blob = json.dumps([*self.identity, topic, prompt, answer], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def rate_all(self, prompts: Sequence[str], answers: Sequence[str],
                 topic: str | None = None) -> list[Rating]:
        """One Rating per (prompt, answer), in order. Identical pairs are asked once."""
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        topic = topic or DEFAULT_TOPIC
        keys = [self._key(topic, p, a) for p, a in zip(prompts, answers, strict=True)]
        cached = self.cache.get_many(keys)
        todo: dict[str, str] = {}
        for k, p, a in zip(keys, prompts, answers, strict=True):
            if k not in cached and k not in todo:
                todo[k] = self.template.format(topic=topic, prompt=p, answer=a)
        fresh: dict[str, Rating] = {}
        if todo:
            order = list(todo)
            # Stored as each arrives, so an interrupted run keeps what it already paid for.
            for i, rating in self._rate_texts(list(todo.values())):
                fresh[order[i]] = rating
                if rating.status == "ok" and rating.value is not None:
                    self.cache.put(order[i], rating.value)
        return [Rating(cached[k], "cached") if k in cached else fresh[k] for k in keys]

    def _rate_texts(self, texts: list[str]) -> Iterator[tuple[int, Rating]]:
        """(index into texts, rating) pairs, in any order."""
        raise NotImplementedError


def rate_all(judge: Judge, prompts: Sequence[str], answers: Sequence[str],
             topic: str | None = None) -> list[Rating]:
    return judge.rate_all(prompts, answers, topic)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would resend the Authorization header to wherever a redirect points.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


def _reply_text(raw: bytes) -> str | None:
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class EndpointJudge(Judge):
    """Any OpenAI-compatible `POST {base_url}/chat/completions`, `cfg.concurrency` at a time."""

    kind = "endpoint"

    def __init__(self, cfg: JudgeConfig):
        super().__init__(cfg)
        self.url = (cfg.base_url or "").rstrip("/") + "/chat/completions"

    def _api_key(self) -> str | None:
        name = self.cfg.api_key_env
        if name is None:
            return None  # e.g. a local vLLM server without authentication
        key = os.environ.get(name)
        if not key:
            raise ConfigError(f"judge.api_key_env: the environment variable {name} is not set "
                              "or is empty")
        return key

    def _rate_texts(self, texts: list[str]) -> Iterator[tuple[int, Rating]]:
        key = self._api_key()
        pool = ThreadPoolExecutor(min(self.cfg.concurrency, len(texts)),
                                  thread_name_prefix="judge")
        try:
            futures = {pool.submit(self._request, t, key): i for i, t in enumerate(texts)}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _request(self, text: str, key: str | None) -> Rating:
        body = json.dumps({"model": self.cfg.model, "messages": [{"role": "user",
                           "content": text}], "max_tokens": self.cfg.max_tokens,
                           "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        rating = Rating(None, "failed", "not attempted")
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                delay = self.cfg.backoff * 2 ** (attempt - 1)
                log.info("judge %s: %s; retry %d/%d in %.3g s", self.url, rating.detail,
                         attempt, self.cfg.retries, delay)
                time.sleep(delay)
            rating, retry = self._attempt(body, headers)
            # A server could echo the header back; nothing returned or logged may carry it.
            rating = replace(rating, detail=_redact(rating.detail, key))
            if not retry:
                return rating
        log.warning("judge %s: %s after %d attempts", self.url, rating.detail,
                    self.cfg.retries + 1)
        return rating

    def _attempt(self, body: bytes, headers: dict[str, str]) -> tuple[Rating, bool]:
        """One request: (rating, whether another attempt may help)."""
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(req, timeout=self.cfg.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            err.close()
            # 429 and 5xx are the server's trouble and pass; other 4xx would fail again.
            return Rating(None, "failed", f"HTTP {err.code}"), err.code == 429 or err.code >= 500
        except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
            reason = getattr(err, "reason", err)
            if isinstance(reason, TimeoutError):
                return Rating(None, "timeout", f"no reply within {self.cfg.timeout} s"), True
            return Rating(None, "failed", f"{type(reason).__name__}: {reason}"), True
        reply = _reply_text(raw)
        if reply is None:
            return Rating(None, "unparseable", "not a chat-completions response"), False
        value = parse_rating(reply)
        if value is None:
            # temperature 0: asking again would get the same reply
            return Rating(None, "unparseable", f"no rating in {reply[-80:]!r}"), False
        return Rating(value, "ok"), False


class LocalJudge(Judge):
    """A Hugging Face causal LM (folder, hub id or "smollm2"), loaded on first use, greedy."""

    kind = "local"

    def __init__(self, cfg: JudgeConfig):
        super().__init__(cfg)
        self._loaded: tuple | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Sent to Ray actors with its utility: each loads the judge itself, on its own device.
        return {**self.__dict__, "_loaded": None, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def load(self) -> tuple:
        """(model, tokenizer), loaded on the first call (by one thread) and kept."""
        with self._lock:
            if self._loaded is None:
                source = resolve_model(self.cfg.model)
                device = pick_device("auto")
                self._loaded = (load_causal_lm(source, pick_dtype("auto", device), device),
                                load_tokenizer(source))
            return self._loaded

    def _rate_texts(self, texts: list[str]) -> Iterator[tuple[int, Rating]]:
        model, tok = self.load()
        chat = uses_chat(tok, None)
        prompts = [encode(tok, render(tok, t, chat), chat) for t in texts]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        outs = generation.generate(model, prompts, max_new_tokens=self.cfg.max_tokens,
                                   pad_id=pad, eos_id=tok.eos_token_id,
                                   batch_size=self.cfg.concurrency)[0]
        for i, ids in enumerate(outs):
            reply = tok.decode(ids, skip_special_tokens=True)
            value = parse_rating(reply)
            yield i, (Rating(value, "ok") if value is not None else
                      Rating(None, "unparseable", f"no rating in {reply[-80:]!r}"))


def build_judge(cfg: JudgeConfig) -> Judge:
    return EndpointJudge(cfg) if cfg.kind == "endpoint" else LocalJudge(cfg)
