"""Helpers for the serve tests: tiny models built here (nothing downloaded) and a real uvicorn server on
loopback, always shut down."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time

import pytest
import torch

from tinyrlhf.config import ModelConfig
from tinyrlhf.models import build_model, save_hf

CORPUS = ["- Cal(m): Ann(f), Bob(m)\n- Dee(f): Ann, Bob\nQ: siblings of Cal?\nA: Dee.",
          "hello world, the quick brown fox jumps over the lazy dog 0123456789 é ü ß"] * 40
# What the "html" model says, token after token: markup that must show literally in the chat page.
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# the one skip the issues allow: no browser can be installed here (.ci/run installs it)
needs_browser = pytest.mark.skipif(not (os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)),
                                   reason="needs Debian's chromium and chromium-driver (apt-get install -y "
                                          "chromium chromium-driver); .ci/run installs them")
HTML = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def tiny_model_dir(path, seed: int = 0) -> str:
    """A random-init gpt2-tiny (2 x 128, 256 positions) and its BPE tokenizer, saved as a HF directory."""
    model, tok = build_model(ModelConfig(preset="gpt2-tiny", tokenizer_vocab=320), corpus=CORPUS, seed=seed)
    save_hf(model, tok, str(path))
    return str(path)


def html_model_dir(path) -> str:
    """A gpt2-tiny whose every next token is one added token spelling HTML: the final layer norm outputs
    a constant (weight 0, bias 1) and only that token's LM-head row is non-zero, so it wins by 10 x 128
    logits whatever the input. Untied head, so the embedding is untouched."""
    model, tok = build_model(ModelConfig(preset="gpt2-tiny", tokenizer_vocab=320), corpus=CORPUS)
    tok.add_tokens([HTML])
    html_id = tok.convert_tokens_to_ids(HTML)
    if html_id >= model.config.vocab_size:
        model.resize_token_embeddings(html_id + 1, mean_resizing=False)
    model.config.tie_word_embeddings = False
    head = torch.nn.Linear(model.config.n_embd, model.config.vocab_size, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[html_id] = 10.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
    model.lm_head = head
    save_hf(model, tok, str(path))
    return str(path)


@pytest.fixture(scope="module", autouse=False)
def one_thread():
    """torch on one thread for the module, restored after: on a CPU shared with other jobs, a tiny model's
    decoding steps were 10x slower with 2 intra-op threads (the pool spins waiting for a busy core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app, timeout: float = 30.0):
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    from tinyrlhf.serve.server import bind

    sock = bind("127.0.0.1", 0)  # as `tinyrlhf serve` binds (TCP_NODELAY included)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def make_app(paths: dict, http=None, **engine):
    """The real app over models loaded from `paths` (name -> dir), with EngineConfig overrides and an optional
    HTTPConfig (default: 1 MiB bodies, no key, no CORS, Host check on, as `tinyrlhf serve` on 127.0.0.1)."""
    from tinyrlhf.serve.app import create_app
    from tinyrlhf.serve.config import EngineConfig
    from tinyrlhf.serve.loader import load_served_model

    models = [load_served_model(name, path, engine.get("quantize", "none")) for name, path in paths.items()]
    return create_app(models, EngineConfig(**engine), http)


def wait_until(cond, timeout: float = 20.0, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)
