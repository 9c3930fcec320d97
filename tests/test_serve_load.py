"""Load with malformed requests mixed in, on loopback: 32 concurrent clients x 3 requests each, one request in
ten malformed (the kinds from the issue: text/plain, lone surrogates, deep nesting, a 5,000-digit seed, NaN,
an oversized body, ...). Every malformed request is answered 4xx, and every well-formed one 200 with exactly
the text it gets when sent alone (same seed), temperature 1e-38 included."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from serve_util import make_app, running, tiny_model_dir
from serve_util import one_thread  # noqa: F401 (the module's pytestmark fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
CLIENTS, REQUESTS, MALFORMED = 32, 3, 0.1
PROMPTS = ["hello world", "- Cal(m): Ann(f), Bob(m)\nQ: siblings of Cal?\nA:", "the quick brown fox", "é ü ß 0123"]
J = {"content-type": "application/json"}
BAD = [  # (path, raw body, headers): each must be answered 4xx
    ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "max_tokens": 4}', {"content-type": "text/plain"}),
    ("/v1/completions", b'{"model": "tiny", "prompt": "\\ud800", "max_tokens": 4}', J),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}', J),
    ("/v1/completions", b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", J),
    ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "seed": ' + b"7" * 5000 + b"}", J),
    ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "temperature": NaN}', J),
    ("/v1/completions", b'{"model": "tiny", "prompt": "' + b"x" * (1 << 20) + b'"}', J),  # over 1 MiB: 413
    ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "max_tokens": "4"}', J),
    ("/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', J),
    ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "n": -1}', J),
]


def is_malformed(k: int, frac: float) -> bool:
    """Request k of the run is malformed: exactly floor(N * frac) of N, spread evenly."""
    return int((k + 1) * frac) > int(k * frac)


def well_formed(k: int) -> dict:
    body = {"model": "tiny", "prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": 4, "seed": k, "ignore_eos": True}
    if k % 7 == 0:
        body["temperature"] = 1e-38  # greedy now; it used to fail its whole batch
    return body


async def one(client, url, k) -> tuple:
    if is_malformed(k, MALFORMED):
        path, content, headers = BAD[int(k * MALFORMED) % len(BAD)]  # each kind in turn
        r = await client.post(url + path, content=content, headers=headers)
        return ("bad", k, r.status_code, r.json()["error"]["message"])
    body = well_formed(k)
    if k % 2:  # half of them streamed
        text, status = "", None
        async with client.stream("POST", url + "/v1/completions", json=body | {"stream": True}) as r:
            status = r.status_code
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        return ("good", k, 500, chunk["error"]["message"])
                    text += "".join(c["text"] for c in chunk["choices"])
        return ("good", k, status, text)
    r = await client.post(url + "/v1/completions", json=body)
    return ("good", k, r.status_code, r.json()["choices"][0]["text"] if r.status_code == 200 else r.text)


def test_32_clients_with_one_request_in_ten_malformed(tmp_path):
    app = make_app({"tiny": tiny_model_dir(tmp_path / "tiny")}, max_batch=32, queue_size=64)
    n = CLIENTS * REQUESTS
    with running(app) as url:
        alone = {k: httpx.post(url + "/v1/completions", json=well_formed(k), timeout=60).json()["choices"][0]["text"]
                 for k in range(n) if not is_malformed(k, MALFORMED)}

        async def load():
            limits = httpx.Limits(max_connections=CLIENTS + 4)
            async with httpx.AsyncClient(timeout=httpx.Timeout(120), limits=limits) as client:
                async def client_loop(c):
                    return [await one(client, url, c * REQUESTS + r) for r in range(REQUESTS)]
                return await asyncio.wait_for(asyncio.gather(*(client_loop(c) for c in range(CLIENTS))), 300)

        t0 = time.perf_counter()
        results = [res for batch in asyncio.run(load()) for res in batch]
        wall = time.perf_counter() - t0
        sizes = app.state.engines["tiny"].batch_sizes
    good = [r for r in results if r[0] == "good"]
    bad = [r for r in results if r[0] == "bad"]
    good_errors = [r for r in good if r[2] != 200]
    print(f"load: {CLIENTS} clients x {REQUESTS} requests in {wall:.1f} s: {len(good)} well-formed "
          f"({len(good_errors)} errors), {len(bad)} malformed (statuses {sorted({r[2] for r in bad})}), "
          f"largest decoding batch {max(sizes)}")
    assert len(bad) == int(n * MALFORMED) and len(good) == n - len(bad)
    assert good_errors == []
    assert all(400 <= r[2] < 500 for r in bad), bad
    assert {r[1]: r[3] for r in good} == alone  # same text as alone, whoever shared the batch
    assert max(sizes) >= 8  # they really were decoded together
