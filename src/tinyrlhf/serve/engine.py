"""The serving engine: a bounded queue and one scheduler thread per model, decoding with continuous batching.

Iteration-level scheduling (Orca, Yu et al. OSDI 2022; vLLM's scheduler): the batch is re-formed at every
decoding step. Each iteration (1) admits waiting requests while the batch has room and prefills them into
the running batch (`batch.RunningBatch`), (2) samples one token for every row, (3) sends each request its
new text, and drops rows that finished (EOS, stop string, max_tokens), were cancelled (the client went
away) or ran out of time, (4) runs one forward pass for the rows left. A request therefore starts at the
next step instead of waiting for a whole batch to finish, and leaves the moment it is done.

Sampling (sampling.py) reuses the rollout engine's inverse-CDF sampler (`rollout.sample_token`) with one
uniform per row per step drawn from that sequence's own generator, seeded from (request seed, choice index):
the same seed gives the same text whatever else shares the batch (fp32 and bf16, up to float rounding of
different batch shapes; not int8, whose activation scale is taken over the batch: see quantize.py). Forwards
run in this thread (torch releases the GIL), so the asyncio event loop keeps serving HTTP; results go back
with `loop.call_soon_threadsafe`.

One request's failure is its own (batch isolation): a row that cannot be sampled (non-finite logits, see
sampling.py) or whose text processing raises fails its request with a 500 and leaves the batch at once;
a prefill that raises is retried one request at a time, so only the request it comes from fails; a decoding
forward that raises rebuilds the batch from each row's own tokens, one row at a time, and fails only the rows
whose own forward raises. Every other row goes on as if the failed one had never been there.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field

import torch

from .batch import RunningBatch
from .config import EngineConfig
from .detok import TextStream
from .sampling import effective_temperature, sample_rows


class QueueFull(Exception):
    """The waiting queue is at `queue_size`: answer 429 with Retry-After."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy (queue full); retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    """Tokens to generate at most per choice."""
    temperature: float = 1.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    stop: tuple[str, ...] = ()
    """Strings that end a choice (not included in its text)."""
    seed: int | None = None
    """Same seed, same text; None draws a fresh one."""
    logprobs: int | None = None
    """None = no log-probs; k >= 0 = the sampled token's log-prob plus the k most likely tokens."""
    ignore_eos: bool = False
    """Keep generating after EOS (benchmarks: every request makes exactly max_tokens)."""


@dataclass
class TokenInfo:
    id: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]]  # (id, text, log-prob) of the most likely tokens


@dataclass
class Delta:
    """What one step produced for one choice."""
    index: int
    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None = None


class Request:
    """One API call: `n` choices for each of its prompts. Created on the event loop; the engine thread
    puts lists of Deltas (or an error string) on `events`."""

    _ids = itertools.count()

    def __init__(self, prompts: list[list[int]], params: SamplingParams, n: int, timeout_s: float,
                 loop: asyncio.AbstractEventLoop):
        self.id = next(self._ids)
        self.prompts, self.params, self.n = prompts, params, n
        self.loop, self.events = loop, asyncio.Queue()
        self.arrival = time.monotonic()
        self.deadline = self.arrival + timeout_s
        self.first_token_at: float | None = None
        self.cancelled = False
        self.error: str | None = None  # set by the engine thread when this request failed (HTTP 500)
        self.prompt_tokens = sum(len(p) for p in prompts) * n
        self.completion_tokens = 0
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)

    @property
    def n_seqs(self) -> int:
        return len(self.prompts) * self.n

    def emit(self, item):
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


@dataclass
class Sequence:
    request: Request
    index: int
    prompt: list[int]
    text: TextStream
    generator: torch.Generator
    generated: int = 0
    finish_reason: str | None = None
    pending: list = field(default_factory=list)  # Deltas not yet sent


class Engine:
    """Continuous-batching generation for one model. `start()` launches the scheduler thread."""

    def __init__(self, name: str, model, tokenizer, cfg: EngineConfig, metrics=None):
        self.name, self.model, self.tokenizer, self.cfg = name, model, tokenizer, cfg
        self.metrics = metrics
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.batch = RunningBatch(model)
        self._pending: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._recent = collections.deque()  # (time, tokens) of the last steps, for tokens/s
        self.steps = 0
        self.generated_tokens = 0
        self.batch_sizes: collections.Counter = collections.Counter()  # rows per decode step -> steps

    # ------------------------------------------------------------------ called from the event loop
    def start(self):
        self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    def stop(self):
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, request: Request) -> Request:
        with self._cv:
            # a request that fits in the batch now starts at the next step; others wait, up to queue_size
            fits = len(self.batch) + sum(r.n_seqs for r in self._pending) + request.n_seqs <= self.cfg.max_batch
            if not fits and len(self._pending) >= self.cfg.queue_size:
                raise QueueFull(retry_after=self._retry_after())
            self._pending.append(request)
            self._cv.notify_all()
        return request

    def cancel(self, request: Request):
        """The client went away: drop the request now if it waits, at the next step if it runs."""
        with self._cv:
            request.cancelled = True
            if request in self._pending:
                self._pending.remove(request)
                if self.metrics:
                    self.metrics.cancelled(self.name)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return len(self.batch)

    def tokens_per_second(self, window: float = 10.0) -> float:
        now, recent = time.monotonic(), list(self._recent)
        recent = [(t, n) for t, n in recent if now - t <= window]
        if not recent:
            return 0.0
        return sum(n for _, n in recent) / max(now - recent[0][0], 1e-3) if len(recent) > 1 else 0.0

    def _retry_after(self) -> int:
        # a rough wait: one batch's worth of the queue ahead, at the recent rate (at least 1 s)
        rate = self.tokens_per_second()
        ahead = sum(r.n_seqs * r.params.max_tokens for r in self._pending)
        return max(1, min(60, int(ahead / rate) if rate else 1))

    # ------------------------------------------------------------------ the scheduler thread
    def _loop(self):
        while True:
            with self._cv:
                while not self._stopping and not self._pending and not len(self.batch):
                    self._cv.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            try:
                if admitted:
                    self._join(admitted)
                if len(self.batch):
                    self._step()
            except Exception as e:  # a bug outside the per-row guards: fail what is running, keep serving
                failed = {id(r): r for r in admitted} | {id(s.request): s.request for s in self.batch.rows}
                for req in failed.values():
                    req.emit(("error", 500, f"generation failed: {e.__class__.__name__}: {e}"))
                self.batch.keep([])
        for seq in self.batch.rows:
            seq.request.emit(("error", 503, "the server is shutting down"))
        for req in self._pending:
            req.emit(("error", 503, "the server is shutting down"))

    def _admit(self) -> list[Request]:
        now, admitted, room = time.monotonic(), [], self.cfg.max_batch - len(self.batch)
        while self._pending:
            req = self._pending[0]
            if req.deadline <= now:
                self._pending.popleft()
                req.emit(("error", 504, "the request timed out while waiting for a batch slot"))
                if self.metrics:
                    self.metrics.timed_out(self.name)
                continue
            if req.n_seqs > room:
                break
            self._pending.popleft()
            admitted.append(req)
            room -= req.n_seqs
        return admitted

    def _fail(self, req: Request, why: str):
        """Mark `req` failed (its rows leave at the end of this step); the first reason is the one reported."""
        if req.error is None:
            req.error = f"generation failed for this request: {why}"

    def _join(self, requests: list[Request]):
        """Prefill the admitted requests together; if that raises, one request at a time, so that a request
        whose own prefill fails is the only one that fails (the batch is untouched until a prefill succeeded)."""
        try:
            self._join_rows(requests)
        except Exception as e:  # noqa: BLE001
            if len(requests) == 1:
                requests[0].emit(("error", 500, f"generation failed for this request: prefill: "
                                                f"{e.__class__.__name__}: {e}"))
                return
            for req in requests:
                self._join([req])

    def _join_rows(self, requests: list[Request]):
        rows, prompts, expand = [], [], []
        for req in requests:
            for p_idx, prompt in enumerate(req.prompts):
                prompts.append(prompt)
                for k in range(req.n):
                    index = p_idx * req.n + k
                    gen = torch.Generator().manual_seed((req.seed + 0x9E3779B97F4A7C15 * index) % 2**63)
                    rows.append(Sequence(req, index, prompt, TextStream(self.tokenizer, req.params.stop), gen))
                    expand.append(len(prompts) - 1)
        self.batch.join(rows, prompts, self.pad_id, expand=expand)

    def _step(self):
        rows, logits = self.batch.rows, self.batch.logits
        now = time.monotonic()
        # 1. Rows whose request was cancelled or timed out leave without sampling.
        for s in rows:
            if s.request.cancelled:
                s.finish_reason = "cancelled"
            elif s.request.deadline <= now:
                s.finish_reason = "timeout"
        live = [i for i, s in enumerate(rows) if s.finish_reason is None]
        tokens = torch.zeros(len(rows), dtype=torch.long)
        logps = torch.zeros(len(rows))
        # 2. Sample (sampling.py: grouped by (temperature, top_p); a row that cannot be sampled fails its request).
        if live:
            settings = [(effective_temperature(rows[i].request.params.temperature), rows[i].request.params.top_p)
                        for i in live]
            u = torch.cat([torch.rand(1, generator=rows[i].generator) if t > 0 else torch.zeros(1)
                           for i, (t, _) in zip(live, settings)])
            tokens[live], logps[live], faults = sample_rows(logits[live], settings, u)
            for j, why in faults.items():
                self._fail(rows[live[j]].request, why)
            self.steps += 1
            self.batch_sizes[len(live)] += 1
            self._recent.append((time.monotonic(), len(live)))
            while self._recent[0][0] < time.monotonic() - 30:
                self._recent.popleft()
            self.generated_tokens += len(live)
        # 3. Text, stop checks and log-probs per row; then one message per request.
        token_list, keep = tokens.tolist(), []
        for i in live:
            s, tok = rows[i], token_list[i]
            if s.request.error is not None:
                continue
            try:
                s.pending.append(self._advance(s, tok, logits[i], float(logps[i])))
            except Exception as e:  # noqa: BLE001 (detokenising or log-probs of this row: its own failure)
                self._fail(s.request, f"{e.__class__.__name__}: {e}")
                continue
            if s.finish_reason is None:
                keep.append(i)
        for s in rows:  # every row of a failed request leaves, also those that were fine
            if s.request.error is not None:
                s.finish_reason = "error"
        keep = [i for i in keep if rows[i].finish_reason is None]
        self._flush(rows)
        # 4. Finished rows leave; the others feed their token.
        self.batch.keep(keep)
        if keep:
            try:
                self.batch.step(tokens[keep])
                self._forward_failures = 0
            except Exception as e:  # noqa: BLE001
                self._rebuild(e)

    def _advance(self, s: Sequence, tok: int, row_logits, logp: float) -> Delta:
        """Row `s` took token `tok`: its text delta, finish reason and log-probs."""
        p = s.request.params
        s.generated += 1
        s.request.completion_tokens += 1
        if tok == self.eos_id and not p.ignore_eos:
            s.finish_reason, delta = "stop", s.text.finish()
        else:
            delta = s.text.push(tok)
            if s.text.stopped:
                s.finish_reason = "stop"
            elif s.generated >= p.max_tokens:
                s.finish_reason, delta = "length", delta + s.text.finish()
        info = [self._token_info(row_logits, tok, logp, p)] if p.logprobs is not None else []
        return Delta(s.index, delta, info, s.finish_reason)

    _forward_failures = 0

    def _rebuild(self, error: Exception):
        """A decoding forward raised, and the cache is in an unknown state. The cache is a function of each
        row's tokens, so rebuild it one row at a time from prompt + generated tokens (each row's prefill
        gives the logits its step would have): a row whose own forward raises fails its request; the
        others go on. If the batch keeps failing while every row alone succeeds (3 times in a row), the
        fault is not one row's: every running request fails, as before."""
        rows = self.batch.rows
        self.batch.keep([])
        self._forward_failures += 1
        if self._forward_failures >= 3:
            self._forward_failures = 0
            for req in {id(s.request): s.request for s in rows}.values():
                req.emit(("error", 500, f"generation failed: {error.__class__.__name__}: {error}"))
            return
        failed = {}
        for s in rows:
            if s.request.error is not None:
                continue
            try:
                self.batch.join([s], [s.prompt + s.text.ids], self.pad_id)
            except Exception as e:  # noqa: BLE001
                self._fail(s.request, f"forward: {e.__class__.__name__}: {e}")
                failed[id(s.request)] = s.request
        if failed:
            self.batch.keep([i for i, s in enumerate(self.batch.rows) if s.request.error is None])
            for req in failed.values():
                req.emit(("error", 500, req.error))

    def _flush(self, rows):
        """One message per request: its rows' Deltas, or the error that ended it (a cancelled one gets none)."""
        now, by_request, ended = time.monotonic(), {}, {}
        for s in rows:
            by_request.setdefault(s.request, []).extend(s.pending)
            s.pending = []
            if s.finish_reason in ("timeout", "cancelled", "error"):
                ended[s.request] = s.finish_reason
        tokens = 0
        for req, items in by_request.items():
            if ended.get(req) == "error":
                req.emit(("error", 500, req.error))
            elif ended.get(req) == "timeout":
                req.emit(("error", 504, "the request timed out while generating"))
            elif items and req not in ended:
                req.first_token_at = req.first_token_at or now
                req.emit(items)
            tokens += len(items)
        if self.metrics:
            self.metrics.step(self.name, tokens)
            for reason in ended.values():
                if reason != "error":
                    (self.metrics.timed_out if reason == "timeout" else self.metrics.cancelled)(self.name)

    def _token_info(self, row_logits, tok: int, logp: float, p: SamplingParams) -> TokenInfo:
        top = []
        if p.logprobs:
            temperature = effective_temperature(p.temperature)
            z = row_logits / temperature if temperature > 0 else row_logits
            values, ids = z.log_softmax(-1).topk(p.logprobs)
            top = [(j, self.tokenizer.decode([j]), v) for j, v in zip(ids.tolist(), values.tolist())]
        return TokenInfo(tok, self.tokenizer.decode([tok]), logp, top)
