"""What arrives before a body is looked at, against a real uvicorn server on loopback: only application/json
is accepted (415), a body over --max-body-bytes is refused (413) whether it announces its length or not,
and a 1 MB prompt is read and tokenised off the event loop, so /health answers within 100 ms meanwhile."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from serve_util import make_app, running, tiny_model_dir
from serve_util import one_thread  # noqa: F401 (the module's pytestmark fixture)
from tinyrlhf.serve.config import HTTPConfig

pytestmark = pytest.mark.usefixtures("one_thread")
C, X = "/v1/completions", "/v1/chat/completions"
OK = b'{"model": "tiny", "prompt": "hello", "max_tokens": 2}'
CHAT = b'{"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}'
LIMIT = 4096


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("serve-hygiene") / "tiny")


@pytest.fixture(scope="module")
def small(model_dir):
    """A server that takes bodies of at most LIMIT bytes."""
    with running(make_app({"tiny": model_dir}, HTTPConfig(max_body_bytes=LIMIT))) as url:
        yield url


def _error(r, status: int, code: str | None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["code"] == code and err["message"]
    return err


CONTENT_TYPES = [  # (path, Content-Type or None, status)
    (C, "text/plain", 415),  # what a cross-origin page can send without a CORS preflight
    (X, "text/plain;charset=UTF-8", 415),
    (C, None, 415),
    (C, "application/x-www-form-urlencoded", 415),
    (X, "multipart/form-data; boundary=x", 415),
    (C, "application/json; charset=utf-16", 415),
    (C, "application/jsonp", 415),
    (C, "text/json", 415),
    (C, "application/json; charset=UTF-8", 200),
    (X, "Application/JSON", 200),
    (C, 'application/json; charset="utf-8"', 200),
]


@pytest.mark.parametrize("path,ctype,status", CONTENT_TYPES, ids=[f"{c}-{s}" for _, c, s in CONTENT_TYPES])
def test_only_json_bodies(small, path, ctype, status):
    headers = {"content-type": ctype} if ctype else {}
    r = httpx.post(small + path, content=OK if path == C else CHAT, headers=headers, timeout=60)
    if status == 200:
        assert r.status_code == 200, r.text
    else:
        err = _error(r, 415, "unsupported_media_type")
        assert "application/json" in err["message"]


def _padded(size: int) -> bytes:
    """A valid completions body of exactly `size` bytes (an ignored field holds the padding)."""
    head, tail = b'{"model": "tiny", "prompt": "hello", "max_tokens": 2, "pad": "', b'"}'
    return head + b"p" * (size - len(head) - len(tail)) + tail


def test_body_at_the_limit_is_served_one_byte_more_is_413(small):
    json_ct = {"content-type": "application/json"}
    assert httpx.post(small + C, content=_padded(LIMIT), headers=json_ct, timeout=60).status_code == 200
    err = _error(httpx.post(small + C, content=_padded(LIMIT + 1), headers=json_ct, timeout=60), 413,
                 "body_too_large")
    assert str(LIMIT) in err["message"]

    def chunks():  # no Content-Length (chunked): counted while it is read
        body = _padded(2 * LIMIT)
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]
    _error(httpx.post(small + X, content=chunks(), headers=json_ct, timeout=60), 413, "body_too_large")
    assert httpx.post(small + C, content=OK, headers=json_ct, timeout=60).status_code == 200


def test_client_gone_mid_body_is_not_an_internal_error(small):
    """A client that sends half its announced body and closes: counted as a 400 (incomplete body), not a 500."""
    host, port = small.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n" + OK[:20])
    deadline = time.monotonic() + 20
    while 'status="400"' not in (metrics := httpx.get(small + "/metrics").text) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 'endpoint="completions",model="(unknown)",status="400"' in metrics
    assert 'status="500"' not in metrics


def test_health_answers_within_100ms_while_a_1mb_prompt_is_tokenised(model_dir):
    """A 1,000,000-character prompt (default --max-body-bytes: 1 MiB) takes the tokenizer about 2 s here; it is
    tokenised in a worker thread, so /health, polled meanwhile, answers every time within 100 ms (it froze for
    2.2 s when tokenising ran on the event loop). The prompt is then refused as longer than the context."""
    prompt = ("hello world, the quick brown fox jumps é ü " * 25_000)[:1_000_000]
    with running(make_app({"tiny": model_dir})) as url, httpx.Client(timeout=30) as client:
        client.get(url + "/health")  # the connection is open before the clock starts
        result = {}

        def big():
            result["r"] = httpx.post(url + C, json={"model": "tiny", "prompt": prompt, "max_tokens": 2}, timeout=120)
        thread = threading.Thread(target=big)
        thread.start()
        time.sleep(0.3)  # the body is sent and tokenising has begun
        latencies = []
        deadline = time.monotonic() + 60
        while thread.is_alive() and time.monotonic() < deadline and len(latencies) < 400:
            t0 = time.perf_counter()
            assert client.get(url + "/health").status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.01)
        thread.join(120)
    r = result["r"]
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert len(latencies) >= 10, latencies  # the prompt really was being processed while /health was polled
    print(f"/health during a 1 MB prompt: {len(latencies)} polls, max {max(latencies) * 1000:.1f} ms, "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms")
    assert max(latencies) < 0.1, sorted(latencies)[-5:]
