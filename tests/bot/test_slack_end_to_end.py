"""The whole Slack flow with real parts: a signed mention -> the real agent (command mode) makes a plan -> the plan
card -> a signed Start click -> a real worker runs it (fake OpenAI-compatible teacher on 127.0.0.1, tiny student)
-> the one status message is updated in place -> the report and the chart land in the thread.
"""

from __future__ import annotations

import json
import threading

from bot.slack_app import SlackConfig, create_app
from bot.slack_store import SlackStore
from fake_llm_server import FakeLLMServer
from fake_slack import FakeSlack
from pipeline.registry import Registry
from pipeline.worker import run_worker
from skills.plans import PlanStore
from teacher_profiles import write_profiles
from slack_harness import BOT_TOKEN, SIGNING_SECRET, AppServer, mention


def answer(req) -> str:
    text = json.dumps(req.messages).lower()
    return "negative" if any(w in text for w in ("dull", "bad", "boring", "worst", "not")) else "positive"


def test_mention_plan_start_worker_status_updates_report_and_chart(tiny_model, tmp_path, isolated_home):
    thread = "1690000001.000100"
    registry, plans = Registry(), PlanStore()
    with FakeSlack() as slack, FakeLLMServer(responder=answer) as teacher:
        write_profiles(isolated_home, {"fake": {"provider": "openai", "model": "fake-teacher", "concurrency": 1,
                                                "max_retries": 0, "base_url": teacher.openai_base_url}},
                       students=[str(tiny_model)])
        config = SlackConfig(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=slack.api_url,
                             admins=frozenset({"UADMIN"}))
        app = create_app(config, registry=registry, plans=plans, poll_s=0.1, update_interval_s=0.3)
        with AppServer(app) as server:
            # 1. the request, as Slack formats it (URLs in angle brackets)
            request = (f"distill sst2 into {tiny_model} with fake rows=16 dataset.test_size=8 "
                       "teacher.params.max_tokens=8 train.max_steps=6 train.batch_size=2 "
                       "eval.batch_size=8 eval.max_new_tokens=4")
            assert server.post_event(mention(request, "UADMIN", "C1", thread)) == 200
            card = slack.wait_for(lambda: [c for c in slack.calls("chat.postMessage") if "distill_start" in str(c.get("blocks"))],
                                  what="the plan card")[0]
            plan_id = next(e["value"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]
                           if e["action_id"] == "distill_start")
            assert plans.get(plan_id).summary["rows"] == 16 and card["thread_ts"] == thread

            # 2. the Start click
            card_ts = slack.wait_for(lambda: SlackStore().plan_message(plan_id), what="the stored card")["message_ts"]
            assert server.post_action("distill_start", plan_id, "UADMIN", "C1", card_ts, thread) == 200
            run = slack.wait_for(lambda: registry.list_runs(), what="the run")[0]
            assert run.requested_by["thread_ts"] == thread and run.requested_by["user"] == "UADMIN"

            # 3. a worker executes it (the bot only follows the registry)
            worker = threading.Thread(target=run_worker, kwargs=dict(registry=registry, poll_s=0.1, once=True), daemon=True)
            worker.start()
            end = slack.wait_for(lambda: [c for c in slack.calls("chat.postMessage") if f"Run `{run.id}` " in c["text"]
                                          and ("is done" in c["text"] or "failed" in c["text"])],
                                 timeout=300, what="the end of the run")
            report = end[0]
            assert "is done" in report["text"], report["text"]
            slack.wait_for(lambda: slack.calls("files.completeUploadExternal"), what="the chart upload")
            worker.join(60)
    done = registry.get(run.id)
    assert done.status == "done", done.error
    assert report["thread_ts"] == thread and f"Run `{run.id}` is done" in report["text"]
    for model in ("teacher", "student (base)", "student (distilled)"):
        assert model in report["blocks"][1]["text"]["text"]
    assert done.report["paths"]["adapter"] in str(report["blocks"])
    status_ts = {u["ts"] for u in slack.calls("chat.update") if u["text"].startswith(f"Run `{run.id}`")}
    assert len(status_ts) == 1  # one status message, updated in place
    texts = [u["text"] for u in slack.calls("chat.update") if u["ts"] in status_ts]
    assert texts[-1] == f"Run `{run.id}` is done." and len(texts) >= 2
    with open(done.paths["report_png"], "rb") as f:
        assert list(slack.uploads.values())[0] == f.read()  # the chart first (then the adapter .zip: test_slack_files)
    assert len(teacher.requests) >= 16  # the teacher really labelled the rows
    assert len(registry.list_runs()) == 1


def test_yes_in_the_thread_starts_the_plan_with_the_real_agent_and_the_card_loses_its_buttons(tiny_model, isolated_home):
    thread = "1690000001.000200"
    write_profiles(isolated_home, {}, students=[str(tiny_model)])
    registry, plans = Registry(), PlanStore()
    with FakeSlack() as slack:
        config = SlackConfig(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=slack.api_url,
                             admins=frozenset({"UADMIN"}), users=frozenset({"UASK"}))
        app = create_app(config, registry=registry, plans=plans, poll_s=0.1, update_interval_s=0.3)
        with AppServer(app) as server:
            server.post_event(mention(f"distill sst2 into {tiny_model} rows=4", "UASK", "C1", thread))
            slack.wait_for(lambda: [c for c in slack.calls("chat.postMessage") if "distill_start" in str(c.get("blocks"))],
                           what="the plan card")
            plan_id = plans.latest(f"C1:{thread}").id
            card_ts = slack.wait_for(lambda: SlackStore().plan_message(plan_id), what="the stored card")["message_ts"]
            server.post_event(mention("yes", "UASK", "C1", "1690000001.000201", thread_ts=thread))  # may ask, not start
            slack.wait_for(lambda: [c for c in slack.calls("chat.postMessage") if "only Distillery admins" in c["text"]],
                           what="the refusal")
            assert registry.list_runs() == []
            server.post_event(mention("yes", "UADMIN", "C1", "1690000001.000202", thread_ts=thread))
            run = slack.wait_for(lambda: registry.list_runs(), what="the run")[0]
            slack.wait_for(lambda: [c for c in slack.calls("chat.postMessage") if f"Run `{run.id}` is queued" in c["text"]],
                           what="the status message")
            card = slack.wait_for(lambda: [u for u in slack.calls("chat.update") if u["ts"] == card_ts], what="the card update")[0]
            server.post_event({"type": "message", "channel": "C1", "user": "UADMIN", "text": "cancel it",
                               "ts": "1690000001.000203", "thread_ts": thread, "channel_type": "channel"})
            slack.wait_for(lambda: [c for c in slack.calls("chat.postMessage") if f"Run `{run.id}` was cancelled" in c["text"]],
                           what="the cancellation")
    assert "distill_start" not in str(card["blocks"]) and f"as run `{run.id}`" in card["text"]
    assert run.requested_by["thread_ts"] == thread and run.requested_by["user"] == "UADMIN"
    assert registry.get(run.id).status == "cancelled"
