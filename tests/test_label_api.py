"""The labelling app over HTTP against a real uvicorn server on loopback: 20 labellers x 50 submits at once
(every label stored exactly once, with the content sent), kill -9 of the server mid-stream (no acknowledged
label lost), and malformed submits (4xx with a clear message, nothing stored)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

from serve_util import running
from tinyrlhf.feedback.app import create_label_app
from tinyrlhf.feedback.store import Store


def pair_items(n: int) -> list[dict]:
    return [{"prompt": f"prompt {i}", "kind": "pair",
             "outputs": [{"model": "m1", "text": f" one {i}"}, {"model": "m2", "text": f" two {i}"}]}
            for i in range(n)]


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_concurrent_labellers_each_label_stored_once(tmp_path):
    """20 labellers with 50 items queued for each, submitting at the same time; every 5th submit is sent
    twice (a double click). The store then holds exactly 1,000 labels, one per item, each with the choice and comment
    its labeller sent, the texts of its item and the shown order the server chose."""
    store = Store(str(tmp_path / "fb.db"))
    store.set_meta("double_share", "0")
    names = [f"l{i:02d}" for i in range(20)]
    tokens = store.add_labellers(names)
    store.add_items([{**it, "labellers": [names[i // 50]]} for i, it in enumerate(pair_items(1000))], "load")
    sent: dict[str, tuple] = {}  # submit_id -> (labeller, item_id, choice, comment)
    errors: list[str] = []
    lock = threading.Lock()

    def person(name: str, url: str):
        with httpx.Client(base_url=url, headers=auth(tokens[name]), timeout=60) as c:
            for k in range(50):
                item = c.get("/api/next").json()["item"]
                sid = f"{name}-submit-{k:03d}"
                body = {"item_id": item["item_id"], "submit_id": sid, "choice": ["A", "B", "tie", "both_bad"][k % 4],
                        "comment": f"{name} on {item['prompt']}"}
                for _ in range(2 if k % 5 == 0 else 1):
                    r = c.post("/api/submit", json=body)
                    if r.status_code != 200:
                        with lock:
                            errors.append(r.text)
                with lock:
                    sent[sid] = (name, item["item_id"], body["choice"], body["comment"])
            if c.get("/api/next").json()["item"] is not None:
                with lock:
                    errors.append(f"{name}: queue not empty after 50")

    app = create_label_app(store, "pair")
    t0 = time.monotonic()
    with running(app) as url:
        threads = [threading.Thread(target=person, args=(n, url)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(f"1000 labels from 20 concurrent labellers in {time.monotonic() - t0:.1f} s")
    assert errors == []
    labels = store.labels()
    assert len(labels) == 1000 == store.count_labels("load")
    assert sorted(lab["item_id"] for lab in labels) == list(range(1, 1001))  # each item exactly once
    for lab in labels:
        name, item_id, choice, comment = sent[lab["submit_id"]]
        assert names.index(name) == (item_id - 1) // 50  # only from the labeller's own queue
        assert (lab["labeller"], lab["item_id"], lab["answer"], lab["comment"]) == (name, item_id, {"choice": choice}, comment)
        i = item_id - 1
        assert lab["prompt"] == f"prompt {i}" and [o["text"] for o in lab["outputs"]] == [f" one {i}", f" two {i}"]
        assert sorted(lab["shown_order"]) == [0, 1]
    store.close()


def test_malformed_submits_are_4xx_and_store_nothing(tmp_path):
    store = Store(str(tmp_path / "fb.db"))
    store.add_items(pair_items(3), "b")
    tokens = store.add_labellers(["alice", "bob"])
    admin = store.admin_token()
    app = create_label_app(store, "pair")
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        item = c.get("/api/next", headers=auth(tokens["alice"])).json()["item"]
        good = {"item_id": item["item_id"], "submit_id": "abcdefgh-1", "choice": "A"}
        cases = [  # (headers, body or raw bytes, status, words the message must hold)
            (auth(tokens["alice"]), {**good, "item_id": 999}, 404, "unknown item 999"),
            (auth("not-a-token"), good, 401, "unknown labeller token"),
            ({}, good, 401, "missing token"),
            (auth(tokens["bob"]), good, 403, "not in your queue"),
            (auth(tokens["alice"]), {**good, "choice": "C"}, 400, "field 'choice'"),
            (auth(tokens["alice"]), {**good, "choice": None}, 400, "field 'choice'"),
            (auth(tokens["alice"]), {**good, "ranking": [0, 1], "choice": "maybe"}, 400, "field 'choice'"),
            (auth(tokens["alice"]), {**good, "comment": "x" * 2001}, 413, "at most 2000"),
            (auth(tokens["alice"]), {**good, "comment": 5}, 400, "field 'comment'"),
            (auth(tokens["alice"]), {**good, "submit_id": "x"}, 400, "field 'submit_id'"),
            (auth(tokens["alice"]), {**good, "item_id": "1"}, 400, "field 'item_id'"),
            (auth(tokens["alice"]), {**good, "extra": 1}, 400, "unknown field(s) extra"),
            (auth(tokens["alice"]), b'{"item_id": 1, "choice": ', 400, "not valid JSON"),
            (auth(tokens["alice"]), b"[1, 2]", 400, "JSON object"),
            (auth(tokens["alice"]), b"\xff\xfe", 400, "not valid JSON"),
            (auth(tokens["alice"]), {**good, "comment": "y" * 70000}, 413, "request body over"),
            # what a hand-written client sends (more in test_label_hygiene.py): never a 500
            (auth(tokens["alice"]), {**good, "item_id": 2**63}, 400, "field 'item_id'"),
            (auth(tokens["alice"]), b'{"item_id": 1, "submit_id": "abcdefgh\\ud800", "choice": "A"}', 400,
             "field 'submit_id': invalid Unicode"),
            (auth(tokens["alice"]), b'{"comment": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested deeper"),
            (auth(tokens["alice"]), {**good, "choice": "Z"}, 400, "field 'choice'"),
        ]
        for headers, body, status, words in cases:
            kw = ({"content": body, "headers": {**headers, "Content-Type": "application/json"}}
                  if isinstance(body, bytes) else {"json": body, "headers": headers})
            r = c.post("/api/submit", **kw)
            assert r.status_code == status, (body if isinstance(body, bytes) else list(body), r.text)
            assert words in r.json()["error"]["message"], r.text
        assert store.count_labels() == 0
        r = c.post("/api/submit", headers=auth(tokens["alice"]), content=b'{"item_id": 1}')  # no Content-Type
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
        assert c.get("/api/admin/progress", headers=auth(tokens["alice"])).status_code == 403
        assert c.get(f"/api/admin/progress?token={admin}").status_code == 403  # the admin token never in a URL
        assert c.get("/api/admin/progress").status_code == 403
        assert c.get("/api/nothing", headers=auth(admin)).json()["error"]["message"] == "no route GET /api/nothing"
        r = c.post("/api/arena", headers=auth(tokens["alice"]), json={"prompt": "hi"})
        assert r.status_code == 409 and "not an arena" in r.json()["error"]["message"]
        # and the good submit goes through, once
        assert c.post("/api/submit", headers=auth(tokens["alice"]), json=good).json()["duplicate"] is False
        assert c.post("/api/submit", headers=auth(tokens["alice"]), json=good).json()["duplicate"] is True
        prog = c.get("/api/admin/progress", headers=auth(admin)).json()
        assert prog["labels"] == 1 and prog["labellers"]["alice"] == {"labelled": 1}
        summary = c.get("/api/admin/summary", headers=auth(admin)).json()
        assert summary["per_labeller"] == {"alice": 1}
        page = c.get("/")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        me = c.get("/api/me", headers=auth(tokens["alice"])).json()
        assert me == {"labeller": "alice", "mode": "pair", "labelled": 1}
    assert store.count_labels() == 1


def test_kill_9_loses_no_acknowledged_label(tmp_path):
    """`tinyrlhf label` as its own process; 5 labellers submit as fast as they can; SIGKILL after 150
    acknowledged labels. Every acknowledged submit is in the database afterwards, with its content."""
    db, outputs = str(tmp_path / "fb.db"), tmp_path / "outputs.jsonl"
    outputs.write_text("".join(json.dumps({"prompt": it["prompt"], "outputs": it["outputs"]}) + "\n"
                               for it in pair_items(2000)))
    names = [f"p{i}" for i in range(5)]
    proc = subprocess.Popen([sys.executable, "-m", "tinyrlhf", "label", db, "--outputs", str(outputs),
                             "--labellers", ",".join(names), "--port", "0", "--double-share", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    links: dict[str, str] = {}
    try:
        for line in proc.stdout:
            m = re.search(r"^\s+(p\d)\s+(http://\S+)/\?token=(\S+)", line)
            if m:
                links[m.group(1)] = (m.group(2), m.group(3))
            if line.startswith("export:"):
                break
        assert len(links) == 5, "the server did not print the links"
        url = links["p0"][0]
        for _ in range(200):  # printed before uvicorn starts listening; the socket is bound already
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        acked: dict[str, tuple] = {}
        lock, stop = threading.Lock(), threading.Event()

        def person(name):
            with httpx.Client(base_url=url, headers=auth(links[name][1]), timeout=10) as c:
                k = 0
                while not stop.is_set():
                    try:
                        item = c.get("/api/next").json()["item"]
                        sid = f"{name}-{k:05d}"
                        r = c.post("/api/submit", json={"item_id": item["item_id"], "submit_id": sid,
                                                        "choice": "AB"[k % 2], "comment": sid})
                    except (httpx.HTTPError, ValueError):
                        return  # the server is gone
                    if r.status_code == 200:
                        with lock:
                            acked[sid] = (name, item["item_id"], "AB"[k % 2])
                    k += 1

        threads = [threading.Thread(target=person, args=(n,)) for n in names]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 150 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert len(acked) >= 150
    labels = {lab["submit_id"]: lab for lab in Store(db).labels()}
    missing = [s for s in acked if s not in labels]
    assert missing == []
    for sid, (name, item_id, choice) in acked.items():
        lab = labels[sid]
        assert (lab["labeller"], lab["item_id"], lab["answer"]["choice"], lab["comment"]) == (name, item_id, choice, sid)
    # at most one request per labeller was in flight: committed but not acknowledged
    assert len(labels) - len(acked) <= len(names)


def test_arena_over_http(tmp_path):
    """Arena: the person's prompt, two different anonymous models answering in random positions; a bad
    prompt is a 400 and stores nothing; the vote is stored like any label, with both model ids."""
    from serve_util import tiny_model_dir
    from tinyrlhf.feedback.sources import Models

    store = Store(str(tmp_path / "fb.db"))
    tokens = store.add_labellers(["alice", "bob"])
    models = Models([f"one={tiny_model_dir(tmp_path / 'one', seed=0)}", f"two={tiny_model_dir(tmp_path / 'two', seed=1)}"])
    app = create_label_app(store, "arena", models=models, max_new_tokens=4, seed=0)
    with running(app) as url, httpx.Client(base_url=url, headers=auth(tokens["alice"]), timeout=30) as c:
        for body, words in (({"prompt": ""}, "field 'prompt'"), ({"prompt": 3}, "field 'prompt'"),
                            ({}, "field 'prompt'"), ({"prompt": "x" * 100_001}, "request body over")):
            r = c.post("/api/arena", json=body)
            assert r.status_code in (400, 413) and words in r.json()["error"]["message"], r.text
        assert store.count_items() == 0
        orders = set()
        for k in range(12):
            item = c.post("/api/arena", json={"prompt": f"Q{k}: <b>hi</b>"}).json()["item"]
            assert item["kind"] == "pair" and len(item["outputs"]) == 2 and "one" not in json.dumps(item)
            assert c.post("/api/submit", json={"item_id": item["item_id"], "submit_id": f"arena-vote-{k}",
                                               "choice": "A"}).status_code == 200
            # another labeller never sees someone's arena prompt
            assert c.get("/api/next", headers=auth(tokens["bob"])).json()["item"] is None
        labels = store.labels("arena")
        assert [lab["prompt"] for lab in labels] == [f"Q{k}: <b>hi</b>" for k in range(12)]
        for lab in labels:
            assert sorted(o["model"] for o in lab["outputs"]) == ["one", "two"]
            orders.add(tuple(o["model"] for o in (lab["outputs"][i] for i in lab["shown_order"])))
        assert len(orders) == 2  # both models were shown on the left (seeded; 12 draws)
