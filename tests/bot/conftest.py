"""Fixtures of the Slack tests: a fake Slack Web API on 127.0.0.1 and an app factory wired to real stores."""

from __future__ import annotations

import functools

import pytest

from bot.slack_app import SlackConfig, create_app
from bot.slack_store import SlackStore
from fake_slack import FakeSlack
from pipeline.registry import Registry
from skills import operations
from skills.plans import PlanStore
from slack_harness import BOT_TOKEN, SIGNING_SECRET, ScriptedAgent


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def env(slack, tmp_path):
    """Everything but the app: config pointing at the fake, real registry / plans / store, a scripted agent
    (make_app(agent=None) builds the real agent in command mode instead)."""
    registry, plans = Registry(), PlanStore()
    ns = type("Env", (), {})()
    ns.slack, ns.registry, ns.plans, ns.store = slack, registry, plans, SlackStore()
    ns.agent = ScriptedAgent(plans)
    ns.config = SlackConfig(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, api_url=slack.api_url,
                            admins=frozenset({"UADMIN"}), users=frozenset({"UASK"}))

    def make_app(**overrides):
        kw = dict(config=ns.config, agent=ns.agent, registry=registry, plans=plans, store=ns.store,
                  start_plan=functools.partial(operations.start_plan, plans=plans, registry=registry),
                  poll_s=0.05, update_interval_s=0.2)
        kw.update(overrides)
        return create_app(**kw)

    ns.make_app = make_app
    return ns
