"""Feedback database files for the bad-input corpus (tests/test_bad_inputs.py): what `feedback export`,
`label` and `loop --db` must refuse unchanged, or read without writing."""
import sqlite3

from tinyrlhf.feedback.store import Store


def feedback_files(bad) -> dict[str, str]:
    """Feedback databases for `feedback export` / `label` / `loop --db`: a good one (batch round-1), one with
    a labels row whose JSON is cut, one with an answer {"choice": "Z"} (both inserted by hand: the store
    never writes them), a 0-byte file, another program's SQLite database and a text file."""
    def labelled(path):
        with Store(str(path)) as store:
            store.add_labellers(["alice"])
            store.add_items([{"prompt": f"p{i}", "kind": "pair", "outputs": [{"model": "m1", "text": f" a{i}"},
                                                                             {"model": "m2", "text": f" b{i}"}]}
                             for i in range(2)], "round-1")
            for k in range(2):
                item = store.next_item("alice")
                store.submit("alice", item["item_id"], f"submit-{k:04d}", {"choice": "AB"[k]})
        return str(path)

    def forged(path, answer: str):
        labelled(path)
        db = sqlite3.connect(str(path))
        db.execute("INSERT INTO labels (submit_id, item_id, labeller, batch, kind, prompt, outputs, shown_order, "
                   "answer, comment, latency_s, created) SELECT 'forged-0001', 1, 'mallory', batch, kind, prompt, "
                   "outputs, '[0, 1]', ?, '', 0, 0 FROM items WHERE id = 1", (answer,))
        db.commit()
        db.close()
        return str(path)

    foreign = sqlite3.connect(str(bad / "fb_foreign.db"))
    foreign.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    foreign.execute("INSERT INTO users VALUES (1, 'x')")
    foreign.commit()
    foreign.close()
    (bad / "fb_zero.db").write_bytes(b"")
    (bad / "fb_text.db").write_bytes(b"this is not sqlite\n" * 100)
    return {"fb_good": labelled(bad / "fb_good.db"), "fb_badrow": forged(bad / "fb_badrow.db", '{"choice": "A"'),
            "fb_choice_z": forged(bad / "fb_choice_z.db", '{"choice": "Z"}'), "fb_foreign": str(bad / "fb_foreign.db"),
            "fb_zero": str(bad / "fb_zero.db"), "fb_text": str(bad / "fb_text.db")}
