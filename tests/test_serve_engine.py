"""The serving engine's pieces without HTTP: continuous batching (a request joins a running batch at the next
step and leaves when done), the joined/cut KV cache against one-row forwards, incremental detokenisation
with stop strings, int8/bf16 weights, the model loader and the `tinyrlhf serve` command."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from serve_util import CORPUS, free_port, tiny_model_dir, wait_until
from serve_util import one_thread  # noqa: F401 (the module's pytestmark fixture)
from tinyrlhf.models import load_tokenizer, train_tokenizer
from tinyrlhf.serve.batch import RunningBatch
from tinyrlhf.serve.config import EngineConfig
from tinyrlhf.serve.detok import TextStream
from tinyrlhf.serve.engine import Engine, Request, SamplingParams
from tinyrlhf.serve.loader import load_causal_lm, load_served_model, resolve_model_dir
from tinyrlhf.serve.quantize import conv1d_to_linear, quantize


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("serve-engine") / "tiny")


async def _collect(req: Request, log: list, tag: str):
    text = ""
    while True:
        item = await req.events.get()
        assert isinstance(item, list), item
        for d in item:
            text += d.text
            if d.finish_reason:
                log.append((tag, time.monotonic()))
                return text


def test_request_joins_running_batch_and_leaves_first(model_dir):
    """B arrives while A (200 tokens) runs: B is decoded in the same forward passes as A (batch size 2 at
    some step), finishes long before A, and its text equals B decoded alone (same seed)."""
    m = load_served_model("tiny", model_dir)
    tok = m.tokenizer

    async def main():
        engine = Engine("tiny", m.model, tok, EngineConfig(max_batch=4))
        engine.start()
        loop = asyncio.get_running_loop()
        ids_a, ids_b = tok("hello world")["input_ids"], tok("- Cal(m): Ann(f), Bob(m)\nQ:")["input_ids"]
        alone = Request([ids_b], SamplingParams(max_tokens=10, seed=5, ignore_eos=True), 1, 60, loop)
        b_alone = await _collect(engine.submit(alone), [], "b")
        engine.batch_sizes.clear()
        log = []
        a = engine.submit(Request([ids_a], SamplingParams(max_tokens=200, seed=1, ignore_eos=True), 1, 60, loop))
        task_a = asyncio.ensure_future(_collect(a, log, "a"))
        while engine.generated_tokens < 10 + 20:  # A is 20 tokens in
            await asyncio.sleep(0.002)
        b = engine.submit(Request([ids_b], SamplingParams(max_tokens=10, seed=5, ignore_eos=True), 1, 60, loop))
        b_text = await _collect(b, log, "b")
        a_left = 200 - (engine.generated_tokens - 10 - 10)
        await task_a
        engine.stop()
        return b_alone, b_text, log, a_left, dict(engine.batch_sizes)

    b_alone, b_text, log, a_left, sizes = asyncio.run(main())
    assert b_text == b_alone
    assert [tag for tag, _ in log] == ["b", "a"]
    assert a_left > 100  # B finished while A still had most of its tokens to go
    assert sizes.get(2, 0) >= 10 and sizes.get(1, 0) >= 150  # B's 10 steps shared with A; A alone otherwise


def test_joined_and_cut_cache_equals_one_row_forwards(model_dir):
    """Rows joining at different times (left-padded merge) and rows leaving (batch_select + left cut) give
    the same next-token logits as each sequence run alone."""
    model = load_causal_lm(model_dir).eval()
    seqs = {"a": [5, 6, 7, 8, 9, 10, 11], "b": [20, 21], "c": [30, 31, 32, 33], "d": [60, 61, 62, 63, 64, 65, 66]}

    def alone(ids):
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0, -1]

    batch = RunningBatch(model)
    batch.join(["a"], [seqs["a"][:5]], 0)
    batch.step(torch.tensor([seqs["a"][5]]))
    batch.join(["b", "c"], [seqs["b"], seqs["c"]], 0)  # narrower than the batch: padded on the left to width 6
    batch.step(torch.tensor([seqs["a"][6], 40, 41]))
    seqs["b"].append(40), seqs["c"].append(41)
    batch.join(["d"], [seqs["d"]], 0)  # as wide as the batch
    batch.join(["e"], [list(range(70, 79))], 0)  # 9 tokens: the running batch is padded on the left
    seqs["e"] = list(range(70, 79))
    for i, name in enumerate(batch.rows):
        torch.testing.assert_close(batch.logits[i], alone(seqs[name]), atol=1e-5, rtol=1e-5)
    batch.step(torch.tensor([42, 43, 44, 45, 46]))
    for name, t in zip(batch.rows, [42, 43, 44, 45, 46]):
        seqs[name].append(t)
    for i, name in enumerate(batch.rows):
        torch.testing.assert_close(batch.logits[i], alone(seqs[name]), atol=1e-5, rtol=1e-5)
    width = batch.width
    batch.keep([1, 2])  # "a", "d" and "e" leave: columns only they used are cut on the left
    assert batch.width < width and batch.mask[:, 0].any()
    batch.step(torch.tensor([50, 51]))
    seqs["b"].append(50), seqs["c"].append(51)
    for i, name in enumerate(batch.rows):
        torch.testing.assert_close(batch.logits[i], alone(seqs[name]), atol=1e-5, rtol=1e-5)


def test_text_stream_holds_back_stop_prefixes_and_partial_characters():
    tok = train_tokenizer(CORPUS, 300)
    ids = tok("A: Dee. é ü", add_special_tokens=False)["input_ids"]
    s = TextStream(tok)
    deltas = [s.push(i) for i in ids] + [s.finish()]
    assert "".join(deltas) == "A: Dee. é ü" and all("\ufffd" not in d for d in deltas)
    s = TextStream(tok, stop=("e. é",))
    out = ""
    for i in ids:
        out += s.push(i)
        assert "Dee" not in out or s.stopped  # "e" might start the stop string: held until decided
        if s.stopped:
            break
    assert s.stopped and out == "A: De"
    s = TextStream(tok, stop=("zz",))
    assert "".join(s.push(i) for i in ids) + s.finish() == "A: Dee. é ü"


def test_conv1d_to_linear_is_exact_and_quantised_models_stay_close(model_dir):
    ref = load_causal_lm(model_dir).eval()
    ids = torch.tensor([list(range(3, 40))])
    with torch.no_grad():
        want = ref(ids).logits
        lin = load_causal_lm(model_dir).eval()
        assert conv1d_to_linear(lin) == 4 * ref.config.n_layer
        torch.testing.assert_close(lin(ids).logits, want, atol=1e-5, rtol=1e-5)
        sizes = {}
        for mode in ("none", "int8", "bf16"):
            m = load_served_model("t", model_dir, mode)
            sizes[mode] = m.weight_bytes
            got = m.model(ids).logits.float()
            cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
            assert cos > 0.999
            if mode == "none":
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # bf16 halves everything; int8 stores the linear weights in a quarter (embeddings stay fp32)
    assert sizes["bf16"] == sizes["none"] // 2
    assert sizes["int8"] < 0.6 * sizes["none"]
    with pytest.raises(Exception, match="unknown"):
        quantize(ref, "int4")


def test_loader_resolves_runs_and_merges_lora(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    run = tmp_path / "run"
    os.symlink(model_dir, run / "final" if run.mkdir() is None else None)
    assert resolve_model_dir(str(run)) == str(run / "final")
    assert resolve_model_dir(model_dir) == model_dir
    base = load_causal_lm(model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True,
                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    with open(tmp_path / "adapter" / "adapter_config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == model_dir
    load_tokenizer(model_dir).save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[3, 4, 5, 6]])
    served = load_served_model("lora", str(tmp_path / "adapter"))
    with torch.no_grad():
        want, got = peft_model(ids).logits, served.model(ids).logits
        plain = load_causal_lm(model_dir)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter changed something, and it is applied


def test_cli_serve_user_errors_exit_2(model_dir, tmp_path, capsys):
    from tinyrlhf.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"error: model '{tmp_path / 'missing'}': no such directory\n"
    assert main(["serve", f"a={model_dir}", f"a={model_dir}"]) == 2
    assert "used twice" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", model_dir, "--port", str(taken.getsockname()[1])]) == 2
        assert capsys.readouterr().err.startswith("error: --host 127.0.0.1 --port")


def test_cli_serve_starts_a_server(model_dir):
    exe = [sys.executable, "-m", "tinyrlhf", "serve"]
    port = free_port()
    proc = subprocess.Popen(exe + ["--name", f"ft={model_dir}", "--port", str(port), "--quantize", "int8",
                                   "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                return False

        wait_until(up, timeout=120, every=0.2)
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["ft"]
        r = httpx.post(url + "/v1/completions", json={"model": "ft", "prompt": "hello", "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    finally:
        proc.terminate()
        proc.wait(30)
