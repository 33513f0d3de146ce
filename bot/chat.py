"""Terminal chat with the Distillery agent (LLM mode or command mode), showing run progress as it happens.

    distillery chat                          # conversation "terminal:<user>"
    distillery chat --conversation demo      # resume a named conversation (history is kept in SQLite)
    distillery chat --no-worker              # runs execute in a separate `distillery worker`, not here

A background task polls the registry for the conversation's latest run and prints a line whenever its
status or progress changes, while you type.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable

import click

from pipeline.errors import DistilleryError, RunError
from pipeline.worker import EmbeddedWorker
from skills.operations import run_text

from .agent import Agent, build_agent

__all__ = ["chat_command", "chat_loop", "watch_runs"]

EXIT_WORDS = {"quit", "exit", "bye", ":q"}


async def watch_runs(agent: Agent, conversation: str, write: Callable[[str], None], poll_s: float = 2.0) -> None:
    """Print the conversation's latest run whenever its status or progress changes (until cancelled)."""
    last: str | None = None
    while True:
        run_id = agent.history.get_state(conversation, "run_id")
        if run_id:
            try:
                line = run_text(agent.plugin.registry.get(run_id), registry=agent.plugin.registry)
            except RunError:
                line = None
            if line and line != last:
                if last is not None or "queued" not in line or "No worker" in line:
                    write(f"  · {line}")
                last = line
        await asyncio.sleep(poll_s)


async def chat_loop(agent: Agent, conversation: str, user: str, read_line: Callable[[], Awaitable[str | None]],
                    write: Callable[[str], None], poll_s: float = 2.0) -> None:
    """Read lines, answer them, and watch runs in the background, until EOF or quit."""
    mode = "chat model" if agent.mode == "llm" else "command mode (no chat model configured; type help)"
    write(f"Distillery chat, {mode}. Type quit to leave.")
    watcher = asyncio.create_task(watch_runs(agent, conversation, write, poll_s))
    try:
        while True:
            line = await read_line()
            if line is None or line.strip().lower() in EXIT_WORDS:
                break
            if not line.strip():
                continue
            reply = await agent.respond(conversation, user, line, {"source": "terminal"})
            write(reply.text)
    finally:
        watcher.cancel()
        try:
            await watcher
        except asyncio.CancelledError:
            pass


async def _read_stdin() -> str | None:
    try:
        return await asyncio.to_thread(input, "you> ")
    except EOFError:
        return None


@click.command("chat")
@click.option("--conversation", default=None, help="Conversation id to start or resume (default: terminal:<user>).")
@click.option("--poll", "poll_s", type=float, default=2.0, show_default=True, help="Seconds between run progress checks.")
@click.option("--no-worker", "no_worker", is_flag=True,
              help="Do not execute runs here; a separate `distillery worker` on the same DISTILLERY_HOME does.")
def chat_command(conversation: str | None, poll_s: float, no_worker: bool) -> None:
    """Talk to the Distillery agent in the terminal; the runs you start execute here unless --no-worker."""
    user = getpass.getuser()
    try:
        agent = build_agent()
    except DistilleryError as err:
        raise click.ClickException(str(err)) from None
    worker = None if no_worker else EmbeddedWorker(agent.plugin.registry, kind="embedded in distillery chat").start()
    try:
        asyncio.run(chat_loop(agent, conversation or f"terminal:{user}", user, _read_stdin, click.echo, poll_s))
    finally:
        if worker is not None:
            worker.stop()  # a run still going is handed back: the next `distillery chat` or worker resumes it


if __name__ == "__main__":
    chat_command()
