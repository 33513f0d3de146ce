"""The background worker with real processes: runs end to end, cancel, crashes, and kill -9 of the worker itself.

The teacher is the fake OpenAI-compatible server on 127.0.0.1 (it records every request), the student the tiny
random Llama; sizes are tiny (16 train rows, 8 test rows, a few dozen training steps).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_llm_server import FakeLLMServer, Reply
from pipeline.cli import cli, run_cli
from pipeline.errors import Cancelled, DatasetError
from pipeline.progress import Progress
from pipeline.registry import Registry
from pipeline.spec import load_spec
from pipeline.worker import execute_run, run_worker

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def answer(req) -> str:
    text = json.dumps(req.messages).lower()
    return "negative" if any(w in text for w in ("dull", "bad", "boring", "worst", "not")) else "positive"


def tiny_spec(out: Path, server: FakeLLMServer, model: Path, **extra):
    settings = {
        "task": "classification", "labels": "[negative, positive]",
        "dataset.train": DATA / "sst2.jsonl", "dataset.test": DATA / "sst2.jsonl",
        "dataset.train_size": 16, "dataset.test_size": 8,
        "teacher.provider": "openai", "teacher.model": "fake-teacher", "teacher.base_url": server.openai_base_url,
        "teacher.concurrency": 1, "teacher.max_retries": 0, "teacher.params.max_tokens": 8,
        "student.model": model, "student.device": "cpu",
        "train.max_steps": 24, "train.batch_size": 2, "train.checkpoint_every": 2, "train.learning_rate": 0.01,
        "eval.batch_size": 8, "eval.max_new_tokens": 4,
        "out": out, **extra,
    }
    return load_spec(None, [f"{k}={v}" for k, v in settings.items()])


def wait_for(condition, timeout=180.0, every=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def answered(out: Path) -> int:
    path = out / "teacher_answers.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def executing(run_id: str) -> list[int]:
    """pids of processes executing run_id (`python -m pipeline.worker --execute RUN_ID`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--execute" in cmd and run_id.encode() in cmd:
            pids.append(int(proc.name))
    return pids


def start_worker(*extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.worker", "--poll", "0.2", "--stale-after", "2", *extra],
                            cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# ---- the hooks and outcome mapping, with runner.run replaced -------------------------------------------------------

@pytest.mark.parametrize("outcome", ["done", "sentence", "internal", "cancelled"])
def test_execute_run_records_stages_progress_and_outcome(monkeypatch, tmp_path, outcome):
    import pipeline.runner

    def fake_run(spec, progress=None, should_stop=None, on_stage=None):
        on_stage("labelling", "started", {})
        progress(Progress("labelling", 5, 10, rate=2.0, eta_s=2.5))
        on_stage("labelling", "finished", {"accepted": 10})
        on_stage("training", "started", {})
        if outcome == "sentence":
            raise DatasetError("dataset file 'x.jsonl' does not exist; check dataset.train.")
        if outcome == "internal":
            raise ZeroDivisionError("division by zero")
        if outcome == "cancelled":
            assert should_stop()
            raise Cancelled("training was cancelled at step 0.")
        return {"scores": {"teacher": 0.75}}

    monkeypatch.setattr(pipeline.runner, "run", fake_run)
    reg = Registry()
    rec = reg.submit(load_spec(None, [f"out={tmp_path / 'r'}"]))
    reg.claim_next("w")
    if outcome == "cancelled":
        reg.cancel(rec.id)
    report = execute_run(rec.id, reg)
    got = reg.get(rec.id)
    kinds = [(e.kind, e.stage) for e in reg.events(rec.id)]
    assert ("stage_started", "labelling") in kinds and ("progress", "labelling") in kinds
    assert ("stage_finished", "labelling") in kinds and ("stage_started", "training") in kinds
    assert got.progress is None or got.stage == "training"  # a new stage clears the last stage's progress
    if outcome == "done":
        assert report == {"scores": {"teacher": 0.75}} and got.status == "done" and got.scores == {"teacher": 0.75}
    elif outcome == "sentence":
        assert got.status == "failed" and got.error == "dataset file 'x.jsonl' does not exist; check dataset.train."
    elif outcome == "internal":
        assert got.status == "failed" and got.error.startswith("internal error: ZeroDivisionError: division by zero")
    else:
        assert got.status == "cancelled" and kinds[-1] == ("cancelled", None)


# ---- real runs in child processes -----------------------------------------------------------------------------------

def test_worker_runs_a_queued_run_to_its_report(tmp_path, tiny_model, capsys):
    with FakeLLMServer(responder=answer) as server:
        reg = Registry()
        rec = reg.submit(tiny_spec(tmp_path / "run", server, tiny_model, **{"train.max_steps": 6}),
                         {"source": "slack", "user": "U1", "channel": "C1", "thread_ts": "1.0"})
        assert run_worker(reg, poll_s=0.1, once=True) == 1
    got = reg.get(rec.id)
    assert got.status == "done", got.error
    assert set(got.scores) == {"teacher", "student_base", "student_distilled"}
    kinds = [(e.kind, e.stage) for e in reg.events(rec.id)]
    for stage in ("labelling", "training", "evaluating", "reporting"):
        assert ("stage_started", stage) in kinds and ("stage_finished", stage) in kinds
    assert ("progress", "labelling") in kinds and ("progress", "training") in kinds and kinds[-1] == ("done", None)
    assert (Path(got.paths["log"])).is_file() and got.attempts == 1
    assert run_cli(cli, ["report", rec.id]) == 0
    out = capsys.readouterr().out
    assert f"report.json: {tmp_path / 'run' / 'report.json'}" in out and f"report.png: {tmp_path / 'run' / 'report.png'}" in out


def test_cancel_crash_and_error_leave_the_worker_running(tmp_path, tiny_model):
    with FakeLLMServer(responder=answer, latency=0.3) as server:
        reg = Registry()
        slow = reg.submit(tiny_spec(tmp_path / "slow", server, tiny_model))
        crash = reg.submit(tiny_spec(tmp_path / "crash", server, tiny_model))
        broken = reg.submit(tiny_spec(tmp_path / "broken", server, tiny_model, **{"dataset.train": tmp_path / "nope.jsonl"}))
        queued = reg.submit(tiny_spec(tmp_path / "queued", server, tiny_model))
        reg.cancel(queued.id)  # cancelled before any worker saw it: never runs
        stop = threading.Event()
        worker = threading.Thread(target=run_worker, kwargs=dict(registry=reg, poll_s=0.1, stop=stop, stale_after_s=30))
        worker.start()
        try:
            # 1. cancel a run mid-labelling: it stops within seconds and keeps the answers it has
            wait_for(lambda: answered(tmp_path / "slow") >= 2, what="two answers")
            assert reg.get(crash.id).status == "queued"  # one run at a time by default
            reg.cancel(slow.id)
            wait_for(lambda: reg.get(slow.id).status == "cancelled", timeout=60, what="cancelled")
            wait_for(lambda: not executing(slow.id), timeout=30, what="the run process to exit")
            kept = answered(tmp_path / "slow")
            assert 2 <= kept < 16
            # 2. the next run's process is killed (as the OOM killer would): the run fails with a sentence
            wait_for(lambda: answered(tmp_path / "crash") >= 1, what="the second run to start")
            for pid in executing(crash.id):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: reg.get(crash.id).finished, timeout=60, what="crash recorded")
            # 3. a run whose dataset is missing fails with the dataset's sentence
            wait_for(lambda: reg.get(broken.id).finished, timeout=60, what="broken run recorded")
            assert worker.is_alive()
        finally:
            stop.set()
            worker.join(60)
    crashed = reg.get(crash.id)
    assert crashed.status == "failed" and "killed by signal 9" in crashed.error and "submit it again" in crashed.error
    failed = reg.get(broken.id)
    assert failed.status == "failed" and "nope.jsonl" in failed.error and "internal error" not in failed.error
    assert reg.get(queued.id).status == "cancelled" and reg.get(queued.id).attempts == 0
    assert answered(tmp_path / "slow") == kept  # nothing was thrown away
    kinds = [e.kind for e in reg.events(slow.id)]
    assert kinds.index("cancel_requested") < kinds.index("cancelled")


def test_two_runs_at_once_with_max_concurrent_2(tmp_path, tiny_model):
    with FakeLLMServer(responder=answer, latency=0.3) as server:
        reg = Registry()
        runs = [reg.submit(tiny_spec(tmp_path / f"r{i}", server, tiny_model)) for i in range(3)]
        stop = threading.Event()
        worker = threading.Thread(target=run_worker, kwargs=dict(registry=reg, max_concurrent=2, poll_s=0.1, stop=stop))
        worker.start()
        try:
            wait_for(lambda: all(answered(tmp_path / f"r{i}") >= 1 for i in range(2)), what="two runs labelling at once")
            assert reg.get(runs[2].id).status == "queued"
            for r in runs:
                reg.cancel(r.id)
            wait_for(lambda: all(reg.get(r.id).status == "cancelled" for r in runs), timeout=60, what="all cancelled")
        finally:
            stop.set()
            worker.join(60)
    assert reg.get(runs[2].id).attempts == 0


FAILING_RUNS = 6


def test_two_worker_processes_never_run_the_same_run(tmp_path):
    reg = Registry()
    runs = [reg.submit(load_spec(None, [f"dataset.train={tmp_path / 'missing.jsonl'}", f"out={tmp_path / str(i)}"]))
            for i in range(FAILING_RUNS)]
    workers = [start_worker("--once") for _ in range(2)]
    for w in workers:
        assert w.wait(300) == 0, w.stderr.read()[-2000:]
    for r in runs:
        got = reg.get(r.id)
        assert got.status == "failed" and "missing.jsonl" in got.error and got.attempts == 1
        assert [e.kind for e in reg.events(r.id)].count("claimed") == 1


def test_kill9_worker_mid_labelling_and_mid_training_then_resume(tmp_path, tiny_model):
    out = tmp_path / "run"
    with FakeLLMServer(responder=answer, latency=0.25) as server:
        reg = Registry()
        rec = reg.submit(tiny_spec(out, server, tiny_model))

        # 1. the first worker dies mid-labelling; its run process dies with it
        first = start_worker()
        wait_for(lambda: answered(out) >= 4, what="four teacher answers")
        kill9(first)
        wait_for(lambda: not executing(rec.id), timeout=10, what="the run process to die with its worker")
        before = answered(out)
        assert 4 <= before < 16 and reg.get(rec.id).status == "labelling"

        # 2. the next worker resumes it after the heartbeat goes stale, and dies mid-training
        second = start_worker()
        ckpts = out / "checkpoints"
        wait_for(lambda: ckpts.is_dir() and any(ckpts.glob("step-*")), what="a training checkpoint")
        kill9(second)
        wait_for(lambda: not executing(rec.id), timeout=10, what="the run process to die with its worker")
        assert not (out / "student" / "adapter_config.json").exists()

        # 3. a third worker finishes it
        third = start_worker()
        try:
            wait_for(lambda: reg.get(rec.id).finished, what="the run to finish")
        finally:
            third.terminate()
            third.wait(30)
        counts = server.count_by_prompt()

    got = reg.get(rec.id)
    assert got.status == "done", got.error
    assert got.attempts == 3
    events = reg.events(rec.id)
    assert [e.kind for e in events].count("resumed") == 2
    # the last attempt skipped labelling, or re-ran it entirely from the answer cache
    last = [e for e in events if e.stage == "labelling" and e.kind in ("stage_skipped", "stage_finished")][-1]
    assert last.kind == "stage_skipped" or last.data.get("cached") == 16
    # no answered row was sent again: only the one request in flight at the kill (concurrency 1) may repeat
    assert sum(c - 1 for c in counts.values()) <= 1
    assert sum(counts.values()) <= 16 + 8 + 1  # train rows + teacher's test rows + the one in flight
    training = json.loads((out / "training.json").read_text())
    assert training["resumed_from"] >= 2 and training["steps"] == 24
    assert (out / "report.json").is_file()


def test_run_folder_replaced_by_a_file_fails_with_a_sentence(tmp_path):
    import shutil

    reg = Registry()
    rec = reg.submit(load_spec(None, [f"out={tmp_path / 'run'}"]))
    shutil.rmtree(rec.out)
    Path(rec.out).write_text("not a folder")
    reg.claim_next("w")
    assert execute_run(rec.id, reg) is None
    got = reg.get(rec.id)
    assert got.status == "failed" and "is a file, not a folder" in got.error


def test_resumed_run_whose_folder_vanished_is_warned_about(tmp_path, monkeypatch):
    import shutil

    import pipeline.runner

    monkeypatch.setattr(pipeline.runner, "run", lambda spec, **kw: {"scores": {}})
    reg = Registry()
    rec = reg.submit(load_spec(None, [f"out={tmp_path / 'run'}"]))
    reg.claim_next("w1")
    shutil.rmtree(rec.out)
    reg.release(rec.id, "w1")  # as a worker shutting down does
    assert reg.claim_next("w2").attempts == 2
    execute_run(rec.id, reg)
    warnings = [e for e in reg.events(rec.id) if e.kind == "warning"]
    assert len(warnings) == 1 and "was missing" in warnings[0].data["message"]
    assert reg.get(rec.id).status == "done"


def test_foreground_run_is_recorded_heartbeats_and_can_be_cancelled(tmp_path, monkeypatch):
    import pipeline.runner
    from pipeline.worker import run_foreground

    reg = Registry()
    beats = []

    def fake_run(spec, progress=None, should_stop=None, on_stage=None):
        on_stage("labelling", "started", {})
        rec = reg.list_runs()[0]
        beats.append(rec.heartbeat_at)
        reg.cancel(rec.id)  # `distillery cancel ID` from another terminal
        wait_for(lambda: reg.get(rec.id).heartbeat_at != beats[0], timeout=30, what="a heartbeat")
        wait_for(should_stop, timeout=30, what="should_stop")
        raise Cancelled("labelling was cancelled; re-run to resume.")

    monkeypatch.setattr(pipeline.runner, "run", fake_run)
    with pytest.raises(Cancelled):
        run_foreground(load_spec(None, [f"out={tmp_path / 'fg'}"]), {"user": "me"}, registry=reg, heartbeat_s=0.1)
    rec = reg.list_runs()[0]
    assert rec.status == "cancelled" and rec.worker_id.startswith("foreground:") and rec.requested_by["source"] == "cli"
    assert rec.out == str(tmp_path / "fg")

    monkeypatch.setattr(pipeline.runner, "run", lambda spec, **kw: {"scores": {"teacher": 1.0}})
    rec, report = run_foreground(load_spec(None, [f"out={tmp_path / 'fg'}"]), registry=reg)
    assert rec.status == "done" and report == {"scores": {"teacher": 1.0}} and rec.out == str(tmp_path / "fg")


def test_sigterm_hands_the_run_back_and_the_next_worker_takes_it_at_once(tmp_path, tiny_model):
    out = tmp_path / "run"
    with FakeLLMServer(responder=answer, latency=0.3) as server:
        reg = Registry()
        rec = reg.submit(tiny_spec(out, server, tiny_model))
        first = subprocess.Popen([sys.executable, "-m", "pipeline.worker", "--poll", "0.2", "--stale-after", "600"],
                                 cwd=ROOT, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
        wait_for(lambda: answered(out) >= 2, what="two answers")
        first.terminate()
        assert first.wait(60) == 0, first.stderr.read()[-2000:]
        assert not executing(rec.id)
        got = reg.get(rec.id)
        assert got.status == "labelling" and got.heartbeat_at is None
        assert [e.kind for e in reg.events(rec.id)][-1] == "released"
        # a stale_after of ten minutes: only a released run can be taken this soon
        second = subprocess.Popen([sys.executable, "-m", "pipeline.worker", "--poll", "0.2", "--stale-after", "600"],
                                  cwd=ROOT, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: reg.get(rec.id).attempts == 2, timeout=60, what="the second worker to take it")
            reg.cancel(rec.id)
            wait_for(lambda: reg.get(rec.id).status == "cancelled", timeout=60, what="cancelled")
        finally:
            second.terminate()
            second.wait(60)
    assert [e.kind for e in reg.events(rec.id)].count("resumed") == 1


def test_a_run_that_ignores_its_cancel_is_killed_after_the_grace_period(tmp_path, tiny_model):
    with FakeLLMServer(responder=answer) as server:
        server.enqueue(Reply(text="positive", delay=6))  # the first answer takes 6 s; labelling waits for it
        reg = Registry()
        rec = reg.submit(tiny_spec(tmp_path / "run", server, tiny_model))
        stop = threading.Event()
        worker = threading.Thread(target=run_worker, kwargs=dict(registry=reg, poll_s=0.1, stop=stop, cancel_grace_s=1.0))
        worker.start()
        try:
            wait_for(lambda: server.requests, what="a request in flight")
            reg.cancel(rec.id)
            wait_for(lambda: reg.get(rec.id).status == "cancelled", timeout=15, what="the kill")
            assert not executing(rec.id)
        finally:
            stop.set()
            worker.join(60)
        time.sleep(max(0.0, server.requests[0].time + 6.5 - time.time()))  # let the fake finish its slow answer
    last = reg.events(rec.id)[-1]
    assert last.kind == "cancelled" and "did not stop within 1 s and was killed" in last.data["reason"]
