"""POST /v1/rewards: a served reward model's scores for prompt/completion pairs, many in one request.

    {"model": "rm",                                   optional when the server serves one reward model
     "input": [{"prompt": "Q: ...\\nA:", "completion": " Dee."},                   a prompt string: as given
               {"prompt": [{"role": "user", "content": "..."}], "completion": "..."}],      chat messages
     "max_length": 256,        optional: tokens per pair, cut as training cuts them (default: the model's context)
     "precision": "fp32"}      optional: fp32, or bf16 (autocast, as a trainer with train.precision=bf16 scores)
    -> {"object": "list", "model": "rm", "data": [{"object": "reward", "index": 0, "reward": 0.52}, ...],
        "usage": {"prompt_tokens": 61, "total_tokens": 61}}

A prompt string is scored as given (the trainer sends its prompts already in the policy's format, as its
local reward source scores them); chat messages are rendered in the reward model's prompt template and the
completion as training renders a reply (data/templates.py). Each pair is tokenised as training does
(data/collate.encode: prompt and completion apart, EOS appended, the prompt's start cut first) and scored
SCORE_BATCH at a time (models.score_encoded), exactly as the local reward source: the rewards are the local
reward model's. Checking and tokenising run in a worker thread (app.py); scoring in the model's own scoring
thread, one request after another, so /health and the other models stay responsive. At most
EngineConfig.queue_size requests wait for that thread (429 beyond); one that has not been answered within
EngineConfig.timeout_s of its arrival is answered 504.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..data.collate import encode
from ..data.templates import render_reply, template_of
from ..models import score_encoded
from .config import EngineConfig
from .loader import LoadedReward
from .protocol import APIError, RewardRequest
from .templates import render_chat
from .validate import MAX_NAME_CHARS, bad_value, check_text, parse

MAX_INPUTS = 1024
"""Most pairs in one request (the body limit, --max-body-bytes, usually binds first)."""


@dataclass
class PreparedRewards:
    """A valid /v1/rewards request, tokenised."""
    model: LoadedReward
    examples: list[tuple[list[int], list[int]]]
    precision: str
    tokens: int


def render_pair(tokenizer, prompt, completion: str) -> tuple[str, str]:
    """(prompt text, completion text) as the reward model reads them."""
    if isinstance(prompt, str):
        return prompt, completion
    text = render_chat(tokenizer, prompt)  # the model's template; a template that refuses the messages: 400
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in prompt]
    try:
        return text, render_reply(template_of(tokenizer) or "plain", turns, text, tokenizer, completion)
    except Exception as e:  # a chat template that rejects the reply (jinja raise_exception): the client's input
        raise APIError(400, f"'input': the model's chat template rejected a reply: {e}"[:300], param="input",
                       code="invalid_value") from None


def prepare(body: Any, lookup: Callable[[str | None], LoadedReward]) -> PreparedRewards:
    """The decoded body -> PreparedRewards, or a 400 / 404 naming the field."""
    req = parse(RewardRequest, body, deepest=True)
    if req.model is not None and len(req.model) > MAX_NAME_CHARS:
        bad_value("model", f"at most {MAX_NAME_CHARS} characters, got {len(req.model)}")
    if not req.input:
        bad_value("input", "at least one {prompt, completion} pair is required")
    if len(req.input) > MAX_INPUTS:
        bad_value("input", f"at most {MAX_INPUTS} pairs in one request, got {len(req.input)}")
    texts = [x.completion for x in req.input]
    for x in req.input:
        texts += [x.prompt] if isinstance(x.prompt, str) else [m.text() for m in x.prompt]
    check_text("input", texts)
    m = lookup(req.model)
    max_length = m.context if req.max_length is None else req.max_length
    if not 2 <= max_length <= m.context:
        bad_value("max_length", f"must be between 2 and the model's context ({m.context}), got {max_length}")
    for i, x in enumerate(req.input):
        if isinstance(x.prompt, list) and not x.prompt:
            bad_value(f"input[{i}].prompt", "at least one message is required")
    pairs = [render_pair(m.tokenizer, x.prompt, x.completion) for x in req.input]
    examples = encode(m.tokenizer, [p for p, _ in pairs], [c for _, c in pairs], max_length)
    return PreparedRewards(m, examples, req.precision, sum(len(p) + len(c) for p, c in examples))


class Scorer:
    """One reward model's scoring thread (see the module docstring: queue bound, timeout)."""

    def __init__(self, m: LoadedReward, cfg: EngineConfig):
        self.m, self.cfg = m, cfg
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"score-{m.name}"[:60])
        self.waiting = 0
        """Requests handed to the thread and not yet answered (touched on the event loop only)."""

    def _score(self, prep: PreparedRewards) -> list[float]:
        bf16 = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prep.precision == "bf16" \
            else contextlib.nullcontext
        return score_encoded(self.m.model, prep.examples, self.m.tokenizer.pad_token_id, "cpu", bf16).tolist()

    async def score(self, prep: PreparedRewards, arrival: float) -> list[float]:
        if self.waiting > self.cfg.queue_size:  # one scoring, queue_size waiting
            raise APIError(429, f"{self.waiting} requests are waiting for the reward model '{self.m.name}' (the "
                           "server's --queue-size); try again shortly", type_="rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"})
        self.waiting += 1
        job = self.pool.submit(self._score, prep)
        try:
            left = self.cfg.timeout_s - (time.monotonic() - arrival)
            return await asyncio.wait_for(asyncio.wrap_future(job), max(left, 0.001))
        except asyncio.TimeoutError:
            job.cancel()  # not started yet: it never runs; started: it finishes and is dropped
            raise APIError(504, f"not scored within {self.cfg.timeout_s:g} s (the server's --timeout)",
                           type_="timeout_error", code="timeout") from None
        finally:
            self.waiting -= 1

    def stop(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
