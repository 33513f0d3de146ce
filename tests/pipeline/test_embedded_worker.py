"""The embedded worker of `distillery slack` / `distillery chat`, worker heartbeats and the "nobody watches" warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fake_llm_server import FakeLLMServer, Reply
from test_worker import executing, tiny_spec, wait_for

from pipeline.cli import cli, run_cli
from pipeline.registry import Registry
from pipeline.worker import EmbeddedWorker, queue_warning

ROOT = Path(__file__).resolve().parents[2]


def slow_answer(req) -> Reply:
    text = json.dumps(req.messages).lower()
    word = "negative" if any(w in text for w in ("dull", "bad", "boring", "worst", "not")) else "positive"
    return Reply(word, delay=0.15)  # slow enough to look at the run's process while it labels


def test_a_queued_run_says_nobody_watches_until_an_embedded_worker_runs_it(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-front-door-secret-0123456789")
    reg = Registry()
    with FakeLLMServer(responder=slow_answer) as server:
        rec = reg.submit(tiny_spec(tmp_path / "run", server, tiny_model, **{"train.max_steps": 4}))
        warning = queue_warning(reg, rec)
        assert warning and f"run {rec.id} stays queued" in warning and "distillery worker" in warning
        assert run_cli(cli, ["status", rec.id]) == 0
        assert "warning: No worker is watching this Distillery home" in capsys.readouterr().out

        worker = EmbeddedWorker(reg, kind="embedded in distillery slack", poll_s=0.1).start()
        try:
            live = wait_for(lambda: reg.live_workers(), what="the worker's heartbeat")
            assert live[0]["kind"] == "embedded in distillery slack" and live[0]["pid"] == os.getpid()
            assert queue_warning(reg, reg.get(rec.id)) is None
            pid = wait_for(lambda: executing(rec.id), what="the run's child process")[0]
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not any(v.startswith(b"SLACK_BOT_TOKEN=") for v in environ)  # front-door secrets stay out of runs
            assert any(v.startswith(b"DISTILLERY_HOME=") for v in environ)
            assert pid != os.getpid()  # a child process per run, as with `distillery worker`
            done = wait_for(lambda: reg.get(rec.id).finished and reg.get(rec.id), timeout=300, what="the run's end")
        finally:
            worker.stop()
    assert done.status == "done", done.error
    assert set(done.scores) == {"teacher", "student_base", "student_distilled"}
    assert reg.live_workers() == []  # it said it stopped
    later = reg.submit(tiny_spec(tmp_path / "run2", server, tiny_model))
    assert queue_warning(reg, later)


def test_distillery_chat_runs_an_embedded_worker_unless_told_not_to(isolated_home):
    env = {**os.environ, "DISTILLERY_HOME": str(isolated_home), "PYTHONPATH": str(ROOT)}
    reg = Registry()
    for extra, expect_live in (([], True), (["--no-worker"], False)):
        proc = subprocess.Popen([sys.executable, "-m", "bot.chat", "--poll", "0.2", *extra], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
        try:
            proc.stdin.write("help\n")
            proc.stdin.flush()
            proc.stdout.readline()  # the greeting: the chat is up (and its worker, when it has one, was started)
            if expect_live:
                live = wait_for(lambda: reg.live_workers(), timeout=60, what="the chat's worker")
                assert live[0]["kind"] == "embedded in distillery chat" and live[0]["pid"] == proc.pid
            else:
                assert reg.live_workers() == []
            proc.stdin.write("quit\n")
            proc.stdin.flush()
            assert proc.wait(60) == 0, proc.stderr.read()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        assert reg.live_workers() == []  # a chat that ends stops its worker


def test_the_chat_says_when_no_worker_watches_a_queued_run():
    import asyncio

    from bot.agent import build_agent

    agent = build_agent()
    asyncio.run(agent.respond("nw", "me", "distill sst2 into gemma-3-270m rows=5", {"source": "terminal"}))
    started = asyncio.run(agent.respond("nw", "me", "yes", {"source": "terminal"}))
    assert started.run_id
    status = asyncio.run(agent.respond("nw", "me", "status", {"source": "terminal"}))
    assert f"No worker is watching this Distillery home, so run {started.run_id} stays queued" in status.text
    assert "distillery worker" in status.text
