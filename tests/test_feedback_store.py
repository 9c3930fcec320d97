"""The SQLite feedback store and the export: queues, the doubly-labelled share, idempotent and append-only
labels, shown order mapped back to outputs, and the exported files read back by the trainers' loaders."""
from __future__ import annotations

import json
import random
import sqlite3

import pytest

from tinyrlhf.data.formats import load_binary, load_preferences
from tinyrlhf.data.records import read_records
from tinyrlhf.feedback.export import agreement, export_labels, format_summary
from tinyrlhf.feedback.store import Store, StoreError, doubled


def pair_item(i: int, models=("m1", "m2")) -> dict:
    return {"prompt": f"p{i}", "kind": "pair",
            "outputs": [{"model": models[0], "text": f" x{i}"}, {"model": models[1], "text": f" y{i}"}]}


def drain(store: Store, who: str, answer) -> list[dict]:
    """Label everything in `who`'s queue with answer(item) -> answer dict; returns the items seen."""
    seen = []
    while (item := store.next_item(who)) is not None:
        store.submit(who, item["item_id"], f"sub-{who}-{item['item_id']}", answer(item))
        seen.append(item)
    return seen


def test_doubled_share_is_exact_and_spread():
    for share in (0.0, 0.2, 0.25, 0.5, 1.0):
        flags = [doubled(i, share) for i in range(100)]
        assert sum(flags) == round(100 * share)
    assert [doubled(i, 0.5) for i in range(4)] == [False, True, False, True]


def test_queue_share_and_shown_order(tmp_path):
    store = Store(str(tmp_path / "fb.db"))
    store.set_meta("double_share", "0.25")
    ids = store.add_items([pair_item(i) for i in range(8)], "round-1")
    assert ids == list(range(1, 9))
    store.add_labellers(["alice", "bob"])
    # alice always picks position A; bob always B
    a = drain(store, "alice", lambda it: {"choice": "A"})
    b = drain(store, "bob", lambda it: {"choice": "B"})
    # 8 items, 2 of them (25%) need two labellers: 10 labels in all, each doubled item seen by both
    assert len(a) == 8 and len(b) == 2
    assert store.count_labels() == 10 and store.count_labels("round-1") == 10 and store.count_labels("x") == 0
    labels = store.labels()
    for lab in labels:
        shown = store.item(lab["item_id"])["outputs"]
        # position p showed output shown_order[p]: the texts the person saw, in order
        assert sorted(lab["shown_order"]) == [0, 1]
        assert lab["outputs"] == shown
    # the shown texts (next_item) are the outputs in shown order, without model ids
    alice_first = next(lab for lab in labels if lab["labeller"] == "alice" and lab["item_id"] == a[0]["item_id"])
    assert a[0]["outputs"] == [alice_first["outputs"][i]["text"] for i in alice_first["shown_order"]]
    assert "model" not in json.dumps(a[0])
    # positions are randomised: over 8 items, both orders occur (probability of failing 2 * 2^-8)
    assert {tuple(lab["shown_order"]) for lab in labels if lab["labeller"] == "alice"} == {(0, 1), (1, 0)}


def test_submits_are_idempotent_checked_and_append_only(tmp_path):
    store = Store(str(tmp_path / "fb.db"))
    store.add_items([pair_item(0), {"prompt": "q", "kind": "ranking",
                                    "outputs": [{"model": f"m{k}", "text": f" t{k}"} for k in range(3)]}], "b")
    store.add_labellers(["alice", "bob"])
    it = store.next_item("alice")
    first = store.submit("alice", it["item_id"], "submit-0001", {"choice": "tie"}, "hmm")
    again = store.submit("alice", it["item_id"], "submit-0001", {"choice": "tie"}, "hmm")
    assert again == {"label_id": first["label_id"], "duplicate": True} and store.count_labels() == 1
    bad = [(dict(item_id=it["item_id"], submit_id="submit-0002", answer={"choice": "A"}), 409),  # labelled
           (dict(item_id=99, submit_id="submit-0003", answer={"choice": "A"}), 404),
           (dict(item_id=2, submit_id="submit-0004", answer={"ranking": [0, 1, 2]}), 403),  # not in her queue
           (dict(item_id=it["item_id"], submit_id="short", answer={"choice": "A"}), 400),
           (dict(item_id="1", submit_id="submit-0005", answer={"choice": "A"}), 400),
           (dict(item_id=it["item_id"], submit_id="submit-0006", answer={"choice": "A"}, comment="x" * 2001), 413)]
    for kwargs, status in bad:
        with pytest.raises(StoreError) as e:
            store.submit("alice", **kwargs)
        assert e.value.status == status, (kwargs, str(e.value))
    it2 = store.next_item("alice")
    for answer in ({"ranking": [0, 1]}, {"ranking": [0, 1, 1]}, {"ranking": [0, 1, 3]}, {"choice": "A"}):
        with pytest.raises(StoreError, match="ranking"):
            store.submit("alice", it2["item_id"], "submit-0007", answer)
    with pytest.raises(StoreError, match="already used"):  # bob reusing alice's submit id
        store.submit("bob", it["item_id"], "submit-0001", {"choice": "A"})
    assert store.count_labels() == 1
    with sqlite3.connect(str(tmp_path / "fb.db")) as db:
        for sql in ("UPDATE labels SET comment = 'x'", "DELETE FROM labels"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(sql)
    with pytest.raises(StoreError, match=r"items\[0\]: field 'outputs'"):
        store.add_items([{"prompt": "p", "kind": "pair", "outputs": [{"model": "m", "text": "t"}]}], "b")
    with pytest.raises(StoreError, match="kind"):
        store.add_items([{"prompt": "p", "kind": "score", "outputs": []}], "b")


def test_tokens_persist_and_lease_expiry(tmp_path):
    path = str(tmp_path / "fb.db")
    store = Store(path, lease_s=0.0)
    tokens = store.add_labellers(["alice", "bob"])
    admin = store.admin_token()
    store.add_items([pair_item(0)], "b")
    store.set_meta("double_share", "0")
    assert store.next_item("alice")["item_id"] == 1
    # lease 0: alice's unanswered assignment no longer holds the item, bob may take it
    assert store.next_item("bob")["item_id"] == 1
    store.close()
    again = Store(path)
    assert again.add_labellers(["alice", "bob", "carol"])["alice"] == tokens["alice"]
    assert again.admin_token() == admin and again.labeller_for(tokens["bob"]) == "bob"
    assert again.labeller_for("nope") is None
    with pytest.raises(StoreError, match="labeller name"):
        again.add_labellers(["a b"])
    # an item naming its labellers goes to exactly those queues, lease or not
    again.lease_s = 0.0
    (pinned,) = again.add_items([{**pair_item(1), "labellers": ["carol"]}], "b")
    again.add_labellers(["dave"])
    assert again.next_item("dave")["item_id"] == 1  # the unpinned item (leases expired), never the pinned one
    again.submit("dave", 1, "dave-submit-1", {"choice": "A"})
    assert again.next_item("dave") is None
    assert again.next_item("carol")["item_id"] == pinned
    with pytest.raises(StoreError, match="unknown labeller"):
        again.add_items([{**pair_item(1), "labellers": ["erin"]}], "b")


def test_export_formats_agreement_and_ratings(tmp_path):
    """Two labellers on 40 pair items (all doubled) where model 'good' wins 90% of the time, plus rankings
    and thumbs: the files hold what was answered, in the trainers' formats, and 'good' rates highest."""
    db = str(tmp_path / "fb.db")
    store = Store(db)
    store.set_meta("double_share", "1")
    rng = random.Random(0)
    items = [pair_item(i, ("good", "bad") if i % 2 else ("bad", "good")) for i in range(40)]
    items.append({"prompt": "rank", "kind": "ranking",
                  "outputs": [{"model": m, "text": f" {m} text"} for m in ("bad", "good", "mid")]})
    items += [{"prompt": f"b{i}", "kind": "binary", "outputs": [{"model": "good", "text": f" z{i}"}]} for i in range(3)]
    items.append({"prompt": "e", "kind": "binary", "outputs": [{"model": "good", "text": ""}]})  # empty: skipped
    store.add_items(items, "round-1")
    store.add_labellers(["alice", "bob"])

    def answer(it):
        full = store.item(it["item_id"])
        if it["kind"] == "binary":
            return {"choice": "up"}
        if it["kind"] == "ranking":  # best first: good, mid, bad, as shown positions
            return {"ranking": [it["outputs"].index(f" {m} text") for m in ("good", "mid", "bad")]}
        good_text = next(o["text"] for o in full["outputs"] if o["model"] == "good")
        if rng.random() < 0.1:
            return {"choice": rng.choice(["tie", "both_bad"])}
        return {"choice": "AB"[it["outputs"].index(good_text)]}
    drain(store, "alice", answer)
    drain(store, "bob", answer)
    store.close()
    summary = export_labels(db, str(tmp_path / "out"))
    labels = Store(db).labels()
    n_ab = sum(lab["kind"] == "pair" and lab["answer"]["choice"] in "AB" for lab in labels)
    n_bad = sum(lab["kind"] == "pair" and lab["answer"]["choice"] == "both_bad" for lab in labels)
    pairs = load_preferences(tmp_path / "out" / "pairs.jsonl")
    assert len(pairs) == n_ab == summary["written"]["pairs.jsonl"] and n_ab > 60
    assert all(p.meta["chosen_model"] == "good" and p.chosen.startswith(" x") == (int(p.prompt[1:]) % 2 == 1)
               for p in pairs)
    rankings = read_records(str(tmp_path / "out" / "rankings.jsonl"), "ranking")
    assert [r.completions for r in rankings] == [(" good text", " mid text", " bad text")] * 2
    binary = load_binary(tmp_path / "out" / "binary.jsonl")
    assert len(binary) == 2 * 3 + 2 * n_bad and summary["skipped_invalid"] == 2
    assert sum(b.label for b in binary) == 6
    assert summary["per_labeller"] == {"alice": 45, "bob": 45} and summary["labels"] == 90
    pair_agree = summary["agreement"]["pair"]
    assert pair_agree["items"] == 40 and 0.6 < pair_agree["agree"] < 1.0
    assert summary["agreement"]["ranking"] == {"items": 1, "agree": 1.0, "same_top": 1.0, "kendall_tau": 1.0}
    elo, bt = summary["ratings"]["elo"], summary["ratings"]["bradley_terry"]
    assert elo["good"]["rating"] > elo["bad"]["rating"] and bt["good"]["low"] > bt["bad"]["high"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["labels"] == 90
    assert summary["latency"]["all"]["n"] == 90
    assert summary["ratings"]["interval"] == "cluster bootstrap over labellers" and summary["ratings"]["labellers"] == 2
    # every compared pair of answers is equally long here, so length control changes nothing: the same
    # ratings and (same labeller clusters, same seed) the same intervals as plain Bradley-Terry
    lc = summary["ratings"]["length_controlled"]
    for m in bt:
        assert lc["ratings"][m] == pytest.approx(bt[m], abs=1e-6)
    assert lc["length"]["coef"] == pytest.approx(0.0, abs=1e-9)
    assert "BT, length-controlled" in format_summary(summary)


def test_export_reads_the_database_read_only_and_an_unwritable_out_changes_nothing(tmp_path, monkeypatch, capsys):
    """export_labels opens the store with mode=ro: the database file is byte for byte the same after. An
    --out whose files cannot be written (a read-only directory, a full disk) is one line, exit 2, with the
    files already in --out unchanged and no temporary file left. Tests run as root, where chmod does not stop
    a write, so the read-only directory is an `open` stub in feedback/export.py raising EROFS (and ENOSPC
    after the first file, for the full disk)."""
    import errno
    import hashlib
    import os

    from tinyrlhf.cli import main
    from tinyrlhf.feedback import export as export_mod

    db = str(tmp_path / "fb.db")
    with Store(db) as store:
        store.add_items([pair_item(i) for i in range(4)], "round-1")
        store.add_labellers(["alice"])
        drain(store, "alice", lambda it: {"choice": "A"})
    digest = hashlib.sha256(open(db, "rb").read()).hexdigest()
    out = tmp_path / "out"
    assert main(["feedback", "export", db, "--out", str(out)]) == 0
    assert hashlib.sha256(open(db, "rb").read()).hexdigest() == digest
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_open = open
    for code, after_files in ((errno.EROFS, 0), (errno.ENOSPC, 1)):
        opened = []

        def fake_open(path, mode="r", *a, **k):
            if "w" in mode:
                opened.append(path)
                if len(opened) > after_files:
                    raise OSError(code, os.strerror(code), path)
            return real_open(path, mode, *a, **k)
        monkeypatch.setattr(export_mod, "open", fake_open, raising=False)
        capsys.readouterr()
        assert main(["feedback", "export", db, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: could not write the export to") and \
            "the files already there are unchanged" in err, err
        assert ("read-only" if code == errno.EROFS else "no space left") in err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file either
        monkeypatch.undo()


def test_agreement_counts_only_different_people():
    base = {"kind": "binary", "outputs": [{"model": "m", "text": "t"}], "shown_order": [0]}
    labels = [{**base, "item_id": 1, "labeller": "a", "answer": {"choice": "up"}},
              {**base, "item_id": 1, "labeller": "b", "answer": {"choice": "down"}},
              {**base, "item_id": 2, "labeller": "a", "answer": {"choice": "up"}},
              {**base, "item_id": 2, "labeller": "b", "answer": {"choice": "up"}},
              {**base, "item_id": 3, "labeller": "a", "answer": {"choice": "up"}}]
    out = agreement(labels)["binary"]
    # 2 items labelled twice, 1 agreement; kappa: po = 0.5, pe = (2*1 + 0*1)/4 = 0.5 -> 0
    assert out["items"] == 2 and out["agree"] == 0.5 and out["kappa"] == 0.0
