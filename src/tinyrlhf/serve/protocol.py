"""The OpenAI API shapes: request validation (pydantic, strict types) and response / stream-chunk bodies.

Requests follow OpenAI's /v1/completions and /v1/chat/completions reference. Every bad input becomes an
`APIError` that the app turns into HTTP 4xx with OpenAI's error object
`{"error": {"message", "type", "param", "code"}}`, naming the field. Unknown fields are ignored, as
OpenAI-compatible servers do (clients send `user`, ...); `ignore_eos` is an extension (as in vLLM).
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .engine import Delta, SamplingParams

MAX_STOP = 4
MAX_N = 16


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    ignore_eos: bool = False
    return_tokens_as_token_ids: bool = False


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = None
    logprobs: int | None = None
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Common):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None


def _param(loc: tuple) -> str:
    """pydantic's error location -> an OpenAI-style param: ('messages', 0, 'content') -> 'messages[0].content'.
    Union member tags ('str', 'list[int]', 'TextPart', ...) are not part of the client's path."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part[:1].islower() and "[" not in part and part not in ("str", "int", "float", "bool", "none"):
            out += ("." if out else "") + part
    return out


def parse(cls, body: Any):
    """Validate a decoded JSON body against a request model, or raise a 400 naming the field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = _param(err["loc"])
        if err["type"] == "missing":
            raise APIError(400, f"'{param}' is a required property", param=param) from None
        got = type(err.get("input")).__name__
        raise APIError(400, f"invalid value for '{param}': {err['msg']} (got {got})", param=param,
                       code="invalid_type") from None


def bad_value(param: str, message: str):
    raise APIError(400, f"'{param}': {message}", param=param, code="invalid_value")


def sampling_params(req: _Common, *, max_tokens: int, logprobs: int | None) -> SamplingParams:
    """Check the shared sampling fields (ranges as in OpenAI's reference) and build SamplingParams."""
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0 <= temperature <= 2:
        bad_value("temperature", f"must be between 0 and 2, got {temperature}")
    if not 0 <= top_p <= 1:
        bad_value("top_p", f"must be between 0 and 1, got {top_p}")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (None, 0):
            bad_value(name, "is not supported by this server (only 0)")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > MAX_STOP:
        bad_value("stop", f"at most {MAX_STOP} stop sequences, got {len(stop)}")
    if any(s == "" for s in stop):
        bad_value("stop", "stop sequences must be non-empty strings")
    return SamplingParams(max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), stop=stop,
                          seed=req.seed, logprobs=logprobs, ignore_eos=req.ignore_eos)


def check_n(req: _Common, n_prompts: int, max_batch: int) -> int:
    n = 1 if req.n is None else req.n
    if not 1 <= n <= MAX_N:
        bad_value("n", f"must be between 1 and {MAX_N}, got {n}")
    if n * n_prompts > max_batch:
        bad_value("n", f"n x prompts = {n * n_prompts} sequences exceeds this server's batch size ({max_batch})")
    return n


def check_lengths(prompts: list[list[int]], max_tokens: int | None, context: int, param: str) -> None:
    """Every prompt plus max_tokens must fit the model's context (OpenAI's context_length_exceeded)."""
    if max_tokens is not None and max_tokens < 1:
        bad_value("max_tokens", f"must be at least 1, got {max_tokens}")
    longest = max(len(p) for p in prompts)
    if longest >= context:
        raise APIError(400, f"this model's maximum context length is {context} tokens, but the {param} has "
                       f"{longest} tokens (leave room for at least one generated token)", param=param,
                       code="context_length_exceeded")
    if max_tokens is not None and longest + max_tokens > context:
        raise APIError(400, f"this model's maximum context length is {context} tokens, but {longest + max_tokens} "
                       f"were requested ({longest} in the {param}, {max_tokens} in max_tokens)",
                       param="max_tokens", code="context_length_exceeded")


# ------------------------------------------------------------------ responses

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class ChoiceState:
    """Text, log-probs and finish reason of one choice, accumulated from Deltas."""

    def __init__(self):
        self.text, self.tokens, self.finish_reason = "", [], None

    def add(self, d: Delta):
        self.text += d.text
        self.tokens.extend(d.tokens)
        self.finish_reason = d.finish_reason or self.finish_reason


def _name(token_id: int, text: str, as_ids: bool) -> str:
    """A token as the client sees it: its text, or "token_id:ID" (`return_tokens_as_token_ids`, as in vLLM:
    a token holding part of a UTF-8 character decodes to U+FFFD, which does not say which token it was)."""
    return f"token_id:{token_id}" if as_ids else text


def completion_logprobs(tokens, offset: int = 0, as_ids: bool = False) -> dict:
    """Legacy completions log-probs: parallel lists, text_offset counted in characters from the text start."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        out["tokens"].append(_name(t.id, t.text, as_ids))
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append({_name(i, s, as_ids): v for i, s, v in t.top})
        out["text_offset"].append(offset)
        offset += len(t.text)
    return out


def chat_logprobs(tokens, as_ids: bool = False) -> dict:
    def entry(token_id, text, lp):
        return {"token": _name(token_id, text, as_ids), "logprob": lp, "bytes": list(text.encode("utf-8"))}
    return {"content": [entry(t.id, t.text, t.logprob) | {"top_logprobs": [entry(*top) for top in t.top]}
                        for t in tokens]}


def completion_body(rid: str, model: str, created: int, choices: list[ChoiceState], want_logprobs: bool,
                    prompt_tokens: int, completion_tokens: int, as_ids: bool = False) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": i, "text": c.text, "finish_reason": c.finish_reason,
                         "logprobs": completion_logprobs(c.tokens, 0, as_ids) if want_logprobs else None}
                        for i, c in enumerate(choices)],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_body(rid: str, model: str, created: int, choices: list[ChoiceState], want_logprobs: bool,
              prompt_tokens: int, completion_tokens: int, as_ids: bool = False) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason,
                         "logprobs": chat_logprobs(c.tokens, as_ids) if want_logprobs else None}
                        for i, c in enumerate(choices)],
            "usage": usage(prompt_tokens, completion_tokens)}


def completion_chunk(rid: str, model: str, created: int, d: Delta, want_logprobs: bool, offset: int,
                     as_ids: bool = False) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": d.index, "text": d.text, "finish_reason": d.finish_reason,
                         "logprobs": completion_logprobs(d.tokens, offset, as_ids) if want_logprobs else None}]}


def chat_chunk(rid: str, model: str, created: int, index: int, delta: dict, finish_reason: str | None = None,
               logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def usage_chunk(rid: str, obj: str, model: str, created: int, prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk when stream_options.include_usage is set: no choices, the whole request's usage."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def now() -> int:
    return int(time.time())
