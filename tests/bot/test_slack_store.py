"""The Slack bot's SQLite memory: event dedupe, plan claims, thread links and followed runs survive a restart."""

import sqlite3
import threading

from bot.slack_store import SlackStore


def test_an_event_id_counts_once_even_after_reopening(tmp_path):
    store = SlackStore(tmp_path / "slack.db")
    assert store.seen_event("Ev1") is False
    assert store.seen_event("Ev1") is True
    assert SlackStore(tmp_path / "slack.db").seen_event("Ev1") is True  # a restarted bot still knows it
    assert store.seen_event("Ev2") is False


def test_concurrent_deliveries_of_one_event_are_taken_once(tmp_path):
    store = SlackStore(tmp_path / "slack.db")
    results, barrier = [], threading.Barrier(8)

    def deliver():
        barrier.wait()
        results.append(store.seen_event("EvSame"))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [False] + [True] * 7


def test_a_plan_is_claimed_once_and_can_be_released_after_a_failed_start(tmp_path):
    store = SlackStore(tmp_path / "slack.db")
    assert store.claim_plan("plan-aaaaaa", "U1") is True
    assert store.claim_plan("plan-aaaaaa", "U2") is False
    store.release_plan("plan-aaaaaa")
    assert store.claim_plan("plan-aaaaaa", "U2") is True
    store.set_plan_run("plan-aaaaaa", "run1")
    store.release_plan("plan-aaaaaa")  # a started plan is not released
    assert store.plan_claim("plan-aaaaaa")["run_id"] == "run1"


def test_threads_link_plans_and_runs_and_followed_runs_persist(tmp_path):
    store = SlackStore(tmp_path / "slack.db")
    store.save_plan_message("plan-bbbbbb", "C1", "100.1", "100.2")
    assert store.thread("C1", "100.1") == {"channel": "C1", "thread_ts": "100.1", "run_id": None, "plan_id": "plan-bbbbbb",
                                           "updated_at": store.thread("C1", "100.1")["updated_at"]}
    store.follow_run("run1", "C1", "100.1", "100.3", "Run `run1` is queued")
    store.follow_run("run1", "C1", "100.1", "999.9")  # following twice keeps the first status message
    again = SlackStore(tmp_path / "slack.db")
    assert again.thread("C1", "100.1")["run_id"] == "run1" and again.thread("C1", "100.1")["plan_id"] == "plan-bbbbbb"
    assert [r["status_ts"] for r in again.unfinished_runs()] == ["100.3"]
    again.finish_run("run1")
    assert again.unfinished_runs() == []
    with sqlite3.connect(tmp_path / "slack.db") as db:
        assert [r[0] for r in db.execute("SELECT name FROM _migrations")] == ["m001_initial"]
