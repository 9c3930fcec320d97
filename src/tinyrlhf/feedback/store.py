"""The feedback store: items to label, who may label them, and the append-only labels, in one SQLite file.

Tables (stdlib sqlite3, WAL journal). A submit is answered only after its transaction is committed with
synchronous=FULL (the WAL synced to disk), so neither kill -9 nor a power cut loses an acknowledged label;
everything else (handing out items) commits with synchronous=NORMAL, which survives kill -9 of the server
and costs no fsync (an fsync took ~20 ms here under load, more than the rest of a submit):
  items        id, batch, kind (pair|ranking|binary), prompt, outputs (JSON [{"model", "text"}]), needed
               (how many different labellers should label it: 2 for the doubly-labelled share, else 1),
               closed (it has `needed` labels: the queue query skips it by index, not by counting)
  labellers    name, token (the secret in each labeller's link)
  assignments  (item, labeller): the item is in that labeller's queue; `shown_order` is the random order its
               outputs are shown in (a list of output indices, position 0 first), `shown_at` the time it was
               last handed out (the label's latency is measured from it, on the server's clock)
  labels       append-only (triggers refuse UPDATE and DELETE): labeller, time, latency, the shown order,
               the exact prompt, texts and model ids shown, the answer, a comment, and the client's
               `submit_id` (UNIQUE: a double click, or a retry after a lost answer, is stored once)
  meta         key/value: the admin token, the doubly-labelled share
Items are assigned when a labeller asks for work, not in advance, so labellers can join late and items can
be added while a session runs (the loop adds each round's items to a live session). An item goes to a
labeller who has not labelled it while it has fewer than `needed` live assignments; an assignment nobody
answered for `lease_s` seconds stops counting, so one absent person does not hold items hostage. An item
may instead name its labellers ("labellers": [names]): it goes to exactly those queues.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import sqlite3
import threading
import time

from .checks import (INT64, MAX_COMMENT, StoreError, shown, check_answer, check_items, check_label_row, check_names,
                     doubled, valid_text)
from .dbfile import SCHEMA, NotAFeedbackDB, check_file, connect_readonly

_UNWRITABLE = {"full": ("the disk is full: free some space", 507), "readonly": ("the database is read-only", 503),
               "disk I/O": ("the disk failed to write", 503), "locked": ("the database stayed locked for 30 s", 503)}


def _unwritable(path: str, e: sqlite3.OperationalError) -> Exception:
    """A write SQLite refused for want of a disk (full, read-only, I/O error, locked): a StoreError (the
    app answers its status; the CLI prints one line) saying nothing was stored; anything else as it was."""
    for key, (what, status) in _UNWRITABLE.items():
        if key in str(e):
            return StoreError(f"{path}: {what} (SQLite: {e}); nothing was stored", status)
    return e


class Store:
    """One SQLite feedback database. Thread-safe: one connection, each transaction under a lock (the app
    serves requests from a thread pool); other processes (the loop) may open the same file at the same time."""

    def __init__(self, path: str, *, lease_s: float = 600.0, readonly: bool = False):
        """Open (or create) the database at `path`. A file that is not a feedback database is refused first,
        through a read-only look, and stays as it was (dbfile.check_file). `readonly`: the file must exist
        and hold the whole schema; it is opened read-only and never written (what `feedback export` does)."""
        self.path, self.lease_s = path, lease_s
        check_file(path, must_exist=readonly, allow_empty=not readonly)
        new = not os.path.exists(path)
        try:
            if readonly:
                self._db = connect_readonly(path)
            else:
                self._db = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._db.executescript(SCHEMA)
        except sqlite3.Error as e:
            if new or isinstance(_unwritable(path, e), StoreError):  # a read-only or full directory
                raise StoreError(f"{path}: cannot create or open the feedback database there ({e})") from None
            raise NotAFeedbackDB(f"{path}: not a usable feedback database ({e})") from None
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- plumbing

    def _write(self, fn, durable: bool = False):
        """Run fn(connection) in one IMMEDIATE transaction (the write lock up front: no upgrade deadlock
        between processes), committed before returning; `durable`: synced to disk before returning."""
        with self._lock:
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._db)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already (a full disk)
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                raise _unwritable(self.path, e) from None
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
            return out

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self):
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str):
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value)))

    # ---------------------------------------------------------------- items

    @property
    def double_share(self) -> float:
        """Share of newly added items that two different labellers label (for agreement); default 0.2."""
        return float(self.meta("double_share", "0.2"))

    def add_items(self, items: list[dict], batch: str) -> list[int]:
        """Queue items for labelling. item = {"prompt": str, "kind": "pair"|"ranking"|"binary",
        "outputs": [{"model": str, "text": str}, ...]} (2 outputs for pair, K>=3 for ranking, 1 for binary).
        `batch` names the round/session (e.g. "round-2"). Returns item ids.
        Optional "labellers": [names] queues the item for exactly those (known) labellers."""
        if not isinstance(batch, str) or not batch:
            raise StoreError("batch: expected a non-empty name")
        check_items(items)
        share, now, rng = self.double_share, time.time(), random.Random()
        known = set(self.labellers())
        for i, it in enumerate(items):
            unknown = sorted(set(it.get("labellers") or ()) - known)
            if unknown:
                raise StoreError(f"items[{i}]: field 'labellers': unknown labeller(s) {', '.join(unknown)}")

        def add(db):
            start = db.execute("SELECT COUNT(*) FROM items WHERE batch = ?", (batch,)).fetchone()[0]
            ids = []
            for i, it in enumerate(items):
                outs = [{"model": o["model"], "text": o["text"]} for o in it["outputs"]]
                who = it.get("labellers")
                cur = db.execute("INSERT INTO items (batch, kind, prompt, outputs, needed, created) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (batch, it["kind"], it["prompt"], json.dumps(outs, ensure_ascii=False),
                                  len(who) if who else 2 if doubled(start + i, share) else 1, now))
                for name in who or ():
                    order = list(range(len(outs)))
                    rng.shuffle(order)
                    db.execute("INSERT INTO assignments VALUES (?, ?, ?, ?, ?, 1)",
                               (cur.lastrowid, name, json.dumps(order), now, now))
                ids.append(cur.lastrowid)
            return ids
        return self._write(add)

    def item(self, item_id: int) -> dict | None:
        rows = self._read("SELECT id, batch, kind, prompt, outputs, needed FROM items WHERE id = ?", (item_id,))
        if not rows:
            return None
        i, batch, kind, prompt, outputs, needed = rows[0]
        return {"id": i, "batch": batch, "kind": kind, "prompt": prompt, "outputs": json.loads(outputs),
                "needed": needed}

    def count_items(self, batch: str | None = None) -> int:
        where, args = ("WHERE batch = ?", (batch,)) if batch is not None else ("", ())
        return self._read(f"SELECT COUNT(*) FROM items {where}", args)[0][0]

    # ---------------------------------------------------------------- labellers and tokens

    def add_labellers(self, names: list[str]) -> dict[str, str]:
        """{name: token} for each name; a known name keeps its token (its link stays valid)."""
        check_names(names)

        def add(db):
            out = {}
            for n in names:
                row = db.execute("SELECT token FROM labellers WHERE name = ?", (n,)).fetchone()
                if row is None:
                    row = (secrets.token_urlsafe(18),)
                    db.execute("INSERT INTO labellers VALUES (?, ?, ?)", (n, row[0], time.time()))
                out[n] = row[0]
            return out
        return self._write(add)

    def admin_token(self) -> str:
        """The admin token (created on first use, then kept)."""
        def get(db):
            row = db.execute("SELECT value FROM meta WHERE key = 'admin_token'").fetchone()
            if row:
                return row[0]
            token = secrets.token_urlsafe(24)
            db.execute("INSERT INTO meta VALUES ('admin_token', ?)", (token,))
            return token
        return self._write(get)

    def labeller_for(self, token: str | None) -> str | None:
        if not token:
            return None
        rows = self._read("SELECT name FROM labellers WHERE token = ?", (token,))
        return rows[0][0] if rows else None

    def labellers(self) -> list[str]:
        return [r[0] for r in self._read("SELECT name FROM labellers ORDER BY created, name")]

    # ---------------------------------------------------------------- the queue

    def next_item(self, labeller: str, rng: random.Random | None = None) -> dict | None:
        """The labeller's next item with its outputs in their shown order (no model ids), or None when
        their queue is empty. An item already handed to them and not yet answered comes back first, in
        the same order (a reload shows the same thing)."""
        rng = rng or random.Random()

        def pick(db):
            now = time.time()
            row = db.execute(
                "SELECT a.item_id, a.shown_order FROM assignments a WHERE a.labeller = ? AND NOT EXISTS "
                "(SELECT 1 FROM labels l WHERE l.item_id = a.item_id AND l.labeller = a.labeller) "
                "ORDER BY a.assigned_at, a.item_id LIMIT 1", (labeller,)).fetchone()
            if row is None:  # a new item: one still short of `needed` labellers (answered or live)
                found = db.execute(
                    "SELECT i.id, i.outputs FROM items i WHERE i.closed = 0 AND NOT EXISTS (SELECT 1 FROM assignments a "
                    "WHERE a.item_id = i.id AND a.labeller = ?) AND i.needed > (SELECT COUNT(*) FROM "
                    "assignments a WHERE a.item_id = i.id AND (a.pinned OR a.assigned_at > ? OR EXISTS (SELECT 1 FROM "
                    "labels l WHERE l.item_id = a.item_id AND l.labeller = a.labeller))) "
                    "ORDER BY i.id LIMIT 1", (labeller, now - self.lease_s)).fetchone()
                if found is None:
                    return None
                order = list(range(len(json.loads(found[1]))))
                rng.shuffle(order)
                row = (found[0], json.dumps(order))
                db.execute("INSERT INTO assignments VALUES (?, ?, ?, ?, ?, 0)", (found[0], labeller, row[1], now, now))
            else:
                db.execute("UPDATE assignments SET shown_at = ? WHERE item_id = ? AND labeller = ?",
                           (now, row[0], labeller))
            return row
        row = self._write(pick)
        if row is None:
            return None
        item, order = self.item(row[0]), json.loads(row[1])
        return {"item_id": item["id"], "kind": item["kind"], "prompt": item["prompt"],
                "outputs": [item["outputs"][i]["text"] for i in order]}

    _OWN = ("SELECT COUNT(*), COUNT(*) - COUNT(l.id) FROM assignments a JOIN items i ON i.id = a.item_id LEFT JOIN "
            "labels l ON l.item_id = a.item_id AND l.labeller = a.labeller WHERE a.labeller = ? AND a.pinned "
            "AND i.batch = ?")

    def own_items(self, labeller: str, batch: str) -> tuple[int, int]:
        """(items of `batch` queued for the labeller alone, those not yet answered): their arena prompts."""
        return tuple(self._read(self._OWN, (labeller, batch))[0])

    def check_own_quota(self, labeller: str, batch: str, max_items: int | None, db=None) -> None:
        """StoreError unless the labeller may add an item of their own to `batch`: fewer than `max_items` exist
        (429; None: no limit) and none of theirs is still unanswered (409). `db`: inside a transaction."""
        made, unanswered = (self.own_items(labeller, batch) if db is None
                            else db.execute(self._OWN, (labeller, batch)).fetchone())
        if max_items is not None and made >= max_items:
            raise StoreError(f"arena quota reached: {max_items} prompts per labeller in this session "
                             "(tinyrlhf label --arena-prompts)", 429)
        if unanswered:
            raise StoreError("answer the arena item on your screen first (reload the page to see it)", 409)

    def add_own_item(self, labeller: str, item: dict, batch: str, rng: random.Random | None = None,
                     max_items: int | None = None) -> dict:
        """Arena: an item on the labeller's own prompt, queued for them alone (in the same transaction, so
        nobody else can draw it) with its outputs shuffled; returns it as `next_item` does. Refused while
        one of theirs is unanswered, or when they have `max_items` already (check_own_quota, checked again
        inside the transaction: two requests at once cannot both pass)."""
        check_items([item], "item")
        order = list(range(len(item["outputs"])))
        (rng or random.Random()).shuffle(order)
        outs = [{"model": o["model"], "text": o["text"]} for o in item["outputs"]]

        def add(db):
            self.check_own_quota(labeller, batch, max_items, db)
            now = time.time()
            cur = db.execute("INSERT INTO items (batch, kind, prompt, outputs, needed, created) VALUES "
                             "(?, ?, ?, ?, 1, ?)", (batch, item["kind"], item["prompt"],
                                                    json.dumps(outs, ensure_ascii=False), now))
            db.execute("INSERT INTO assignments VALUES (?, ?, ?, ?, ?, 1)",
                       (cur.lastrowid, labeller, json.dumps(order), now, now))
            return cur.lastrowid
        item_id = self._write(add)
        return {"item_id": item_id, "kind": item["kind"], "prompt": item["prompt"],
                "outputs": [outs[i]["text"] for i in order]}

    def submit(self, labeller: str, item_id, submit_id, answer: dict, comment="",
               quota: tuple[str, int] | None = None) -> dict:
        """Store one label; returns {"label_id", "duplicate"}. The same submit_id again returns the label it
        stored (a double click counts once). StoreError (with an HTTP status) on anything wrong; then
        nothing is stored. quota=(batch, n): a labeller stores at most n labels in that batch (arena votes)."""
        if type(item_id) is not int:
            raise StoreError(f"field 'item_id': expected an integer, got {shown(item_id)}")
        if not INT64[0] <= item_id <= INT64[1]:
            raise StoreError(f"field 'item_id': {shown(item_id)} is out of range (an item id fits in 64 bits)")
        if not isinstance(submit_id, str) or not 8 <= len(submit_id) <= 100 or not valid_text(submit_id):
            raise StoreError("field 'submit_id': expected a string of 8 to 100 characters (a fresh one per item)")
        if not isinstance(comment, str) or not valid_text(comment):
            raise StoreError("field 'comment': expected a string of valid Unicode")
        if len(comment) > MAX_COMMENT:
            raise StoreError(f"field 'comment': {len(comment)} characters, at most {MAX_COMMENT}", 413)
        if not isinstance(answer, dict):
            raise StoreError("expected an object")

        def add(db):
            dup = db.execute("SELECT id, labeller, item_id FROM labels WHERE submit_id = ?", (submit_id,)).fetchone()
            if dup is not None:
                if (dup[1], dup[2]) != (labeller, item_id):
                    raise StoreError(f"submit_id {submit_id!r} was already used for another label", 409)
                return {"label_id": dup[0], "duplicate": True}
            item = db.execute("SELECT batch, kind, prompt, outputs FROM items WHERE id = ?", (item_id,)).fetchone()
            if item is None:
                raise StoreError(f"unknown item {item_id}", 404)
            a = db.execute("SELECT shown_order, shown_at FROM assignments WHERE item_id = ? AND labeller = ?",
                           (item_id, labeller)).fetchone()
            if a is None:
                raise StoreError(f"item {item_id} is not in your queue", 403)
            if db.execute("SELECT 1 FROM labels WHERE item_id = ? AND labeller = ?", (item_id, labeller)).fetchone():
                raise StoreError(f"you already labelled item {item_id}", 409)
            batch, kind, prompt, outputs = item
            canon = check_answer(kind, answer, len(json.loads(outputs)))
            if quota is not None and batch == quota[0] and db.execute(
                    "SELECT COUNT(*) FROM labels WHERE labeller = ? AND batch = ?", (labeller, batch)).fetchone()[0] \
                    >= quota[1]:
                raise StoreError(f"vote quota reached: {quota[1]} {batch} votes per labeller in this session "
                                 "(tinyrlhf label --arena-votes)", 429)
            now = time.time()
            cur = db.execute(
                "INSERT INTO labels (submit_id, item_id, labeller, batch, kind, prompt, outputs, shown_order, "
                "answer, comment, latency_s, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (submit_id, item_id, labeller, batch, kind, prompt, outputs, a[0], json.dumps(canon), comment,
                 max(0.0, now - a[1]), now))
            db.execute("UPDATE items SET closed = 1 WHERE id = ? AND needed <= (SELECT COUNT(*) FROM labels "
                       "WHERE item_id = ?)", (item_id, item_id))
            return {"label_id": cur.lastrowid, "duplicate": False}
        return self._write(add, durable=True)

    # ---------------------------------------------------------------- reading labels

    def count_labels(self, batch: str | None = None) -> int:
        """Labels stored (all kinds), for a batch or all."""
        where, args = ("WHERE batch = ?", (batch,)) if batch is not None else ("", ())
        return self._read(f"SELECT COUNT(*) FROM labels {where}", args)[0][0]

    def count_labels_by(self, labeller: str) -> int:
        return self._read("SELECT COUNT(*) FROM labels WHERE labeller = ?", (labeller,))[0][0]

    def labels(self, batch: str | None = None) -> list[dict]:
        """Every label in storage order, outputs in their original order with model ids, the answer in
        shown positions and `shown_order` to map them (position p showed output shown_order[p])."""
        where, args = ("WHERE batch = ?", (batch,)) if batch is not None else ("", ())
        rows = self._read("SELECT id, submit_id, item_id, labeller, batch, kind, prompt, outputs, shown_order, "
                          f"answer, comment, latency_s, created FROM labels {where} ORDER BY id", args)
        keys = ("id", "submit_id", "item_id", "labeller", "batch", "kind", "prompt", "outputs", "shown_order",
                "answer", "comment", "latency_s", "created")
        # every row is checked as the store wrote it: a row edited by hand (bad JSON, an answer that is none)
        # is a StoreError naming it, never a traceback nor a label scored as something it is not
        return [check_label_row(dict(zip(keys, r)), self.path) for r in rows]

    def batches(self) -> list[str]:
        """The batches that hold items or labels, sorted."""
        return [r[0] for r in self._read("SELECT batch FROM items UNION SELECT batch FROM labels ORDER BY 1")]

    def progress(self) -> dict:
        """{labeller: {"labelled", "open"}} and the items still short of labels."""
        out = {}
        for name in self.labellers():
            out[name] = {"labelled": self.count_labels_by(name)}
        short = self._read("SELECT COUNT(*) FROM items i WHERE i.needed > (SELECT COUNT(*) FROM labels l "
                           "WHERE l.item_id = i.id)")[0][0]
        return {"labellers": out, "items": self.count_items(), "labels": self.count_labels(),
                "items_short_of_labels": short}
