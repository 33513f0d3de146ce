"""The App Home tab: app_home_opened (signed, through the real Bolt app) -> views.publish with the person's runs."""

from __future__ import annotations

import json

from pipeline.spec import load_spec
from slack_harness import AppServer


def test_app_home_publishes_the_persons_runs_with_status_scores_and_thread_links(env, tmp_path):
    reg = env.registry
    mine = reg.submit(load_spec(None, [f"out={tmp_path / 'a'}", "dataset.train_size=8"]),
                      {"source": "slack", "user": "UADMIN", "channel": "C1", "thread_ts": "1690000001.000100"})
    reg.finish(mine.id, {"scores": {"teacher": 0.9, "student_base": 0.5, "student_distilled": 0.8}})
    queued = reg.submit(load_spec(None, [f"out={tmp_path / 'b'}"]),
                        {"source": "slack", "user": "UADMIN", "channel": "D9", "thread_ts": "1690000002.000100"})
    other = reg.submit(load_spec(None, [f"out={tmp_path / 'c'}"]),
                       {"source": "slack", "user": "USOMEONE", "channel": "D7", "thread_ts": "1690000003.000100"})
    with AppServer(env.make_app()) as server:
        assert server.post_event({"type": "app_home_opened", "user": "UADMIN", "channel": "D9", "tab": "home",
                                  "event_ts": "1690000009.000100"}) == 200
        call = env.slack.wait_for(lambda: env.slack.calls("views.publish"), what="views.publish")[0]
    view = json.loads(call["view"]) if isinstance(call["view"], str) else call["view"]
    assert call["user_id"] == "UADMIN" and view["type"] == "home"
    text = json.dumps(view)
    assert f"Run `{mine.id}` is done." in text and "teacher 90.0, base 50.0, distilled 80.0" in text
    assert "https://fake.slack.com/archives/C1/p1690000001000100" in text  # the link to the run's thread
    assert f"Run `{queued.id}` is queued" in text
    assert other.id not in text  # someone else's run (from their DM) is never shown
