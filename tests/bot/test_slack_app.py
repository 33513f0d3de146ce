"""The Slack app over real HTTP: signed events, slash commands and buttons in; Web API calls out to a fake Slack.

The agent here is scripted (slack_harness.ScriptedAgent makes a real plan in a real PlanStore); runs are submitted to the real registry by
the real skills.operations.start_plan, and the test moves them through their stages as a worker would.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

import pytest

from bot.slack_app import SlackConfig, SlackConfigError, create_app, flow_of
from pipeline.progress import Progress
from pipeline.registry import Registry
from slack_harness import BOT_TOKEN, SIGNING_SECRET, AppServer, ask_for_plan, mention, plan_card_of, posts

def png_bytes() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")


def test_requests_with_a_bad_signature_or_a_stale_timestamp_get_401_and_do_nothing(env):
    with AppServer(env.make_app()) as server:
        body = server.event_body(mention("distill sst2", "UADMIN", "C1", "1.1"))
        assert server.post(body, "application/json", signature="v0=" + "0" * 64)[0] == 401
        assert server.post(body, "application/json", timestamp=int(time.time()) - 600)[0] == 401
        wrong = AppServer(None, secret="wrong-secret")  # signs with another secret, posts to the same app
        wrong.url = server.url
        assert wrong.post_event(mention("distill sst2", "UADMIN", "C1", "1.2")) == 401
        time.sleep(0.3)
    assert env.agent.calls == [] and env.slack.calls("chat.postMessage") == []


def test_a_mention_gets_the_reply_and_a_plan_card_in_its_thread(env):
    with AppServer(env.make_app()) as server:
        plan_id, card = ask_for_plan(env, server, user="UASK", ts="1690000000.000200")
    assert env.agent.calls[0]["conversation"] == "C1:1690000000.000200"
    assert env.agent.calls[0]["text"] == "distill sst2 into tiny" and env.agent.calls[0]["user"] == "UASK"
    assert env.agent.calls[0]["source"]["may_start"] is False  # UASK may ask, only UADMIN may start
    assert card["channel"] == "C1" and card["thread_ts"] == "1690000000.000200"
    assert plan_id in str(card["blocks"]) and f"Here is the plan {plan_id}." in str(card["blocks"])
    assert env.store.plan_message(plan_id)["thread_ts"] == "1690000000.000200"


def test_a_retried_event_is_handled_once_even_by_a_restarted_bot(env):
    event = mention("distill sst2 into tiny", "UADMIN", "C1", "1690000000.000300")
    with AppServer(env.make_app()) as server:
        assert server.post_event(event, event_id="EvRETRY") == 200
        assert server.post_event(event, event_id="EvRETRY", retry_num=1) == 200
        env.slack.wait_for(lambda: plan_card_of(env.slack, "1690000000.000300"), what="the plan card")
    with AppServer(env.make_app()) as server:  # a new process, same SQLite store
        assert server.post_event(event, event_id="EvRETRY", retry_num=2) == 200
        time.sleep(0.3)
    assert len(env.agent.calls) == 1
    assert len([c for c in posts(env.slack) if "distill_start" in str(c.get("blocks"))]) == 1


def test_unauthorised_users_are_refused_at_the_mention_and_at_the_button(env):
    with AppServer(env.make_app()) as server:
        server.post_event(mention("distill sst2 into tiny", "USTRANGER", "C1", "1690000000.000400"))
        refusal = env.slack.wait_for(lambda: posts(env.slack, "1690000000.000400"), what="a refusal")[0]
        assert "Sorry <@USTRANGER>" in refusal["text"] and "DISTILLERY_SLACK_USERS" in refusal["text"]
        assert env.agent.calls == []

        plan_id, card = ask_for_plan(env, server, user="UASK", ts="1690000000.000500")
        server.post_action("distill_start", plan_id, "UASK", "C1", "1690000000.000501", "1690000000.000500")
        eph = env.slack.wait_for(lambda: env.slack.calls("chat.postEphemeral"), what="an ephemeral refusal")[0]
        assert eph["user"] == "UASK" and "only Distillery admins can start" in eph["text"] and "<@UADMIN>" in eph["text"]
        server.post_event(mention("yes", "UASK", "C1", "1690000000.000502", thread_ts="1690000000.000500"))
        env.slack.wait_for(lambda: len(posts(env.slack, "1690000000.000500")) >= 2, what="a refusal of 'yes'")
    assert env.registry.list_runs() == []
    assert [c["text"] for c in env.agent.calls] == ["distill sst2 into tiny"]


def _wait_run(env):
    return env.slack.wait_for(lambda: env.registry.list_runs(), what="a run in the registry")[0]


def _finish(registry: Registry, run, tmp_path: Path) -> bytes:
    """Play the worker's last step: a report.json dict and a chart in the run folder."""
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    chart = png_bytes()
    (out / "report.png").write_bytes(chart)
    report = {"task": "classification", "metric": "accuracy",
              "scores": {"teacher": 0.9, "student_base": 0.5, "student_distilled": 0.8}, "gap_closed": 0.75,
              "labelling": {"requested": 8, "accepted": 8, "rejected": 0, "prompt_tokens": 1200, "completion_tokens": 40, "cost_usd": 0.001},
              "training": {"examples": 8, "steps": 2, "seconds": 3.0, "tokens_per_second": 400.0, "final_loss": 0.5},
              "evaluation": {"examples": 8},
              "paths": {"adapter": str(out / "student"), "report_png": str(out / "report.png")}}
    registry.finish(run.id, report)
    return chart


def test_start_click_starts_one_run_and_follows_it_to_the_report_with_the_chart(env, tmp_path):
    thread = "1690000000.000600"
    with AppServer(env.make_app()) as server:
        plan_id, card = ask_for_plan(env, server, ts=thread)
        card_ts = env.store.plan_message(plan_id)["message_ts"]
        assert server.post_action("distill_start", plan_id, "UADMIN", "C1", card_ts, thread) == 200
        assert server.post_action("distill_start", plan_id, "UADMIN", "C1", card_ts, thread) == 200  # double click
        run = _wait_run(env)
        assert run.requested_by["channel"] == "C1" and run.requested_by["thread_ts"] == thread
        assert run.requested_by["user"] == "UADMIN" and run.requested_by["source"] == "slack"
        status = env.slack.wait_for(lambda: [c for c in posts(env.slack, thread) if "queued" in c["text"]], what="status")[0]
        env.slack.wait_for(lambda: env.slack.calls("chat.postEphemeral"), what="the double-click answer")
        assert "already started" in env.slack.calls("chat.postEphemeral")[0]["text"]
        card_update = env.slack.wait_for(lambda: [u for u in env.slack.calls("chat.update") if u["ts"] == card_ts], what="card")[0]
        assert f"as run `{run.id}`" in card_update["text"] and "distill_start" not in str(card_update.get("blocks"))

        # the worker's part, by hand: stages and progress in the registry
        env.registry.set_status(run.id, "labelling", stage="labelling")
        env.registry.update_progress(run.id, Progress("labelling", 3, 8, rate=1.5, eta_s=4))
        env.slack.wait_for(lambda: [u for u in env.slack.calls("chat.update") if "labelling 3/8 rows" in u["text"]], what="update")
        env.registry.set_status(run.id, "training", stage="training")
        env.registry.update_progress(run.id, Progress("training", 1, 2, unit="steps"))
        env.slack.wait_for(lambda: [u for u in env.slack.calls("chat.update") if "training 1/2 steps" in u["text"]], what="update")
        chart = _finish(env.registry, env.registry.get(run.id), tmp_path)
        report = env.slack.wait_for(lambda: [c for c in posts(env.slack, thread) if "is done" in c["text"]], what="report")[0]
        env.slack.wait_for(lambda: env.slack.calls("files.completeUploadExternal"), what="the chart upload")
        # the run is marked finished after its uploads (chart, adapter zip): wait for that instead of racing it
        env.slack.wait_for(lambda: env.store.unfinished_runs() == [], what="the run to be marked finished")
    assert len(env.registry.list_runs()) == 1
    status_ts = env.store.followed(run.id)["status_ts"]
    assert status["text"].startswith(f"Run `{run.id}` is queued")
    status_updates = [u for u in env.slack.calls("chat.update") if u["ts"] != card_ts]
    assert {(u["channel"], u["ts"]) for u in status_updates} == {("C1", status_ts)}  # ONE status message, updated in place
    assert status_updates[-1]["text"] == f"Run `{run.id}` is done."
    assert "gap closed 75 %" in report["text"] and "80.0" in str(report["blocks"])
    done = env.slack.calls("files.completeUploadExternal")[0]
    assert done["channel_id"] == "C1" and done["thread_ts"] == thread
    assert list(env.slack.uploads.values()) == [chart]
    assert env.store.unfinished_runs() == []


def test_a_failed_run_is_one_sentence_and_follow_ups_in_the_thread_reach_the_run(env):
    thread = "1690000000.000700"
    with AppServer(env.make_app()) as server:
        plan_id, _ = ask_for_plan(env, server, ts=thread)
        server.post_action("distill_start", plan_id, "UADMIN", "C1", env.store.plan_message(plan_id)["message_ts"], thread)
        run = _wait_run(env)
        env.slack.wait_for(lambda: env.store.followed(run.id), what="the run to be followed")
        # a follow-up without a mention, in the thread: the bot hears it through message.channels
        server.post_event({"type": "message", "channel": "C1", "user": "UASK", "text": "how is it going?",
                           "ts": "1690000000.000701", "thread_ts": thread, "channel_type": "channel"})
        env.slack.wait_for(lambda: any(c["text"] == f"status {run.id}" for c in env.agent.calls), what="the follow-up")
        server.post_event({"type": "message", "channel": "C1", "user": "UASK", "text": "cancel it",
                           "ts": "1690000000.000702", "thread_ts": thread, "channel_type": "channel"})
        env.slack.wait_for(lambda: any("only Distillery admins" in c["text"] for c in posts(env.slack, thread)), what="refusal")
        # a message in a thread the bot is not part of is ignored; so are bot messages
        server.post_event({"type": "message", "channel": "C1", "user": "UASK", "text": "how is it going?",
                           "ts": "1690000000.000703", "thread_ts": "1690000000.999999", "channel_type": "channel"})
        server.post_event({"type": "message", "channel": "C1", "bot_id": "BOTHER", "user": "UOTHER", "text": "status",
                           "ts": "1690000000.000704", "thread_ts": thread, "channel_type": "channel"})
        env.registry.fail(run.id, "the teacher refused every row; check the prompt.")
        failure = env.slack.wait_for(lambda: [c for c in posts(env.slack, thread) if "failed:" in c["text"]], what="failure")[0]
    assert failure["text"] == (f"Run `{run.id}` failed: the teacher refused every row; check the prompt. "
                               f"What it produced is kept in `{run.out}`.")
    assert [c["text"] for c in env.agent.calls] == ["distill sst2 into tiny", f"status {run.id}"]


def test_a_restarted_bot_re_attaches_to_the_runs_it_was_following(env, tmp_path):
    thread = "1690000000.000800"
    with AppServer(env.make_app()) as server:
        plan_id, _ = ask_for_plan(env, server, ts=thread)
        server.post_action("distill_start", plan_id, "UADMIN", "C1", env.store.plan_message(plan_id)["message_ts"], thread)
        run = _wait_run(env)
        env.slack.wait_for(lambda: env.store.followed(run.id), what="the run to be followed")
    status_ts = env.store.followed(run.id)["status_ts"]
    env.registry.set_status(run.id, "training", stage="training")  # progress while the bot is down
    env.registry.update_progress(run.id, Progress("training", 5, 10, unit="steps"))
    with AppServer(env.make_app()):  # a new bot process (same store): on startup it follows the run again
        env.slack.wait_for(lambda: [u for u in env.slack.calls("chat.update") if "training 5/10" in u["text"]], what="update")
        _finish(env.registry, env.registry.get(run.id), tmp_path)
        env.slack.wait_for(lambda: env.slack.calls("files.completeUploadExternal"), what="the chart upload")
    assert {u["ts"] for u in env.slack.calls("chat.update") if "Run `" in u["text"] and "Started by" not in u["text"]} == {status_ts}
    assert len([c for c in posts(env.slack, thread) if "is done" in c["text"]]) == 1


def test_the_slash_command_opens_a_thread_and_asks_the_agent(env):
    with AppServer(env.make_app()) as server:
        assert server.post_command("/distill", "sst2 into tiny", user="UASK", channel="C2") == 200
        root = env.slack.wait_for(lambda: [c for c in posts(env.slack) if c["channel"] == "C2" and "thread_ts" not in c], what="root")[0]
        env.slack.wait_for(lambda: env.agent.calls, what="the agent call")
        assert server.post_command("/distill", "status", user="UASK", channel="C2") == 200
        env.slack.wait_for(lambda: len(env.agent.calls) == 2, what="the second agent call")
    assert "asked: `/distill sst2 into tiny`" in root["text"]
    assert env.agent.calls[0]["text"] == "distill sst2 into tiny"
    assert env.agent.calls[1]["text"] == "status"
    root_ts = env.slack.calls("chat.postMessage")[0]  # the first post is the thread root
    assert env.agent.calls[0]["conversation"].startswith("C2:") and "thread_ts" not in root_ts


def test_direct_messages_reach_the_agent_and_secrets_never_reach_slack(env):
    leak = f"my token is {BOT_TOKEN}"
    with AppServer(env.make_app()) as server:
        server.post_event({"type": "message", "channel": "D1", "user": "UASK", "text": leak, "ts": "1690000000.000900",
                           "channel_type": "im"})
        reply = env.slack.wait_for(lambda: posts(env.slack, "1690000000.000900"), what="the DM reply")[0]
    assert env.agent.calls[0]["conversation"] == "D1:1690000000.000900"
    assert BOT_TOKEN not in reply["text"] and "[redacted]" in reply["text"]
    for call in env.slack.calls():
        assert BOT_TOKEN not in str({k: v for k, v in call.items() if k != "_token"})
    assert {c["_token"] for c in env.slack.calls()} == {BOT_TOKEN}  # sent only as the Authorization header


def test_missing_tokens_are_one_sentence_naming_the_variable(monkeypatch):
    from click.testing import CliRunner

    from bot.slack_app import slack_command

    result = CliRunner().invoke(slack_command, [])
    assert result.exit_code == 1 and result.output.strip().startswith("SLACK_BOT_TOKEN is not set;")
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    result = CliRunner().invoke(slack_command, [])
    assert result.exit_code == 1 and result.output.strip().startswith("SLACK_APP_TOKEN is not set;")
    result = CliRunner().invoke(slack_command, ["--http"])
    assert result.exit_code == 1 and result.output.strip().startswith("SLACK_SIGNING_SECRET is not set;")
    assert BOT_TOKEN not in result.output
    with pytest.raises(SlackConfigError, match="SLACK_BOT_TOKEN"):
        create_app(SlackConfig())
    cfg = SlackConfig.from_env({"SLACK_BOT_TOKEN": "xoxb-1", "DISTILLERY_SLACK_ADMINS": "U1, U2,", "DISTILLERY_SLACK_API_URL": "http://x/api"})
    assert cfg.admins == {"U1", "U2"} and cfg.api_url == "http://x/api/" and "xoxb" not in repr(cfg)


def test_the_app_uses_the_configured_api_url(env):
    app = env.make_app()
    assert app.client.base_url == env.slack.api_url
    assert flow_of(app).may_start("UADMIN") and not flow_of(app).may_start("UASK") and flow_of(app).may_ask("UASK")


def test_the_manifest_declares_what_the_bot_uses():
    import yaml

    manifest = yaml.safe_load((Path(__file__).resolve().parents[2] / "bot" / "manifest.yaml").read_text())
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"app_mentions:read", "chat:write", "commands", "im:history", "files:write", "channels:history"} <= scopes
    assert {"app_mention", "message.im", "message.channels"} <= set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/distill"]
    assert manifest["settings"]["interactivity"]["is_enabled"] and manifest["settings"]["socket_mode_enabled"]


def test_distillery_slack_http_serves_signed_requests_from_the_command_line(slack, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
           "DISTILLERY_SLACK_API_URL": slack.api_url}
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "slack", "--http", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def healthy():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read() == b"ok"
            except OSError:
                return proc.poll() is not None and pytest.fail(proc.stdout.read())
        slack.wait_for(healthy, what="the bot to listen")
        server = AppServer(None)
        server.url = f"http://127.0.0.1:{port}/slack/events"
        challenge = server.post('{"type": "url_verification", "challenge": "abc123", "token": "x"}', "application/json")
        assert challenge[0] == 200 and json.loads(challenge[1]) == {"challenge": "abc123"}
        assert server.post_event(mention("help", "U1", "C9", "1690000000.001000")) == 200
        reply = slack.wait_for(lambda: posts(slack, "1690000000.001000"), what="the help reply")[0]
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "distill <dataset> into <student>" in reply["text"]  # the real agent, in command mode
    assert BOT_TOKEN not in output and SIGNING_SECRET not in output


def test_the_bot_acts_only_in_its_channels_but_always_in_direct_messages(env):
    from dataclasses import replace

    with AppServer(env.make_app(config=replace(env.config, channels=frozenset({"C1"})))) as server:
        server.post_event(mention("runs", "UASK", "C7", "1690000000.001100"))
        other = env.slack.wait_for(lambda: posts(env.slack, "1690000000.001100"), what="the answer in C7")[0]
        server.post_event({"type": "message", "channel": "D7", "user": "UASK", "text": "runs", "ts": "1690000000.001200",
                           "channel_type": "im"})
        env.slack.wait_for(lambda: posts(env.slack, "1690000000.001200"), what="the DM answer")
    assert "not set up to work in this channel" in other["text"]
    assert [c["conversation"] for c in env.agent.calls] == ["D7:1690000000.001200"]
