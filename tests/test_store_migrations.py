"""The SQLite stores (run registry, plans, conversations, Slack) on a fresh home opened by many processes at once,
and a corrupt store file: one sentence naming the file, never a raw sqlite3 error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import DistilleryError

ROOT = Path(__file__).resolve().parents[1]

OPEN_ALL = """
import os, sys, time
start = float(sys.argv[2])
while time.time() < start:  # every process starts opening at the same moment
    time.sleep(0.001)
from bot.history import History
from bot.slack_store import SlackStore
from pipeline.registry import Registry
from skills.plans import PlanStore
home = sys.argv[1]
order = [lambda: SlackStore(os.path.join(home, "slack.db")), lambda: PlanStore(home), lambda: History(home), lambda: Registry(home)]
for i in range(len(order)):  # each process opens them in a different order, so migrations really overlap
    order[(i + int(sys.argv[3])) % len(order)]()
print("ok")
"""


def test_many_processes_opening_a_fresh_home_at_once_never_fail(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    failures = []
    for round_ in range(4):
        home = tmp_path / f"home{round_}"
        home.mkdir()
        start = time.time() + 3.0  # after the imports of every process
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_ALL, str(home), str(start), str(i)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            if p.returncode != 0 or out.strip() != "ok":
                failures.append(err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}")
    assert not failures, failures


def test_migrations_are_applied_once_each(tmp_path):
    import sqlite3

    from bot.history import History
    from bot.slack_store import SlackStore
    from skills.plans import PlanStore

    SlackStore(tmp_path / "slack.db"), PlanStore(tmp_path), History(tmp_path)
    SlackStore(tmp_path / "slack.db"), PlanStore(tmp_path), History(tmp_path)
    for name, table in (("slack.db", "_migrations"), ("plans.db", "migrations"), ("conversations.db", "migrations")):
        with sqlite3.connect(tmp_path / name) as db:
            names = [r[0] for r in db.execute(f"SELECT name FROM {table}")]
        assert names and len(names) == len(set(names)), (name, names)


@pytest.mark.parametrize("name", ["slack.db", "plans.db", "conversations.db"])
def test_a_corrupt_store_is_one_sentence_naming_the_file(tmp_path, name):
    from bot.history import History
    from bot.slack_store import SlackStore
    from skills.plans import PlanStore

    (tmp_path / name).write_bytes(b"this is not an SQLite database, it was overwritten by something else\n" * 50)
    make = {"slack.db": lambda: SlackStore(tmp_path / "slack.db"), "plans.db": lambda: PlanStore(tmp_path),
            "conversations.db": lambda: History(tmp_path)}[name]
    with pytest.raises(DistilleryError) as err:
        make()
    message = str(err.value)
    assert str(tmp_path / name) in message and "move" in message and "\n" not in message
