"""The OpenAI API shapes: request models (pydantic, strict types), the error, and response / stream-chunk bodies.

Requests follow OpenAI's /v1/completions and /v1/chat/completions reference (and /v1/rewards, ours:
serve/rewards.py); body.py and validate.py check
them. Every bad input becomes an `APIError` that the app turns into HTTP 4xx with OpenAI's error object
`{"error": {"message", "type", "param", "code"}}`, naming the field. Unknown fields are ignored, as
OpenAI-compatible servers do; `ignore_eos` is an extension (as in vLLM).
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .engine import Delta


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
    user: str | None = None


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


class RewardInput(_Strict):
    prompt: str | list[ChatMessage]
    completion: str


class RewardRequest(_Strict):
    """POST /v1/rewards (serve/rewards.py; not an OpenAI endpoint)."""
    model: str | None = None
    input: list[RewardInput]
    max_length: int | None = None
    precision: Literal["fp32", "bf16"] = "fp32"


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


def rewards_body(model: str, rewards: list[float], tokens: int) -> dict:
    return {"object": "list", "model": model,
            "data": [{"object": "reward", "index": i, "reward": r} for i, r in enumerate(rewards)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def now() -> int:
    return int(time.time())
