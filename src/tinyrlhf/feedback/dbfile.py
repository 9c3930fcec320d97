"""The feedback database file: its schema, and opening it so that a file which is not a feedback database
is refused before anything touches it.

A file is looked at first through a read-only connection (`mode=ro`): an empty database (a new or 0-byte
file) or one holding our tables with their columns is ours; anything else (not SQLite, another program's
tables, a table of ours without its columns) is refused with one line naming the file, and stays byte for
byte as it was (no WAL switch, no tables created). `feedback export` never opens it any other way.
"""
from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote

from ..errors import TinyRLHFError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
  id INTEGER PRIMARY KEY, batch TEXT NOT NULL, kind TEXT NOT NULL, prompt TEXT NOT NULL,
  outputs TEXT NOT NULL, needed INTEGER NOT NULL, created REAL NOT NULL, closed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS items_batch ON items(batch);
CREATE INDEX IF NOT EXISTS items_open ON items(closed, id);
CREATE TABLE IF NOT EXISTS labellers (name TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
  item_id INTEGER NOT NULL REFERENCES items(id), labeller TEXT NOT NULL REFERENCES labellers(name),
  shown_order TEXT NOT NULL, assigned_at REAL NOT NULL, shown_at REAL NOT NULL, pinned INTEGER NOT NULL,
  PRIMARY KEY (item_id, labeller));
CREATE TABLE IF NOT EXISTS labels (
  id INTEGER PRIMARY KEY AUTOINCREMENT, submit_id TEXT NOT NULL UNIQUE,
  item_id INTEGER NOT NULL REFERENCES items(id), labeller TEXT NOT NULL, batch TEXT NOT NULL, kind TEXT NOT NULL,
  prompt TEXT NOT NULL, outputs TEXT NOT NULL, shown_order TEXT NOT NULL, answer TEXT NOT NULL,
  comment TEXT NOT NULL, latency_s REAL NOT NULL, created REAL NOT NULL,
  UNIQUE (item_id, labeller));
CREATE INDEX IF NOT EXISTS labels_batch ON labels(batch);
CREATE TRIGGER IF NOT EXISTS labels_no_update BEFORE UPDATE ON labels
  BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END;
CREATE TRIGGER IF NOT EXISTS labels_no_delete BEFORE DELETE ON labels
  BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END;
"""
_INTERNAL = {"sqlite_sequence", "sqlite_stat1", "sqlite_stat4"}  # SQLite's own tables (AUTOINCREMENT, ANALYZE)


def _columns(db: sqlite3.Connection) -> dict[str, set[str]]:
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: {r[1] for r in db.execute(f'PRAGMA table_info("{t}")')} for t in tables if t not in _INTERNAL}


def _expected() -> dict[str, set[str]]:
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        return _columns(db)
    finally:
        db.close()


EXPECTED = _expected()  # {table: its columns}, read from SCHEMA itself


class NotAFeedbackDB(TinyRLHFError):
    """The file is not a feedback database (or not SQLite at all); nothing was changed."""


def connect_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection (it never creates, converts or writes the file)."""
    uri = "file:" + quote(os.path.abspath(path)) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False, isolation_level=None)


def schema_problem(db: sqlite3.Connection, complete: bool) -> str | None:
    """None when the database holds our schema (`complete`: every table; else a subset, which opening
    completes), or "" when it holds no table at all; else what is wrong with it."""
    have = _columns(db)
    if not have:
        return ""
    foreign = sorted(set(have) - set(EXPECTED))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        return f"it holds other tables ({shown}): another program's database"
    for table, cols in EXPECTED.items():
        if table in have and cols - have[table]:
            return f"table '{table}' lacks column(s) {', '.join(sorted(cols - have[table]))}"
    missing = sorted(set(EXPECTED) - set(have))
    if complete and missing:
        return f"table(s) {', '.join(missing)} missing"
    return None


def check_file(path: str, *, must_exist: bool, allow_empty: bool) -> None:
    """Refuse (NotAFeedbackDB, one line naming the file) anything but a feedback database at `path`,
    looking through a read-only connection only. `allow_empty`: a new file, a 0-byte file or an empty
    SQLite database counts (a session will create the tables)."""
    if not os.path.exists(path):
        if must_exist:
            raise NotAFeedbackDB(f"{path}: no such feedback database")
        return
    if not os.path.isfile(path):
        raise NotAFeedbackDB(f"{path}: not a file (a feedback database is one SQLite file)")
    if os.path.getsize(path) == 0 and not allow_empty:
        raise NotAFeedbackDB(f"{path}: an empty file (0 bytes), not a feedback database; nothing was changed")
    try:
        db = connect_readonly(path)
        try:
            problem = schema_problem(db, complete=not allow_empty)
        finally:
            db.close()
    except sqlite3.Error as e:
        raise NotAFeedbackDB(f"{path}: not a usable feedback database ({e}); nothing was changed") from None
    if problem == "" and not allow_empty:
        problem = "it holds no tables"
    if problem:
        raise NotAFeedbackDB(f"{path}: not a usable feedback database ({problem}); nothing was changed")


def existing_labellers(path: str) -> list[str]:
    """The labellers a database already holds, read through a read-only connection ([] for a new, empty or
    unusable file: check_file says what is wrong with the latter)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return []
    try:
        db = connect_readonly(path)
        try:
            if "labellers" not in _columns(db):
                return []
            return [r[0] for r in db.execute("SELECT name FROM labellers ORDER BY created, name")]
        finally:
            db.close()
    except sqlite3.Error:
        return []
