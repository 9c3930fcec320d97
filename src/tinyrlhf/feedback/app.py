"""The labelling and arena web app (FastAPI): one page, a small JSON API over the store.

Every API call carries a token. A labeller's token (`Authorization: Bearer TOKEN`, or `?token=` as in the
links we print) shows that labeller's queue only and stores labels under their name. The admin token
reads progress and the summary, and is taken from the `Authorization: Bearer` header or the
`tinyrlhf_admin` cookie only: never from the query string (a URL ends up in logs, history and Referer
headers). Routes:
  GET  /                   the page (static/label.html; the token comes from the link's ?token=)
  GET  /api/me             {"labeller", "mode", "labelled"}
  GET  /api/next           {"item": {"item_id", "kind", "prompt", "outputs": [text, ...]} | null}
  POST /api/submit         {"item_id", "submit_id", "choice" | "ranking", "comment"?} -> {"label_id", "duplicate"}
  POST /api/arena          {"prompt"} -> {"item"}: two anonymous models answer, in random positions
  GET  /api/admin/progress, /api/admin/summary   (admin token)
A POST body is strict JSON (Content-Type application/json, else 415; at most MAX_BODY bytes, else 413;
UTF-8 without lone surrogates, no NaN, no duplicate keys, nested at most MAX_DEPTH deep, else 400).
Errors answer {"error": {"message", "status"}} with a 4xx status and store nothing. In the arena each
labeller has at most `arena_prompts` prompts and `arena_votes` votes per session (429 past them), and one
unanswered arena item at a time (409). The page renders model text with textContent only, so markup in a
model's output shows as characters.
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

from .checks import ARENA, MAX_TEXT, StoreError, valid_text
from .store import Store

log = logging.getLogger("tinyrlhf.label")
STATIC = os.path.join(os.path.dirname(__file__), "static")
MAX_BODY = 64 * 1024  # bytes per request body: a label with the longest comment fits many times over
MAX_DEPTH = 8  # nesting of a body: ours are 2 deep ({"ranking": [...]})
ADMIN_COOKIE = "tinyrlhf_admin"


class APIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "status": status}}, status_code=status)


def _strict_pairs(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _check_tree(obj) -> None:
    """APIError 400 for a string that UTF-8 cannot encode (a lone surrogate, as \\ud800 gives) or nesting
    deeper than MAX_DEPTH; walked without recursion."""
    stack = [(obj, 1, "body")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise APIError(400, f"body nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str) and not valid_text(value):
            raise APIError(400, f"{where}: invalid Unicode (a lone surrogate)")
        if isinstance(value, dict):
            for k, v in value.items():
                if not valid_text(k):
                    raise APIError(400, "a field name holds invalid Unicode (a lone surrogate)")
                stack.append((v, depth + 1, f"field '{k}'" if depth == 1 else where))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, where) for v in value)


async def _body(request: Request) -> dict:
    """The JSON object in the body: strict JSON as the module docstring says, read up to MAX_BODY bytes
    (more: 413 without reading the rest)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(415, f"expected a JSON body with 'Content-Type: application/json', got "
                            f"{ctype or 'no Content-Type'!r}")
    length = request.headers.get("content-length") or "0"
    if not length.isdigit():
        raise APIError(400, "Content-Length is not a number")
    if int(length) > MAX_BODY:
        raise APIError(413, f"request body over {MAX_BODY} bytes")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise APIError(413, f"request body over {MAX_BODY} bytes")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_strict_pairs)
    except RecursionError:
        raise APIError(400, f"body nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"body is not valid JSON ({str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise APIError(400, "body must be a JSON object")
    _check_tree(obj)
    return obj


def create_label_app(store: Store, mode: str = "pair", *, models=None, max_new_tokens: int = 48,
                     temperature: float = 1.0, seed: int | None = None, arena_prompts: int | None = 200,
                     arena_votes: int | None = 200) -> FastAPI:
    """The app over an open store. `models` (sources.Models, 2+ of them) answer arena prompts; each
    labeller may ask `arena_prompts` of them and cast `arena_votes` arena votes (None: no limit)."""
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

    def bearer(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else ""

    def token(request: Request) -> str:
        return bearer(request) or request.query_params.get("token", "")

    def labeller(request: Request) -> str:
        t = token(request)
        if not t:
            raise APIError(401, "missing token: open the link you were given (it ends in ?token=...)")
        name = store.labeller_for(t)
        if name is None:
            raise APIError(401, "unknown labeller token")
        return name

    def is_admin(t: str) -> bool:
        return hmac.compare_digest(t.encode("utf-8", "replace"), admin.encode())

    def require_admin(request: Request):
        if not is_admin(bearer(request) or request.cookies.get(ADMIN_COOKIE, "")):
            if is_admin(request.query_params.get("token", "")):
                raise APIError(403, "the admin token is not accepted in the query string (URLs end up in logs "
                                    "and history): send 'Authorization: Bearer TOKEN'")
            raise APIError(403, "admin token required ('Authorization: Bearer TOKEN')")

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
        quota = (ARENA, arena_votes) if arena_votes is not None else None
        return await run(lambda: store.submit(name, body.get("item_id"), body.get("submit_id"), answer,
                                              body.get("comment", ""), quota=quota))

    @app.post("/api/arena")
    async def arena(request: Request):
        name = await run(labeller, request)
        if mode != "arena" or models is None:
            raise APIError(409, "this session is not an arena (start it with --mode arena and 2+ --model)")
        body = await _body(request)
        unknown = sorted(set(body) - {"prompt"})
        if unknown:
            raise APIError(400, f"unknown field(s) {', '.join(unknown)} (valid: prompt)")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_TEXT:
            raise APIError(400, f"field 'prompt': expected a non-empty string of at most {MAX_TEXT} characters")
        await run(store.check_own_quota, name, ARENA, arena_prompts)  # before the models spend any time
        pair = rng.sample(models.names, 2)
        s = rng.randrange(2**31)
        texts = [await run(lambda m=m, j=j: models.generate(m, [prompt], max_new_tokens=max_new_tokens,
                                                             temperature=temperature, seed=s + j)[0])
                 for j, m in enumerate(pair)]
        item = {"prompt": prompt, "kind": "pair", "outputs": [{"model": m, "text": t} for m, t in zip(pair, texts)]}
        return {"item": await run(store.add_own_item, name, item, ARENA, rng, arena_prompts)}

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
