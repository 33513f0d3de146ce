"""Conversation memory in SQLite: the text turns of each conversation and a little state (its latest run).

    history = History()                                # DISTILLERY_HOME/conversations.db
    history.append("C1:T1", "user", "distill sst2 into something small")
    history.recent("C1:T1", limit=20)                  # [("user", "..."), ("assistant", "...")], oldest first
    history.set_state("C1:T1", "run_id", "4502cc58"); history.get_state("C1:T1", "run_id")

Only user and assistant text is kept (not tool calls): enough for the model to follow the conversation,
and a replayed history can never contain half a tool exchange.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from pipeline.home import distillery_home
from pipeline.migrations import prepare_store

__all__ = ["History"]

MAX_CHARS = 4000  # per stored message


def _m001_initial(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL,"
               " role TEXT NOT NULL, content TEXT NOT NULL, at REAL NOT NULL)")
    db.execute("CREATE INDEX messages_conversation ON messages (conversation, id)")
    db.execute("CREATE TABLE state (conversation TEXT NOT NULL, key TEXT NOT NULL, value TEXT,"
               " PRIMARY KEY (conversation, key))")


MIGRATIONS = [("m001_initial", _m001_initial)]


class History:
    def __init__(self, home: Path | str | None = None):
        self.path = Path(home or distillery_home()) / "conversations.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prepare_store(self.path, self._connect, MIGRATIONS, what="the conversation history")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def append(self, conversation: str, role: str, content: str) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO messages (conversation, role, content, at) VALUES (?,?,?,?)",
                       (conversation, role, (content or "")[:MAX_CHARS], time.time()))

    def recent(self, conversation: str, limit: int = 20) -> list[tuple[str, str]]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT role, content FROM messages WHERE conversation = ? ORDER BY id DESC LIMIT ?",
                              (conversation, int(limit))).fetchall()
        return [(r[0], r[1]) for r in reversed(rows)]

    def set_state(self, conversation: str, key: str, value: str | None) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO state VALUES (?,?,?) ON CONFLICT (conversation, key) DO UPDATE SET value = excluded.value",
                       (conversation, key, value))

    def get_state(self, conversation: str, key: str) -> str | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT value FROM state WHERE conversation = ? AND key = ?", (conversation, key)).fetchone()
        return row[0] if row else None

    def clear(self, conversation: str) -> None:
        with closing(self._connect()) as db, db:
            db.execute("DELETE FROM messages WHERE conversation = ?", (conversation,))
            db.execute("DELETE FROM state WHERE conversation = ?", (conversation,))
