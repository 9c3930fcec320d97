"""`tinyrlhf label` and `tinyrlhf feedback export` as a user runs them: a session sampling from two models on
a task's prompts, labelled over HTTP, exported, and `tinyrlhf reward` / `dpo` / `kto` training from the
exported files; bad command lines stop with one clear `error:` line and exit 2."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from serve_util import tiny_model_dir
from tinyrlhf.cli import main
from tinyrlhf.feedback.store import Store


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fb-models")
    return tiny_model_dir(root / "a", seed=0), tiny_model_dir(root / "b", seed=1)


def _start(args: list[str]) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "tinyrlhf", "label", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    links, lines = {}, []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"^\s+(\S+)\s+(http://\S+)/\?token=(\S+)", line)
        if m:
            links[m.group(1)] = (m.group(2), m.group(3))
        if line.startswith("export:"):
            break
    assert links, "".join(lines)
    url = next(iter(links.values()))[0]
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    return proc, {"links": links, "out": "".join(lines)}


def test_session_export_and_train_from_it(models, tmp_path, capsys):
    db = str(tmp_path / "fb.db")
    a, b = models
    proc, info = _start([db, "--task", "family_tree", "--model", f"a={a}", "--model", f"b={b}", "--n-prompts", "16",
                         "--max-new-tokens", "6", "--labellers", "alice,bob", "--double-share", "0.25"])
    first_links = info["links"]
    try:
        assert "queued 16 pair items in batch 'session'" in info["out"]
        for name, (url, token) in info["links"].items():
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
                k = 0
                while (item := c.get("/api/next").json()["item"]) is not None:
                    r = c.post("/api/submit", json={"item_id": item["item_id"], "submit_id": f"{name}-sub-{k}",
                                                    "choice": "AB"[k % 2]})
                    assert r.status_code == 200, r.text
                    k += 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
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
    assert main(["kto", f"out_dir={tmp_path / 'kto'}", f"data.train_file={out / 'pairs.jsonl'}",
                 f"ref_cache_dir={tmp_path / 'cache'}", *common]) == 0
    for run in ("rm", "dpo", "kto"):
        assert json.loads((tmp_path / run / "summary.json").read_text())["finished"] is True
    # a restart of the same session does not queue its items twice
    proc, info = _start([db, "--task", "family_tree", "--model", f"a={a}", "--model", f"b={b}", "--n-prompts", "16",
                         "--max-new-tokens", "6", "--labellers", "alice"])
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert "already holds 16 items: not adding more" in info["out"]
    assert info["links"]["alice"][1] == first_links["alice"][1]  # her link's token still works


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
