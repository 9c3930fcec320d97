"""The label app against what arrives over HTTP (a real uvicorn server on loopback): a corpus of hostile and
malformed requests (wrong Content-Type, oversized and deeply nested bodies, lone surrogates, NaN, duplicate
keys, 64-bit overflows, unknown choices, the admin token in a URL). Each gets the app's own 4xx error body
naming the field, never a 500 and never a stored label; the arena's per-labeller quotas hold, and a good
request still goes through afterwards."""
from __future__ import annotations

import json

import httpx
import pytest

from serve_util import running
from tinyrlhf.feedback.app import ADMIN_COOKIE, MAX_BODY, create_label_app
from tinyrlhf.feedback.store import Store

J = {"Content-Type": "application/json"}


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


class FakeModels:
    """Stands in for sources.Models in the arena: each answer names its model and seed."""
    names = ["one", "two"]

    def generate(self, name, prompts, *, max_new_tokens, temperature, seed):
        return [f" {name} says {seed % 97}" for _ in prompts]


@pytest.fixture
def pair_app(tmp_path):
    store = Store(str(tmp_path / "fb.db"))
    store.add_labellers(["alice", "bob"])
    store.add_items([{"prompt": f"p{i}", "kind": "pair",
                      "outputs": [{"model": "m1", "text": f" a{i}"}, {"model": "m2", "text": f" b{i}"}]}
                     for i in range(3)], "b")
    store.add_items([{"prompt": "r", "kind": "ranking", "labellers": ["bob"],
                      "outputs": [{"model": f"m{k}", "text": f" r{k}"} for k in range(3)]}], "b")
    yield store, create_label_app(store, "pair")
    store.close()


# (id, raw body bytes or a JSON-able object, extra headers, status, words in the error message)
def corpus(item_id: int, ranking_id: int) -> list[tuple]:
    good = {"item_id": item_id, "submit_id": "abcdefgh-1", "choice": "A"}
    raw = lambda obj: json.dumps(obj).encode()  # noqa: E731
    return [
        ("no-content-type", raw(good), {"Content-Type": ""}, 415, "Content-Type: application/json"),
        ("text-plain", raw(good), {"Content-Type": "text/plain"}, 415, "'text/plain'"),
        ("form", b"item_id=1&choice=A", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
         "application/json"),
        ("json-with-charset-is-fine-but-bad-choice", raw({**good, "choice": "Z"}),
         {"Content-Type": "application/json; charset=utf-8"}, 400, "field 'choice'"),
        ("choice-Z", {**good, "choice": "Z"}, {}, 400, "field 'choice': expected one of A, B, tie, both_bad"),
        ("choice-lowercase-a", {**good, "choice": "a"}, {}, 400, "field 'choice'"),
        ("choice-number", {**good, "choice": 1}, {}, 400, "field 'choice'"),
        ("choice-list", {**good, "choice": ["A"]}, {}, 400, "field 'choice'"),
        ("choice-plus-ranking", {**good, "ranking": [0, 1]}, {}, 400, "field 'ranking': a pair item is answered "
                                                                      "with 'choice' only"),
        ("ranking-on-pair", {"item_id": item_id, "submit_id": "abcdefgh-1", "ranking": [1, 0]}, {}, 400,
         "field 'choice'"),
        ("item-id-2^63", {**good, "item_id": 2**63}, {}, 400, "field 'item_id'"),
        ("item-id-huge", {**good, "item_id": 10**40}, {}, 400, "out of range"),
        ("item-id-minus-2^63-1", {**good, "item_id": -2**63 - 1}, {}, 400, "out of range"),
        ("item-id-float", {**good, "item_id": 1.0}, {}, 400, "field 'item_id'"),
        ("item-id-bool", {**good, "item_id": True}, {}, 400, "field 'item_id'"),
        ("item-id-nan", b'{"item_id": NaN, "submit_id": "abcdefgh-1", "choice": "A"}', {}, 400, "not valid JSON"),
        ("item-id-infinity", b'{"item_id": Infinity, "submit_id": "abcdefgh-1", "choice": "A"}', {}, 400,
         "not valid JSON"),
        ("surrogate-submit-id", b'{"item_id": %d, "submit_id": "abcdefgh\\ud800", "choice": "A"}' % item_id, {},
         400, "field 'submit_id': invalid Unicode"),
        ("surrogate-comment", b'{"item_id": %d, "submit_id": "abcdefgh-1", "choice": "A", "comment": "\\udfff"}'
         % item_id, {}, 400, "field 'comment': invalid Unicode"),
        ("surrogate-key", b'{"item_id": %d, "\\ud800": 1}' % item_id, {}, 400, "field name holds invalid Unicode"),
        ("surrogate-in-choice", b'{"item_id": %d, "submit_id": "abcdefgh-1", "choice": "\\ud83d"}' % item_id, {},
         400, "invalid Unicode"),
        ("latin1-bytes", b'{"item_id": 1, "comment": "\xe9"}', {}, 400, "not valid JSON"),
        ("utf16-body", json.dumps(good).encode("utf-16"), {}, 400, "not valid JSON"),
        ("deep-nesting-list", b'{"comment": ' + b"[" * 30000 + b"]" * 30000 + b"}", {}, 400, "nested deeper"),
        ("deep-nesting-object", b'{"a":' * 5000 + b"1" + b"}" * 5000, {}, 400, "nested deeper"),
        ("nested-9", raw({"comment": [[[[[[[[["x"]]]]]]]]]}), {}, 400, "nested deeper than 8"),
        ("duplicate-key", b'{"item_id": %d, "submit_id": "abcdefgh-1", "choice": "A", "choice": "B"}' % item_id,
         {}, 400, "duplicate key 'choice'"),
        ("empty-body", b"", {}, 400, "not valid JSON"),
        ("json-null", b"null", {}, 400, "JSON object"),
        ("json-string", b'"A"', {}, 400, "JSON object"),
        ("over-64k", raw({**good, "comment": "y" * 70000}), {}, 413, "request body over"),
        ("content-length-lies-big", raw(good), {"Content-Length": str(MAX_BODY + 1)}, 413, "request body over"),
        ("content-length-not-a-number", raw(good), {"Content-Length": "abc"}, 400, None),
        ("comment-2001", {**good, "comment": "x" * 2001}, {}, 413, "at most 2000"),
        ("comment-object", {**good, "comment": {"a": 1}}, {}, 400, "field 'comment'"),
        ("submit-id-7", {**good, "submit_id": "abcdefg"}, {}, 400, "field 'submit_id'"),
        ("submit-id-101", {**good, "submit_id": "s" * 101}, {}, 400, "field 'submit_id'"),
        ("unknown-field", {**good, "labeller": "bob"}, {}, 400, "unknown field(s) labeller"),
        ("ranking-item-not-hers", {"item_id": ranking_id, "submit_id": "abcdefgh-2", "ranking": [0, 1, 2]}, {},
         403, "not in your queue"),
        ("item-0", {**good, "item_id": 0}, {}, 404, "unknown item 0"),
        ("item-negative", {**good, "item_id": -5}, {}, 404, "unknown item -5"),
    ]


CASE_IDS = [c[0] for c in corpus(1, 4)]


@pytest.mark.parametrize("case", CASE_IDS)
def test_malformed_submit_is_a_clear_4xx_and_stores_nothing(pair_app, case):
    store, app = pair_app
    tokens = store.add_labellers(["alice"])
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        item = c.get("/api/next", headers=auth(tokens["alice"])).json()["item"]
        _, body, extra, status, words = next(x for x in corpus(item["item_id"], 4) if x[0] == case)
        headers = {**auth(tokens["alice"]), **J, **extra}
        headers = {k: v for k, v in headers.items() if v != ""}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        if "Content-Length" in extra and extra["Content-Length"] != str(len(content)):
            r = _raw_post(url, "/api/submit", headers, content)
        else:
            r = c.post("/api/submit", headers=headers, content=content)
        assert r.status_code == status, (case, r.status_code, r.text[:300])
        if words is None:  # refused by uvicorn's HTTP parser (h11) before the app: plain text, still a 400
            assert r.text == "Invalid HTTP request received."
        else:
            assert r.json()["error"]["status"] == status
            assert words in r.json()["error"]["message"], (case, r.text[:300])
        assert store.count_labels() == 0
        # and the good submit still goes through
        good = {"item_id": item["item_id"], "submit_id": "good-submit-1", "choice": "B"}
        assert c.post("/api/submit", headers=auth(tokens["alice"]), json=good).status_code == 200
        assert [lab["answer"] for lab in store.labels()] == [{"choice": "B"}]


def _raw_post(url: str, path: str, headers: dict, content: bytes):
    """A POST whose Content-Length header says something else than the body (httpx would fix it)."""
    import socket
    from urllib.parse import urlparse
    u = urlparse(url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {u.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    try:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + content)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return httpx.Response(status, content=payload, headers={"content-type": "application/json"})


def test_corpus_size():
    assert len(CASE_IDS) >= 40 and len(set(CASE_IDS)) == len(CASE_IDS)


def test_admin_token_only_in_a_header_or_cookie(pair_app):
    store, app = pair_app
    tokens, admin = store.add_labellers(["alice"]), store.admin_token()
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.get(f"/api/admin/progress?token={admin}")
        assert r.status_code == 403 and "not accepted in the query string" in r.json()["error"]["message"]
        assert c.get("/api/admin/summary", params={"token": admin}).status_code == 403
        assert c.get("/api/admin/progress", headers=auth(admin)).json()["items"] == 4
        c.cookies.set(ADMIN_COOKIE, admin)
        assert c.get("/api/admin/summary").status_code == 200
        c.cookies.clear()
        assert c.get("/api/admin/progress", headers=auth(tokens["alice"])).status_code == 403
        r = c.get("/api/admin/progress", headers={"Authorization": ("Bearer " + "é" * 10).encode("latin-1")})
        assert r.status_code == 403
        # the labeller links keep working as printed: ?token= in the URL, or the header the page sends
        assert c.get(f"/api/me?token={tokens['alice']}").json()["labeller"] == "alice"
        assert c.get("/api/me", headers=auth(tokens["alice"])).json()["labeller"] == "alice"
        # the admin token is nobody's labeller token
        assert c.get(f"/api/me?token={admin}").status_code == 401
        for q in ("%ED%A0%80", "%ff%fe", "%", "a" * 5000):
            assert c.get(f"/api/me?token={q}").status_code == 401


def test_arena_quotas_and_one_open_item(tmp_path):
    """--arena-prompts and --arena-votes: per labeller, 429 past them (nothing generated, nothing stored);
    a second prompt while one is unanswered is a 409; other labellers keep their own quota."""
    store = Store(str(tmp_path / "fb.db"))
    tokens = store.add_labellers(["alice", "bob"])
    app = create_label_app(store, "arena", models=FakeModels(), max_new_tokens=4, seed=0, arena_prompts=3,
                           arena_votes=2)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        a = auth(tokens["alice"])
        first = c.post("/api/arena", headers=a, json={"prompt": "q0"}).json()["item"]
        r = c.post("/api/arena", headers=a, json={"prompt": "q1"})
        assert r.status_code == 409 and "answer the arena item on your screen first" in r.json()["error"]["message"]
        assert c.get("/api/next", headers=a).json()["item"]["item_id"] == first["item_id"]  # a reload shows it
        statuses = []
        for k in range(4):
            item = first if k == 0 else c.post("/api/arena", headers=a, json={"prompt": f"q{k}"}).json().get("item")
            if item is None:
                statuses.append("no item")
                continue
            r = c.post("/api/submit", headers=a, json={"item_id": item["item_id"], "submit_id": f"vote-{k:04d}",
                                                       "choice": "A"})
            statuses.append(r.status_code)
        # votes 1 and 2 stored, the 3rd prompt is generated but its vote is over the vote quota
        assert statuses[:3] == [200, 200, 429], statuses
        r = c.post("/api/arena", headers=a, json={"prompt": "q9"})
        assert r.status_code == 429 and "3 prompts per labeller" in r.json()["error"]["message"]
        assert store.count_labels("arena") == 2 and store.own_items("alice", "arena") == (3, 1)
        r = c.post("/api/arena", headers=a, json={"prompt": "q9", "model": "one"})
        assert r.status_code == 400 and "unknown field(s) model" in r.json()["error"]["message"]
        r = c.post("/api/arena", headers={**a, **J}, content=b'{"prompt": "\\ud800 hi"}')
        assert r.status_code == 400 and "invalid Unicode" in r.json()["error"]["message"]
        b = auth(tokens["bob"])
        for k in range(3):
            item = c.post("/api/arena", headers=b, json={"prompt": f"b{k}"}).json()["item"]
            c.post("/api/submit", headers=b, json={"item_id": item["item_id"], "submit_id": f"bob-vote-{k}",
                                                   "choice": "B"})
        r = c.post("/api/arena", headers=b, json={"prompt": "b9"})
        assert r.status_code == 429 and "--arena-prompts" in r.json()["error"]["message"]
        assert store.own_items("bob", "arena")[0] == 3 and store.count_items("arena") == 6


def test_unknown_route_and_method_are_the_apps_own_errors(pair_app):
    store, app = pair_app
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for method, path, status in (("GET", "/api/submit", 405), ("DELETE", "/api/next", 405),
                                     ("GET", "/api/%ED%A0%80", 404), ("POST", "/api/nothing", 404)):
            r = c.request(method, path)
            assert r.status_code == status and r.json()["error"]["status"] == status, (path, r.text)


def test_a_full_disk_during_a_submit_is_a_507_and_loses_nothing(tmp_path):
    """Store._write: SQLite's 'database or disk is full' (forced with PRAGMA max_page_count, SQLite's own
    size cap, so no real disk has to fill) answers 507 with the app's error body, stores nothing and keeps
    the labels already stored; once there is room again the same submit goes through. (Each label copies
    its item's 20,000-character prompt, so it needs pages of its own.)"""
    store = Store(str(tmp_path / "fb.db"))
    tokens = store.add_labellers(["alice"])
    store.add_items([{"prompt": f"{i}" + "p" * 20000, "kind": "pair", "outputs": [{"model": "m1", "text": " a"},
                                                                                  {"model": "m2", "text": " b"}]}
                     for i in range(2)], "b")
    app = create_label_app(store, "pair")
    with running(app) as url, httpx.Client(base_url=url, headers=auth(tokens["alice"]), timeout=30) as c:
        first = c.get("/api/next").json()["item"]
        assert c.post("/api/submit", json={"item_id": first["item_id"], "submit_id": "first-0001",
                                           "choice": "A"}).status_code == 200
        item = c.get("/api/next").json()["item"]
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        body = {"item_id": item["item_id"], "submit_id": "second-0001", "choice": "B"}
        r = c.post("/api/submit", json=body)
        assert r.status_code == 507 and "the disk is full" in r.json()["error"]["message"], r.text
        assert [lab["submit_id"] for lab in store.labels()] == ["first-0001"]
        store._db.execute("PRAGMA max_page_count = 1073741823")
        assert c.post("/api/submit", json=body).status_code == 200
        assert [lab["submit_id"] for lab in store.labels()] == ["first-0001", "second-0001"]
    store.close()
