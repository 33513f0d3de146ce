"""A teacher base_url that carries credentials (user:password@, ?key=, &sig=) never appears in what a failure
says: not in the CLI's error line, not in the run record, not in the Slack message, not in rejected.jsonl
(issue 9, item 11). Sentences name the endpoint as scheme://host:port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fake_llm_server import FakeLLMServer, Reply
from pipeline.worker import execute_run
from slack_harness import AppServer, ScriptedAgent, ask_for_plan, posts

SECRETS = ("secret", "key=abc", "abc123", "sig=", "zzz9", "user:", "sk-teacherkey")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_host_only(text: str, port: int) -> None:
    assert f"http://127.0.0.1:{port}" in text, text
    for secret in SECRETS:
        assert secret not in text, (secret, text)


def distillery(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=180,
                          cwd=cwd, env={**os.environ, "TEST_TEACHER_KEY": "sk-teacherkey-0123456789"})


@pytest.mark.parametrize("case", ["userinfo", "query-unreachable", "query-http-error"])
def test_the_cli_error_names_the_teacher_by_host_only(case, tmp_path):
    server = FakeLLMServer(responder=lambda req: Reply(status=401)) if case == "query-http-error" else None
    with server or FakeLLMServer():
        port = server.port if server else closed_port()
        base = {"userinfo": f"http://user:secret@127.0.0.1:{port}/v1?key=abc123",
                "query-unreachable": f"http://127.0.0.1:{port}/v1?key=abc123&sig=zzz9",
                "query-http-error": f"http://127.0.0.1:{port}/v1?api-key=abc123&sig=zzz9"}[case]
        result = distillery("label", "teacher.provider=openai", "teacher.model=m", f"teacher.base_url={base}",
                            "teacher.api_key_env=TEST_TEACHER_KEY", "teacher.max_retries=0", "dataset.train_size=4",
                            f"out={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in result.stderr
    assert_host_only(error[0], port)
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr
    rejected = tmp_path / "run" / "rejected.jsonl"
    for row in (json.loads(line) for line in (rejected.read_text().splitlines() if rejected.exists() else [])):
        assert_host_only(row["detail"], port)


def test_the_run_record_and_the_slack_message_name_the_teacher_by_host_only(env):
    port = closed_port()
    env.agent = ScriptedAgent(env.plans, overrides=[
        "teacher.provider=openai", "teacher.model=m", f"teacher.base_url=http://127.0.0.1:{port}/v1?key=abc123&sig=zzz9",
        "teacher.max_retries=0", "teacher.few_shot=0"])
    thread = "1690000030.000100"
    with AppServer(env.make_app()) as server:
        plan_id, _ = ask_for_plan(env, server, user="UADMIN", ts=thread)
        server.post_action("distill_start", plan_id, "UADMIN", "C1", env.store.plan_message(plan_id)["message_ts"], thread)
        run = env.slack.wait_for(lambda: env.registry.list_runs(), what="the run")[0]
        worker = threading.Thread(target=execute_run, args=(run.id, env.registry), daemon=True)
        worker.start()
        failure = env.slack.wait_for(lambda: [c for c in posts(env.slack, thread) if "failed:" in c["text"]],
                                     timeout=180, what="the failure message")[0]
        worker.join(60)
    record = env.registry.get(run.id)
    assert record.status == "failed" and "could not be reached" in record.error
    assert_host_only(record.error, port)
    assert_host_only(failure["text"], port)
    for event in env.registry.events(run.id):
        assert "abc123" not in json.dumps(event, default=str)
