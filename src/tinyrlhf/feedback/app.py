"""The labelling and arena web app (FastAPI): one page, a small JSON API over the store.

Every API call carries a token (`Authorization: Bearer TOKEN`, or `?token=` as in the links we print): a
labeller's token shows that labeller's queue only and stores labels under their name; the admin token
reads progress and the summary. Routes:
  GET  /                   the page (static/label.html; the token comes from the link's ?token=)
  GET  /api/me             {"labeller", "mode", "labelled"}
  GET  /api/next           {"item": {"item_id", "kind", "prompt", "outputs": [text, ...]} | null}
  POST /api/submit         {"item_id", "submit_id", "choice" | "ranking", "comment"?} -> {"label_id", "duplicate"}
  POST /api/arena          {"prompt"} -> {"item"}: two anonymous models answer, in random positions
  GET  /api/admin/progress, /api/admin/summary   (admin token)
Errors answer {"error": {"message", "status"}} with a 4xx status and store nothing. The page renders model
text with textContent only, so markup in a model's output shows as characters.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import random

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .checks import MAX_TEXT, StoreError
from .store import Store

log = logging.getLogger("tinyrlhf.label")
STATIC = os.path.join(os.path.dirname(__file__), "static")
MAX_BODY = 64 * 1024  # bytes per request body: a label with the longest comment fits many times over


class APIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "status": status}}, status_code=status)


async def _body(request: Request) -> dict:
    """The JSON object in the body, read up to MAX_BODY bytes (more: 413 without reading the rest)."""
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise APIError(413, f"request body over {MAX_BODY} bytes")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise APIError(413, f"request body over {MAX_BODY} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"body is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise APIError(400, "body must be a JSON object")
    return obj


def create_label_app(store: Store, mode: str = "pair", *, models=None, max_new_tokens: int = 48,
                     temperature: float = 1.0, seed: int | None = None) -> FastAPI:
    """The app over an open store. `models` (sources.Models, 2+ of them) answer arena prompts."""
    admin = store.admin_token()
    rng = random.Random(seed)
    app = FastAPI(title="tinyrlhf label", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return _error(e.status, e.message)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, e: StoreError):
        return _error(e.status, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return _error(e.status_code, f"no route {request.method} {request.url.path}"
                      if e.status_code in (404, 405) else str(e.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal error: {e.__class__.__name__}")

    def token(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else request.query_params.get("token", "")

    def labeller(request: Request) -> str:
        t = token(request)
        if not t:
            raise APIError(401, "missing token: open the link you were given (it ends in ?token=...)")
        name = store.labeller_for(t)
        if name is None:
            raise APIError(401, "unknown labeller token")
        return name

    def require_admin(request: Request):
        if not hmac.compare_digest(token(request).encode(), admin.encode()):
            raise APIError(403, "admin token required")

    # Store calls block on SQLite (and its fsync): run them in the thread pool, off the event loop.
    def run(fn, *args):
        return asyncio.to_thread(fn, *args)

    @app.get("/")
    async def page():
        # defence in depth behind textContent: the page runs only its own script file, nothing inline
        return FileResponse(os.path.join(STATIC, "label.html"), headers={
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"})

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/api/me")
    async def me(request: Request):
        name = await run(labeller, request)
        return {"labeller": name, "mode": mode, "labelled": await run(store.count_labels_by, name)}

    @app.get("/api/next")
    async def next_item(request: Request):
        name = await run(labeller, request)
        return {"item": await run(store.next_item, name)}

    @app.post("/api/submit")
    async def submit(request: Request):
        name = await run(labeller, request)
        body = await _body(request)
        unknown = sorted(set(body) - {"item_id", "submit_id", "choice", "ranking", "comment"})
        if unknown:
            raise APIError(400, f"unknown field(s) {', '.join(unknown)} (valid: item_id, submit_id, choice, "
                                "ranking, comment)")
        answer = {k: body[k] for k in ("choice", "ranking") if k in body}
        out = await run(store.submit, name, body.get("item_id"), body.get("submit_id"), answer,
                        body.get("comment", ""))
        return out

    @app.post("/api/arena")
    async def arena(request: Request):
        name = await run(labeller, request)
        if mode != "arena" or models is None:
            raise APIError(409, "this session is not an arena (start it with --mode arena and 2+ --model)")
        body = await _body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_TEXT:
            raise APIError(400, f"field 'prompt': expected a non-empty string of at most {MAX_TEXT} characters")
        pair = rng.sample(models.names, 2)
        s = rng.randrange(2**31)
        texts = [await run(lambda m=m, j=j: models.generate(m, [prompt], max_new_tokens=max_new_tokens,
                                                             temperature=temperature, seed=s + j)[0])
                 for j, m in enumerate(pair)]
        item = {"prompt": prompt, "kind": "pair", "outputs": [{"model": m, "text": t} for m, t in zip(pair, texts)]}
        return {"item": await run(store.add_own_item, name, item, "arena", rng)}

    @app.get("/api/admin/progress")
    async def progress(request: Request):
        require_admin(request)
        return await run(store.progress)

    @app.get("/api/admin/summary")
    async def summary(request: Request):
        from .export import summarize
        require_admin(request)
        return await run(lambda: summarize(store.labels(), {}, 0))

    return app
