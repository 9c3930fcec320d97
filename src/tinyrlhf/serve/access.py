"""Who may talk to the server: the Host check, the API key, CORS and the browser security headers.

Any web page open in a browser on this machine can send requests to a server on 127.0.0.1. The layers,
outermost first (pure ASGI, so streams and disconnects pass through untouched):
    * HostCheck (loopback binds): the Host header must name this machine (localhost, 127.0.0.1, [::1] or
      the bound address; any port, since an SSH tunnel changes it). A DNS-rebinding page reaches
      127.0.0.1 under a name its author controls, and that name is what its requests carry: 421.
    * CORS (Starlette's), only for the origins given with --cors-origin: without it no response carries
      Access-Control-Allow-Origin, so no other origin can read an answer, and a JSON POST (which needs a
      preflight) is never sent. body.py refuses text/plain and form bodies, which need no preflight.
    * KeyCheck: with an API key, every /v1 route needs `Authorization: Bearer KEY` (401 otherwise), as
      vLLM's --api-key; /health, /metrics, the chat page and its files stay open (they hold no model
      output). It also adds X-Content-Type-Options: nosniff and a Content-Security-Policy (own scripts,
      styles and connections only: no inline script, no other origin, no framing) to every response.
"""
from __future__ import annotations

import hmac
import json

from .protocol import APIError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", CSP.encode()),
                    (b"referrer-policy", b"no-referrer")]


def host_name(header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '[::1]', 'Localhost' -> 'localhost'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1] if "]" in header else header
    return header.rpartition(":")[0] if ":" in header else header


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def _refuse(send, e: APIError, extra: list | None = None):
    body = json.dumps(e.body(), ensure_ascii=True).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in e.headers.items()] + SECURITY_HEADERS + (extra or [])
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = _header(scope, b"host") or ""
            server = scope.get("server") or ("", 0)
            bound = f"[{server[0]}]" if ":" in str(server[0]) else str(server[0])
            if host_name(host) not in LOOPBACK_NAMES | {bound}:
                shown = host[:100] or "none"
                return await _refuse(send, APIError(
                    421, f"Host {shown!r} is not this server: a server bound to loopback answers only requests "
                         "addressed to localhost, 127.0.0.1 or [::1] (bind another --host to serve other names)",
                    code="misdirected_request"))
        await self.app(scope, receive, send)


class KeyCheck:
    def __init__(self, app, api_key: str | None):
        self.app, self.key = app, api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.key is not None and (path == "/v1" or path.startswith("/v1/")):
            auth = _header(scope, b"authorization")
            scheme, _, token = (auth or "").strip().partition(" ")
            if not auth:
                message = "this server needs an API key: send the header 'Authorization: Bearer <key>'"
            elif scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self.key):
                message = "the API key is not valid (send 'Authorization: Bearer <key>')"
            else:
                message = None
            if message:
                return await _refuse(send, APIError(401, message, code="invalid_api_key",
                                                    headers={"WWW-Authenticate": "Bearer"}))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    h for h in SECURITY_HEADERS if h[0] not in names]
            await send(message)
        await self.app(scope, receive, send_with_headers)


def protect(app, api_key: str | None, cors_origins: tuple[str, ...], check_host: bool):
    """Add the layers to a Starlette / FastAPI app (the last added is the outermost)."""
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(KeyCheck, api_key=api_key)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    if check_host:
        app.add_middleware(HostCheck)
