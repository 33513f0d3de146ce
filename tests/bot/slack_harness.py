"""Run a Distillery Slack app for tests: HTTP mode on 127.0.0.1 in a background event loop, signed requests in.

    with FakeSlack() as slack, AppServer(create_app(config, ...)) as server:
        server.post_event({"type": "app_mention", ...})           # signed like Slack signs, returns the HTTP status
        server.post_command("/distill", "sst2 into tiny", user="U1", channel="C1")
        server.post_action("distill_start", "plan-abc123", user="U1", channel="C1", message_ts=..., thread_ts=...)

ScriptedAgent stands in for bot.agent where a test is about Slack, not about the agent: it makes a real plan.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from pipeline.spec import load_spec

from fake_slack import TEAM_ID

SIGNING_SECRET = "test-signing-secret-0123456789"
BOT_TOKEN = "xoxb-test-bot-token-0123456789"
APP_TOKEN = "xapp-test-app-token-0123456789"


class LoopThread:
    """An asyncio event loop in a daemon thread; run(coro) blocks until the coroutine finishes there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_the_rest() -> None:  # lazy listeners still running when a test ends
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class AppServer:
    """Serves build_web_app(app) on 127.0.0.1:<free port> and sends it Slack-signed requests."""

    def __init__(self, app, secret: str = SIGNING_SECRET) -> None:
        self.app, self.secret = app, secret
        self._ids = itertools.count(1)
        self.url = ""

    def __enter__(self) -> "AppServer":
        from aiohttp import web

        from bot.slack_app import build_web_app

        self.lt = LoopThread()

        async def start() -> web.AppRunner:
            runner = web.AppRunner(build_web_app(self.app))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/slack/events"  # noqa: SLF001
            return runner

        self.runner = self.lt.run(start())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.lt.run(self.runner.cleanup())
        self.lt.close()

    # -- raw signed HTTP -----------------------------------------------------------------------------------
    def post(self, body: str, content_type: str, timestamp: int | None = None, signature: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        sig = signature or SignatureVerifier(self.secret).generate_signature(timestamp=ts, body=body)
        req = urllib.request.Request(self.url, data=body.encode(), method="POST", headers={
            "Content-Type": content_type, "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    # -- Slack payloads ------------------------------------------------------------------------------------
    def event_body(self, event: dict[str, Any], event_id: str | None = None) -> str:
        return json.dumps({"token": "legacy", "team_id": TEAM_ID, "api_app_id": "A0001", "type": "event_callback",
                           "event_id": event_id or f"Ev{next(self._ids):06d}", "event_time": int(time.time()),
                           "authorizations": [{"team_id": TEAM_ID, "user_id": "UBOT", "is_bot": True}],
                           "event": event})

    def post_event(self, event: dict[str, Any], event_id: str | None = None, retry_num: int | None = None, **kw) -> int:
        headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"} if retry_num else {}
        return self.post(self.event_body(event, event_id), "application/json", headers=headers, **kw)[0]

    def post_command(self, command: str, text: str, user: str, channel: str) -> int:
        body = urlencode({"token": "legacy", "team_id": TEAM_ID, "channel_id": channel, "channel_name": "ml",
                          "user_id": user, "user_name": user.lower(), "command": command, "text": text,
                          "response_url": "http://127.0.0.1:9/unused", "trigger_id": "trig-1", "api_app_id": "A0001"})
        return self.post(body, "application/x-www-form-urlencoded")[0]

    def post_action(self, action_id: str, value: str, user: str, channel: str, message_ts: str, thread_ts: str) -> int:
        return self.post(urlencode({"payload": json.dumps(action_payload(action_id, value, user, channel, message_ts, thread_ts))}),
                         "application/x-www-form-urlencoded")[0]


def mention(text: str, user: str, channel: str, ts: str, thread_ts: str | None = None) -> dict[str, Any]:
    event = {"type": "app_mention", "user": user, "text": f"<@UBOT> {text}", "ts": ts, "channel": channel,
             "event_ts": ts, "channel_type": "channel"}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def action_payload(action_id: str, value: str, user: str, channel: str, message_ts: str, thread_ts: str) -> dict[str, Any]:
    return {"type": "block_actions", "team": {"id": TEAM_ID}, "user": {"id": user, "team_id": TEAM_ID},
            "api_app_id": "A0001", "token": "legacy", "trigger_id": "trig-2",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False,
                          "thread_ts": thread_ts},
            "channel": {"id": channel, "name": "ml"},
            "message": {"type": "message", "ts": message_ts, "thread_ts": thread_ts, "text": "plan", "bot_id": "BBOT"},
            "actions": [{"type": "button", "action_id": action_id, "block_id": f"plan:{value}", "value": value,
                         "action_ts": str(time.time())}],
            "response_url": "http://127.0.0.1:9/unused"}


PLAN_SUMMARY = {"dataset": "sst2", "task": "classification", "teacher": "gpt-4o-mini (openai)", "student": "tiny",
                "method": "lora", "rows": 8, "estimate": {"prompt_tokens": 1200, "completion_tokens": 40, "cost_usd": 0.001},
                "hardware_needed": "small", "hardware_here": "CPU", "runnable": True, "expected_minutes": 1.0, "notes": []}


@dataclass
class Reply:
    text: str
    mode: str = "grammar"
    plan_id: str | None = None
    run_id: str | None = None


class ScriptedAgent:
    """Makes a real plan for 'distill ...', answers anything else with an echo; records what it was asked."""

    def __init__(self, plans, overrides=(), summary=None, intro="Here is the plan {plan_id}."):
        self.plans, self.calls = plans, []
        self.overrides, self.summary, self.intro = ["dataset.train_size=8", *overrides], summary or PLAN_SUMMARY, intro

    async def respond(self, conversation_id, user, text, source=None):
        self.calls.append({"conversation": conversation_id, "user": user, "text": text, "source": source})
        if text.startswith("distill"):
            spec = load_spec(None, self.overrides).model_dump(mode="json")
            plan = self.plans.create(spec, self.summary, {"user": user, "conversation": conversation_id})
            return Reply(self.intro.format(plan_id=plan.id), plan_id=plan.id)
        return Reply(f"echo: {text}")


# ---- reading what the app posted -----------------------------------------------------------------------------

def posts(slack, thread_ts=None):
    """chat.postMessage calls, oldest first (only those in one thread when thread_ts is given)."""
    return [c for c in slack.calls("chat.postMessage") if thread_ts is None or c.get("thread_ts") == thread_ts]


def plan_card_of(slack, thread_ts):
    cards = [c for c in posts(slack, thread_ts) if "distill_start" in str(c.get("blocks"))]
    return cards[-1] if cards else None


def ask_for_plan(env, server, user="UADMIN", ts="1690000000.000100", text="distill sst2 into tiny"):
    """Mention the bot with a distill request; returns (plan id, the plan card's postMessage call)."""
    assert server.post_event(mention(text, user, "C1", ts)) == 200
    card = env.slack.wait_for(lambda: plan_card_of(env.slack, ts), what="the plan card")
    plan_id = env.plans.latest(f"C1:{ts}").id
    env.slack.wait_for(lambda: env.store.plan_message(plan_id), what="the plan message to be stored")
    return plan_id, card
