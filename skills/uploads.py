"""Datasets people uploaded in chat (Slack files): where they are stored and who may see them.

    store = UploadStore()                                   # DISTILLERY_HOME/uploads.db
    folder = store.folder("T0001", "F0123")                 # DISTILLERY_HOME/uploads/T0001/F0123/ (ids checked)
    info = store.register("T0001", "F0123", path, "reviews.csv", channel="C1", user="U1", thread_ts="1.2")
    store.find("reviews", scope={"channel": "C1", "user": "U1"})    # visible in C1 only; a DM only to its person
    store.set_fields("T0001", "F0123", {"text": "body", "label": "tag"})   # remembered for that file

    store.saw_file(...)  /  store.latest_seen(channel, thread_ts, user)    # "this dataset", "the file above"

Visibility: a file shared in a channel is a dataset for requests made in that channel; a file shared in a direct
message (channel id starting with D) only for that person in that DM. Names are made unique across the home
("reviews", "reviews-2", ...), so a name from one channel never resolves to another channel's file. Paths come
from this store only (built from validated team and file ids and a sanitised file name), never from an event.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DatasetError
from pipeline.home import distillery_home
from pipeline.migrations import apply_migrations

__all__ = ["Upload", "UploadStore", "safe_name", "RECENT_S"]

_ID = re.compile(r"^[A-Z0-9]{1,32}$")
RECENT_S = 24 * 3600.0  # "this dataset" outside a thread: the person's latest file in the channel within a day


def safe_name(name: str, default: str = "dataset") -> str:
    """A file name safe to create: the last path part, [A-Za-z0-9._-] only, no leading dots, at most 100 chars."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".-_")[:100]
    return base or default


@dataclass
class Upload:
    name: str  # the dataset name people use ("reviews", "reviews-2")
    team: str
    file_id: str
    path: str  # absolute, under DISTILLERY_HOME/uploads/<team>/<file id>/
    original_name: str
    channel: str
    user: str
    thread_ts: str | None = None
    fields: dict[str, str] | None = None  # canonical -> column, when the person told us (or detection was sure)
    created_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_dm(self) -> bool:
        return self.channel.startswith("D")

    def visible_to(self, scope: dict[str, Any] | None) -> bool:
        scope = scope or {}
        if scope.get("channel") != self.channel:
            return False
        return not self.is_dm or scope.get("user") == self.user

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _m001_initial(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE uploads (
        team TEXT NOT NULL, file_id TEXT NOT NULL, name TEXT NOT NULL UNIQUE, path TEXT NOT NULL, original_name TEXT,
        channel TEXT NOT NULL, user TEXT NOT NULL, thread_ts TEXT, fields TEXT, created_at REAL NOT NULL,
        PRIMARY KEY (team, file_id))""")
    db.execute("CREATE INDEX uploads_by_channel ON uploads (channel, created_at)")
    db.execute("""CREATE TABLE seen_files (
        team TEXT NOT NULL, file_id TEXT NOT NULL, channel TEXT NOT NULL, user TEXT, thread_ts TEXT, name TEXT,
        seen_at REAL NOT NULL, PRIMARY KEY (team, file_id, channel))""")
    db.execute("CREATE INDEX seen_by_channel ON seen_files (channel, seen_at)")
    db.execute("""CREATE TABLE pending (
        conversation TEXT PRIMARY KEY, team TEXT NOT NULL, file_id TEXT NOT NULL, request TEXT, asked_at REAL NOT NULL)""")


MIGRATIONS = [("m001_initial", _m001_initial)]


class UploadStore:
    """Uploaded datasets in SQLite (one short connection per call; threads and processes share it)."""

    def __init__(self, home: Path | str | None = None):
        self.home = Path(home) if home is not None else distillery_home()
        self.root = self.home / "uploads"
        self.path = self.home / "uploads.db"
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            with closing(self._connect()) as db:
                db.execute("BEGIN IMMEDIATE")
                apply_migrations(db, MIGRATIONS)
                db.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            raise DatasetError(f"the uploads index '{self.path}' cannot be opened ({err}); move it away (a new one is made).") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        return db

    # -- where files go ------------------------------------------------------------------------------------
    def folder(self, team: str, file_id: str) -> Path:
        """DISTILLERY_HOME/uploads/<team>/<file id>/ for ids that look like Slack's; DatasetError otherwise."""
        for what, value in (("team", team), ("file", file_id)):
            if not _ID.match(value or ""):
                raise DatasetError(f"the {what} id '{str(value)[:40]}' is not a Slack id, so the file is not stored.")
        folder = self.root / team / file_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # -- datasets ------------------------------------------------------------------------------------------
    def register(self, team: str, file_id: str, path: Path, original_name: str, channel: str, user: str,
                 thread_ts: str | None = None, fields: dict[str, str] | None = None) -> Upload:
        """Record a stored file as a dataset named after it (made unique); the same file again keeps its name."""
        path = Path(path).resolve()
        if not path.is_relative_to(self.folder(team, file_id).resolve()):
            raise DatasetError("an uploaded file must be stored in its own uploads folder.")
        stem = safe_name(Path(original_name).stem if "." in original_name else original_name)
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "dataset"
        now = time.time()
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT name FROM uploads WHERE team = ? AND file_id = ?", (team, file_id)).fetchone()
            name = row["name"] if row else self._unique(db, stem)
            db.execute("""INSERT INTO uploads (team, file_id, name, path, original_name, channel, user, thread_ts, fields, created_at)
                          VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(team, file_id) DO UPDATE SET path = excluded.path,
                          channel = excluded.channel, user = excluded.user, thread_ts = excluded.thread_ts,
                          fields = COALESCE(excluded.fields, uploads.fields), created_at = excluded.created_at""",
                       (team, file_id, name, str(path), original_name, channel, user, thread_ts,
                        json.dumps(fields) if fields else None, now))
            db.execute("COMMIT")
        return self.get(team, file_id)

    @staticmethod
    def _unique(db: sqlite3.Connection, stem: str) -> str:
        taken = {r[0] for r in db.execute("SELECT name FROM uploads WHERE name = ? OR name LIKE ?", (stem, f"{stem}-%"))}
        if stem not in taken:
            return stem
        n = 2
        while f"{stem}-{n}" in taken:
            n += 1
        return f"{stem}-{n}"

    def get(self, team: str, file_id: str) -> Upload | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM uploads WHERE team = ? AND file_id = ?", (team, file_id)).fetchone()
        return _upload(row) if row else None

    def set_fields(self, team: str, file_id: str, fields: dict[str, str]) -> None:
        with closing(self._connect()) as db:
            db.execute("UPDATE uploads SET fields = ? WHERE team = ? AND file_id = ?", (json.dumps(fields), team, file_id))

    def visible(self, scope: dict[str, Any] | None) -> list[Upload]:
        """The uploads a request from this channel (and person, in a DM) may use, newest first."""
        channel = (scope or {}).get("channel")
        if not channel:
            return []
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM uploads WHERE channel = ? ORDER BY created_at DESC", (channel,)).fetchall()
        return [u for u in map(_upload, rows) if u.visible_to(scope)]

    def find(self, name: str, scope: dict[str, Any] | None) -> Upload | None:
        """The visible upload called `name` (its dataset name or its original file name), else None."""
        key = (name or "").strip()
        for upload in self.visible(scope):
            if key in (upload.name, upload.original_name) or key.lower() == upload.name.lower():
                return upload
        return None

    # -- files seen in channels (for "this dataset" / "the file above") --------------------------------------
    def saw_file(self, team: str, file_id: str, channel: str, user: str | None, thread_ts: str | None, name: str | None) -> None:
        with closing(self._connect()) as db:
            db.execute("""INSERT INTO seen_files VALUES (?,?,?,?,?,?,?) ON CONFLICT(team, file_id, channel) DO UPDATE
                          SET seen_at = excluded.seen_at, thread_ts = COALESCE(excluded.thread_ts, seen_files.thread_ts)""",
                       (team, file_id, channel, user, thread_ts, name, time.time()))

    def latest_seen(self, channel: str, thread_ts: str | None, user: str, within_s: float = RECENT_S) -> dict[str, Any] | None:
        """The latest file shared in this thread, else the latest one this person shared in this channel recently."""
        with closing(self._connect()) as db:
            row = None
            if thread_ts:
                row = db.execute("SELECT * FROM seen_files WHERE channel = ? AND thread_ts = ? ORDER BY seen_at DESC LIMIT 1",
                                 (channel, thread_ts)).fetchone()
            if row is None:
                row = db.execute("SELECT * FROM seen_files WHERE channel = ? AND user = ? AND seen_at >= ? "
                                 "ORDER BY seen_at DESC LIMIT 1", (channel, user, time.time() - within_s)).fetchone()
        return dict(row) if row else None

    # -- a question waiting for its answer (which column is the text, which the label) -----------------------
    def ask(self, conversation: str, team: str, file_id: str, request: str) -> None:
        with closing(self._connect()) as db:
            db.execute("INSERT OR REPLACE INTO pending VALUES (?,?,?,?,?)", (conversation, team, file_id, request, time.time()))

    def pending(self, conversation: str) -> dict[str, Any] | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM pending WHERE conversation = ?", (conversation,)).fetchone()
        return dict(row) if row else None

    def answered(self, conversation: str) -> None:
        with closing(self._connect()) as db:
            db.execute("DELETE FROM pending WHERE conversation = ?", (conversation,))


def _upload(row: sqlite3.Row) -> Upload:
    data = dict(row)
    data["fields"] = json.loads(data["fields"]) if data.get("fields") else None
    return Upload(**data)
