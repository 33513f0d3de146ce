"""The run registry: every run's state and an append-only event log, in SQLite under the Distillery home.

    reg = Registry()                                  # DISTILLERY_HOME/registry.db (WAL, busy timeout)
    rec = reg.submit(spec, {"source": "cli"})         # status "queued"; a worker picks it up
    reg.get(rec.id).status, reg.events(rec.id)        # readable at any time, even while a run writes
    reg.cancel(rec.id)                                # queued: cancelled now; running: the worker stops it

Statuses: queued -> labelling -> training -> evaluating -> done | failed | cancelled. A worker claims runs with
`claim_next` (one IMMEDIATE transaction, so two workers never take the same run) and heartbeats them; a running
run whose heartbeat is older than `stale_after_s` belonged to a worker that died and is claimed again ("resumed").
Every connection is short-lived and every write is its own short IMMEDIATE transaction; with WAL, readers never
wait for writers. The schema evolves by numbered migrations (m001_initial, m002_...), each applied once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import RunError
from .home import distillery_home, runs_dir
from .migrations import apply_migrations, ensure_wal
from .progress import Progress
from .redact import redact

__all__ = ["Registry", "RunRecord", "Event", "STATUSES", "RUNNING", "FINISHED", "MIGRATIONS"]

STATUSES = ("queued", "labelling", "training", "evaluating", "done", "failed", "cancelled")
RUNNING = ("labelling", "training", "evaluating")
FINISHED = ("done", "failed", "cancelled")
DEFAULT_OUTS = ("runs/default", "runs/sst2-default")  # outs of the embedded specs: submitted runs get their own
MAX_ATTEMPTS = 5  # a run whose worker died this many times is failed rather than claimed again
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_JSON_FIELDS = ("spec", "requested_by", "progress", "scores", "report", "paths")


# ---- records -------------------------------------------------------------------------------------------------

def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z") if ts else None


@dataclass
class RunRecord:
    """One row of `runs`. Times are epoch seconds; JSON columns are plain dicts (None when unset)."""

    id: str
    spec: dict[str, Any]
    requested_by: dict[str, Any]
    status: str
    stage: str | None = None
    progress: dict[str, Any] | None = None  # {done, total, rate, eta_s, unit, info}
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    scores: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    paths: dict[str, Any] | None = None
    out: str = ""
    worker_id: str | None = None
    heartbeat_at: float | None = None
    cancel_requested: bool = False
    attempts: int = 0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def running(self) -> bool:
        return self.status in RUNNING

    @property
    def task(self) -> str | None:
        return (self.spec or {}).get("task")

    @property
    def student(self) -> str | None:
        return ((self.spec or {}).get("student") or {}).get("model")

    def run_spec(self):
        """The run's RunSpec (raises SpecError if the stored spec no longer validates)."""
        from .spec import validate_spec

        return validate_spec(dict(self.spec))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: times as ISO 8601 UTC strings, plus task and student for display."""
        data = asdict(self)
        for key in ("created_at", "updated_at", "started_at", "finished_at", "heartbeat_at"):
            data[key] = _iso(data[key])
        data["task"], data["student"] = self.task, self.student
        return data


@dataclass
class Event:
    """One row of the append-only `events` log."""

    id: int
    run_id: str
    at: float
    kind: str  # stage_started | stage_finished | stage_skipped | progress | warning | failed | done | cancelled | ...
    stage: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": _iso(self.at)}


# ---- migrations ----------------------------------------------------------------------------------------------

MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Register a schema migration; they run in the order written, each once per database."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE runs (
        id TEXT PRIMARY KEY, spec TEXT NOT NULL, requested_by TEXT NOT NULL, status TEXT NOT NULL, stage TEXT,
        progress TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL, finished_at REAL,
        error TEXT, scores TEXT, report TEXT, paths TEXT, out TEXT NOT NULL, worker_id TEXT, heartbeat_at REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0)""")
    db.execute("""CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(id), at REAL NOT NULL,
        kind TEXT NOT NULL, stage TEXT, data TEXT)""")
    db.execute("CREATE INDEX events_by_run ON events(run_id, id)")


@migration
def m002_claim_indexes(db: sqlite3.Connection) -> None:
    """claim_next looks for the oldest queued run and for stale running runs; list_runs sorts by creation."""
    db.execute("CREATE INDEX runs_by_status ON runs(status, created_at)")
    db.execute("CREATE INDEX runs_by_created ON runs(created_at)")


@migration
def m003_workers(db: sqlite3.Connection) -> None:
    """Workers announce themselves and heartbeat, so a queued run can say whether anyone will pick it up."""
    db.execute("""CREATE TABLE workers (
        id TEXT PRIMARY KEY, host TEXT, pid INTEGER, kind TEXT, started_at REAL NOT NULL, heartbeat_at REAL NOT NULL,
        stopped_at REAL)""")


# ---- the registry --------------------------------------------------------------------------------------------

class Registry:
    """The SQLite run registry at `<home>/registry.db` (home: DISTILLERY_HOME by default)."""

    def __init__(self, home: Path | str | None = None, busy_timeout_s: float = 30.0):
        self.home = Path(home).expanduser().absolute() if home is not None else distillery_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "registry.db"
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        try:
            with self._connect() as db:
                ensure_wal(db, self.busy_timeout_s)
            self.migrate()
        except sqlite3.DatabaseError as err:
            raise RunError(f"the run registry '{self.path}' cannot be opened ({err}); move the file away "
                           "(a new, empty registry is created) or restore it from a backup.") from None

    def __repr__(self) -> str:
        return f"Registry({str(self.home)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (autocommit; opened once per thread and process, reused: closing the last
        connection to a WAL database checkpoints it, which costs milliseconds per call)."""
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        yield db

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short IMMEDIATE transaction: takes the write lock up front, so it never fails mid-way on BUSY."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def migrate(self) -> list[str]:
        """Apply the migrations this database lacks; returns their names."""
        with self._write() as db:
            return apply_migrations(db, MIGRATIONS)

    def applied_migrations(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT name FROM migrations ORDER BY rowid")]

    # ---- submitting ------------------------------------------------------------------------------------------

    def submit(self, spec, requested_by: dict[str, Any] | None = None, own_folder: bool = False) -> RunRecord:
        """Queue a run of `spec` (a RunSpec) for a worker; returns its record (status "queued").

        own_folder: ignore spec.out and use DISTILLERY_HOME/runs/<run id> (absolute); runs from chat and MCP.
        """
        return self._create(spec, requested_by, status="queued", worker_id=None, own_folder=own_folder)

    def start_foreground(self, spec, requested_by: dict[str, Any] | None = None) -> RunRecord:
        """Record a run the calling process executes itself (`distillery run`); it must heartbeat it.

        Unlike submit, the embedded default out is kept (relative to the current folder, made absolute), so
        re-running the same command resumes; an out in use by another unfinished run still gets its own folder.
        """
        worker_id = f"foreground:{socket.gethostname()}:{os.getpid()}"
        return self._create(spec, {"source": "cli", **(requested_by or {})}, status="labelling", worker_id=worker_id)

    def _create(self, spec, requested_by: dict[str, Any] | None, status: str, worker_id: str | None,
                own_folder: bool = False) -> RunRecord:
        requested = {"source": "cli", "user": None, "channel": None, "thread_ts": None, "conversation": None,
                     **(requested_by or {})}
        now = time.time()
        with self._write() as db:
            run_id = self._new_id(db)
            out = (str((runs_dir(self.home) / run_id).resolve()) if own_folder
                   else self._resolve_out(db, spec.out, run_id, own_folder_for_default=worker_id is None))
            spec = spec.model_copy(update={"out": out})
            running = status in RUNNING
            db.execute(
                "INSERT INTO runs (id, spec, requested_by, status, created_at, updated_at, started_at, out, worker_id,"
                " heartbeat_at, attempts, paths) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, json.dumps(spec.model_dump(mode="json")), json.dumps(requested), status, now, now,
                 now if running else None, out, worker_id, now if running else None, 1 if running else 0,
                 json.dumps(_paths(out, self.home, run_id))))
            self._event(db, run_id, "submitted" if status == "queued" else "started", None, {"out": out, **requested})
            try:  # inside the transaction: a folder that cannot be written leaves no run behind
                Path(out).mkdir(parents=True, exist_ok=True)
                (Path(out) / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
            except OSError as err:
                raise RunError(f"cannot write the run folder '{out}' ({err.strerror or err}); "
                               "set out= to a writable folder.") from None
        return self.get(run_id)

    def _new_id(self, db: sqlite3.Connection) -> str:
        while True:
            run_id = secrets.token_hex(4)
            if not db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                return run_id

    def _resolve_out(self, db: sqlite3.Connection, out: str, run_id: str, own_folder_for_default: bool) -> str:
        own = str(runs_dir(self.home) / run_id)
        if own_folder_for_default and out in DEFAULT_OUTS:
            return own
        now = time.time()
        self._settle_dead_foreground(db, now + 1, now)  # a killed `distillery run` must not keep its folder busy
        resolved = str(Path(out).expanduser().resolve())
        busy = db.execute(f"SELECT 1 FROM runs WHERE out = ? AND status NOT IN {FINISHED} LIMIT 1", (resolved,)).fetchone()
        return own if busy else resolved

    # ---- reading ---------------------------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord:
        """The run's record; an unknown or malformed id raises RunError."""
        if not isinstance(run_id, str) or not _ID.match(run_id):
            raise RunError(f"no run {str(run_id)[:80]!r}; `distillery runs` lists the runs.")
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunError(f"no run '{run_id}'; `distillery runs` lists the runs.")
        return _record(row)

    def list_runs(self, limit: int = 20, status: str | Iterable[str] | None = None) -> list[RunRecord]:
        """Newest first; `status` is one status, several, or "running" / "active" / "finished"."""
        statuses = _statuses(status)
        where = f"WHERE status IN ({','.join('?' * len(statuses))})" if statuses else ""
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM runs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                              (*statuses, int(limit))).fetchall()
        return [_record(r) for r in rows]

    def events(self, run_id: str, after_id: int = 0) -> list[Event]:
        self.get(run_id)
        with self._connect() as db:
            rows = db.execute("SELECT * FROM events WHERE run_id = ? AND id > ? ORDER BY id", (run_id, after_id)).fetchall()
        return [Event(r["id"], r["run_id"], r["at"], r["kind"], r["stage"], _loads(r["data"]) or {}) for r in rows]

    def is_cancel_requested(self, run_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested, status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and (row["cancel_requested"] or row["status"] == "cancelled"))

    # ---- writing ---------------------------------------------------------------------------------------------

    def add_event(self, run_id: str, kind: str, stage: str | None = None, data: dict[str, Any] | None = None) -> int:
        with self._write() as db:
            return self._event(db, run_id, kind, stage, data)

    @staticmethod
    def _event(db: sqlite3.Connection, run_id: str, kind: str, stage: str | None, data: dict[str, Any] | None) -> int:
        cur = db.execute("INSERT INTO events (run_id, at, kind, stage, data) VALUES (?,?,?,?,?)",
                         (run_id, time.time(), kind, stage, json.dumps(data or {}, default=str)))
        return int(cur.lastrowid)

    def update_progress(self, run_id: str, progress: Progress) -> None:
        data = {"done": progress.done, "total": progress.total, "rate": progress.rate, "eta_s": progress.eta_s,
                "unit": progress.unit, "info": progress.info}
        with self._write() as db:
            db.execute("UPDATE runs SET progress = ?, stage = ?, updated_at = ? WHERE id = ?",
                       (json.dumps(data, default=str), progress.stage, time.time(), run_id))

    def set_status(self, run_id: str, status: str, stage: str | None = None, error: str | None = None,
                   clear_progress: bool = False) -> None:
        """Set status (and stage/error when given); the first running status sets started_at, a final one finished_at."""
        if status not in STATUSES:
            raise RunError(f"unknown run status '{status}'; known: {', '.join(STATUSES)}.")
        now = time.time()
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status = ?, stage = COALESCE(?, stage), error = COALESCE(?, error), updated_at = ?,"
                " progress = CASE WHEN ? THEN NULL ELSE progress END,"
                " started_at = CASE WHEN ? THEN COALESCE(started_at, ?) ELSE started_at END,"
                " finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?",
                (status, stage, error, now, clear_progress, status in RUNNING, now, status in FINISHED, now, run_id))

    def finish(self, run_id: str, report: dict[str, Any]) -> None:
        """Mark done with the runner's report (its "scores" are also stored on their own)."""
        rec = self.get(run_id)
        now = time.time()
        with self._write() as db:
            db.execute("UPDATE runs SET status = 'done', stage = NULL, error = NULL, report = ?, scores = ?, paths = ?,"
                       " updated_at = ?, finished_at = ? WHERE id = ?",
                       (json.dumps(report, default=str), json.dumps(report.get("scores"), default=str),
                        json.dumps(_paths(rec.out, self.home, run_id)), now, now, run_id))
            self._event(db, run_id, "done", None, {"scores": report.get("scores")})

    def fail(self, run_id: str, message: str) -> None:
        now, message = time.time(), redact(message)  # run records are shown in Slack, MCP and `distillery status`
        with self._write() as db:
            db.execute("UPDATE runs SET status = 'failed', error = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                       (message, now, now, run_id))
            self._event(db, run_id, "failed", None, {"error": message})

    def mark_cancelled(self, run_id: str, reason: str | None = None) -> None:
        now = time.time()
        with self._write() as db:
            db.execute("UPDATE runs SET status = 'cancelled', cancel_requested = 1, updated_at = ?, finished_at = ?"
                       " WHERE id = ?", (now, now, run_id))
            self._event(db, run_id, "cancelled", None, {"reason": reason} if reason else {})

    def cancel(self, run_id: str) -> RunRecord:
        """Queued: cancelled at once. Running: cancel_requested, its worker stops it within seconds."""
        self.get(run_id)
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row["status"] in FINISHED:
                raise RunError(f"run '{run_id}' already finished ({row['status']}); there is nothing to cancel.")
            if row["status"] == "queued":
                db.execute("UPDATE runs SET status = 'cancelled', cancel_requested = 1, updated_at = ?, finished_at = ?"
                           " WHERE id = ?", (now, now, run_id))
                self._event(db, run_id, "cancelled", None, {"while": "queued"})
            else:
                db.execute("UPDATE runs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (now, run_id))
                self._event(db, run_id, "cancel_requested", row["status"], {})
        return self.get(run_id)

    # ---- workers ---------------------------------------------------------------------------------------------

    def claim_next(self, worker_id: str, stale_after_s: float = 30) -> RunRecord | None:
        """Atomically take the oldest queued run, else a running run whose worker stopped heartbeating."""
        now = time.time()
        with self._write() as db:
            while True:
                row = db.execute("SELECT * FROM runs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1").fetchone()
                resumed = row is None
                if resumed:
                    self._settle_dead_foreground(db, now - stale_after_s, now)
                    row = db.execute(
                        f"SELECT * FROM runs WHERE status IN {RUNNING} AND (heartbeat_at IS NULL OR heartbeat_at < ?)"
                        " AND (worker_id IS NULL OR worker_id NOT LIKE 'foreground:%')"
                        " ORDER BY heartbeat_at LIMIT 1", (now - stale_after_s,)).fetchone()
                if row is None:
                    return None
                if resumed and (row["cancel_requested"] or row["attempts"] >= MAX_ATTEMPTS):
                    self._settle_abandoned(db, row, now)
                    continue
                db.execute("UPDATE runs SET status = ?, worker_id = ?, heartbeat_at = ?, attempts = attempts + 1,"
                           " started_at = COALESCE(started_at, ?), updated_at = ? WHERE id = ?",
                           (row["status"] if resumed else "labelling", worker_id, now, now, now, row["id"]))
                data = {"worker_id": worker_id, "attempt": row["attempts"] + 1}
                if resumed:
                    data["previous_worker"] = row["worker_id"]
                self._event(db, row["id"], "resumed" if resumed else "claimed", row["stage"], data)
                break
        return self.get(row["id"])

    def _settle_abandoned(self, db: sqlite3.Connection, row: sqlite3.Row, now: float) -> None:
        """A stale run nobody should resume: cancelled if that was asked, else failed after too many attempts."""
        if row["cancel_requested"]:
            db.execute("UPDATE runs SET status = 'cancelled', updated_at = ?, finished_at = ? WHERE id = ?", (now, now, row["id"]))
            self._event(db, row["id"], "cancelled", row["stage"], {"while": "its worker was gone"})
        else:
            msg = (f"the run's worker stopped {row['attempts']} times while running it (killed or out of memory); "
                   "check the worker's log and `distillery submit` it again to resume.")
            db.execute("UPDATE runs SET status = 'failed', error = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                       (msg, now, now, row["id"]))
            self._event(db, row["id"], "failed", row["stage"], {"error": msg})

    def _settle_dead_foreground(self, db: sqlite3.Connection, cutoff: float, now: float) -> None:
        """Foreground runs belong to their terminal and are never taken over; one whose process is gone is failed."""
        host = socket.gethostname()
        rows = db.execute(f"SELECT id, worker_id, stage FROM runs WHERE status IN {RUNNING} AND worker_id LIKE 'foreground:%'"
                          " AND (heartbeat_at IS NULL OR heartbeat_at < ?)", (cutoff,)).fetchall()
        for row in rows:
            _, run_host, pid = (row["worker_id"].split(":") + ["", ""])[:3]
            if run_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            msg = "the `distillery run` process running it stopped; run the same command again to resume it."
            db.execute("UPDATE runs SET status = 'failed', error = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                       (msg, now, now, row["id"]))
            self._event(db, row["id"], "failed", row["stage"], {"error": msg})

    def heartbeat(self, run_id: str, worker_id: str) -> bool:
        """Refresh the run's heartbeat; False when the run is no longer this worker's (taken over or finished)."""
        with self._write() as db:
            cur = db.execute(f"UPDATE runs SET heartbeat_at = ? WHERE id = ? AND worker_id = ? AND status IN {RUNNING}",
                             (time.time(), run_id, worker_id))
            return cur.rowcount == 1

    def next_attempt(self, run_id: str, worker_id: str, reason: str) -> int | None:
        """A lost Ray job is submitted again: count the attempt (None, and the run failed, after MAX_ATTEMPTS)."""
        now = time.time()
        with self._write() as db:
            row = db.execute(f"SELECT * FROM runs WHERE id = ? AND worker_id = ? AND status IN {RUNNING}",
                             (run_id, worker_id)).fetchone()
            if row is None:
                return None
            if row["attempts"] >= MAX_ATTEMPTS:
                self._settle_abandoned(db, row, now)
                return None
            db.execute("UPDATE runs SET attempts = attempts + 1, heartbeat_at = ?, updated_at = ? WHERE id = ?",
                       (now, now, run_id))
            self._event(db, run_id, "resubmitted", row["stage"], {"attempt": row["attempts"] + 1, "reason": reason})
            return row["attempts"] + 1

    def release(self, run_id: str, worker_id: str) -> bool:
        """A worker shutting down hands a run back: the next worker resumes it without waiting for staleness."""
        with self._write() as db:
            cur = db.execute(f"UPDATE runs SET heartbeat_at = NULL WHERE id = ? AND worker_id = ? AND status IN {RUNNING}",
                             (run_id, worker_id))
            if cur.rowcount:
                self._event(db, run_id, "released", None, {"worker_id": worker_id})
            return cur.rowcount == 1

    # ---- workers ---------------------------------------------------------------------------------------------

    def worker_alive(self, worker_id: str, kind: str = "worker") -> None:
        """A worker's own heartbeat (run_worker calls it every few seconds while it watches the queue)."""
        now = time.time()
        with self._write() as db:
            db.execute("""INSERT INTO workers (id, host, pid, kind, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)
                          ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, stopped_at = NULL""",
                       (worker_id, socket.gethostname(), os.getpid(), kind, now, now))

    def worker_stopped(self, worker_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE workers SET stopped_at = ? WHERE id = ?", (time.time(), worker_id))

    def live_workers(self, within_s: float = 30.0) -> list[dict[str, Any]]:
        """Workers that heartbeated in the last `within_s` seconds and did not say they stopped."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM workers WHERE stopped_at IS NULL AND heartbeat_at >= ? ORDER BY started_at",
                              (time.time() - within_s,)).fetchall()
        return [dict(r) for r in rows]


# ---- row helpers ---------------------------------------------------------------------------------------------

def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return {"unreadable": str(text)[:200]}


def _record(row: sqlite3.Row) -> RunRecord:
    data = {k: row[k] for k in row.keys()}
    for key in _JSON_FIELDS:
        data[key] = _loads(data[key])
    data["spec"] = data["spec"] or {}
    data["requested_by"] = data["requested_by"] or {}
    data["cancel_requested"] = bool(data["cancel_requested"])
    return RunRecord(**data)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours
        return True
    return True


def _paths(out: str, home: Path, run_id: str) -> dict[str, str]:
    o = Path(out)
    return {"out": str(o), "report_json": str(o / "report.json"), "report_md": str(o / "report.md"),
            "report_png": str(o / "report.png"), "log": str(home / "logs" / f"{run_id}.log")}


def _statuses(status: str | Iterable[str] | None) -> tuple[str, ...]:
    if status is None:
        return ()
    groups = {"running": RUNNING, "active": ("queued", *RUNNING), "finished": FINISHED}
    names = [status] if isinstance(status, str) else list(status)
    out: list[str] = []
    for name in names:
        if name in groups:
            out.extend(groups[name])
        elif name in STATUSES:
            out.append(name)
        else:
            raise RunError(f"unknown run status '{name}'; known: {', '.join(STATUSES)}, running, active, finished.")
    return tuple(out)
