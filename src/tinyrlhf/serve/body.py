"""A request body -> a JSON document, or an APIError (4xx) that says what is wrong with it.

What arrives is judged before anything is built from it, so that no input turns into a 500 or stalls the
server:
    * Content-Type must be application/json (415 otherwise). Browsers send text/plain and form bodies
      across origins without asking (no CORS preflight); refusing them means a web page cannot make a
      local browser post to this server.
    * The body has at most `max_bytes` bytes (413): checked against Content-Length, and counted while it
      is read, so a larger body is never held in memory.
    * JSON as RFC 8259 defines it, in UTF-8: no NaN / Infinity (Python's json accepts them), no number that
      overflows to inf (1e400), no integer of more than MAX_INT_DIGITS digits (Python refuses to convert
      more than 4300 digits, with a ValueError that was a 500), nesting at most MAX_DEPTH deep (a
      100k-deep array was a RecursionError), and no lone UTF-16 surrogate in any string ("\\ud800" is
      valid JSON but not Unicode: the tokenizer and the UTF-8 encoder of the response raise on it).
      These errors name the field they were found in.
`read` runs on the event loop (it only receives bytes); `decode` is CPU work for a worker thread.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
from starlette.requests import ClientDisconnect

from .protocol import APIError

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects: the API's own bodies need 4 (messages[i].content[j])."""
MAX_INT_DIGITS = 20
"""An integer literal of more digits is refused: every integer field fits int64 (19 digits)."""

_SURROGATE = re.compile("[\ud800-\udfff]")


async def read(request, max_bytes: int) -> bytes:
    """The body of a JSON API request, or 415 / 413."""
    ctype = request.headers.get("content-type", "")
    media, _, rest = ctype.partition(";")
    charset = re.search(r"charset\s*=\s*\"?([\w-]+)", rest, re.I)
    if media.strip().lower() != "application/json" or (charset and charset.group(1).lower() not in ("utf-8", "utf8")):
        shown = ctype[:80] or "none"
        raise APIError(415, f"Content-Type must be application/json (UTF-8), got {shown!r}",
                       code="unsupported_media_type")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_bytes):
        raise _too_large(max_bytes)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:  # gone mid-body: nobody reads the answer, but it is a 4xx, not an internal error
        raise APIError(400, "the client closed the connection before the whole body arrived",
                       code="incomplete_body") from None
    return b"".join(chunks)


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"the request body is larger than {max_bytes} bytes (the server's --max-body-bytes)",
                    code="body_too_large")


class _Refused:
    """A JSON value the parser met and this API refuses; reported with its field by `_check`."""

    def __init__(self, why: str):
        self.why = why


def _int(text: str):
    digits = len(text.lstrip("-"))
    return int(text) if digits <= MAX_INT_DIGITS else _Refused(
        f"an integer of {digits} digits (at most {MAX_INT_DIGITS} are accepted)")


def _float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _Refused(f"{text[:40]} is not a finite number")


def _constant(name: str):
    return _Refused(f"{name} is not valid JSON (RFC 8259 has no NaN or Infinity)")


def depth(text: str) -> int:
    """Deepest nesting of [] and {} in a JSON text, brackets inside strings not counted. Linear and
    vectorised (a body of a million brackets takes milliseconds) and nothing recurses: escaped backslashes,
    then escaped quotes are dropped, so every quote left opens or closes a string and splitting on quotes
    leaves the text outside strings at the even places. (A regex for strings is quadratic on invalid JSON
    with many unterminated quotes.)"""
    bare = "".join(text.replace("\\\\", "").replace('\\"', "").split('"')[::2])
    codes = np.frombuffer(bare.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    step = np.isin(codes, (91, 123)).astype(np.int32) - np.isin(codes, (93, 125)).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def decode(raw: bytes):
    """The JSON document in `raw`, checked as the module docstring says; any problem is a 400."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start})", code="invalid_json") from None
    deepest = depth(text)
    if deepest > MAX_DEPTH:
        raise APIError(400, f"the request body nests arrays/objects {deepest} deep (at most {MAX_DEPTH})",
                       code="invalid_json")
    try:
        doc = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except (json.JSONDecodeError, RecursionError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})"[:300], code="invalid_json") from None
    _check(doc, ())
    return doc


def _check(value, path: tuple):
    """Raise a 400 naming the field for a refused value or a lone surrogate anywhere in the document."""
    if isinstance(value, _Refused):
        raise _field_error(path, value.why, "invalid_value")
    if isinstance(value, str):
        hit = _SURROGATE.search(value)
        if hit:
            raise _field_error(path, f"holds a lone UTF-16 surrogate (\\u{ord(hit.group()):04x} at character "
                                     f"{hit.start()}), which is not valid Unicode", "invalid_unicode")
    elif isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(key):
                raise _field_error(path, "a key holds a lone UTF-16 surrogate, which is not valid Unicode",
                                   "invalid_unicode")
            _check(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, path + (i,))


def field_name(path: tuple) -> str:
    """('messages', 0, 'content') -> 'messages[0].content', the way OpenAI's `param` names a field."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _field_error(path: tuple, why: str, code: str) -> APIError:
    name = field_name(path)[:100]  # an unknown field's name can be as long as the body
    where = f"'{name}'" if name else "the request body"
    return APIError(400, f"{where}: {why}", param=name or None, code=code)
