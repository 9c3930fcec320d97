"""Settings of `tinyrlhf serve`: one frozen dataclass per model and one for the server.

Every check that a user can fail raises a ConfigError naming the option, so the CLI prints one line.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from ..errors import ConfigError

QUANTIZE_CHOICES = ("none", "int8", "bf16")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    """The name clients put in `model` (default: the run or model directory's base name)."""
    path: str
    """A run directory (its final/ is served), a merged or LoRA final/, or any local HF causal-LM directory."""


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 32
    """Most sequences decoded together in one forward pass; a request with n choices uses n of them."""
    queue_size: int = 64
    """Most requests waiting for a batch slot; one more is answered 429 with Retry-After."""
    timeout_s: float = 300.0
    """Seconds a request may take from arrival (queue wait included); then it is cancelled (HTTP 504)."""
    quantize: str = "none"
    """Weights for inference: none (fp32), int8 (torchao weight-only int8 linears) or bf16 (all weights)."""
    threads: int = 0
    """torch CPU threads for the forwards (0 = torch's default, one per core)."""


@dataclass(frozen=True)
class HTTPConfig:
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (bytes); a larger one is answered 413 without being read."""
    api_key: str | None = None
    """When set, every /v1 route needs `Authorization: Bearer <api_key>` (401 otherwise)."""
    cors_origins: tuple[str, ...] = ()
    """Origins whose web pages may call the API from a browser (CORS); none by default."""
    check_host: bool = True
    """Answer 421 unless the Host header names this machine's loopback (localhost, 127.0.0.1, [::1]) and the
    port the request came in on: a DNS-rebinding page cannot reach a loopback server. On for loopback binds."""


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[ModelSpec, ...]
    """What to serve; the first one is the chat page's default."""
    host: str = "127.0.0.1"
    """Address to bind; 127.0.0.1 keeps the server local to this machine."""
    port: int = 8000
    """TCP port (0 = any free port)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Batching, queue, timeout and quantisation, the same for every model."""
    http: HTTPConfig = field(default_factory=HTTPConfig)
    """Body limit, API key, CORS origins and the Host check."""
    no_auth: bool = False
    """Serve a non-loopback --host without an API key (refused otherwise)."""


def parse_model_specs(args: list[str]) -> tuple[ModelSpec, ...]:
    """`PATH` or `NAME=PATH` arguments -> ModelSpecs with unique names. A plain PATH is named after its
    directory (a run's `final/` after the run)."""
    if not args:
        raise ConfigError("serve needs at least one RUN_OR_MODEL directory")
    specs, seen = [], set()
    for arg in args:
        name, sep, path = arg.partition("=")
        if not sep:
            path, name = arg, ""
        path = path.rstrip("/") or path
        if not os.path.isdir(path):
            raise ConfigError(f"model '{path}': no such directory")
        if not name:
            base = os.path.basename(os.path.abspath(path))
            name = os.path.basename(os.path.dirname(os.path.abspath(path))) if base == "final" else base
        if not _NAME.match(name):
            raise ConfigError(f"model name '{name}': use letters, digits and ._:/- (at most 128 characters)")
        if name in seen:
            raise ConfigError(f"model name '{name}' is used twice; name them with NAME=PATH")
        seen.add(name)
        specs.append(ModelSpec(name=name, path=path))
    return tuple(specs)


def check_engine(cfg: EngineConfig) -> EngineConfig:
    if cfg.quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"--quantize '{cfg.quantize}' is unknown; valid: {', '.join(QUANTIZE_CHOICES)}")
    if cfg.max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1, got {cfg.max_batch}")
    if cfg.queue_size < 0:
        raise ConfigError(f"--queue-size must be >= 0, got {cfg.queue_size}")
    if not cfg.timeout_s > 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {cfg.timeout_s}")
    if cfg.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {cfg.threads}")
    return cfg


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


def check_http(http: HTTPConfig) -> HTTPConfig:
    if http.max_body_bytes < 1024:
        raise ConfigError(f"--max-body-bytes must be >= 1024, got {http.max_body_bytes}")
    if http.api_key is not None and not re.fullmatch(r"[\x21-\x7e]+", http.api_key):
        raise ConfigError("the API key must be non-empty printable ASCII without spaces (it travels in a header)")
    for origin in http.cors_origins:
        if not _ORIGIN.match(origin):
            raise ConfigError(f"--cors-origin '{origin}': give an origin like http://localhost:3000 (scheme, host "
                              "and port only; '*' is not accepted: name the origins)")
    return http


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_serve(cfg: ServeConfig) -> ServeConfig:
    """Also: a --host other machines can reach needs an API key, unless --no-auth says to serve it open."""
    check_engine(cfg.engine)
    check_http(cfg.http)
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {cfg.port}")
    if cfg.no_auth and cfg.http.api_key:
        raise ConfigError("--no-auth and an API key (--api-key or TINYRLHF_API_KEY) contradict each other")
    if not is_loopback(cfg.host) and not cfg.http.api_key and not cfg.no_auth:
        raise ConfigError(f"--host {cfg.host} can be reached from other machines: give --api-key KEY (or set "
                          "TINYRLHF_API_KEY), or pass --no-auth to serve without one")
    return cfg
