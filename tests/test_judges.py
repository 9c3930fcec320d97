"""Judges: gold and score judges on toy scorers; the chat judge against a real HTTP server on loopback
that fakes an OpenAI-compatible /v1/chat/completions endpoint (normal, biased, failing, slow, garbage)."""
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tinyrlhf.errors import TinyRLHFError
from tinyrlhf.eval.judges import ChatJudge, GoldJudge, JudgeError, ScoreJudge, parse_verdict

FAST = dict(timeout=0.5, retries=2, backoff=0.01)  # keeps every failing case well under a second


class FakeTask:
    """Gold reward = number of 'good' words."""

    def gold_reward(self, prompt, completion):
        return completion.split().count("good")


def test_gold_and_score_judges():
    prompts = ["p"] * 3
    a = ["good good", "good", "bad"]
    b = ["good", "good", "good"]
    assert GoldJudge(FakeTask()).judge_many(prompts, a, b) == [1.0, 0.5, 0.0]
    calls = []

    def score_fn(ps, cs):  # a batched scorer: one call per side
        calls.append(len(cs))
        return [float(len(c)) for c in cs]

    assert ScoreJudge(score_fn).judge_many(prompts, a, b) == [1.0, 0.5, 0.0]
    assert calls == [3, 3]
    with pytest.raises(ValueError):
        GoldJudge(FakeTask()).judge_many(prompts, a, b[:2])


def test_parse_verdict():
    assert [parse_verdict(t) for t in ("A", " b. ", "[[tie]]", "Answer: B", "Response A is better.",
                                       "It's a tie.", "the answer is a bit long")] == \
        ["A", "B", "tie", "B", "A", "tie", None]


# -- the fake endpoint ---------------------------------------------------------------------------------

def _responses(body: dict) -> tuple[str, str]:
    text = body["messages"][-1]["content"]
    a = re.search(r"\[Response A\]\n(.*?)\n\[End of response A\]", text, re.S).group(1)
    b = re.search(r"\[Response B\]\n(.*?)\n\[End of response B\]", text, re.S).group(1)
    return a, b


def fair(body, state):
    """Prefers the response with more 'good' words, whichever position it is in."""
    a, b = _responses(body)
    na, nb = a.count("good"), b.count("good")
    return 200, {"choices": [{"message": {"role": "assistant", "content": "A" if na > nb else "B" if nb > na else "tie"}}]}


def always_a(body, state):
    return 200, {"choices": [{"message": {"content": "A"}}]}


def fail_twice(body, state):
    if state["n"] <= 2:
        return 500, "upstream overloaded"
    return fair(body, state)


def unauthorized(body, state):
    return 401, {"error": {"message": "Incorrect API key provided"}}


def slow(body, state):
    time.sleep(1.0)
    return always_a(body, state)


def chatty(body, state):
    return 200, {"choices": [{"message": {"content": "Both responses have merits and flaws."}}]}


def not_json(body, state):
    return 200, "<html>proxy login</html>"


@pytest.fixture
def server():
    """Start a loopback server with a given behaviour; yields (base_url, state) via a factory."""
    servers = []

    def start(behaviour):
        state = {"n": 0, "auth": [], "lock": threading.Lock()}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                with state["lock"]:
                    state["n"] += 1
                state["auth"].append(self.headers.get("Authorization"))
                assert self.path == "/v1/chat/completions"
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, reply = behaviour(body, state)
                data = (reply if isinstance(reply, str) else json.dumps(reply)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            def log_message(self, *args):  # keep pytest output clean
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", state

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


PROMPTS = ["Q1", "Q2", "Q3"]
A = ["good good answer", "meh", "good"]
B = ["good answer", "good answer", "good"]


def test_chat_judge_both_orders_and_key(server):
    url, state = server(fair)
    judge = ChatJudge(url, api_key="sk-test", **FAST)
    assert judge.judge_many(PROMPTS, A, B) == [1.0, 0.0, 0.5]
    assert state["n"] == 6  # both orders of each of the 3 pairs
    assert set(state["auth"]) == {"Bearer sk-test"}
    assert "sk-test" not in json.dumps(judge.settings())


def test_chat_judge_url_and_key_from_environment(server, monkeypatch):
    url, state = server(fair)
    monkeypatch.setenv("TINYRLHF_JUDGE_URL", url + "/v1/")  # '/v1' and a trailing slash are accepted
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert ChatJudge(workers=1, **FAST).judge_many(PROMPTS[:1], A[:1], B[:1]) == [1.0]
    assert state["auth"] == ["Bearer sk-env"] * 2
    monkeypatch.delenv("TINYRLHF_JUDGE_URL")
    with pytest.raises(JudgeError, match="TINYRLHF_JUDGE_URL"):
        ChatJudge()


def test_position_biased_judge_gives_ties(server):
    """A judge that always answers 'A' prefers a in the first order and b in the second: 0.5 each."""
    url, _ = server(always_a)
    assert ChatJudge(url, **FAST).judge_many(PROMPTS, A, B) == [0.5, 0.5, 0.5]


def test_retries_after_server_errors(server):
    url, state = server(fail_twice)
    judge = ChatJudge(url, workers=1, **FAST)  # 1 + 2 retries: the third attempt succeeds
    assert judge.judge_many(PROMPTS[:1], A[:1], B[:1]) == [1.0]
    assert state["n"] == 4  # 500, 500, 200 for the first order, 200 for the second
    url, state = server(fail_twice)
    with pytest.raises(JudgeError, match=r"HTTP 500: upstream overloaded \(tried 2 times\)"):
        ChatJudge(url, workers=1, timeout=0.5, retries=1, backoff=0.01).judge_many(PROMPTS[:1], A[:1], B[:1])


def test_unauthorized_fails_at_once_with_a_clear_message(server):
    url, state = server(unauthorized)
    with pytest.raises(JudgeError) as err:
        ChatJudge(url, api_key="sk-secret", workers=1, **FAST).judge_many(PROMPTS, A, B)
    msg = str(err.value)
    assert state["n"] == 1 and isinstance(err.value, TinyRLHFError)
    assert url in msg and "HTTP 401" in msg and "Incorrect API key" in msg and "OPENAI_API_KEY" in msg
    assert "sk-secret" not in msg and "\n" not in msg


def test_slow_server_times_out_after_retries(server):
    url, state = server(slow)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"timed out after 0.2 s \(tried 2 times\)"):
        ChatJudge(url, timeout=0.2, retries=1, backoff=0.01, workers=1).judge_many(PROMPTS[:1], A[:1], B[:1])
    assert state["n"] == 2 and time.monotonic() - start < 1.0


def test_unreachable_endpoint_names_the_url():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeError) as err:
        ChatJudge(f"http://127.0.0.1:{port}", **FAST).judge_many(PROMPTS, A, B)
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}/v1/chat/completions is unreachable" in msg and "tried 3 times" in msg


def test_garbage_replies(server):
    url, _ = server(chatty)
    with pytest.raises(JudgeError, match="gave no verdict"):
        ChatJudge(url, **FAST).judge_many(PROMPTS, A, B)
    assert ChatJudge(url, on_unparsable="tie", **FAST).judge_many(PROMPTS, A, B) == [0.5, 0.5, 0.5]
    url, _ = server(not_json)
    with pytest.raises(JudgeError, match="not JSON"):
        ChatJudge(url, **FAST).judge_many(PROMPTS, A, B)
    with pytest.raises(JudgeError, match="not an http"):
        ChatJudge("127.0.0.1:8000")
