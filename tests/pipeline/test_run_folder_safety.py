"""A run folder under stress: a concurrent `estimate`, two processes on one `out`, the folder deleted mid-labelling,
and symlinks planted in a folder someone else controls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, last_user

import pipeline.labelling as labelling
from pipeline.answers import AnswerStore
from pipeline.labelling import estimate, label
from pipeline.spec import load_spec
from pipeline.teachers.base import TeacherAnswer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(labelling, "BACKOFF_BASE_S", 0.01)


def sentiment(req) -> str:
    return "positive" if "good" in last_user(req) else "negative"


def dataset(tmp_path: Path, n: int = 20) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"row": i, "text": f"a {'good' if i % 2 == 0 else 'bad'} film number {i}", "label": (i + 1) % 2}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def spec_args(tmp_path: Path, server, out: Path, n: int = 20) -> list[str]:
    return [f"dataset.train={dataset(tmp_path, n)}", "dataset.train_size=null", "teacher.few_shot=0", "teacher.provider=openai",
            "teacher.model=fake-model", f"teacher.base_url={server.openai_base_url}", "teacher.api_key_env=null",
            "teacher.concurrency=2", "teacher.max_retries=1", "teacher.timeout_s=5", f"out={out}"]


# item 17: estimate never modifies a live run's cache -------------------------------------------------------


def test_estimate_leaves_a_half_written_line_of_a_live_writer_alone(tmp_path):
    with FakeLLMServer(responder=sentiment) as server:
        out = tmp_path / "run"
        spec = load_spec(None, spec_args(tmp_path, server, out))
        out.mkdir()
        cache = out / "teacher_answers.jsonl"
        with AnswerStore(cache) as store:
            store.put("k-done", TeacherAnswer(text="positive"))
        before = cache.read_bytes()
        line = json.dumps({"key": "k-live", "text": "negative", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 1})
        writer = open(cache, "a", encoding="utf-8")  # a labelling process in the middle of a write
        writer.write(line[:20])
        writer.flush()
        est = estimate(spec)
        assert est.requests == 20 and len(server.requests) == 0
        assert cache.read_bytes() == before + line[:20].encode()  # not truncated, not touched
        writer.write(line[20:] + "\n")
        writer.close()
        store = AnswerStore(cache)
        assert store.get("k-live").text == "negative" and store.get("k-done").text == "positive"
        store.close()


def test_a_read_only_answer_store_refuses_to_write(tmp_path):
    cache = tmp_path / "teacher_answers.jsonl"
    cache.write_text('{"key": "a", "text": "x"}\n{"key": "b", "te')
    store = AnswerStore(cache, read_only=True)
    assert "a" in store and "b" not in store
    with pytest.raises(RuntimeError):
        store.put("c", TeacherAnswer(text="y"))
    store.close()
    assert cache.read_text().endswith('"te')


# item 16: the run folder (or the cache) deleted mid-labelling ----------------------------------------------


@pytest.mark.parametrize("victim", ["run folder", "answer cache"])
def test_deleting_mid_labelling_loses_no_paid_answer(tmp_path, victim):
    import shutil

    out = tmp_path / "run"
    deleted = []

    def responder(req):
        if len(server.requests) == 9 and not deleted:  # answers 1-8 are in the file by now (concurrency 2)
            deleted.append(True)
            shutil.rmtree(out) if victim == "run folder" else (out / "teacher_answers.jsonl").unlink()
        return sentiment(req)

    with FakeLLMServer(responder=responder) as server:
        spec = load_spec(None, spec_args(tmp_path, server, out))
        summary = label(spec)
        assert deleted and summary.accepted == 20 and len(server.requests) == 20
        cache = AnswerStore(out / "teacher_answers.jsonl", read_only=True)
        assert len(cache) == 20  # every paid answer is on disk again, including those written before the delete
        again = label(spec)
        assert again.requests_sent == 0 and len(server.requests) == 20  # the resume pays for nothing


# item 6: one lock per run folder ---------------------------------------------------------------------------


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "bot.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def test_a_second_process_on_the_same_out_is_refused_and_nothing_is_paid_twice(tmp_path):
    import threading

    gate = threading.Event()  # the first process's answers wait until the second one has tried

    def held(req):
        gate.wait(90)
        return sentiment(req)

    with FakeLLMServer(responder=held) as server:
        out = tmp_path / "run"
        args = [*spec_args(tmp_path, server, out), "teacher.timeout_s=120"]
        first = cli("label", *args)
        deadline = time.monotonic() + 60
        while not server.requests and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.requests, first.communicate()
        second = cli("label", *args)
        try:
            _, err = second.communicate(timeout=120)
        finally:
            gate.set()
        assert second.returncode == 1 and "Traceback" not in err
        lines = [x for x in err.splitlines() if x.strip() and not x.startswith("[")]
        assert len(lines) == 1 and f"process {first.pid}" in lines[0] and "distillery label" in lines[0] and "since" in lines[0], err
        assert str(out) in lines[0]
        _, err1 = first.communicate(timeout=120)
        assert first.returncode == 0, err1
        assert len(server.requests) == 20  # not 40
        assert not (out / ".lock").exists()  # removed by its holder on the way out
        third = cli("label", *args)  # the lock went with the first process
        third.communicate(timeout=120)
        assert third.returncode == 0 and len(server.requests) == 20


def test_the_run_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    from pipeline.runlock import run_lock

    out = tmp_path / "run"
    with run_lock(out, "outer"):
        with run_lock(out, "inner"):  # runner.run -> label() in one process must not deadlock
            pass
        probe = subprocess.run([sys.executable, "-c", "import sys; from pipeline.runlock import run_lock\n"
                                f"with run_lock({str(out)!r}, 'probe'): pass"],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        assert probe.returncode != 0 and "RunError" in probe.stderr and f"process {os.getpid()}" in probe.stderr
    probe = subprocess.run([sys.executable, "-c", f"from pipeline.runlock import run_lock\nwith run_lock({str(out)!r}, 'probe'): print('ok')"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert probe.stdout.strip() == "ok", probe.stderr


LOCK_STRESS = """
import os, sys, time
from pipeline.errors import RunError
from pipeline.runlock import run_lock
out, log, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
got = 0
while got < 15:
    try:
        with run_lock(out, "stress"):
            with open(log, "a") as fh:
                fh.write(f"in {os.getpid()}\\n")
            time.sleep(0.002)
            with open(log, "a") as fh:
                fh.write(f"out {os.getpid()}\\n")
            got += 1
    except RunError:
        time.sleep(0.001)
"""


def test_the_run_lock_never_has_two_holders_while_holders_come_and_go(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "log.txt"
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", LOCK_STRESS, str(tmp_path / "run"), str(log), str(start)], env=env) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * 15 * 2
    for enter, leave in zip(lines[0::2], lines[1::2]):  # never two holders: every "in" is followed by its own "out"
        assert enter.startswith("in ") and leave == "out " + enter[3:], (enter, leave)
    assert not (tmp_path / "run" / ".lock").exists()
