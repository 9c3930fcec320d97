"""`tinyrlhf serve` against the naive server most HF-based demos run, in one run, on loopback only.

    .venv/bin/python benchmarks/bench_serve.py [--quick] [--clients 32] [--requests 10] [--max-tokens 32]
                                               [--sft RUN_OR_MODEL] [--threads N] [--malformed 0.1]

1. Throughput and latency. A random-init gpt2-small (the 124M shape; its BPE tokenizer trained on the
   family_tree text) behind (a) BASELINE: a small FastAPI app in this file that runs one `model.generate`
   per request under a lock, streaming tokens through a transformers streamer, and (b) OURS:
   `tinyrlhf serve` (continuous batching). Each server is its own process. `--clients` concurrent clients
   each send `--requests` streamed /v1/completions requests one after another: the same short prompts,
   max_tokens, T=1, a seed per request, EOS ignored so that every request generates exactly max_tokens.
   Reported: generated tokens/s over the whole load, p50/p95 latency and time to first token, errors,
   the server's peak RSS, and ours / baseline ratios (target: >= 4x tokens/s, p50 latency no worse).
   `--malformed F`: that share of OUR load's requests (evenly spread) is malformed instead, one kind after
   another (text/plain, lone surrogates, JSON nested 100k deep, a 5,000-digit seed, NaN, a body over 1 MiB,
   a wrong type, an unknown model); the table's errors then count the well-formed requests only, and a
   line says how the malformed ones were answered (target: 4xx, never 5xx, no well-formed error). The
   baseline gets none: it checks nothing, and a NaN temperature kills its generate() thread while it
   holds the lock, so it hangs every request after it (seen in a run).
2. Quantisation. `tinyrlhf serve --quantize none|int8|bf16`, each serving the gpt2-small above (tokens/s,
   p50 latency under a lighter load, peak RSS, weight MiB) and a TRAINED family_tree SFT model (`--sft`;
   trained here with configs/family_tree/sft.yaml if not given, ~3 min): its gold reward on 200
   held-out prompts, one sample each at T=1 (seed i for prompt i) and greedy, and the change against fp32
   with a paired bootstrap 95% CI over prompts.
`--quick` is a smoke run (gpt2-tiny, a few requests, an untrained SFT stand-in) for the test suite.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou", "Max", "Ned", "Oli", "Pam"]
RELATIONS = ["parents", "siblings", "cousins", "grandparents", "aunts and uncles", "male cousins"]


def short_prompts(n: int) -> list[str]:
    """Short chat-like prompts (~12-16 tokens): decoding, not the prompt pass, dominates, as in a chat."""
    return [f"- {NAMES[i % 16]}(f): {NAMES[(i + 3) % 16]}, {NAMES[(i + 7) % 16]}\nQ: {RELATIONS[i % 6]} of "
            f"{NAMES[i % 16]}?\nA:" for i in range(n)]


# ---------------------------------------------------------------------------------------------- servers

def baseline_server(model_dir: str, port: int):
    """The naive server: one generate() per request, one at a time (an asyncio lock), tokens streamed."""
    import threading

    import torch
    import uvicorn
    from fastapi import Body, FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    lock, app = asyncio.Lock(), FastAPI()

    class TokenQueue(BaseStreamer):  # every new token at once (TextIteratorStreamer waits for whole words)
        def __init__(self, loop):
            self.loop, self.queue, self.first = loop, asyncio.Queue(), True

        def put(self, value):
            if self.first:  # generate() first puts the prompt
                self.first = False
                return
            self.loop.call_soon_threadsafe(self.queue.put_nowait, value.flatten().tolist())

        def end(self):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(body: dict = Body(...)):
        enc = tok(body["prompt"], return_tensors="pt", add_special_tokens=False)
        n = body["max_tokens"]

        async def events():
            async with lock:
                streamer, produced = TokenQueue(asyncio.get_running_loop()), []
                torch.manual_seed(body.get("seed", 0))
                kwargs = dict(**enc, max_new_tokens=n, min_new_tokens=n if body.get("ignore_eos") else 0,
                              do_sample=True, temperature=body.get("temperature", 1.0), top_k=0,
                              pad_token_id=tok.eos_token_id, streamer=streamer)
                thread = threading.Thread(target=lambda: torch.no_grad()(model.generate)(**kwargs))
                thread.start()
                while (ids := await streamer.queue.get()) is not None:
                    produced += ids
                    yield "data: " + json.dumps({"choices": [{"index": 0, "text": tok.decode(ids)}]}) + "\n\n"
                await asyncio.to_thread(thread.join)
            yield "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": len(produced)}}) + "\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


class Server:
    """A server subprocess on a free loopback port; its peak RSS is read from /proc before it stops."""

    def __init__(self, cmd: list[str], log_path: str, threads: int):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        if threads:
            env.update(OMP_NUM_THREADS=str(threads))
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd + ["--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout=600):
        import httpx
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.5)
        raise RuntimeError(f"server did not start in {timeout} s; see {self.log_path}")

    def rss_mib(self, key: str = "VmHWM") -> float:
        """VmHWM: the peak resident set so far (loading included); VmRSS: now."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1)) / 1024

    def weight_mib(self, name: str) -> float | None:
        with open(self.log_path) as f:
            m = re.search(rf"model {re.escape(name)}: .*?, ([\d.]+) MiB of weights", f.read())
        return float(m.group(1)) if m else None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ---------------------------------------------------------------------------------------------- load

async def _one(client, url, body) -> dict:
    t0, ttft, tokens, err = time.perf_counter(), None, None, None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body | {"stream": True}) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("error"):
                    err = chunk["error"]["message"]
                if ttft is None and chunk.get("choices"):  # the first token (logprobs=0: one chunk per token)
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as e:  # a refused or dropped connection counts as an error, not a crash
        err = f"{e.__class__.__name__}: {e}"
    if err or tokens is None:
        return {"error": err or "no usage chunk"}
    return {"latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens}


def malformed_requests(model: str) -> list[tuple[bytes, dict]]:
    """(raw body, headers) of malformed /v1/completions requests, one of each kind."""
    j, m = {"content-type": "application/json"}, json.dumps(model).encode()
    return [(b'{"model": %s, "prompt": "hi", "max_tokens": 4}' % m, {"content-type": "text/plain"}),
            (b'{"model": %s, "prompt": "\\ud800", "max_tokens": 4}' % m, j),
            (b'{"model": %s, "prompt": ' % m + b"[" * 100_000 + b"]" * 100_000 + b"}", j),
            (b'{"model": %s, "prompt": "hi", "seed": %s}' % (m, b"7" * 5000), j),
            (b'{"model": %s, "prompt": "hi", "temperature": NaN}' % m, j),
            (b'{"model": %s, "prompt": "%s"}' % (m, b"x" * (1 << 20)), j),
            (b'{"model": %s, "prompt": "hi", "max_tokens": "4"}' % m, j),
            (b'{"model": "no-such-model", "prompt": "hi"}', j)]


def is_malformed(k: int, frac: float) -> bool:
    """Request k of a run is malformed: exactly floor(N * frac) of N requests, evenly spread."""
    return int((k + 1) * frac) > int(k * frac)


async def _bad(client, url, body: bytes, headers: dict) -> dict:
    try:
        r = await client.post(url + "/v1/completions", content=body, headers=headers)
        return {"malformed": r.status_code}
    except Exception as e:  # a dropped connection is neither a 4xx nor a 5xx
        return {"malformed": f"{e.__class__.__name__}"}


async def _load(url: str, model: str, prompts: list[str], clients: int, requests: int, max_tokens: int,
                malformed: float = 0.0) -> dict:
    import httpx
    results, bad = [], malformed_requests(model)

    async def client_loop(c, client):
        for r in range(requests):
            k = c * requests + r
            if malformed and is_malformed(k, malformed):
                results.append(await _bad(client, url, *bad[int(k * malformed) % len(bad)]))
                continue
            # logprobs=0: ours then sends a chunk for every token, even one whose text is held back (a random
            # model's byte tokens are often incomplete UTF-8), so time-to-first-token means the same for both
            body = {"model": model, "prompt": prompts[(c + r) % len(prompts)], "max_tokens": max_tokens,
                    "temperature": 1.0, "seed": 1000 * c + r, "ignore_eos": True, "logprobs": 0,
                    "stream_options": {"include_usage": True}}
            results.append(await _one(client, url, body))

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800), limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(c, client) for c in range(clients)))
        wall = time.perf_counter() - t0
    answers = [r["malformed"] for r in results if "malformed" in r]
    results = [r for r in results if "malformed" not in r]
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    lat, ttft = sorted(r["latency"] for r in ok), sorted(r["ttft"] for r in ok if r["ttft"] is not None)

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
    return {"requests": len(results), "errors": len(errors), "first_error": errors[0] if errors else "",
            "tokens": sum(r["tokens"] for r in ok), "wall_s": wall,
            "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "ttft_p50": pct(ttft, 0.5), "ttft_p95": pct(ttft, 0.95),
            "malformed": len(answers), "malformed_4xx": sum(isinstance(a, int) and 400 <= a < 500 for a in answers),
            "malformed_5xx": sum(isinstance(a, int) and a >= 500 for a in answers),
            "malformed_statuses": sorted({str(a) for a in answers})}


async def _gold(url: str, model: str, task, prompts: list[str], temperature: float, max_tokens: int) -> list[float]:
    import httpx
    sem, rewards = asyncio.Semaphore(32), [0.0] * len(prompts)

    async def one(i, client):
        async with sem:
            r = await client.post(url + "/v1/completions", json={
                "model": model, "prompt": prompts[i], "max_tokens": max_tokens, "temperature": temperature,
                "seed": i})
            r.raise_for_status()
            rewards[i] = task.gold_reward(prompts[i], r.json()["choices"][0]["text"])

    async with httpx.AsyncClient(timeout=httpx.Timeout(600)) as client:
        await asyncio.gather(*(one(i, client) for i in range(len(prompts))))
    return rewards


# ---------------------------------------------------------------------------------------------- main

def make_model(preset: str, out: str) -> str:
    from tinyrlhf.config import ModelConfig
    from tinyrlhf.models import build_model, save_hf
    from tinyrlhf.tasks import get_task

    model, tok = build_model(ModelConfig(preset=preset, tokenizer_vocab=2048),
                             corpus=get_task("family_tree").corpus(2000, seed=0), seed=0)
    save_hf(model, tok, out)
    return out


def train_sft(work: str) -> str:
    out = os.path.join(work, "sft")
    cmd = [sys.executable, "-m", "tinyrlhf", "sft", "--config", os.path.join(HERE, "..", "configs/family_tree/sft.yaml"),
           f"out_dir={out}", f"data.dir={os.path.join(work, 'sft-data')}", "train.progress=false"]
    print(f"training the family_tree SFT model: {' '.join(cmd[3:])}", flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def fmt_row(name, r, rss):
    return (f"{name:10s} {r['tokens_per_s']:9.1f} {r['p50']:8.2f} {r['p95']:8.2f} {r['ttft_p50']:9.2f} "
            f"{r['ttft_p95']:9.2f} {r['errors']:4d}/{r['requests']:<4d} {rss[0]:7.0f} {rss[1]:7.0f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: gpt2-tiny, few requests, no SFT training")
    ap.add_argument("--clients", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--sft", default="", help="a trained family_tree SFT run or model dir (default: train one)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each server (0 = torch default)")
    ap.add_argument("--modes", default="none,int8,bf16", help="--quantize modes to compare (none is always run)")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--malformed", type=float, default=0.0, help="share of the load's requests sent malformed "
                    "(e.g. 0.1); they are answered apart from the well-formed ones")
    ap.add_argument("--baseline-server", default="", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.baseline_server:
        import torch
        if a.threads:
            torch.set_num_threads(a.threads)
        baseline_server(a.baseline_server, a.port)
        return 0
    clients = a.clients or (3 if a.quick else 32)
    requests = a.requests or (2 if a.quick else 10)
    max_tokens = a.max_tokens or (8 if a.quick else 32)
    light = 1 if a.quick else 3  # requests per client in the quantisation rows
    n_gold = 16 if a.quick else 200
    work = a.workdir or tempfile.mkdtemp(prefix="bench-serve-")
    os.makedirs(work, exist_ok=True)
    import torch

    from tinyrlhf.tasks import get_task
    print(f"bench_serve: torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, threads per server {a.threads or 'default'}", flush=True)
    preset = "gpt2-tiny" if a.quick else "gpt2-small"
    small = make_model(preset, os.path.join(work, preset))
    sft = a.sft or (make_model("gpt2-tiny", os.path.join(work, "sft-standin")) if a.quick else train_sft(work))
    prompts = short_prompts(32)
    task = get_task("family_tree")
    gold_prompts = task.prompts("eval", n_gold, seed=0)
    threads = ["--threads", str(a.threads)] if a.threads else []

    print(f"\n1. {clients} clients x {requests} streamed requests, max_tokens {max_tokens}, {preset} "
          f"(random init), prompts {len(prompts)} short ones", flush=True)
    results = {}
    base = Server([sys.executable, __file__, "--baseline-server", small] + threads, f"{work}/baseline.log", a.threads)
    try:
        base.wait()
        idle = base.rss_mib("VmRSS")
        results["baseline"] = (asyncio.run(_load(base.url, "small", prompts, clients, requests, max_tokens)),
                               (idle, base.rss_mib()))
    finally:
        base.stop()
    quant = {}
    modes = ["none"] + [m for m in a.modes.split(",") if m and m != "none"]
    for mode in modes:
        srv = Server([sys.executable, "-m", "tinyrlhf", "serve", "--name", f"small={small}", "--name", f"sft={sft}",
                      "--quantize", mode, "--max-batch", str(max(32, clients))] + threads, f"{work}/ours-{mode}.log",
                     a.threads)
        try:
            srv.wait()
            idle = srv.rss_mib("VmRSS")
            if mode == "none":
                results["ours"] = (asyncio.run(_load(srv.url, "small", prompts, clients, requests, max_tokens,
                                                     a.malformed)), (idle, srv.rss_mib()))
            speed = asyncio.run(_load(srv.url, "small", prompts, clients, light, max_tokens))
            gold = {t: asyncio.run(_gold(srv.url, "sft", task, gold_prompts, t, 24)) for t in (1.0, 0.0)}
            quant[mode] = (speed, (idle, srv.rss_mib()), srv.weight_mib("small"), gold)
        finally:
            srv.stop()

    print(f"\n{'server':10s} {'tokens/s':>9s} {'p50 s':>8s} {'p95 s':>8s} {'ttft p50':>9s} {'ttft p95':>9s} "
          f"{'errors':>9s} {'RSS MiB idle / peak':>15s}")
    for name, (r, rss) in results.items():
        print(fmt_row(name, r, rss))
    (b, _), (o, _) = results["baseline"], results["ours"]
    speedup, p50_ratio = o["tokens_per_s"] / b["tokens_per_s"], b["p50"] / o["p50"]
    print(f"ours / baseline: tokens/s {speedup:.2f}x (target >= 4x), p50 latency {p50_ratio:.2f}x lower "
          f"(target >= 1), ttft p50 {b['ttft_p50'] / o['ttft_p50']:.2f}x lower, errors {o['errors']} + {b['errors']}")
    for name, (r, _) in results.items():
        if r["errors"]:
            print(f"  {name}: first error: {r['first_error']}")
        if r["malformed"]:
            print(f"  {name}: {r['malformed']} malformed requests: {r['malformed_4xx']} answered 4xx, "
                  f"{r['malformed_5xx']} 5xx (statuses {', '.join(r['malformed_statuses'])}); well-formed: "
                  f"{r['errors']} errors in {r['requests']}")

    from tinyrlhf.eval.metrics import paired_bootstrap_ci
    print(f"\n2. quantisation: {preset} speed ({clients} clients x {light} requests), family_tree SFT gold on "
          f"{n_gold} eval prompts (max_tokens 24), change vs fp32 with a paired bootstrap 95% CI")
    print(f"{'quantize':9s} {'tokens/s':>9s} {'p50 s':>7s} {'RSS idle':>8s} {'peak':>6s} {'weights':>8s} {'gold T=1':>9s} "
          f"{'Δ [95% CI]':>24s}     {'gold T=0':>9s} {'Δ [95% CI]':>24s}")
    ref = quant["none"][3]
    for mode, (r, rss, wmib, gold) in quant.items():
        cells = []
        for t in (1.0, 0.0):
            d, lo, hi = paired_bootstrap_ci(gold[t], ref[t])
            cells.append(f"{statistics.mean(gold[t]):9.3f} {d:+7.3f} [{lo:+.3f},{hi:+.3f}]" + (
                " " * 4 if mode == "none" else (" *  " if lo > 0 or hi < 0 else "    ")))
        print(f"{mode:9s} {r['tokens_per_s']:9.1f} {r['p50']:7.2f} {rss[0]:8.0f} {rss[1]:6.0f} {wmib or 0:8.1f} "
              f"{cells[0]} {cells[1]}")
    print("(* = the CI excludes 0; RSS in MiB of the whole server process, which also serves the SFT model: idle = "
          "after loading, peak = the most it held, loading included; weights = MiB of gpt2-small's tensors)")
    ok = o["errors"] == 0 and b["errors"] == 0 and all(q[0]["errors"] == 0 for q in quant.values()) \
        and o["malformed_5xx"] == 0  # the baseline answers some malformed requests 500: that is its own row
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
