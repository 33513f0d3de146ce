"""Numbered SQLite schema migrations, applied once each (the registry, plans, conversations, the Slack store).

    MIGRATIONS = [("m001_initial", m001_initial), ("m002_indexes", m002_indexes)]
    apply_migrations(db, MIGRATIONS)      # returns the names applied now
    prepare_store(path, connect, MIGRATIONS, what="the plan store")   # WAL + migrations, StoreError when corrupt

Migrations run inside one `BEGIN IMMEDIATE` transaction (the caller's, if it has one open), and the set of
applied names is read inside it: two processes opening a fresh home at once never both create the same table;
the second waits for the first's write lock, then sees its migrations as applied. A migration must not call
`executescript` (it commits first); run its statements one by one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

from .errors import StoreError

__all__ = ["Migration", "apply_migrations", "ensure_wal", "prepare_store"]

Migration = tuple[str, Callable[[sqlite3.Connection], None]]


def apply_migrations(db: sqlite3.Connection, migrations: Sequence[Migration], table: str = "migrations") -> list[str]:
    """Apply, in order, the migrations this database lacks and record each; returns the names applied."""
    own = not db.in_transaction
    if own:
        db.execute("BEGIN IMMEDIATE")  # the write lock first, then the applied set: no two processes both apply
    try:
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {r[0] for r in db.execute(f"SELECT name FROM {table}")}
        applied = []
        for name, fn in migrations:
            if name not in done:
                fn(db)
                db.execute(f"INSERT INTO {table} (name, applied_at) VALUES (?, ?)", (name, time.time()))
                applied.append(name)
    except BaseException:
        if own and db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if own:
        db.execute("COMMIT")
    return applied


def ensure_wal(db: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """Switch `db` to WAL. Changing the journal mode can answer "database is locked" at once, without waiting for
    the busy timeout, while another process opens the same fresh file: retry until `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if ("locked" not in str(err) and "busy" not in str(err)) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def prepare_store(path: Path, connect: Callable[[], sqlite3.Connection], migrations: Sequence[Migration],
                  table: str = "migrations", what: str = "database") -> None:
    """Switch the database at `path` to WAL and migrate it; StoreError (one sentence naming the file) if it is unusable."""
    try:
        with closing(connect()) as db:
            ensure_wal(db)
            apply_migrations(db, migrations, table)
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            raise StoreError(f"{what} '{path}' stayed locked by another process; try again in a moment.") from None
        raise StoreError(f"{what} '{path}' cannot be opened ({err}); check the file's permissions and free disk space.") from None
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{what} '{path}' is not a readable SQLite database ({err}); move the file away (a new, empty "
                         "one is created on the next start) or restore it from a backup.") from None
