"""The run registry on real SQLite: migrations, submit/list/get/cancel, claim races, stale takeover, concurrency."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import RunError
from pipeline.progress import Progress
from pipeline.registry import MIGRATIONS, Registry
from pipeline.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def spec(**over):
    return load_spec(None, [f"{k}={v}" for k, v in over.items()])


def set_heartbeat(reg, run_id, at):
    with sqlite3.connect(reg.path) as db:
        db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (at, run_id))


# ---- migrations ------------------------------------------------------------------------------------------------

def test_migrations_applied_once_each(isolated_home):
    reg = Registry()
    assert reg.path == isolated_home / "registry.db"
    names = [n for n, _ in MIGRATIONS]
    assert names[0] == "m001_initial" and len(names) >= 2
    assert reg.applied_migrations() == names
    assert Registry().migrate() == []  # a second open applies nothing
    with sqlite3.connect(reg.path) as db:
        assert db.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == len(names)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_old_database_gets_only_missing_migrations(tmp_path):
    home = tmp_path / "old"
    home.mkdir()
    with sqlite3.connect(home / "registry.db") as db:  # a database written by a version that had only m001
        db.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        MIGRATIONS[0][1](db)
        db.execute("INSERT INTO migrations VALUES ('m001_initial', 0)")
    reg = Registry(home)
    assert reg.applied_migrations() == [n for n, _ in MIGRATIONS]
    with sqlite3.connect(reg.path) as db:
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "runs_by_status" in indexes


# ---- submit / get / list / cancel --------------------------------------------------------------------------------

def test_submit_gives_default_spec_its_own_folder(isolated_home):
    reg = Registry()
    rec = reg.submit(spec(), {"source": "slack", "user": "U1", "channel": "C1", "thread_ts": "1.2"})
    assert rec.status == "queued" and rec.attempts == 0
    assert Path(rec.out) == isolated_home / "runs" / rec.id
    assert rec.spec["out"] == rec.out
    assert load_spec(Path(rec.out) / "spec.yaml").out == rec.out  # the resolved spec is written
    assert rec.requested_by == {"source": "slack", "user": "U1", "channel": "C1", "thread_ts": "1.2", "conversation": None}
    assert [e.kind for e in reg.events(rec.id)] == ["submitted"]
    d = rec.to_dict()
    assert json.loads(json.dumps(d))["status"] == "queued" and d["task"] == "classification"


def test_submit_resolves_relative_out_and_avoids_busy_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reg = Registry()
    first = reg.submit(spec(out="runs/mine"))
    assert first.out == str(tmp_path / "runs" / "mine")
    second = reg.submit(spec(out="runs/mine"))  # the first is unfinished: the second gets its own folder
    assert second.out == str(reg.home / "runs" / second.id)
    reg.claim_next("w")
    reg.fail(first.id, "boom")
    third = reg.submit(spec(out=str(tmp_path / "runs" / "mine")))  # finished runs free their folder (resume)
    assert third.out == first.out


def test_get_unknown_and_malformed_ids():
    reg = Registry()
    for bad in ("nope1234", "../../etc", "", "x" * 200):
        with pytest.raises(RunError, match="no run .*`distillery runs` lists the runs"):
            reg.get(bad)


def test_list_runs_newest_first_and_by_status():
    reg = Registry()
    ids = [reg.submit(spec()).id for _ in range(3)]
    assert [r.id for r in reg.list_runs()] == ids[::-1]
    assert [r.id for r in reg.list_runs(limit=2)] == ids[:0:-1]
    reg.cancel(ids[0])
    assert [r.id for r in reg.list_runs(status="cancelled")] == [ids[0]]
    assert {r.id for r in reg.list_runs(status="active")} == set(ids[1:])
    with pytest.raises(RunError, match="unknown run status 'bogus'"):
        reg.list_runs(status="bogus")


def test_cancel_queued_running_and_finished():
    reg = Registry()
    queued = reg.submit(spec())
    assert reg.cancel(queued.id).status == "cancelled"
    assert reg.events(queued.id)[-1].kind == "cancelled"
    assert reg.is_cancel_requested(queued.id)

    running = reg.submit(spec())
    assert reg.claim_next("w1").id == running.id
    assert not reg.is_cancel_requested(running.id)
    rec = reg.cancel(running.id)
    assert rec.status == "labelling" and rec.cancel_requested and reg.is_cancel_requested(running.id)
    reg.mark_cancelled(running.id)
    with pytest.raises(RunError, match="already finished \\(cancelled\\)"):
        reg.cancel(running.id)


def test_progress_status_finish_and_fail():
    reg = Registry()
    rec = reg.submit(spec())
    reg.claim_next("w")
    reg.set_status(rec.id, "training", stage="training")
    reg.update_progress(rec.id, Progress("training", 3, 10, rate=1.5, eta_s=4.7, unit="steps", info={"loss": 0.5}))
    got = reg.get(rec.id)
    assert got.status == "training" and got.started_at and not got.finished_at
    assert got.progress == {"done": 3, "total": 10, "rate": 1.5, "eta_s": 4.7, "unit": "steps", "info": {"loss": 0.5}}
    reg.finish(rec.id, {"scores": {"teacher": 0.9, "student_distilled": 0.8}, "task": "classification"})
    got = reg.get(rec.id)
    assert got.status == "done" and got.finished_at and got.scores == {"teacher": 0.9, "student_distilled": 0.8}
    assert got.report["task"] == "classification" and got.paths["report_md"].endswith("report.md")
    other = reg.submit(spec())
    reg.fail(other.id, "the teacher said no; check teacher.base_url.")
    assert reg.get(other.id).error == "the teacher said no; check teacher.base_url."
    with pytest.raises(RunError, match="unknown run status"):
        reg.set_status(rec.id, "running")


# ---- workers: claims, heartbeats, takeover --------------------------------------------------------------------------

def test_claim_takes_oldest_queued_first():
    reg = Registry()
    a, b = reg.submit(spec()), reg.submit(spec())
    first = reg.claim_next("w1")
    assert first.id == a.id and first.worker_id == "w1" and first.attempts == 1 and first.status == "labelling"
    assert reg.claim_next("w2").id == b.id
    assert reg.claim_next("w3") is None


def test_stale_run_is_resumed_by_another_worker():
    reg = Registry()
    rec = reg.submit(spec())
    reg.claim_next("w1")
    reg.set_status(rec.id, "training", stage="training")
    assert reg.claim_next("w2", stale_after_s=30) is None  # w1 is alive
    set_heartbeat(reg, rec.id, time.time() - 60)  # w1 died a minute ago
    taken = reg.claim_next("w2", stale_after_s=30)
    assert taken.id == rec.id and taken.worker_id == "w2" and taken.attempts == 2 and taken.status == "training"
    resumed = reg.events(rec.id)[-1]
    assert resumed.kind == "resumed" and resumed.data["previous_worker"] == "w1" and resumed.stage == "training"
    assert not reg.heartbeat(rec.id, "w1") and reg.heartbeat(rec.id, "w2")


def test_stale_cancelled_run_is_settled_not_resumed():
    reg = Registry()
    rec = reg.submit(spec())
    reg.claim_next("w1")
    reg.cancel(rec.id)
    set_heartbeat(reg, rec.id, None)
    assert reg.claim_next("w2") is None
    assert reg.get(rec.id).status == "cancelled"


def test_run_whose_workers_keep_dying_fails_after_max_attempts():
    from pipeline.registry import MAX_ATTEMPTS

    reg = Registry()
    rec = reg.submit(spec())
    for i in range(MAX_ATTEMPTS):
        assert reg.claim_next(f"w{i}", stale_after_s=0).id == rec.id
        set_heartbeat(reg, rec.id, None)
    assert reg.claim_next("last", stale_after_s=0) is None
    got = reg.get(rec.id)
    assert got.status == "failed" and f"stopped {MAX_ATTEMPTS} times" in got.error


def test_foreground_runs_are_never_taken_over_and_dead_ones_fail():
    reg = Registry()
    alive = reg.start_foreground(spec(out="runs/fg"))
    assert alive.status == "labelling" and alive.worker_id.endswith(f":{os.getpid()}")
    dead_proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_proc.wait()
    dead = reg.start_foreground(spec(out="runs/fg2"))
    with sqlite3.connect(reg.path) as db:
        db.execute("UPDATE runs SET worker_id = ?, heartbeat_at = 0 WHERE id = ?",
                   (dead.worker_id.rsplit(":", 1)[0] + f":{dead_proc.pid}", dead.id))
        db.execute("UPDATE runs SET heartbeat_at = 0 WHERE id = ?", (alive.id,))
    assert reg.claim_next("w") is None
    assert reg.get(alive.id).status == "labelling"
    got = reg.get(dead.id)
    assert got.status == "failed" and "run the same command again" in got.error


def test_claim_race_between_threads():
    reg = Registry()
    ids = {reg.submit(spec()).id for _ in range(30)}
    taken: list[str] = []
    lock = threading.Lock()

    def claimer(n):
        r = Registry()
        while (rec := r.claim_next(f"t{n}")) is not None:
            with lock:
                taken.append(rec.id)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(ids)  # every run taken, none twice


CLAIMER = textwrap.dedent("""
    import sys
    from pipeline.registry import Registry
    reg = Registry()
    sys.stdin.readline()  # start together
    while (rec := reg.claim_next(sys.argv[1])) is not None:
        print(rec.id, flush=True)
""")


def test_claim_race_between_processes():
    reg = Registry()
    ids = {reg.submit(spec()).id for _ in range(40)}
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, f"p{n}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env=dict(os.environ)) for n in range(4)]
    outs = [p.communicate("go\n", timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    taken = [i for out in outs for i in out]
    assert sorted(taken) == sorted(ids)
    workers = {r.id: r.worker_id for r in reg.list_runs(limit=100)}
    for n, out in enumerate(outs):
        assert all(workers[i] == f"p{n}" for i in out)


WRITER = textwrap.dedent("""
    import sys
    from pipeline.progress import Progress
    from pipeline.registry import Registry
    reg = Registry()
    run_id = sys.argv[1]
    for i in range(300):
        reg.update_progress(run_id, Progress("labelling", i, 300))
        reg.add_event(run_id, "progress", "labelling", {"done": i})
        reg.heartbeat(run_id, "w")
""")


def test_reading_status_while_runs_write_never_fails():
    reg = Registry()
    runs = [reg.submit(spec()) for _ in range(2)]
    for _ in runs:
        reg.claim_next("w")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, r.id], cwd=ROOT, env=dict(os.environ),
                                stderr=subprocess.PIPE, text=True) for r in runs]
    errors: list[BaseException] = []
    reads = [0]

    def reader():
        r = Registry()
        while any(w.poll() is None for w in writers):
            try:
                for run in runs:
                    assert r.get(run.id).to_dict()["status"] == "labelling"
                    r.events(run.id)
                r.list_runs()
                reads[0] += 1
            except BaseException as err:  # noqa: BLE001 - any failure, "database is locked" included, fails the test
                errors.append(err)
                return

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    stderr = [w.communicate()[1] for w in writers]
    assert all(w.returncode == 0 for w in writers), stderr
    assert not errors, errors
    assert reads[0] > 0
    for run in runs:
        assert reg.get(run.id).progress["done"] == 299
        assert len([e for e in reg.events(run.id) if e.kind == "progress"]) == 300


def test_unwritable_run_folder_is_a_sentence_and_leaves_no_run(tmp_path):
    reg = Registry()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RunError, match="cannot write the run folder .*set out= to a writable folder"):
        reg.submit(spec(out=str(tmp_path / "a-file" / "run")))
    assert reg.list_runs() == []


def test_corrupt_registry_file_is_a_sentence(isolated_home):
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "registry.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RunError, match="cannot be opened .*move the file away"):
        Registry()


def test_rerunning_after_a_killed_foreground_run_reuses_its_folder(tmp_path):
    reg = Registry()
    first = reg.start_foreground(spec(out=str(tmp_path / "fg")))
    dead_proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_proc.wait()
    with sqlite3.connect(reg.path) as db:  # the first `distillery run` was killed: its process is gone
        db.execute("UPDATE runs SET worker_id = ? WHERE id = ?", (first.worker_id.rsplit(":", 1)[0] + f":{dead_proc.pid}", first.id))
    again = reg.start_foreground(spec(out=str(tmp_path / "fg")))
    assert again.out == first.out == str(tmp_path / "fg")
    assert reg.get(first.id).status == "failed"
    busy = reg.start_foreground(spec(out=str(tmp_path / "fg")))  # `again` is alive (this process): a new folder
    assert busy.out == str(reg.home / "runs" / busy.id)
