"""The ASGI app (FastAPI): OpenAI-compatible routes, Server-Sent Events, /health, /metrics and the chat page.

Routes read the body on the event loop (body.py: content type, size), then check and tokenise it in a worker
thread (body.decode, validate.py), so that a long prompt never stops /health or a stream; they hand the
request to the model's `Engine`, and either
collect its results (plain JSON) or forward them as they come (`stream: true`: SSE in OpenAI's chunk
format, ended by `data: [DONE]`). A client that goes away cancels its request in the engine: for a
stream, sse-starlette cancels the generator (its `finally` runs); for plain JSON, a task waits for
the ASGI `http.disconnect` message. Every error, bad input or not, answers OpenAI's error object.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import body as B
from . import protocol as P
from .access import protect
from . import validate as V
from .config import EngineConfig, HTTPConfig
from .engine import Engine, QueueFull
from .engine import Request as EngineRequest
from .loader import LoadedModel, LoadedReward
from .metrics import ServeMetrics
from .rewards import Scorer
from .rewards import prepare as prepare_rewards
from .templates import template_name

log = logging.getLogger("tinyrlhf.serve")
STATIC = os.path.join(os.path.dirname(__file__), "static")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def error_response(e: P.APIError) -> Response:
    """OpenAI's error object. ASCII-escaped JSON: a message quoting what the client sent can never fail to
    encode (a lone surrogate made Starlette's UTF-8 JSONResponse raise: a 500 in place of a 4xx)."""
    return Response(json.dumps(e.body(), ensure_ascii=True), status_code=e.status, headers=e.headers,
                    media_type="application/json")


def create_app(models: list[LoadedModel | LoadedReward], cfg: EngineConfig, http: HTTPConfig | None = None) -> FastAPI:
    """Generating models get an Engine (/v1/completions, /v1/chat/completions), reward models a Scorer
    (/v1/rewards); one server may hold both."""
    http = http or HTTPConfig()
    metrics = ServeMetrics()
    served = {m.name: m for m in models}
    engines = {m.name: Engine(m.name, m.model, m.tokenizer, cfg, metrics) for m in models if m.kind == "generate"}
    scorers = {m.name: Scorer(m, cfg) for m in models if m.kind == "reward"}
    created = P.now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for engine in engines.values():
            engine.start()
            metrics.watch(engine)
        yield
        for scorer in scorers.values():
            scorer.stop()
        await asyncio.gather(*(asyncio.to_thread(e.stop) for e in engines.values()))

    # no /docs: Swagger UI loads its scripts from a CDN, and nothing here may touch the network
    app = FastAPI(title="tinyrlhf serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engines, app.state.metrics, app.state.models = engines, metrics, served
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    protect(app, http.api_key, http.cors_origins, http.check_host)  # access.py: Host, CORS, key, page headers

    endpoints = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/rewards": "rewards"}

    @app.exception_handler(P.APIError)
    async def _api_error(request: Request, e: P.APIError):
        if request.url.path in endpoints:  # rejected requests count too; an unknown model's name is not a label
            model = getattr(request.state, "model", "(unknown)")
            metrics.requests.labels(model, endpoints[request.url.path], str(e.status)).inc()
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path[:200]}" if e.status_code in (404, 405) \
            else str(e.detail)
        return error_response(P.APIError(e.status_code, message))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(P.APIError(500, f"internal error: {e.__class__.__name__}", type_="server_error"))

    def model_card(m: LoadedModel | LoadedReward) -> dict:
        return {"id": m.name, "object": "model", "created": created, "owned_by": "tinyrlhf", "kind": m.kind,
                "max_model_len": m.context, "quantize": m.quantize, "chat_template": template_name(m.tokenizer)}

    def lookup(name: str | None, request: Request | None = None, kind: str | None = None):
        if name is None and kind == "reward":  # /v1/rewards may leave out the model when one is served
            if len(scorers) != 1:
                raise P.APIError(400, f"'model' is a required property: this server serves the reward models "
                                 f"{', '.join(scorers)}", param="model")
            name = next(iter(scorers))
        if name not in served:
            shown = name if len(name) <= 100 else name[:100] + "..."
            raise P.APIError(404, f"the model '{shown}' does not exist; served: {', '.join(served)}", param="model",
                             code="model_not_found")
        m = served[name]
        if kind is not None and m.kind != kind:
            what = ("is a reward model: POST its pairs to /v1/rewards" if m.kind == "reward" else
                    "generates text and has no reward head: use /v1/completions or /v1/chat/completions")
            raise P.APIError(400, f"the model '{name}' {what}", param="model", code="wrong_model_kind")
        if request is not None:
            request.state.model = name
        return m

    async def prepare(request: Request, check, kind: str = "generate"):
        """Read the body here; decode, check and tokenise it in a worker thread (seconds for a long prompt)."""
        raw = await B.read(request, http.max_body_bytes)

        def work():
            doc = B.decode(raw)
            if kind == "reward":
                return check(doc, lambda name: lookup(name, request, kind))
            return check(doc, lambda name: lookup(name, request, kind), cfg.max_batch)
        return await asyncio.to_thread(work)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(os.path.join(STATIC, "index.html"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(served),
                "running": {n: e.running for n, e in engines.items()},
                "queued": {n: e.queue_depth for n, e in engines.items()},
                "scoring": {n: s.waiting for n, s in scorers.items()}}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(m) for m in served.values()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        return model_card(lookup(name))

    async def run(request: Request, endpoint: str, prep: V.Prepared, build):
        """Submit to the engine, then answer as JSON or as an SSE stream; counts the request in /metrics."""
        m = prep.model
        engine = engines[m.name]
        ereq = EngineRequest(prep.prompts, prep.params, prep.n, cfg.timeout_s, asyncio.get_running_loop())
        try:
            engine.submit(ereq)
        except QueueFull as e:
            metrics.rejected_requests.labels(m.name).inc()
            raise P.APIError(429, str(e), type_="rate_limit_error", code="queue_full",
                             headers={"Retry-After": str(e.retry_after)}) from None
        metrics.prompt_tokens.labels(m.name).inc(ereq.prompt_tokens)
        rid, created_at = P.new_id("chatcmpl" if endpoint == "chat" else "cmpl"), P.now()

        def done(status: int):  # errors raised as APIError are counted by their handler
            metrics.requests.labels(m.name, endpoint, str(status)).inc()
            if status == 200:
                metrics.latency.labels(m.name, endpoint).observe(time.monotonic() - ereq.arrival)
                if ereq.first_token_at is not None:
                    metrics.ttft.labels(m.name).observe(ereq.first_token_at - ereq.arrival)

        if prep.stream:
            events = build.stream(rid, m.name, created_at, ereq, prep.include_usage)
            return EventSourceResponse(_guarded(events, engine, ereq, done), ping=15)
        try:
            choices = await _collect(request, engine, ereq)
        except ClientGone:
            done(499)
            return Response(status_code=499)
        done(200)
        return build.body(rid, m.name, created_at, choices, ereq)

    @app.post("/v1/completions")
    async def completions(request: Request):
        prep = await prepare(request, V.completion)
        return await run(request, "completions", prep, _CompletionBuild(prep.logprobs, prep.as_ids))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        prep = await prepare(request, V.chat)
        return await run(request, "chat", prep, _ChatBuild(prep.logprobs, prep.as_ids))

    @app.post("/v1/rewards")
    async def rewards(request: Request):
        arrival = time.monotonic()
        prep = await prepare(request, prepare_rewards, kind="reward")
        name = prep.model.name
        scores = await scorers[name].score(prep, arrival)
        metrics.requests.labels(name, "rewards", "200").inc()
        metrics.latency.labels(name, "rewards").observe(time.monotonic() - arrival)
        metrics.prompt_tokens.labels(name).inc(prep.tokens)
        return P.rewards_body(name, scores, prep.tokens)

    return app


async def _wait_disconnect(request: Request):
    while True:
        if (await request.receive())["type"] == "http.disconnect":
            return


async def _collect(request: Request, engine: Engine, ereq: EngineRequest) -> list[P.ChoiceState]:
    """Wait for every choice to finish; cancel the request in the engine if the client leaves first."""
    choices = [P.ChoiceState() for _ in range(ereq.n_seqs)]
    left = ereq.n_seqs
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        while left:
            item = asyncio.ensure_future(ereq.events.get())
            await asyncio.wait({item, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                item.cancel()
                engine.cancel(ereq)
                raise ClientGone()
            left -= _apply(item.result(), choices)
    finally:
        gone.cancel()
    return choices


def _apply(item, choices) -> int:
    """Add one engine message to the choices; returns how many choices it finished. Raises engine errors."""
    if isinstance(item, tuple):
        _, status, message = item
        kind = {504: ("timeout_error", "timeout"), 503: ("server_error", "shutting_down")}.get(
            status, ("server_error", None))
        raise P.APIError(status, message, type_=kind[0], code=kind[1])
    finished = 0
    for d in item:
        choices[d.index].add(d)
        finished += d.finish_reason is not None
    return finished


async def _guarded(events, engine: Engine, ereq: EngineRequest, done):
    """An SSE stream that cancels its request when it ends early (client gone) and counts its status."""
    status = 499
    try:
        async for event in events:
            if isinstance(event, P.APIError):  # headers are sent: the error travels as an event (vLLM does the same)
                status = event.status
                yield {"data": json.dumps(event.body())}
                break
            yield {"data": json.dumps(event)}
        else:
            status = 200
        yield {"data": "[DONE]"}
    finally:
        if status != 200:
            engine.cancel(ereq)
        done(status)


class _CompletionBuild:
    def __init__(self, logprobs: bool, as_ids: bool):
        self.logprobs, self.as_ids = logprobs, as_ids

    def body(self, rid, model, created, choices, ereq):
        return P.completion_body(rid, model, created, choices, self.logprobs, ereq.prompt_tokens,
                                 ereq.completion_tokens, self.as_ids)

    async def stream(self, rid, model, created, ereq, include_usage):
        choices = [P.ChoiceState() for _ in range(ereq.n_seqs)]
        left = ereq.n_seqs
        while left:
            item = await ereq.events.get()
            try:
                before = {d.index: len(choices[d.index].text) for d in item} if isinstance(item, list) else {}
                left -= _apply(item, choices)
            except P.APIError as e:
                yield e
                return
            for d in item:
                if d.text or d.finish_reason or d.tokens:
                    yield P.completion_chunk(rid, model, created, d, self.logprobs, before[d.index], self.as_ids)
        if include_usage:
            yield P.usage_chunk(rid, "text_completion", model, created, ereq.prompt_tokens, ereq.completion_tokens)


class _ChatBuild:
    def __init__(self, logprobs: bool, as_ids: bool):
        self.logprobs, self.as_ids = logprobs, as_ids

    def body(self, rid, model, created, choices, ereq):
        return P.chat_body(rid, model, created, choices, self.logprobs, ereq.prompt_tokens, ereq.completion_tokens,
                           self.as_ids)

    async def stream(self, rid, model, created, ereq, include_usage):
        for i in range(ereq.n_seqs):  # OpenAI sends the role first, in a chunk of its own
            yield P.chat_chunk(rid, model, created, i, {"role": "assistant", "content": ""})
        left = ereq.n_seqs
        choices = [P.ChoiceState() for _ in range(ereq.n_seqs)]
        while left:
            item = await ereq.events.get()
            try:
                left -= _apply(item, choices)
            except P.APIError as e:
                yield e
                return
            for d in item:
                lp = P.chat_logprobs(d.tokens, self.as_ids) if self.logprobs else None
                if d.text or d.tokens:
                    yield P.chat_chunk(rid, model, created, d.index, {"content": d.text}, None, lp)
                if d.finish_reason:
                    yield P.chat_chunk(rid, model, created, d.index, {}, d.finish_reason)
        if include_usage:
            yield P.usage_chunk(rid, "chat.completion.chunk", model, created, ereq.prompt_tokens,
                                ereq.completion_tokens)
