"""What the Slack bot remembers across restarts, in SQLite (`$DISTILLERY_HOME/slack.db`).

    store = SlackStore()
    if store.seen_event(body["event_id"]): return          # Slack retried an event we already took
    store.save_plan_message(plan_id, channel, thread_ts, message_ts)
    if store.claim_plan(plan_id, user): start it            # one Start per plan, even on a double click
    store.follow_run(run_id, channel, thread_ts, status_ts)  # the status message we keep updating
    store.unfinished_runs()                                 # after a restart: runs to re-attach to

Tables come from numbered migrations applied once each. Every call opens its own short connection, so one
store can be used from any thread or event loop.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from pipeline.home import distillery_home
from pipeline.migrations import prepare_store

__all__ = ["SlackStore"]


def m001_initial(db: sqlite3.Connection) -> None:
    # statement by statement: executescript() would COMMIT the migration transaction first
    for statement in filter(str.strip, """
        CREATE TABLE events (event_id TEXT PRIMARY KEY, seen_at REAL NOT NULL);
        CREATE INDEX events_seen_at ON events (seen_at);
        CREATE TABLE plan_messages (plan_id TEXT PRIMARY KEY, channel TEXT NOT NULL, thread_ts TEXT NOT NULL,
                                    message_ts TEXT NOT NULL);
        CREATE TABLE plan_claims (plan_id TEXT PRIMARY KEY, user TEXT NOT NULL, run_id TEXT, claimed_at REAL NOT NULL);
        CREATE TABLE threads (channel TEXT NOT NULL, thread_ts TEXT NOT NULL, run_id TEXT, plan_id TEXT,
                              updated_at REAL NOT NULL, PRIMARY KEY (channel, thread_ts));
        CREATE TABLE followed_runs (run_id TEXT PRIMARY KEY, channel TEXT NOT NULL, thread_ts TEXT NOT NULL,
                                    status_ts TEXT NOT NULL, last_text TEXT, finished INTEGER NOT NULL DEFAULT 0,
                                    created_at REAL NOT NULL);
        """.split(";")):
        db.execute(statement)


MIGRATIONS = [m001_initial]
EVENT_TTL_S = 7 * 24 * 3600  # Slack retries within minutes; a week of event ids is plenty


class SlackStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else distillery_home() / "slack.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prepare_store(self.path, self._connect, [(m.__name__, m) for m in MIGRATIONS], table="_migrations", what="the Slack store")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _write(self, sql: str, args: tuple = ()) -> int:
        with closing(self._connect()) as db:
            return db.execute(sql, args).rowcount

    def _one(self, sql: str, args: tuple = ()) -> dict[str, Any] | None:
        with closing(self._connect()) as db:
            row = db.execute(sql, args).fetchone()
        return dict(row) if row else None

    # -- events: Slack retries the same event_id; only the first one counts ----------------------------------
    def seen_event(self, event_id: str) -> bool:
        """Record event_id; True if it was already recorded (a retry or a duplicate delivery)."""
        now = time.time()
        with closing(self._connect()) as db:
            inserted = db.execute("INSERT OR IGNORE INTO events VALUES (?, ?)", (event_id, now)).rowcount
            if inserted:
                db.execute("DELETE FROM events WHERE seen_at < ?", (now - EVENT_TTL_S,))
        return not inserted

    # -- plans ---------------------------------------------------------------------------------------------
    def save_plan_message(self, plan_id: str, channel: str, thread_ts: str, message_ts: str) -> None:
        self._write("INSERT OR REPLACE INTO plan_messages VALUES (?, ?, ?, ?)", (plan_id, channel, thread_ts, message_ts))
        self.link_thread(channel, thread_ts, plan_id=plan_id)

    def plan_message(self, plan_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM plan_messages WHERE plan_id = ?", (plan_id,))

    def claim_plan(self, plan_id: str, user: str) -> bool:
        """Take the right to start plan_id; False if someone (or an earlier click) already took it."""
        return bool(self._write("INSERT OR IGNORE INTO plan_claims VALUES (?, ?, NULL, ?)", (plan_id, user, time.time())))

    def release_plan(self, plan_id: str) -> None:
        """Give the claim back (starting failed), so the plan can be started again."""
        self._write("DELETE FROM plan_claims WHERE plan_id = ? AND run_id IS NULL", (plan_id,))

    def set_plan_run(self, plan_id: str, run_id: str) -> None:
        self._write("UPDATE plan_claims SET run_id = ? WHERE plan_id = ?", (run_id, plan_id))

    def plan_claim(self, plan_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM plan_claims WHERE plan_id = ?", (plan_id,))

    # -- threads: which run or plan a conversation is about --------------------------------------------------
    def link_thread(self, channel: str, thread_ts: str, run_id: str | None = None, plan_id: str | None = None) -> None:
        with closing(self._connect()) as db:
            db.execute(
                "INSERT INTO threads VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel, thread_ts) DO UPDATE SET "
                "run_id = COALESCE(excluded.run_id, run_id), plan_id = COALESCE(excluded.plan_id, plan_id), "
                "updated_at = excluded.updated_at",
                (channel, thread_ts, run_id, plan_id, time.time()),
            )

    def thread(self, channel: str, thread_ts: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM threads WHERE channel = ? AND thread_ts = ?", (channel, thread_ts))

    # -- followed runs: the one status message per run -------------------------------------------------------
    def follow_run(self, run_id: str, channel: str, thread_ts: str, status_ts: str, text: str = "") -> None:
        self._write("INSERT OR IGNORE INTO followed_runs VALUES (?, ?, ?, ?, ?, 0, ?)",
                    (run_id, channel, thread_ts, status_ts, text, time.time()))
        self.link_thread(channel, thread_ts, run_id=run_id)

    def followed(self, run_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM followed_runs WHERE run_id = ?", (run_id,))

    def set_status_text(self, run_id: str, text: str) -> None:
        self._write("UPDATE followed_runs SET last_text = ? WHERE run_id = ?", (text, run_id))

    def finish_run(self, run_id: str) -> None:
        self._write("UPDATE followed_runs SET finished = 1 WHERE run_id = ?", (run_id,))

    def unfinished_runs(self) -> list[dict[str, Any]]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM followed_runs WHERE finished = 0 ORDER BY created_at").fetchall()
        return [dict(r) for r in rows]
