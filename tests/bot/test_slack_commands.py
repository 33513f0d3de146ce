"""One command vocabulary (bot/commands.py) for the grammar, the Slack app and the flow (issue 9, items 8 and 19).

Slack tests run the real slack-bolt app over signed HTTP against the fake Slack Web API, with the real agent in
command mode (make_app(agent=None)) wherever what the grammar does with the words matters.
"""

from __future__ import annotations

import asyncio

import pytest

from bot import commands
from bot.agent import build_agent
from slack_harness import AppServer, ask_for_plan, posts

LOCAL_PLAN = "distill sst2 into gemma-3-270m rows=8"


def thread_message(text, user, thread, ts):
    return {"type": "message", "channel": "C1", "user": user, "text": text, "ts": ts, "thread_ts": thread,
            "channel_type": "channel"}


def start_by_button(env, server, plan_id, thread):
    card_ts = env.store.plan_message(plan_id)["message_ts"]
    assert server.post_action("distill_start", plan_id, "UADMIN", "C1", card_ts, thread) == 200
    run = env.slack.wait_for(lambda: env.registry.list_runs(), what="the run")[0]
    env.slack.wait_for(lambda: env.store.followed(run.id), what="the run to be followed")
    return run


def test_a_sentence_that_contains_cancel_never_cancels_the_run_only_the_command_does(env):
    thread = "1690000010.000100"
    with AppServer(env.make_app(agent=None)) as server:
        plan_id, _ = ask_for_plan(env, server, user="UADMIN", ts=thread, text=LOCAL_PLAN)
        run = start_by_button(env, server, plan_id, thread)
        for i, sentence in enumerate(["please don't cancel it", "I would not stop it now, it's almost done"]):
            before = len(posts(env.slack, thread))
            server.post_event(thread_message(sentence, "UADMIN", thread, f"1690000010.00020{i}"))
            env.slack.wait_for(lambda: len(posts(env.slack, thread)) > before, what=f"the answer to {sentence!r}")
            assert env.registry.get(run.id).status == "queued"  # an admin's sentence is not a command
        server.post_event(thread_message("cancel", "UADMIN", thread, "1690000010.000300"))
        env.slack.wait_for(lambda: env.registry.get(run.id).status == "cancelled", what="the cancel command")
    answers = [c["text"] for c in posts(env.slack, thread) if "did not understand" in c["text"]]
    assert len(answers) == 2 and "please don't cancel it" in answers[0]


def test_the_plan_cards_cancel_button_needs_the_right_to_start_and_cancel(env):
    thread = "1690000011.000100"
    with AppServer(env.make_app()) as server:
        plan_id, _ = ask_for_plan(env, server, user="UASK", ts=thread)
        card_ts = env.store.plan_message(plan_id)["message_ts"]
        assert server.post_action("distill_cancel", plan_id, "UASK", "C1", card_ts, thread) == 200
        refusal = env.slack.wait_for(lambda: env.slack.calls("chat.postEphemeral"), what="the refusal")[0]
        assert refusal["user"] == "UASK" and "only Distillery admins can start or cancel" in refusal["text"]
        assert env.plans.get(plan_id).status == "open" and env.slack.calls("chat.update") == []
        assert server.post_action("distill_cancel", plan_id, "UADMIN", "C1", card_ts, thread) == 200
        update = env.slack.wait_for(lambda: env.slack.calls("chat.update"), what="the card update")[0]
    assert "Cancelled by <@UADMIN>" in update["text"] and "distill_start" not in str(update["blocks"])
    assert env.plans.get(plan_id).status == "cancelled"


def test_an_apostrophe_in_a_request_gets_an_answer_not_something_went_wrong(env):
    thread = "1690000012.000100"
    with AppServer(env.make_app(agent=None)) as server:
        server.post_event({"type": "app_mention", "user": "UADMIN", "text": "<@UBOT> distill sst2 into Qwen's 8B",
                           "ts": thread, "channel": "C1", "event_ts": thread, "channel_type": "channel"})
        answer = env.slack.wait_for(lambda: posts(env.slack, thread), what="the answer")[0]
    text = answer["text"] + str(answer.get("blocks"))
    assert "something went wrong" not in text and "Qwen/Qwen3-8B" in text


@pytest.mark.parametrize("words, expected", [("describe sst2", "600 rows"), ("datasets", "sst2 (train+test)"),
                                             ("models an 8B model", "Qwen/Qwen3-8B")])
def test_slash_command_words_are_commands_not_distill_requests(env, words, expected):
    with AppServer(env.make_app(agent=None)) as server:
        assert server.post_command("/distill", words, user="UASK", channel="C2") == 200
        answer = env.slack.wait_for(lambda: [c for c in posts(env.slack) if c.get("thread_ts")], what="the answer")[0]
    assert expected in answer["text"] and "did not understand" not in answer["text"]


def test_sure_is_refused_to_askers_and_starts_the_plan_for_admins(env):
    thread = "1690000013.000100"
    with AppServer(env.make_app(agent=None)) as server:
        plan_id, _ = ask_for_plan(env, server, user="UASK", ts=thread, text=LOCAL_PLAN)
        server.post_event(thread_message("sure", "UASK", thread, "1690000013.000200"))
        env.slack.wait_for(lambda: any("only Distillery admins" in c["text"] for c in posts(env.slack, thread)), what="refusal")
        assert env.registry.list_runs() == []
        server.post_event(thread_message("Sure!", "UADMIN", thread, "1690000013.000300"))
        run = env.slack.wait_for(lambda: env.registry.list_runs(), what="the run started by 'Sure!'")[0]
        env.slack.wait_for(lambda: env.store.followed(run.id), what="the run to be followed")
    assert run.requested_by["user"] == "UADMIN" and run.requested_by["plan"] == plan_id


def test_every_word_slack_treats_as_start_or_cancel_is_one_the_grammar_obeys():
    """The rights check (Slack) and the grammar read the same words: no phrase passes one and fails the other."""
    agent = build_agent()

    def say(text):
        return asyncio.run(agent.respond("G1", "U1", text)).text

    for phrase in sorted(commands.START_PHRASES) + ["Sure!", "OK.", "  yes  please "]:
        assert commands.needs_start_rights(phrase), phrase
        assert "There is no plan to start" in say(phrase), phrase
    for phrase in ["cancel", "stop", "abort", "cancel it", "Stop the run."]:
        assert commands.needs_start_rights(phrase), phrase
        assert "Which run?" in say(phrase), phrase
    assert "no run 'ab12cd34'" in say("stop ab12cd34")
    for sentence in ["sure, but not now", "yes I know", "please don't cancel it", "do not stop", "start the plan later"]:
        assert not commands.needs_start_rights(sentence), sentence
        assert "did not understand" in say(sentence), sentence


def test_run_thread_follow_ups_become_commands_only_when_they_are_one():
    cases = {"cancel": "cancel r1", "Cancel it!": "cancel r1", "stop": "cancel r1", "abort the run": "cancel r1",
             "status": "status r1", "how is it going?": "status r1", "show me the report": "report r1",
             "please don't cancel it": "please don't cancel it", "stop asking me": "stop asking me",
             "cancel r2": "cancel r2", "runs": "runs"}
    assert {text: commands.thread_followup(text, "r1") for text in cases} == cases
    assert commands.slash_text("sst2 into tiny") == "distill sst2 into tiny"
    assert commands.slash_text("plan sst2 into tiny") == "plan sst2 into tiny"
    assert commands.slash_text("") == "help"
    assert commands.split_words("Qwen's 8B with gpt-4o 'a b'") == ["Qwen's", "8B", "with", "gpt-4o", "'a", "b'"]
    assert commands.split_words('8B instructions="be brief" rows=3') == ["8B", "instructions=be brief", "rows=3"]
