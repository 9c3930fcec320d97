"""A decoded request body -> what the engine runs (`Prepared`), or an APIError (400 / 404) naming the field.

Types are checked by the pydantic models in protocol.py (strict: "5" is not an int); values here, with
OpenAI's ranges where it has them and a bound wherever an unbounded value would cost the server:
    * seed fits int64; n in 1..MAX_N; max_tokens >= 1 and inside the context; at most max_batch prompts;
    * model and user at most MAX_NAME_CHARS characters, prompt strings / message contents at most
      MAX_TEXT_CHARS together (tokenising is the costly step), at most MAX_STOP stop strings of at most
      MAX_STOP_CHARS each (the detokeniser's hold-back work per token grows with the square of that length);
    * temperature 0..2 (below sampling.MIN_TEMPERATURE it is greedy), top_p 0..1.
Everything here is CPU work (tokenising a long prompt takes seconds): app.py runs it in a worker thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError

from .engine import SamplingParams
from .loader import LoadedModel
from .protocol import APIError, ChatRequest, CompletionRequest
from .templates import completion_prompts, encode, render_chat

MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_N = 16
MAX_NAME_CHARS = 256
MAX_TEXT_CHARS = 1 << 20
SEED_MIN, SEED_MAX = -2**63, 2**63 - 1


@dataclass
class Prepared:
    """A valid request, tokenised: what the app hands to the model's engine and how it answers."""
    model: LoadedModel
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool
    """Whether the response carries log-probs."""
    as_ids: bool
    """return_tokens_as_token_ids."""


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


def parse(cls, body: Any, deepest: bool = False):
    """Validate a decoded JSON body against a request model, or raise a 400 naming the field: the first error,
    or (`deepest`) the one deepest in the body (of a `str | list[ChatMessage]` that is a list, the message's
    bad field rather than "not a string")."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        err = max(e.errors(), key=lambda x: len(x["loc"])) if deepest else e.errors()[0]
        param = _param(err["loc"])
        if err["type"] == "missing":
            raise APIError(400, f"'{param}' is a required property", param=param) from None
        got = type(err.get("input")).__name__
        raise APIError(400, f"invalid value for '{param}': {err['msg']} (got {got})", param=param,
                       code="invalid_type") from None


def bad_value(param: str, message: str):
    raise APIError(400, f"'{param}': {message}", param=param, code="invalid_value")


def check_common(req) -> None:
    """Bounds of the fields both endpoints share, checked before the model is looked up or anything tokenised."""
    for name in ("model", "user"):
        value = getattr(req, name)
        if value is not None and len(value) > MAX_NAME_CHARS:
            bad_value(name, f"at most {MAX_NAME_CHARS} characters, got {len(value)}")
    if req.seed is not None and not SEED_MIN <= req.seed <= SEED_MAX:
        bad_value("seed", f"must be a 64-bit signed integer ({SEED_MIN}..{SEED_MAX}), got {req.seed}")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > MAX_STOP:
        bad_value("stop", f"at most {MAX_STOP} stop sequences, got {len(stop)}")
    if any(s == "" for s in stop):
        bad_value("stop", "stop sequences must be non-empty strings")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        bad_value("stop", f"each stop sequence has at most {MAX_STOP_CHARS} characters, got "
                          f"{max(len(s) for s in stop)}")


def check_text(param: str, texts: list[str]) -> None:
    total = sum(len(t) for t in texts)
    if total > MAX_TEXT_CHARS:
        bad_value(param, f"at most {MAX_TEXT_CHARS} characters in all, got {total}")


def sampling_params(req, *, max_tokens: int, logprobs: int | None) -> SamplingParams:
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
    return SamplingParams(max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), stop=stop,
                          seed=req.seed, logprobs=logprobs, ignore_eos=req.ignore_eos)


def check_n(req, n_prompts: int, max_batch: int) -> int:
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


def completion(body: Any, lookup: Callable[[str], LoadedModel], max_batch: int) -> Prepared:
    """POST /v1/completions."""
    req = parse(CompletionRequest, body)
    check_common(req)
    m = lookup(req.model)
    if req.echo:
        raise APIError(400, "'echo': not supported by this server", param="echo", code="unsupported")
    if req.suffix:
        raise APIError(400, "'suffix': not supported by this server", param="suffix", code="unsupported")
    if req.logprobs is not None and not 0 <= req.logprobs <= 5:
        bad_value("logprobs", f"must be between 0 and 5, got {req.logprobs}")
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) and len(prompt) > max_batch:
        bad_value("prompt", f"at most {max_batch} prompts (this server's batch size), got {len(prompt)}")
    check_text("prompt", [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)])
    prompts = completion_prompts(m.tokenizer, prompt, len(m.tokenizer))
    max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default for completions
    check_lengths(prompts, max_tokens, m.context, "prompt")
    params = sampling_params(req, max_tokens=max_tokens, logprobs=req.logprobs)
    n = check_n(req, len(prompts), max_batch)
    if req.best_of not in (None, n):
        bad_value("best_of", "only best_of = n is supported")
    return Prepared(m, prompts, params, n, bool(req.stream), _usage(req), req.logprobs is not None,
                    req.return_tokens_as_token_ids)


def chat(body: Any, lookup: Callable[[str], LoadedModel], max_batch: int) -> Prepared:
    """POST /v1/chat/completions."""
    req = parse(ChatRequest, body)
    check_common(req)
    m = lookup(req.model)
    check_text("messages", [msg.text() for msg in req.messages])
    prompts = [encode(m.tokenizer, render_chat(m.tokenizer, req.messages))]
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    check_lengths(prompts, max_tokens, m.context, "messages")
    if max_tokens is None:  # OpenAI's default: as many as the context leaves
        max_tokens = m.context - len(prompts[0])
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= 20:
        bad_value("top_logprobs", f"must be between 0 and 20, got {req.top_logprobs}")
    if req.top_logprobs and not req.logprobs:
        bad_value("top_logprobs", "needs logprobs: true")
    params = sampling_params(req, max_tokens=max_tokens, logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    n = check_n(req, 1, max_batch)
    return Prepared(m, prompts, params, n, bool(req.stream), _usage(req), bool(req.logprobs),
                    req.return_tokens_as_token_ids)


def _usage(req) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)
