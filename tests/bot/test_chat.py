"""The terminal chat: a real `python -m bot.chat` process fed through stdin, and the run watcher."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from bot.agent import build_agent
from bot.chat import chat_loop
from pipeline.registry import Registry

ROOT = Path(__file__).parent.parent.parent


def test_terminal_chat_process_plans_and_starts(isolated_home):
    env = {**os.environ, "DISTILLERY_HOME": str(isolated_home), "PYTHONPATH": str(ROOT)}
    lines = "datasets\ndistill sst2 into gemma-3-270m rows=5\nyes\nquit\n"  # --no-worker: the run stays queued
    done = subprocess.run([sys.executable, "-m", "bot.chat", "--poll", "0.2", "--no-worker"], input=lines, capture_output=True,
                          text=True, env=env, cwd=str(ROOT), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "command mode" in done.stdout and "sst2" in done.stdout
    run_id = re.search(r"as run ([0-9a-f]+)", done.stdout).group(1)
    assert Registry().get(run_id).status == "queued"


def test_watcher_prints_progress_changes_between_prompts():
    agent = build_agent()
    out: list[str] = []
    registry: Registry = agent.plugin.registry

    async def session():
        inbox: asyncio.Queue = asyncio.Queue()
        for line in ("distill sst2 into gemma-3-270m rows=5", "yes"):
            inbox.put_nowait(line)
        task = asyncio.create_task(chat_loop(agent, "W1", "U1", inbox.get, out.append, poll_s=0.05))
        while not agent.history.get_state("W1", "run_id"):
            await asyncio.sleep(0.05)
        run_id = agent.history.get_state("W1", "run_id")
        registry.set_status(run_id, "labelling", stage="labelling")  # what a worker does when it claims the run
        while not any("labelling" in line for line in out):
            await asyncio.sleep(0.05)
        inbox.put_nowait(None)  # EOF
        await asyncio.wait_for(task, 10)
        return run_id

    run_id = asyncio.run(asyncio.wait_for(session(), 30))
    assert any(line.strip().startswith(f"· Run {run_id}: labelling") for line in out)
