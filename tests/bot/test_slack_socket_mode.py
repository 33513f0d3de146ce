"""Socket Mode: the app opens a connection through apps.connections.open on the fake Slack and gets envelopes
(events_api, slash_commands, interactive) over a local websocket; it acks each one, and a retried event
(same event_id, retry_attempt 1) starts nothing new.
"""

from __future__ import annotations

import asyncio
import functools
import time

from bot.slack_app import SlackConfig, create_app, serve_socket_mode
from bot.slack_store import SlackStore
from fake_slack import TEAM_ID, FakeSlack
from pipeline.registry import Registry
from skills import operations
from skills.plans import PlanStore
from slack_harness import APP_TOKEN, BOT_TOKEN, LoopThread, ScriptedAgent, action_payload, mention


def test_socket_mode_events_commands_and_buttons(tmp_path):
    registry, plans = Registry(), PlanStore()
    agent = ScriptedAgent(plans)
    thread = "1690000002.000100"
    with FakeSlack() as slack:
        slack.start_socket_mode()
        config = SlackConfig(bot_token=BOT_TOKEN, app_token=APP_TOKEN, api_url=slack.api_url)
        app = create_app(config, agent=agent, registry=registry, plans=plans, store=SlackStore(),
                         start_plan=functools.partial(operations.start_plan, plans=plans, registry=registry),
                         poll_s=0.05, update_interval_s=0.2)
        lt = LoopThread()
        stop = asyncio.Event()
        serving = asyncio.run_coroutine_threadsafe(serve_socket_mode(app, APP_TOKEN, stop), lt.loop)
        try:
            event = {"team_id": TEAM_ID, "api_app_id": "A0001", "type": "event_callback", "event_id": "EvSOCK1",
                     "event_time": int(time.time()), "event": mention("distill sst2 into tiny", "U1", "C1", thread)}
            first = slack.send_envelope("events_api", event)
            slack.wait_for(lambda: slack.acked(first), what="the ack of the event")
            card = slack.wait_for(lambda: [c for c in slack.calls("chat.postMessage") if "distill_start" in str(c.get("blocks"))],
                                  what="the plan card")[0]
            retry = slack.send_envelope("events_api", event, retry_attempt=1)
            slack.wait_for(lambda: slack.acked(retry), what="the ack of the retry")

            command = {"token": "legacy", "team_id": TEAM_ID, "channel_id": "C2", "user_id": "U1", "command": "/distill",
                       "text": "runs", "response_url": "http://127.0.0.1:9/unused", "trigger_id": "t", "api_app_id": "A0001"}
            cmd = slack.send_envelope("slash_commands", command)
            slack.wait_for(lambda: slack.acked(cmd) and any(c["text"] == "runs" for c in agent.calls), what="the command")

            plan_id = plans.latest(f"C1:{thread}").id
            card_ts = slack.wait_for(lambda: SlackStore().plan_message(plan_id), what="the stored card")["message_ts"]
            click = slack.send_envelope("interactive", action_payload("distill_start", plan_id, "U1", "C1", card_ts, thread))
            slack.wait_for(lambda: slack.acked(click), what="the ack of the click")
            run = slack.wait_for(lambda: registry.list_runs(), what="the run")[0]
            slack.wait_for(lambda: [c for c in slack.calls("chat.postMessage") if f"Run `{run.id}` is queued" in c["text"]],
                           what="the status message")
        finally:
            lt.loop.call_soon_threadsafe(stop.set)
            serving.result(30)
            lt.close()
    assert card["thread_ts"] == thread
    assert [c["text"] for c in agent.calls] == ["distill sst2 into tiny", "runs"]  # the retry was dropped
    assert run.requested_by["thread_ts"] == thread
    assert slack.calls("apps.connections.open")[0]["_token"] == APP_TOKEN
    assert {c["_token"] for c in slack.calls() if c["_method"] != "apps.connections.open"} == {BOT_TOKEN}
