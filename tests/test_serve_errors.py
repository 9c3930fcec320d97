"""Bad input, overload, disconnects and timeouts against a real uvicorn server: every bad request answers
4xx with OpenAI's error object naming the field (never a 500), the server keeps serving, a full queue
answers 429 with Retry-After, a client that leaves stops its generation, and a slow request times out.

BAD is the corpus of request bodies (the issue "Servers and stores that survive what arrives" among them:
lone surrogates in prompt, chat content and model name, a 5,000-digit seed and JSON nested 100k deep were
500s; temperature 1e-38 failed its whole batch). Content type, body size and access are in
test_serve_hygiene.py and test_serve_access.py."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from serve_util import make_app, running, tiny_model_dir, wait_until
from tinyrlhf.serve.config import HTTPConfig
from serve_util import one_thread  # noqa: F401 (the module's pytestmark fixture)

LONG = "the quick brown fox jumps over the lazy dog " * 40  # far more than 256 tokens


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("serve-errors") / "tiny")


@pytest.fixture(scope="module")
def server(model_dir):
    # bodies up to 3 MiB here, so that the 1 MiB bound on prompt text is what refuses a 1 MiB message
    app = make_app({"tiny": model_dir}, HTTPConfig(max_body_bytes=3 << 20), max_batch=4, queue_size=4)
    with running(app) as url:
        yield url, app


C, X = "/v1/completions", "/v1/chat/completions"


def raw(text: str) -> bytes:
    return text.encode("utf-8")


OK = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
BAD = [  # (path, body or raw bytes, status, param)
    (C, b"{not json", 400, None),
    (C, b"[1, 2]", 400, None),
    (C, {"prompt": "hello"}, 400, "model"),
    (C, {"model": "nope", "prompt": "hello"}, 404, "model"),
    (C, OK | {"max_tokens": 0}, 400, "max_tokens"),
    (C, OK | {"max_tokens": -5}, 400, "max_tokens"),
    (C, OK | {"max_tokens": 300}, 400, "max_tokens"),
    (C, OK | {"max_tokens": "5"}, 400, "max_tokens"),
    (C, OK | {"max_tokens": 2.5}, 400, "max_tokens"),
    (C, OK | {"temperature": -0.1}, 400, "temperature"),
    (C, OK | {"temperature": "hot"}, 400, "temperature"),
    (C, OK | {"top_p": 1.5}, 400, "top_p"),
    (C, OK | {"n": 0}, 400, "n"),
    (C, OK | {"n": 5}, 400, "n"),  # more sequences than the batch holds
    (C, OK | {"n": True}, 400, "n"),
    (C, OK | {"prompt": LONG}, 400, "prompt"),
    (C, OK | {"prompt": 123}, 400, "prompt"),
    (C, OK | {"prompt": []}, 400, "prompt"),
    (C, OK | {"prompt": [10**9]}, 400, "prompt"),
    (C, OK | {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    (C, OK | {"stop": [""]}, 400, "stop"),
    (C, OK | {"logprobs": 9}, 400, "logprobs"),
    (C, OK | {"stream": "yes"}, 400, "stream"),
    (C, OK | {"seed": "x"}, 400, "seed"),
    (C, OK | {"echo": True}, 400, "echo"),
    (C, OK | {"presence_penalty": 1.0}, 400, "presence_penalty"),
    (X, CHAT | {"messages": "hello"}, 400, "messages"),
    (X, CHAT | {"messages": []}, 400, "messages"),
    (X, CHAT | {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    (X, CHAT | {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    (X, CHAT | {"messages": [{"role": "user", "content": LONG}]}, 400, "messages"),
    (X, CHAT | {"max_tokens": 0}, 400, "max_tokens"),
    (X, CHAT | {"max_completion_tokens": 1000}, 400, "max_tokens"),
    (X, CHAT | {"top_logprobs": 3}, 400, "top_logprobs"),
    (X, CHAT | {"logprobs": True, "top_logprobs": 30}, 400, "top_logprobs"),
    (X, CHAT | {"model": "nope"}, 404, "model"),
    # the 500s: lone UTF-16 surrogates, a 5,000-digit integer, JSON nested 100k deep
    (C, raw('{"model": "tiny", "prompt": "hi \\ud800", "max_tokens": 2}'), 400, "prompt"),
    (C, raw('{"model": "tiny", "prompt": ["ok", "\\udfff"], "max_tokens": 2}'), 400, "prompt[1]"),
    (X, raw('{"model": "tiny", "messages": [{"role": "user", "content": "\\udc00"}]}'), 400, "messages[0].content"),
    (X, raw('{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}'),
     400, "messages[0].content[0].text"),
    (C, raw('{"model": "\\ud800", "prompt": "hi"}'), 400, "model"),
    (X, raw('{"model": "\\ud800", "messages": []}'), 400, "model"),
    (C, raw('{"model": "tiny", "prompt": "hi", "stop": "\\ud800"}'), 400, "stop"),
    (C, raw('{"model": "tiny", "prompt": "hi", "\\ud800": 1}'), 400, None),
    (C, raw('{"model": "tiny", "prompt": "hi", "seed": ' + "9" * 5000 + "}"), 400, "seed"),
    (C, raw('{"model": "tiny", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"), 400, None),
    (C, raw('{"model": "tiny", "prompt": "hi", "x": ' + "[" * 32 + "]" * 32 + "}"), 400, None),  # 33 deep
    # JSON as RFC 8259 has it, in UTF-8
    (C, raw('{"model": "tiny", "prompt": "hi", "temperature": NaN}'), 400, "temperature"),
    (C, raw('{"model": "tiny", "prompt": "hi", "temperature": Infinity}'), 400, "temperature"),
    (C, raw('{"model": "tiny", "prompt": "hi", "top_p": -Infinity}'), 400, "top_p"),
    (C, raw('{"model": "tiny", "prompt": "hi", "temperature": 1e400}'), 400, "temperature"),
    (C, b'{"model": "tiny", "prompt": "\xff\xfe"}', 400, None),
    (C, b"", 400, None),
    (C, b'"just a string"', 400, None),
    (C, b'{"model": "tiny", "prompt": "hi"} trailing', 400, None),
    # integer and string bounds
    (C, OK | {"seed": 2**63}, 400, "seed"),
    (C, OK | {"seed": -2**63 - 1}, 400, "seed"),
    (C, OK | {"seed": 1.5}, 400, "seed"),
    (C, OK | {"n": -1}, 400, "n"),
    (C, OK | {"n": 10**6}, 400, "n"),
    (C, OK | {"n": 10**30}, 400, "n"),
    (C, OK | {"max_tokens": 10**12}, 400, "max_tokens"),
    (C, OK | {"max_tokens": -(10**18)}, 400, "max_tokens"),
    (X, CHAT | {"max_tokens": -1}, 400, "max_tokens"),
    (X, CHAT | {"n": 17}, 400, "n"),
    (C, OK | {"logprobs": 10**19}, 400, "logprobs"),
    (X, CHAT | {"logprobs": True, "top_logprobs": -1}, 400, "top_logprobs"),
    (C, OK | {"prompt": [[10**19]]}, 400, "prompt"),
    (C, OK | {"prompt": [[1, -1]]}, 400, "prompt"),
    (C, OK | {"prompt": ["a", "b", "c", "d", "e"]}, 400, "prompt"),  # more prompts than the batch holds
    (C, OK | {"stop": "x" * 257}, 400, "stop"),
    (X, CHAT | {"stop": ["ok", "y" * 1000]}, 400, "stop"),
    (C, OK | {"model": "m" * 257}, 400, "model"),
    (C, OK | {"user": "u" * 257}, 400, "user"),
    (C, OK | {"user": 5}, 400, "user"),
    (X, CHAT | {"messages": [{"role": "user", "content": "z" * (2**20 + 1)}]}, 400, "messages"),
    # temperature and top_p
    (C, OK | {"temperature": "nan"}, 400, "temperature"),
    (C, OK | {"temperature": 2.0001}, 400, "temperature"),
    (C, OK | {"temperature": 1e308}, 400, "temperature"),
    (X, CHAT | {"temperature": -1e-38}, 400, "temperature"),
    (C, OK | {"top_p": -0.1}, 400, "top_p"),
    (X, CHAT | {"top_p": 2}, 400, "top_p"),
    (X, CHAT | {"top_p": "1"}, 400, "top_p"),
    # bad types elsewhere
    (X, CHAT | {"messages": ["hello"]}, 400, "messages[0]"),
    (X, CHAT | {"messages": [{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]}, 400,
     "messages[0].content"),
    (X, CHAT | {"stream_options": {"include_usage": "yes"}}, 400, "stream_options.include_usage"),
    (X, CHAT | {"logprobs": 1}, 400, "logprobs"),
    (C, OK | {"stop": [1, 2]}, 400, "stop"),
    (C, OK | {"prompt": None}, 400, "prompt"),
    (C, OK | {"model": ["tiny"]}, 400, "model"),
]
# Edge values that are fine: answered 200 (tiny temperatures are greedy; int64 seeds; 256-character stops).
GOOD = [
    (C, OK | {"temperature": 1e-38}),
    (C, OK | {"temperature": 0}),
    (X, CHAT | {"temperature": 5e-324, "logprobs": True, "top_logprobs": 2}),
    (C, OK | {"seed": 2**63 - 1}),
    (C, OK | {"seed": -2**63}),
    (C, OK | {"stop": ["s" * 256, "\U0001F600"]}),
    (C, OK | {"top_p": 0}),
    (X, CHAT | {"user": "u" * 256, "messages": [{"role": "user", "content": "ok \U0001F600"}]}),
    (C, raw('{"model": "tiny", "prompt": "\\ud83d\\ude00 a surrogate pair is one character", "max_tokens": 2}')),
]


@pytest.mark.parametrize("path,body,status,param", BAD, ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_input_answers_openai_error(server, path, body, status, param):
    url, _ = server
    if isinstance(body, bytes):
        r = httpx.post(url + path, content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(url + path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert "Traceback" not in r.text
    # and the server still serves
    assert httpx.post(url + C, json=OK).status_code == 200


@pytest.mark.parametrize("path,body", GOOD, ids=[f"{i}" for i in range(len(GOOD))])
def test_edge_values_are_served(server, path, body):
    url, _ = server
    if isinstance(body, bytes):
        r = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    else:
        r = httpx.post(url + path, json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def test_tiny_temperature_is_the_greedy_answer(server):
    """temperature 1e-38 used to overflow logits / T and fail its batch; now it answers greedily."""
    url, _ = server
    body = OK | {"max_tokens": 8, "ignore_eos": True, "prompt": "the quick brown"}
    texts = {t: httpx.post(url + C, json=body | {"temperature": t, "seed": i}, timeout=60).json()["choices"][0]["text"]
             for i, t in enumerate([0, 1e-38, 1e-300, 9e-6])}
    assert len(set(texts.values())) == 1, texts


def test_no_request_got_a_500(server):
    """Runs after the corpus (file order): every request above was counted in /metrics, none answered 500."""
    url, _ = server
    metrics = httpx.get(url + "/metrics").text
    assert 'status="400"' in metrics and 'status="500"' not in metrics


def test_unknown_route_and_method(server):
    url, _ = server
    r = httpx.get(url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = httpx.get(url + C)
    assert r.status_code == 405 and r.json()["error"]["message"]


def _generated(app) -> int:
    return app.state.engines["tiny"].generated_tokens


def test_stream_disconnect_stops_generation(server):
    """Read a few chunks of a 240-token stream, close the connection: the engine stops generating it."""
    url, app = server
    start = _generated(app)
    with httpx.stream("POST", url + C, json=OK | {"max_tokens": 240, "ignore_eos": True, "stream": True}) as r:
        chunks = []
        for line in r.iter_lines():
            if line.startswith("data:"):
                chunks.append(line)
                if len(chunks) == 3:
                    break
    engine = app.state.engines["tiny"]
    wait_until(lambda: engine.running == 0)
    stopped_at = _generated(app) - start
    time.sleep(0.3)
    assert _generated(app) - start == stopped_at < 240  # nothing more, and far from the 240 asked for
    assert "tinyrlhf_requests_cancelled_total{model=\"tiny\"}" in httpx.get(url + "/metrics").text


def test_plain_request_disconnect_stops_generation(server):
    url, app = server
    start, engine = _generated(app), app.state.engines["tiny"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + C, json=OK | {"max_tokens": 240, "ignore_eos": True}, timeout=httpx.Timeout(5, read=0.3))
    wait_until(lambda: engine.running == 0)
    stopped_at = _generated(app) - start
    time.sleep(0.3)
    assert _generated(app) - start == stopped_at < 240


def test_full_queue_answers_429_then_recovers(model_dir):
    """One batch slot, one queue place: a running request, a waiting one, and the third gets 429."""
    app = make_app({"tiny": model_dir}, max_batch=1, queue_size=1)
    with running(app) as url:
        engine = app.state.engines["tiny"]
        long = OK | {"max_tokens": 250, "ignore_eos": True}
        results = {}

        def call(key):
            results[key] = httpx.post(url + C, json=long, timeout=60)

        a = threading.Thread(target=call, args=("a",))
        a.start()
        wait_until(lambda: engine.running == 1, every=0.005)
        b = threading.Thread(target=call, args=("b",))
        b.start()
        wait_until(lambda: engine.queue_depth == 1, every=0.005)
        r = httpx.post(url + C, json=OK)
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
        a.join(60)
        b.join(60)
        assert results["a"].status_code == results["b"].status_code == 200
        assert httpx.post(url + C, json=OK).status_code == 200
        assert 'tinyrlhf_requests_rejected_total{model="tiny"} 1.0' in httpx.get(url + "/metrics").text


def test_timeout_answers_504_plain_and_as_stream_event(model_dir):
    app = make_app({"tiny": model_dir}, timeout_s=0.3)
    with running(app) as url:
        body = OK | {"max_tokens": 250, "ignore_eos": True}
        engine = app.state.engines["tiny"]
        # slow every step down so that 250 tokens cannot fit in 0.3 s on any machine
        step = engine.batch.step
        engine.batch.step = lambda tokens: (time.sleep(0.01), step(tokens))[1]
        r = httpx.post(url + C, json=body, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        with httpx.stream("POST", url + C, json=body | {"stream": True}, timeout=30) as s:
            data = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert data[-1] == "[DONE]" and '"code": "timeout"' in data[-2]
        assert engine.generated_tokens < 2 * 250
        wait_until(lambda: engine.running == 0)
        assert 'tinyrlhf_requests_timed_out_total{model="tiny"} 2.0' in httpx.get(url + "/metrics").text
