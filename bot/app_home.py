"""The App Home tab: a person's recent runs with their status, scores and a link to each run's thread.

    view = home_view(runs, user="U1", team_url="https://acme.slack.com/")   # a views.publish "home" view
    await publish_home(client, registry, user="U1")                          # on app_home_opened

Only runs that person asked for from Slack are listed (a run started in someone else's DM is never shown), newest
first, at most MAX_RUNS. The link to a run's thread is https://<workspace>/archives/<channel>/p<ts without dot>.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .blocks import format_duration, status_line

__all__ = ["home_view", "publish_home", "thread_link", "MAX_RUNS"]

MAX_RUNS = 15
SCANNED = 200  # newest runs looked at to find this person's
STATUS_MARK = {"done": "✅", "failed": "❌", "cancelled": "⏹️", "queued": "🕒"}


def thread_link(team_url: str | None, channel: str | None, thread_ts: str | None) -> str | None:
    if not (team_url and channel and thread_ts):
        return None
    return f"{team_url.rstrip('/')}/archives/{channel}/p{thread_ts.replace('.', '')}"


def _scores(run: dict[str, Any]) -> str:
    scores = run.get("scores") or {}
    parts = [(name, scores.get(key)) for name, key in (("teacher", "teacher"), ("base", "student_base"),
                                                     ("distilled", "student_distilled"))]
    shown = [f"{name} {value * 100:.1f}" for name, value in parts if isinstance(value, (int, float))]
    return ", ".join(shown)


def _run_block(run: dict[str, Any], team_url: str | None) -> dict[str, Any]:
    spec = run.get("spec") or {}
    by = run.get("requested_by") or {}
    dataset = str((spec.get("dataset") or {}).get("train") or "?").rsplit("/", 1)[-1]
    student = str((spec.get("student") or {}).get("model") or "?").rstrip("/").rsplit("/", 1)[-1]
    status = run.get("status", "queued")
    line = f"{STATUS_MARK.get(status, '⏳')} {status_line(run)}\n`{dataset}` → `{student}`"
    scores = _scores(run)
    if scores:
        line += f"  ·  {scores}"
    if status == "failed" and run.get("error"):
        line += f"\n_{str(run['error'])[:200]}_"
    link = thread_link(team_url, by.get("channel"), by.get("thread_ts"))
    if link:
        line += f"\n<{link}|Open the thread>"
    return {"type": "section", "text": {"type": "mrkdwn", "text": line[:2900]}}


def home_view(runs: list[dict[str, Any]], user: str, team_url: str | None = None) -> dict[str, Any]:
    """The Home tab for `user`: a header, how to start, and their recent runs (RunRecord.to_dict() dicts)."""
    mine = [r for r in runs if (r.get("requested_by") or {}).get("source") == "slack"
            and (r.get("requested_by") or {}).get("user") == user][:MAX_RUNS]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Distillery"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": (
            "Attach a CSV, JSONL or Parquet file to a message that mentions me (or send it in a DM) and say "
            "*distill this dataset into gemma-3-270m*. I plan it, you press Start, and the report lands in the thread.")}},
        {"type": "divider"},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Your recent runs* ({len(mine)})" if mine
                                     else "*Your recent runs*\nNone yet."}},
    ]
    for run in mine:
        blocks.append(_run_block(run, team_url))
    active = [r for r in mine if r.get("status") not in ("done", "failed", "cancelled")]
    if active:
        eta = (active[0].get("progress") or {}).get("eta_s")
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
            f"{len(active)} running or queued" + (f"; the newest finishes in about {format_duration(eta)}" if eta else ""))}]})
    return {"type": "home", "blocks": blocks[:100]}


async def publish_home(client, registry, user: str, team_url: str | None = None) -> dict[str, Any]:
    """Build the user's Home tab from the run registry and publish it with views.publish."""
    records = await asyncio.to_thread(registry.list_runs, SCANNED)
    view = home_view([r.to_dict() for r in records], user, team_url)
    await client.views_publish(user_id=user, view=view)
    return view
