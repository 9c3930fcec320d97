"""`tinyrlhf serve`: load the models, build the app, run it on uvicorn until Ctrl-C."""
from __future__ import annotations

import dataclasses
import socket

from ..errors import ConfigError
from .config import ServeConfig, check_serve, is_loopback


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, so that a taken port is one clear error before any model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit TCP_NODELAY, which asyncio does not set on them: without it a response's
    # body segment waits for the ACK of its header segment, which the client delays ~40 ms (Nagle + delayed
    # ACK): measured on loopback, /health took 44 ms instead of 0.2 ms, and stream chunks were held as long
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def build(cfg: ServeConfig, log=print):
    """(FastAPI app, loaded models) for `cfg`; each generating model is checked to batch before the server
    starts; a reward run (reward_head.safetensors in it or its final/) is served on /v1/rewards."""
    import torch

    from .app import create_app
    from .batch import check_batching
    from .loader import is_reward_dir, load_served_model, load_served_reward

    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)
    models = []
    for spec in cfg.models:
        if is_reward_dir(spec.path):  # a reward run: scored on /v1/rewards, in fp32 as the trainer loads it
            m = load_served_reward(spec.name, spec.path)
            log(f"reward model {m.name}: {spec.path} (fp32, {m.weight_bytes / 2**20:.1f} MiB of weights, context "
                f"{m.context}): POST /v1/rewards")
            models.append(m)
            continue
        m = load_served_model(spec.name, spec.path, cfg.engine.quantize)
        try:
            check_batching(m.model, m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None
                           else m.tokenizer.eos_token_id)
        except TypeError as e:
            raise ConfigError(f"model '{spec.path}': {e}") from None
        log(f"model {m.name}: {spec.path} ({m.quantize}, {m.weight_bytes / 2**20:.1f} MiB of weights, "
            f"context {m.context})")
        models.append(m)
    # the Host check guards loopback binds against DNS rebinding; on any other --host, the API key does
    http = dataclasses.replace(cfg.http, check_host=is_loopback(cfg.host))
    return create_app(models, cfg.engine, http), models


def serve(cfg: ServeConfig, log=print) -> int:
    import uvicorn

    check_serve(cfg)
    sock = bind(cfg.host, cfg.port)
    app, _ = build(cfg, log)
    host, port = sock.getsockname()[:2]
    log(f"serving on http://{host}:{port}/ (chat page), OpenAI API at http://{host}:{port}/v1"
        + (" (API key required)" if cfg.http.api_key else " (no API key)"))
    uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)).run(sockets=[sock])
    return 0
