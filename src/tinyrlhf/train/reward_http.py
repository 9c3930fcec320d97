"""reward=http://HOST:PORT: a reward model served by `tinyrlhf serve` (POST /v1/rewards) as a reward source.

A call sends its pairs in requests of reward_http.batch_size, in order, each with the trainer's truncation
length (data.max_length) and precision, so that the server scores exactly what the local reward model would
(docs/guides/serving.md has the schema). A request that fails for a reason that may pass (no connection, no
answer within timeout_s, a connection closed mid-answer, HTTP 429, 500, 502, 503 or 504) is tried again after
backoff_s, 2 x backoff_s, ... up to `retries` times; after the last, or at once for any other refusal (a 4xx:
the request itself is wrong), one RewardSourceError line names the URL and the failure. The online loops
then keep their last step's checkpoint (train/online.py). The standard library's urllib: no dependency.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from ..config import RewardHTTPConfig
from ..errors import ConfigError, RewardSourceError

RETRY_STATUS = (429, 500, 502, 503, 504)
MAX_WAIT_S = 60.0
"""Longest wait before one retry, whatever backoff_s doubled or a Retry-After header says."""


def rewards_url(spec: str) -> str:
    """http://HOST:PORT, .../v1 or .../v1/rewards -> the full /v1/rewards URL; anything else is a ConfigError."""
    try:
        parts = urllib.parse.urlsplit(spec)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
    except ValueError as e:
        raise ConfigError(f"reward '{spec}': not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"reward '{spec}': give the server as http://HOST:PORT")
    if parts.query or parts.fragment or parts.username:
        raise ConfigError(f"reward '{spec}': no query, fragment or user name in the URL (the model goes in "
                          "reward_http.model, the API key in the environment: reward_http.api_key_env)")
    path = parts.path.rstrip("/")
    if path in ("", "/v1"):
        path = "/v1/rewards"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_reward(spec: str, cfg: RewardHTTPConfig | None, max_length: int, precision: str,
                sleep: Callable[[float], None] = time.sleep) -> Callable:
    """f(prompts, completions) -> list of floats, asking the server at `spec` (see the module docstring)."""
    cfg = cfg or RewardHTTPConfig()
    url = rewards_url(spec)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    # a proxy set in the environment would see (and could not reach) a loopback server: bypass it there
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})]
                                           if _loopback(urllib.parse.urlsplit(url).hostname) else []))

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(prompts), cfg.batch_size):
            body = {"input": [{"prompt": p, "completion": c} for p, c in
                              zip(prompts[i:i + cfg.batch_size], completions[i:i + cfg.batch_size])],
                    "max_length": max_length, "precision": precision}
            if cfg.model:
                body["model"] = cfg.model
            out += _post(opener, url, json.dumps(body).encode("utf-8"), headers, cfg, len(body["input"]), sleep)
        return out
    return score


def _post(opener, url: str, data: bytes, headers: dict, cfg: RewardHTTPConfig, n: int, sleep) -> list[float]:
    tries, t0 = cfg.retries + 1, time.monotonic()
    for attempt in range(tries):
        wait = cfg.backoff_s * 2 ** attempt
        try:
            with opener.open(urllib.request.Request(url, data, headers, method="POST"), timeout=cfg.timeout_s) as r:
                return _rewards(url, r.read(), n)
        except urllib.error.HTTPError as e:
            why = f"HTTP {e.code}: {_error_message(e)}"
            if e.code not in RETRY_STATUS:
                raise RewardSourceError(f"reward '{url}' refused the request ({why})") from None
            if e.code == 429:
                wait = max(wait, _retry_after(e.headers.get("Retry-After")))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            why = _reason(e, cfg.timeout_s)
        if attempt + 1 < tries:
            sleep(min(wait, MAX_WAIT_S))
    raise RewardSourceError(f"reward '{url}': no answer after {tries} tries over {time.monotonic() - t0:.1f} s "
                            f"(reward_http.retries={cfg.retries}), the last: {why}")


def _reason(e: Exception, timeout_s: float) -> str:
    """A failure to reach the server (or to read its whole answer) in a few words."""
    cause = e.reason if isinstance(e, urllib.error.URLError) and isinstance(e.reason, Exception) else e
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(cause, TimeoutError):
        return f"no answer within {timeout_s:g} s (reward_http.timeout_s)"
    if isinstance(cause, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                          http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return "the server closed the connection before answering"
    text = str(getattr(cause, "strerror", None) or cause) or type(cause).__name__
    return f"{type(cause).__name__}: {text}"[:200]


def _error_message(e: urllib.error.HTTPError) -> str:
    """The message of the server's error object, else the start of its body."""
    try:
        raw = e.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = raw.decode("utf-8", "replace").strip() or e.reason
    return str(message)[:300]


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except ValueError:
        return 0.0


def _rewards(url: str, raw: bytes, n: int) -> list:
    """The rewards of a /v1/rewards answer, in input order; anything else is a RewardSourceError."""
    def bad(why: str) -> RewardSourceError:
        return RewardSourceError(f"reward '{url}' answered something that is not a /v1/rewards response: {why}")
    try:
        data = json.loads(raw)["data"]
    except (ValueError, KeyError, TypeError):
        raise bad(f"no JSON object with 'data' (it starts {raw[:80]!r})") from None
    if not isinstance(data, list) or len(data) != n:
        raise bad(f"{len(data) if isinstance(data, list) else 'no'} rewards for {n} inputs")
    out: list[float | None] = [None] * n
    for item in data:
        i = item.get("index") if isinstance(item, dict) else None
        r = item.get("reward") if isinstance(item, dict) else None
        if not isinstance(i, int) or not 0 <= i < n or isinstance(r, bool) or not isinstance(r, (int, float)):
            raise bad(f"an item {str(item)[:80]} is not {{'index': 0..{n - 1}, 'reward': number}}")
        out[i] = float(r)
    if any(x is None for x in out):
        raise bad("an index is missing or repeated")
    return out
