"""The plugin enforces who may start and cancel runs, whatever a chat model decides to call."""

from pipeline.registry import Registry
from skills import operations as ops
from skills.plugin import NOT_ALLOWED, DistillationPlugin, Turn, current_turn


def test_start_and_cancel_refused_for_askers_only():
    plugin = DistillationPlugin(Registry(), source="slack")
    plan = ops.plan_distillation("sst2", rows=4, plans=plugin.plans)
    token = current_turn.set(Turn(requested_by={"user": "U-ASKER", "may_start": False}))
    try:
        assert plugin.start_distillation(plan.id) == NOT_ALLOWED
        assert plugin.registry.list_runs() == []
    finally:
        current_turn.reset(token)
    token = current_turn.set(Turn(requested_by={"user": "U-ADMIN", "may_start": True}))
    try:
        reply = plugin.start_distillation(plan.id)
        runs = plugin.registry.list_runs()
        assert len(runs) == 1 and runs[0].id in reply
    finally:
        current_turn.reset(token)
    token = current_turn.set(Turn(requested_by={"user": "U-ASKER", "may_start": False}))
    try:
        assert plugin.cancel_run(runs[0].id) == NOT_ALLOWED
        assert plugin.registry.get(runs[0].id).status == "queued"
    finally:
        current_turn.reset(token)
