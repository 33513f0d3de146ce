"""Numbered SQLite schema migrations, applied once each (the registry, plans, conversations, the Slack store).

    MIGRATIONS = [("m001_initial", m001_initial), ("m002_indexes", m002_indexes)]
    apply_migrations(db, MIGRATIONS)      # inside the caller's transaction; returns the names applied now
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

__all__ = ["Migration", "apply_migrations"]

Migration = tuple[str, Callable[[sqlite3.Connection], None]]


def apply_migrations(db: sqlite3.Connection, migrations: Sequence[Migration], table: str = "migrations") -> list[str]:
    """Apply, in order, the migrations this database lacks and record each; returns the names applied."""
    db.execute(f"CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {r[0] for r in db.execute(f"SELECT name FROM {table}")}
    applied = []
    for name, fn in migrations:
        if name not in done:
            fn(db)
            db.execute(f"INSERT INTO {table} (name, applied_at) VALUES (?, ?)", (name, time.time()))
            applied.append(name)
    return applied
