"""What the bot sends to Slack can neither ping a channel nor carry a secret (issue 9, items 10 and 11).

The real slack-bolt app over signed HTTP, the real slack_sdk client, the fake Slack Web API recording every call;
every argument of every call (text, blocks, attachments, file titles, uploaded text files, ephemeral messages,
chat.update) is checked, not only `text`.
"""

from __future__ import annotations

import asyncio
import json

from bot.slack_out import SafeWebClient, mention
from slack_harness import BOT_TOKEN, PLAN_SUMMARY, AppServer, ScriptedAgent, ask_for_plan, posts

PINGS = ("<!channel", "<!here", "<!everyone", "<!subteam", "<@UCEO")
SECRETS = ("hunter2", "key=abc123", "sig=s3cr3t", "sk-proj-Abcdefgh12345678", "xoxp-1111-2222-secret", BOT_TOKEN,
           "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyMSJ9.c2lnbmF0dXJlMTIz")


def sent(slack):
    """Everything the bot sent to Slack, as one string per call (the Authorization header aside)."""
    return [json.dumps({k: v for k, v in call.items() if k != "_token"}, ensure_ascii=False) for call in slack.calls()]


def assert_no_pings(slack):
    for call in sent(slack):
        for ping in PINGS:
            assert ping not in call, (ping, call)


def assert_no_secrets(slack):
    for call in sent(slack):
        for secret in SECRETS:
            assert secret not in call, (secret, call)


def test_broadcasts_and_mentions_typed_by_people_are_never_echoed_as_pings(env):
    # what Slack delivers when someone types "@channel @here @everyone @ml-team" and, literally, "<@UCEO>"
    typed = "please <!channel> <!here> <!everyone> <!subteam^S0123|@ml-team> &lt;@UCEO&gt; &lt;!channel&gt;"
    with AppServer(env.make_app(agent=None)) as server:
        server.post_event({"type": "app_mention", "user": "UASK", "text": f"<@UBOT> {typed}", "ts": "1690000020.000100",
                           "channel": "C1", "event_ts": "1690000020.000100", "channel_type": "channel"})
        reply = env.slack.wait_for(lambda: posts(env.slack, "1690000020.000100"), what="the reply")[0]
        assert server.post_command("/distill", f"{typed} into tiny", user="UASK", channel="C2") == 200
        env.slack.wait_for(lambda: len([c for c in posts(env.slack) if c["channel"] == "C2"]) >= 2, what="the answer")
    assert "did not understand" in reply["text"] and "please" in reply["text"]
    root = [c for c in posts(env.slack) if c["channel"] == "C2"][0]
    assert root["text"].startswith("<@UASK> asked:")  # the bot's own mention of the asker still pings the asker
    assert_no_pings(env.slack)


def test_dataset_rows_and_run_errors_cannot_ping_either(env, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": f"<!here> row {i} for <@UCEO> and <!subteam^S9|@all>", "label": "a" if i % 2 else "b"} for i in range(6)]
    (data / "pings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("DISTILLERY_DATA_DIRS", str(data))
    with AppServer(env.make_app(agent=None)) as server:
        server.post_event({"type": "message", "channel": "D1", "user": "UASK", "text": "describe pings.jsonl",
                           "ts": "1690000021.000100", "channel_type": "im"})
        described = env.slack.wait_for(lambda: posts(env.slack, "1690000021.000100"), what="the description")[0]
    assert "row 1 for" in described["text"]  # the rows are quoted, as text
    assert_no_pings(env.slack)


def test_every_field_of_every_call_is_redacted_and_endpoints_show_no_credentials(env):
    """A plan whose summary and intro carry secrets (as an LLM or a teacher error might): the card's blocks, the
    card's chat.update after Start, the refusal (ephemeral), and the run's failure message are all clean."""
    thread = "1690000022.000100"
    summary = {**PLAN_SUMMARY, "teacher": "gpt-4o-mini at http://ops:hunter2@10.1.2.3:8000/v1?key=abc123&sig=s3cr3t",
               "notes": ["the key is sk-proj-Abcdefgh12345678", "<!channel> note"],
               "alternatives": ["xoxp-1111-2222-secret"], "runnable": True}
    env.agent = ScriptedAgent(env.plans, summary=summary,
                              intro="Plan {plan_id}; token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyMSJ9.c2lnbmF0dXJlMTIz")
    with AppServer(env.make_app()) as server:
        plan_id, card = ask_for_plan(env, server, user="UADMIN", ts=thread)
        card_ts = env.store.plan_message(plan_id)["message_ts"]
        server.post_action("distill_start", plan_id, "UASK", "C1", card_ts, thread)  # refused, ephemerally
        env.slack.wait_for(lambda: env.slack.calls("chat.postEphemeral"), what="the refusal")
        server.post_action("distill_start", plan_id, "UADMIN", "C1", card_ts, thread)
        run = env.slack.wait_for(lambda: env.registry.list_runs(), what="the run")[0]
        env.slack.wait_for(lambda: [u for u in env.slack.calls("chat.update") if u["ts"] == card_ts], what="the card update")
        env.slack.wait_for(lambda: env.store.followed(run.id), what="the run to be followed")
        env.registry.fail(run.id, f"the teacher at http://ops:hunter2@10.1.2.3:8000/v1?key=abc123 said {BOT_TOKEN}")
        failure = env.slack.wait_for(lambda: [c for c in posts(env.slack, thread) if "failed:" in c["text"]], what="failure")[0]
    assert "10.1.2.3:8000" in json.dumps(card["blocks"])  # the host is still shown
    assert "http://[redacted]@10.1.2.3:8000" in failure["text"]
    assert_no_secrets(env.slack)
    assert_no_pings(env.slack)


def test_uploaded_text_files_and_file_titles_are_redacted(env, tmp_path):
    report = tmp_path / "report.md"
    report.write_text(f"# Report\nteacher http://u:hunter2@h:1/v1?key=abc123, token {BOT_TOKEN}, <!channel>\n")
    chart = tmp_path / "report.png"
    chart.write_bytes(b"\x89PNG\r\n\x1a\n binary sk-proj-Abcdefgh12345678")

    async def upload():
        client = SafeWebClient(token=BOT_TOKEN, base_url=env.slack.api_url, secrets=(BOT_TOKEN,))
        await client.files_upload_v2(channel="C1", file=str(report), title=f"report of {BOT_TOKEN}", initial_comment="<!here> done")
        await client.files_upload_v2(channel="C1", file=str(chart), filename="report.png", title=f"chart {mention('UADMIN')}")

    asyncio.run(upload())
    md, png = (env.slack.uploads[k] for k in sorted(env.slack.uploads))
    assert md.startswith(b"# Report") and b"hunter2" not in md and BOT_TOKEN.encode() not in md and b"<!channel>" not in md
    assert png == chart.read_bytes()  # images go as they are
    titles = [f["title"] for c in env.slack.calls("files.completeUploadExternal") for f in json.loads(c["files"])]
    assert titles == ["report of [redacted]", "chart <@UADMIN>"]
    assert_no_secrets(env.slack)
    assert_no_pings(env.slack)
