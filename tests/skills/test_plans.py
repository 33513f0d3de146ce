"""PlanStore: ids, expiry, one start per plan, the latest plan of a conversation."""

import time

import pytest

from skills.plans import PlanError, PlanStore


def test_lifecycle_and_clear_sentences():
    store = PlanStore()
    plan = store.create({"task": "classification"}, {"runnable": True}, {"user": "U1", "conversation": "C1"})
    assert plan.id.startswith("plan-") and len(plan.id) == 11
    assert store.latest("C1").id == plan.id and store.latest("C2") is None
    assert store.claim(plan.id).status == "started"
    with pytest.raises(PlanError, match="already started"):
        store.claim(plan.id)
    store.set_run(plan.id, "abc123")
    assert PlanStore().get(plan.id).run_id == "abc123"  # persisted in SQLite
    with pytest.raises(PlanError, match="is not a plan id"):
        store.get("DROP TABLE plans")
    with pytest.raises(PlanError, match="there is no plan 'plan-000000'"):
        store.get("plan-000000")


def test_expired_plans_cannot_start():
    store = PlanStore(ttl_s=0.01)
    plan = store.create({}, {}, {})
    time.sleep(0.05)
    assert store.get(plan.id).status == "expired"
    with pytest.raises(PlanError, match="expired"):
        store.claim(plan.id)
