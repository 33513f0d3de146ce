"""Distillation plans: a resolved run spec plus a summary, waiting for an explicit start (starting spends money).

    store = PlanStore()                              # DISTILLERY_HOME/plans.db
    plan = store.create(spec_dict, summary, requested_by={"user": "U1", "conversation": "C1"})
    store.get(plan.id)                               # PlanError for malformed, unknown or expired ids
    store.mark_started(plan.id, run_id)              # exactly once; a second start is refused
    store.latest(conversation="C1")                  # the newest plan of a conversation ("yes" confirms it)

A plan expires an hour after it is made (ttl_s). Status: open | started | expired | cancelled.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DistilleryError
from pipeline.home import distillery_home
from pipeline.migrations import prepare_store

__all__ = ["Plan", "PlanStore", "PlanError", "PLAN_ID"]

PLAN_ID = re.compile(r"^plan-[0-9a-f]{6}$")
DEFAULT_TTL_S = 3600.0


class PlanError(DistilleryError):
    """A plan id is malformed, unknown, expired or already used."""


@dataclass
class Plan:
    id: str
    spec: dict[str, Any]  # the resolved RunSpec as a dict
    summary: dict[str, Any]  # dataset, task, teacher, student, method, rows, estimate, hardware, runnable, notes
    requested_by: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    expires_at: float = 0.0
    status: str = "open"  # open | started | expired | cancelled
    run_id: str | None = None

    @property
    def runnable(self) -> bool:
        return bool(self.summary.get("runnable", True))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _m001_initial(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE plans (id TEXT PRIMARY KEY, spec TEXT NOT NULL, summary TEXT NOT NULL, requested_by TEXT NOT NULL,"
        " conversation TEXT, created_at REAL NOT NULL, expires_at REAL NOT NULL, status TEXT NOT NULL, run_id TEXT)"
    )
    db.execute("CREATE INDEX plans_conversation ON plans (conversation, created_at)")


MIGRATIONS = [("m001_initial", _m001_initial)]


class PlanStore:
    """Plans in SQLite (one short connection per call, so threads and processes can share it)."""

    def __init__(self, home: Path | str | None = None, ttl_s: float = DEFAULT_TTL_S):
        self.path = Path(home or distillery_home()) / "plans.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        prepare_store(self.path, self._connect, MIGRATIONS, what="the plan store")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def create(self, spec: dict[str, Any], summary: dict[str, Any], requested_by: dict[str, Any] | None = None) -> Plan:
        now = time.time()
        requested = dict(requested_by or {})
        with closing(self._connect()) as db, db:
            while True:
                plan_id = f"plan-{secrets.token_hex(3)}"
                if not db.execute("SELECT 1 FROM plans WHERE id = ?", (plan_id,)).fetchone():
                    break
            db.execute(
                "INSERT INTO plans VALUES (?,?,?,?,?,?,?,?,NULL)",
                (plan_id, json.dumps(spec), json.dumps(summary), json.dumps(requested), requested.get("conversation"),
                 now, now + self.ttl_s, "open"),
            )
        return Plan(plan_id, spec, summary, requested, now, now + self.ttl_s, "open")

    def get(self, plan_id: str) -> Plan:
        """The plan; PlanError naming the fix for a malformed or unknown id (expired plans are returned, marked)."""
        key = (plan_id or "").strip().lower()
        if not PLAN_ID.match(key):
            raise PlanError(f"'{str(plan_id)[:60]}' is not a plan id; plan ids look like plan-3f9a2c (ask for a plan first).")
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM plans WHERE id = ?", (key,)).fetchone()
        if row is None:
            raise PlanError(f"there is no plan '{key}'; ask for a new plan (e.g. distill sst2 into gemma-3-270m).")
        return self._expire(_plan(row))

    def _expire(self, plan: Plan) -> Plan:
        if plan.status == "open" and time.time() > plan.expires_at:
            with closing(self._connect()) as db, db:
                db.execute("UPDATE plans SET status = 'expired' WHERE id = ? AND status = 'open'", (plan.id,))
            plan.status = "expired"
        return plan

    def latest(self, conversation: str | None) -> Plan | None:
        """The newest plan made in this conversation, whatever its status."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM plans WHERE conversation IS ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
                             (conversation,)).fetchone()
        return self._expire(_plan(row)) if row else None

    def claim(self, plan_id: str) -> Plan:
        """Mark an open plan as started (atomically: two confirmations start one run); PlanError otherwise."""
        plan = self.get(plan_id)
        if plan.status == "expired":
            raise PlanError(f"plan {plan.id} expired (plans last {self.ttl_s / 60:.0f} minutes); ask for a new plan.")
        if plan.status == "started":
            raise PlanError(f"plan {plan.id} was already started as run {plan.run_id}; ask for its status instead.")
        if plan.status == "cancelled":
            raise PlanError(f"plan {plan.id} was cancelled; ask for a new plan.")
        with closing(self._connect()) as db, db:
            cur = db.execute("UPDATE plans SET status = 'started' WHERE id = ? AND status = 'open'", (plan.id,))
        if cur.rowcount != 1:
            raise PlanError(f"plan {plan.id} was just started by someone else; ask for its status instead.")
        plan.status = "started"
        return plan

    def set_run(self, plan_id: str, run_id: str) -> None:
        with closing(self._connect()) as db, db:
            db.execute("UPDATE plans SET run_id = ? WHERE id = ?", (run_id, plan_id))

    def reopen(self, plan_id: str) -> None:
        """Undo a claim whose submission failed."""
        with closing(self._connect()) as db, db:
            db.execute("UPDATE plans SET status = 'open' WHERE id = ? AND run_id IS NULL", (plan_id,))

    def cancel(self, plan_id: str) -> Plan:
        plan = self.get(plan_id)
        if plan.status != "open":
            raise PlanError(f"plan {plan.id} is {plan.status}, so it cannot be cancelled.")
        with closing(self._connect()) as db, db:
            db.execute("UPDATE plans SET status = 'cancelled' WHERE id = ?", (plan.id,))
        plan.status = "cancelled"
        return plan


def _plan(row: sqlite3.Row) -> Plan:
    return Plan(row["id"], json.loads(row["spec"]), json.loads(row["summary"]), json.loads(row["requested_by"]),
                row["created_at"], row["expires_at"], row["status"], row["run_id"])
