"""LLM judges against real HTTP servers on 127.0.0.1, and the human_interest utility."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelswarms.config import utility_config
from modelswarms.errors import ConfigError, UtilityError
from modelswarms.evaluation.engine import generation
from modelswarms.evaluation.objectives.judges import (
    EndpointJudge,
    JudgeConfig,
    LocalJudge,
    Rating,
    build_judge,
    parse_rating,
    rate_all,
)
from modelswarms.evaluation.objectives.utilities import build_utility
from modelswarms.testing import make_utility

KEY_ENV = "MODELSWARMS_TEST_JUDGE_KEY"
SECRET = "sk-test-S3CRET-4242"

Script = Callable[[str, int, str], tuple[int, bytes, float]]


def _reply(text: str, delay: float = 0.0) -> tuple[int, bytes, float]:
    body = {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}]}
    return 200, json.dumps(body).encode(), delay


def scripted(content: str, attempt: int, auth: str) -> tuple[int, bytes, float]:
    """The scripted rater: markers in the judge prompt pick a behaviour; otherwise "item-K"
    gets rating K, behind a decoy number that a careless parser would take."""
    if "FAIL" in content:
        return 500, b'{"error": "down"}', 0.0
    if "FLAKY" in content and attempt == 1:
        return 503, b"", 0.0
    if "LIMIT" in content and attempt == 1:
        return 429, b"", 0.0
    if "BADREQ" in content:
        return 400, b'{"error": "bad request"}', 0.0
    if "SLOW" in content:
        return _reply("Rating: 9/10", delay=3.0)
    if "BADJSON" in content:
        return 200, b"{not json", 0.0
    if "GARBLE" in content:
        return _reply("A fine answer, eight out of ten.")
    if "ECHO" in content:
        return _reply(f"you sent {auth}")
    m = re.search(r"item-(\d+)", content)
    return _reply(f"I'd have said 9 at first. Rating: {m[1] if m else 5}/10")


class FakeJudgeServer:
    """A chat-completions server in a thread, recording what it was sent."""

    def __init__(self, script: Script = scripted, delay: float = 0.0):
        self.script, self.delay = script, delay
        self.requests: list[tuple[str, str | None, dict]] = []  # (path, auth header, payload)
        self.attempts: Counter = Counter()
        self.active = self.max_active = 0
        self.lock, self.stop = threading.Lock(), threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.handle(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        # a short poll interval: shutdown() waits up to one interval
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        payload = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        content = payload["messages"][0]["content"]
        auth = h.headers.get("Authorization")
        with self.lock:
            self.requests.append((h.path, auth, payload))
            self.attempts[content] += 1
            attempt = self.attempts[content]
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        status, body, delay = self.script(content, attempt, auth or "")
        self.stop.wait(delay + self.delay)
        with self.lock:  # before replying: the client may send its next request at once
            self.active -= 1
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:  # the client gave up (timeout)
            pass

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def server():
    s = FakeJudgeServer()
    yield s
    s.close()


def judge_cfg(url: str, tmp_path, **kw) -> JudgeConfig:
    fields = dict(kind="endpoint", model="judge-1", base_url=url, api_key_env=KEY_ENV,
                  timeout=2.0, retries=2, backoff=0.01, max_tokens=32,
                  cache_dir=str(tmp_path / "judge-cache"))
    return JudgeConfig(**(fields | kw))


# --- parse_rating -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("Rating: 7/10", 7),
    ("Great answer.\nRating: 10/10", 10),
    ("Rating: 1/10", 1),
    ("Rating: [[7]]", 7),
    ("rating: 7 / 10", 7),
    ("Rating: 7", 7),
    ("**Rating:** 6/10", 6),
    ("Answer: C is correct, 42 points. Rating: 3/10", 3),
    ("I'd say 9 but Rating: 4/10", 4),
    ("Rating: 8/10 at first; on reflection Rating: 2/10", 2),
    ("Rating: 11/10", None),
    ("Rating: 0/10", None),
    ("Rating: 7.5/10", None),
    ("Rating: 7/100", None),
    ("Rating: ?/10", None),
    ("Rating: 6/10 then the format: Rating: ?/10", None),  # the last head decides
    ("I give it 8/10.", None),
    ("", None),
])
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


# --- endpoint judge ---------------------------------------------------------------------------

def test_endpoint_rates_in_order_with_the_wire_format(server, tmp_path):
    judge = EndpointJudge(judge_cfg(server.url, tmp_path))
    prompts = [f"item-{k} question" for k in (3, 1, 4, 1, 5)]
    ratings = rate_all(judge, prompts, ["answer a", "answer b", "answer c", "answer d", "e"],
                       topic="finance")
    assert [r.value for r in ratings] == [3, 1, 4, 1, 5]
    assert {r.status for r in ratings} == {"ok"}
    path, auth, payload = server.requests[0]
    assert path == "/v1/chat/completions"
    assert auth == f"Bearer {SECRET}"
    assert payload["model"] == "judge-1"
    assert payload["max_tokens"] == 32 and payload["temperature"] == 0
    assert len(payload["messages"]) == 1 and payload["messages"][0]["role"] == "user"
    sent = {p["messages"][0]["content"] for _, _, p in server.requests}
    assert any("finance" in c and "item-3 question" in c and "answer a" in c
               and "Rating: ?/10" in c for c in sent)


def test_no_key_env_sends_no_authorization(server, tmp_path):
    judge = EndpointJudge(judge_cfg(server.url, tmp_path, api_key_env=None))
    assert judge.rate_all(["item-2"], ["a"])[0].value == 2
    assert server.requests[0][1] is None


def test_retries_recover_from_5xx_and_429(server, tmp_path):
    judge = EndpointJudge(judge_cfg(server.url, tmp_path, retries=1))
    ratings = judge.rate_all(["item-6 FLAKY", "item-7 LIMIT"], ["a", "b"])
    assert [(r.value, r.status) for r in ratings] == [(6, "ok"), (7, "ok")]
    assert sorted(server.attempts.values()) == [2, 2]


def test_always_failing_server_gives_failed_after_retries(server, tmp_path):
    judge = EndpointJudge(judge_cfg(server.url, tmp_path, retries=2))
    failed, bad_request = judge.rate_all(["FAIL", "BADREQ"], ["a", "b"])
    assert failed == Rating(None, "failed", "HTTP 500")
    assert bad_request == Rating(None, "failed", "HTTP 400")
    attempts = {("FAIL" in c): n for c, n in server.attempts.items()}
    assert attempts == {True: 3, False: 1}  # a 400 would fail again: not retried


def test_backoff_doubles(server, tmp_path):
    judge = EndpointJudge(judge_cfg(server.url, tmp_path, retries=2, backoff=0.1))
    start = time.monotonic()
    assert judge.rate_all(["FAIL"], ["a"])[0].status == "failed"
    assert time.monotonic() - start >= 0.3  # 0.1 + 0.2


def test_hanging_server_times_out(server, tmp_path):
    judge = EndpointJudge(judge_cfg(server.url, tmp_path, timeout=0.3, retries=1, backoff=0.0))
    start = time.monotonic()
    (rating,) = judge.rate_all(["item-1 SLOW"], ["a"])
    assert rating.status == "timeout" and rating.value is None
    assert time.monotonic() - start < 2.0
    assert sum(server.attempts.values()) == 2


def test_unreachable_server_fails(tmp_path):
    s = FakeJudgeServer()
    url = s.url
    s.close()  # nothing listens on the port any more
    judge = EndpointJudge(judge_cfg(url, tmp_path, retries=1, timeout=0.5))
    (rating,) = judge.rate_all(["item-1"], ["a"])
    assert rating.status in ("failed", "timeout") and rating.value is None
    assert rating.detail


def test_malformed_replies_are_unparseable_and_not_cached(server, tmp_path):
    judge = EndpointJudge(judge_cfg(server.url, tmp_path))
    ratings = judge.rate_all(["GARBLE", "BADJSON", "item-8"], ["a", "b", "c"])
    assert [r.status for r in ratings] == ["unparseable", "unparseable", "ok"]
    assert len(server.requests) == 3  # temperature 0: no point asking again
    again = judge.rate_all(["GARBLE", "BADJSON", "item-8"], ["a", "b", "c"])
    assert [r.status for r in again] == ["unparseable", "unparseable", "cached"]
    assert len(server.requests) == 5


def test_concurrency_limit_is_respected(tmp_path):
    s = FakeJudgeServer(delay=0.1)
    try:
        judge = EndpointJudge(judge_cfg(s.url, tmp_path, concurrency=3))
        ratings = judge.rate_all([f"item-{k}" for k in range(1, 10)], ["a"] * 9)
        assert [r.value for r in ratings] == list(range(1, 10))
        assert s.max_active == 3
    finally:
        s.close()


def test_cache_hits_make_no_request_and_survive_a_new_judge(server, tmp_path):
    cfg = judge_cfg(server.url, tmp_path)
    prompts, answers = ["item-2", "item-3", "FAIL"], ["a", "b", "c"]
    first = EndpointJudge(cfg).rate_all(prompts, answers)
    assert [r.status for r in first] == ["ok", "ok", "failed"]
    sent = len(server.requests)
    second = EndpointJudge(cfg).rate_all(prompts, answers)  # a new object: from disk
    assert [(r.value, r.status) for r in second[:2]] == [(2, "cached"), (3, "cached")]
    assert second[2].status == "failed"  # failures are not cached: asked again
    assert len(server.requests) == sent + cfg.retries + 1
    # another judge model, template or topic is another question
    before = len(server.requests)
    EndpointJudge(judge_cfg(server.url, tmp_path, model="judge-2")).rate_all(["item-2"], ["a"])
    EndpointJudge(judge_cfg(server.url, tmp_path, template="{prompt} {answer} Rating: ?/10")
                  ).rate_all(["item-2"], ["a"])
    EndpointJudge(cfg).rate_all(["item-2"], ["a"], topic="cooking")
    assert len(server.requests) == before + 3


def test_identical_pairs_are_asked_once(server, tmp_path):
    judge = EndpointJudge(judge_cfg(server.url, tmp_path))
    ratings = judge.rate_all(["item-4"] * 3 + ["item-4"], ["same"] * 3 + ["other"])
    assert [r.value for r in ratings] == [4, 4, 4, 4]
    assert len(server.requests) == 2


def test_api_key_never_leaks(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    judge = EndpointJudge(judge_cfg(server.url, tmp_path, retries=1))
    ratings = judge.rate_all(["ECHO", "FAIL", "item-5"], ["a", "b", "c"])
    assert server.requests[0][1] == f"Bearer {SECRET}"  # it did reach the server
    assert ratings[0].status == "unparseable" and "***" in ratings[0].detail
    dead = FakeJudgeServer()
    dead.close()
    unreachable = EndpointJudge(judge_cfg(dead.url, tmp_path / "2", retries=1, timeout=0.5))
    ratings += unreachable.rate_all(["item-1"], ["a"])
    texts = [repr(judge), repr(unreachable), repr(judge.cfg), repr(ratings), repr(vars(judge)),
             *(r.getMessage() for r in caplog.records), caplog.text]
    assert any("HTTP 500" in t for t in texts)  # the failures were logged...
    assert all(SECRET not in t for t in texts)  # ...without the key
    for db in (tmp_path / "judge-cache").iterdir():
        assert SECRET.encode() not in db.read_bytes()


def test_missing_key_variable_is_a_config_error(server, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    judge = EndpointJudge(judge_cfg(server.url, tmp_path))
    with pytest.raises(ConfigError, match=KEY_ENV):
        judge.rate_all(["item-1"], ["a"])
    assert server.requests == []


def test_bad_template_is_a_config_error(server, tmp_path):
    with pytest.raises(ConfigError, match="judge.template"):
        EndpointJudge(judge_cfg(server.url, tmp_path, template="{question} {answer}"))


# --- local judge ------------------------------------------------------------------------------

def test_local_judge_on_a_tiny_model(tiny_base, tmp_path, monkeypatch):
    cfg = JudgeConfig(kind="local", model=str(tiny_base), max_tokens=6,
                      template="{prompt}|{answer}|Rating:", cache_dir=str(tmp_path / "c"))
    judge = build_judge(cfg)
    assert isinstance(judge, LocalJudge)
    ratings = judge.rate_all(["2+2?", "3+3?"], ["4", "6"])  # a random model: gibberish
    assert [r.status for r in ratings] == ["unparseable", "unparseable"]

    _, tok = judge.load()
    calls = []

    def fake_generate(model, prompts, **kw):
        calls.append(len(prompts))
        return [[tok.encode(f"Rating: {len(p) % 10 + 1}/10", add_special_tokens=False)
                 for p in prompts]]

    monkeypatch.setattr(generation, "generate", fake_generate)
    expected = [len(tok.encode(f"{p}|{a}|Rating:")) % 10 + 1 for p, a in
                [("2+2?", "4"), ("30+30?", "60")]]
    ratings = judge.rate_all(["2+2?", "30+30?"], ["4", "60"])
    assert [(r.value, r.status) for r in ratings] == [(v, "ok") for v in expected]
    assert calls == [2]  # one batched call
    assert [r.status for r in judge.rate_all(["2+2?"], ["4"])] == ["cached"]
    assert calls == [2]


# --- human_interest utility -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tiny_base):
    from transformers import AutoModelForCausalLM

    from modelswarms.evaluation.engine.backend import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_base).eval(), load_tokenizer(str(tiny_base))


ITEMS = [{"id": "a", "prompt": "item-2 How do bonds work?"},
         {"id": "b", "prompt": "item-4 What is an index fund?"},
         {"id": "bad", "prompt": "GARBLE What is a stock?"},
         {"id": "c", "prompt": "item-6 Why diversify?"}]


def hi_cfg(url: str, tmp_path, policy: str, **judge):
    return utility_config(type="human_interest", topic="finance", max_new_tokens=4,
                         judge=judge_cfg(url, tmp_path, on_failure=policy, **judge))


def test_human_interest_policies_and_counts(server, tmp_path, tiny_model):
    model, tok = tiny_model
    excl = build_utility(hi_cfg(server.url, tmp_path, "exclude")).score(model, tok, ITEMS)
    assert excl.value == pytest.approx((0.2 + 0.4 + 0.6) / 3)
    assert excl.scores[:2] == pytest.approx([0.2, 0.4]) and math.isnan(excl.scores[2])
    assert excl.counts == {"judge_ok": 3, "judge_cached": 0, "judge_failed": 0,
                           "judge_timeout": 0, "judge_unparseable": 1}
    assert len(excl.predictions) == 4
    sent = [p["messages"][0]["content"] for _, _, p in server.requests]
    assert all("finance" in c for c in sent) and len(sent) == 4

    # same cache folder: the three good ratings now come from disk
    low = build_utility(hi_cfg(server.url, tmp_path, "lowest")).score(model, tok, ITEMS)
    assert low.value == pytest.approx((0.2 + 0.4 + 0.1 + 0.6) / 4)
    assert low.scores == pytest.approx([0.2, 0.4, 0.1, 0.6])
    assert low.counts["judge_cached"] == 3 and low.counts["judge_unparseable"] == 1
    assert low.counts["judge_ok"] == 0
    assert len(server.requests) == 5

    err = build_utility(hi_cfg(server.url, tmp_path, "error"))
    with pytest.raises(UtilityError, match=r"item bad\b.*unparseable"):
        err.score(model, tok, ITEMS)


def test_human_interest_failed_and_timeout_items(server, tmp_path, tiny_model):
    model, tok = tiny_model
    items = [{"id": "x", "prompt": "item-8 ok"}, {"id": "y", "prompt": "FAIL"},
             {"id": "z", "prompt": "SLOW"}]
    cfg = hi_cfg(server.url, tmp_path, "exclude", timeout=0.3, retries=0)
    result = build_utility(cfg).score(model, tok, items)
    assert result.value == pytest.approx(0.8)
    assert result.counts == {"judge_ok": 1, "judge_cached": 0, "judge_failed": 1,
                             "judge_timeout": 1, "judge_unparseable": 0}
    cfg = hi_cfg(server.url, tmp_path, "error", timeout=0.3, retries=0)
    with pytest.raises(UtilityError, match=r"item y\b.*failed.*HTTP 500"):
        build_utility(cfg).score(model, tok, items[:2])


def test_human_interest_none_rated(server, tmp_path, tiny_model):
    model, tok = tiny_model
    items = [{"id": "p", "prompt": "GARBLE one"}, {"id": "q", "prompt": "BADJSON two"}]
    result = build_utility(hi_cfg(server.url, tmp_path, "exclude")).score(model, tok, items)
    assert result.value == 0.0
    assert result.counts["judge_unparseable"] == 2
    assert result.counts["judge_ok"] + result.counts["judge_cached"] == 0


def test_human_interest_score_many_slices_particles(server, tmp_path, tiny_model):
    model, tok = tiny_model
    utility = build_utility(hi_cfg(server.url, tmp_path, "exclude"))
    # A plain model runs every particle row block identically: same answers, asked once.
    results = utility.score_many(model, tok, ITEMS, 2)
    assert len(results) == 2
    assert [r.predictions for r in results][0] == results[1].predictions
    assert results[0].value == pytest.approx(0.4) == results[1].value
    assert results[0].counts["judge_ok"] + results[1].counts["judge_ok"] == 6
    assert len(server.requests) == 4


def test_human_interest_needs_judge_and_topic(server, tmp_path):
    with pytest.raises(ConfigError, match="utility.judge"):
        make_utility(type="human_interest", topic="finance")
    with pytest.raises(ConfigError, match="utility.topic"):
        make_utility(type="human_interest",
                                    judge=judge_cfg(server.url, tmp_path))
