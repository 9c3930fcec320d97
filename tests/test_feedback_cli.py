"""`tinyrlhf label` and `tinyrlhf feedback export` as a user runs them: a session sampling from two models on
a task's prompts, labelled over HTTP, exported, and `tinyrlhf reward` / `dpo` / `kto` training from the
exported files; bad command lines stop with one clear `error:` line and exit 2."""
from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time

import httpx
import pytest

from serve_util import tiny_model_dir
from tinyrlhf.cli import build_parser, main
from tinyrlhf.feedback.commands import prepare_label
from tinyrlhf.feedback.export import export_labels
from tinyrlhf.feedback.sources import sampled_items
from tinyrlhf.feedback.store import Store


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fb-models")
    return tiny_model_dir(root / "a", seed=0), tiny_model_dir(root / "b", seed=1)


@contextlib.contextmanager
def session(argv: list[str]):
    """`tinyrlhf label ARGV` in this process (the command's own setup, then uvicorn in a thread): yields
    ({name: (base url, token)}, printed text); stops the server after. Its output goes to a buffer of its
    own and uvicorn leaves logging alone (log_config=None): nothing keeps a handle on pytest's streams."""
    import uvicorn

    args = build_parser().parse_args(["label", *argv, "--port", "0"])
    args.overrides = []
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        app, sock, store = prepare_label(args)
    printed = out.getvalue()
    links = {m.group(1): (m.group(2), m.group(3))
             for m in re.finditer(r"^\s+(\S+)\s+(http://\S+)/\?token=(\S+)", printed, re.M)}
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield links, printed
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        store.close()


def test_session_export_and_train_from_it(models, tmp_path, capsys):
    db = str(tmp_path / "fb.db")
    a, b = models
    argv = [db, "--task", "family_tree", "--model", f"a={a}", "--model", f"b={b}", "--n-prompts", "16",
            "--max-new-tokens", "6"]
    with session([*argv, "--labellers", "alice,bob", "--double-share", "0.25"]) as (first_links, printed):
        assert "queued 16 pair items in batch 'session'" in printed
        for name, (url, token) in first_links.items():
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
                k = 0
                while (item := c.get("/api/next").json()["item"]) is not None:
                    r = c.post("/api/submit", json={"item_id": item["item_id"], "submit_id": f"{name}-sub-{k}",
                                                    "choice": "AB"[k % 2]})
                    assert r.status_code == 200, r.text
                    k += 1
    with Store(db) as store:
        assert store.count_items() == 16 and store.count_labels() == 16 + 4  # a quarter labelled twice
        assert {o["model"] for it in map(store.item, range(1, 17)) for o in it["outputs"]} == {"a", "b"}
    out = tmp_path / "export"
    assert main(["feedback", "export", db, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == 20 and summary["agreement"]["pair"]["items"] == 4
    assert "per labeller: alice" in printed and "agreement (pair, 4 items labelled twice)" in printed
    assert re.search(r"^\s+a\s+\d+ \[", printed, re.M) and re.search(r"^\s+b\s+\d+ \[", printed, re.M)
    n_pairs = summary["written"]["pairs.jsonl"]
    assert n_pairs + summary["skipped_invalid"] == 20 and n_pairs >= 8
    # the trainers read the exported files as they are
    common = [f"model.path={a}", "train.max_steps=2", "train.batch_size=4", "train.progress=false", "train.threads=1"]
    assert main(["reward", f"out_dir={tmp_path / 'rm'}", f"data.train_file={out / 'pairs.jsonl'}",
                 f"data.eval_file={out / 'pairs.jsonl'}", *common]) == 0
    assert main(["dpo", f"out_dir={tmp_path / 'dpo'}", f"data.train_file={out / 'pairs.jsonl'}",
                 f"ref_cache_dir={tmp_path / 'cache'}", *common]) == 0
    # thumbs up/down on the same outputs (a binary batch through the store), exported as KTO's binary.jsonl
    with Store(db) as store:
        texts = [o for it in map(store.item, range(1, 17)) for o in it["outputs"] if o["text"].strip()]
        store.add_items([{"prompt": "Q", "kind": "binary", "outputs": [o], "labellers": ["alice"]} for o in texts],
                        "thumbs")
        k = 0
        while (item := store.next_item("alice")) is not None:
            store.submit("alice", item["item_id"], f"thumb-{k:04d}", {"choice": "up" if k % 2 else "down"})
            k += 1
    summary = export_labels(db, str(tmp_path / "thumbs"), "thumbs")
    assert summary["written"] == {"pairs.jsonl": 0, "rankings.jsonl": 0, "binary.jsonl": len(texts)}
    assert main(["kto", f"out_dir={tmp_path / 'kto'}", f"data.train_file={tmp_path / 'thumbs' / 'binary.jsonl'}",
                 f"ref_cache_dir={tmp_path / 'cache'}", *common]) == 0
    for run in ("rm", "dpo", "kto"):
        assert json.loads((tmp_path / run / "summary.json").read_text())["finished"] is True
    # a restart of the same session does not queue its items twice, and alice's link still works
    with session([*argv, "--labellers", "alice"]) as (links, printed):
        assert "already holds 16 items: not adding more" in printed
        url, token = links["alice"]
        assert links["alice"][1] == first_links["alice"][1]
        me = httpx.get(url + "/api/me", headers={"Authorization": f"Bearer {token}"}).json()
        # alice labelled first and took every item, bob then the 4 doubled ones; then her thumbs
        assert me == {"labeller": "alice", "mode": "pair", "labelled": 16 + len(texts)}


@pytest.mark.parametrize("args, words", [
    (["--task", "family_tree"], "need at least one --model"),
    (["--mode", "arena", "--model", "x"], "two or more --model"),
    (["--outputs", "o.jsonl", "--model", "x"], "drop --task / --prompts / --model"),
    (["--task", "family_tree", "--prompts", "p.jsonl", "--model", "x"], "not both"),
    (["--double-share", "1.5", "--labellers", "a"], "--double-share must be in [0, 1]"),
    (["--labellers", "a b"], "labeller name 'a b'"),
    ([], "no labellers"),
    (["--outputs", "{bad}", "--labellers", "a"], ":2: field 'outputs'"),
    (["--outputs", "{bad}", "--mode", "ranking", "--labellers", "a"], ":1: field 'outputs': a ranking item takes 3"),
    (["--model", "{gone}", "--model", "{gone}", "--mode", "arena", "--labellers", "a"], "no such directory"),
])
def test_bad_label_command_lines(tmp_path, capsys, args, words):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "outputs": [{"model": "m", "text": "x"}, {"model": "n", "text": "y"}]})
                   + "\n" + json.dumps({"prompt": "p", "outputs": "nope"}) + "\n")
    args = [a.replace("{bad}", str(bad)).replace("{gone}", str(tmp_path / "gone")) for a in args]
    assert main(["label", str(tmp_path / "fb.db"), "--port", "0", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err


def test_bad_export_command_lines(tmp_path, capsys):
    assert main(["feedback", "export", str(tmp_path / "none.db"), "--out", str(tmp_path / "o")]) == 2
    assert "no such feedback database" in capsys.readouterr().err
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    assert main(["feedback", "export", str(tmp_path / "junk.db"), "--out", str(tmp_path / "o")]) == 2
    assert "not a usable feedback database" in capsys.readouterr().err
    Store(str(tmp_path / "fb.db")).close()
    (tmp_path / "file").write_text("x")
    assert main(["feedback", "export", str(tmp_path / "fb.db"), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    # an empty database exports empty files and says so
    assert main(["feedback", "export", str(tmp_path / "fb.db"), "--out", str(tmp_path / "o")]) == 0
    assert "0 labels on 0 items" in capsys.readouterr().out


class FakeModels:
    """Stands in for sources.Models: each output names its model, slot seed and prompt."""
    def __init__(self, names):
        self.names = names

    def generate(self, name, prompts, *, max_new_tokens, temperature, seed):
        return [f" {name}:{seed}:{p}" for p in prompts]


def test_sampled_items_per_mode():
    prompts = ["p0", "p1", "p2", "p3"]
    one = sampled_items(FakeModels(["m"]), prompts, "pair", max_new_tokens=4, temperature=1.0, seed=0)
    # one model: two different samples of it (different seeds) per prompt
    assert [[o["text"] for o in it["outputs"]] for it in one] == [[f" m:0:{p}", f" m:1:{p}"] for p in prompts]
    two = sampled_items(FakeModels(["a", "b", "c"]), prompts, "pair", max_new_tokens=4, temperature=1.0, seed=0)
    for it in two:
        models = [o["model"] for o in it["outputs"]]
        assert len(set(models)) == 2 and all(o["text"].startswith(f" {o['model']}:") for o in it["outputs"])
        assert all(o["text"].endswith(it["prompt"]) for o in it["outputs"])
    ranked = sampled_items(FakeModels(["a", "b"]), prompts, "ranking", max_new_tokens=4, temperature=1.0, seed=0)
    assert all([o["model"] for o in it["outputs"]] == ["a", "b", "a"] and it["kind"] == "ranking" for it in ranked)
    assert len({o["text"] for o in ranked[0]["outputs"]}) == 3  # the repeated model's samples differ
    thumbs = sampled_items(FakeModels(["a", "b"]), prompts, "binary", max_new_tokens=4, temperature=1.0, seed=0)
    assert len(thumbs) == 8 and sorted((it["prompt"], it["outputs"][0]["model"]) for it in thumbs) == \
        sorted((p, m) for p in prompts for m in "ab")
    assert all(it["outputs"][0]["text"].endswith(it["prompt"]) for it in thumbs)
