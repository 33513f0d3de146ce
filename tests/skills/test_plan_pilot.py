"""The teacher pilot on a plan: its numbers on the card, a warning for a teacher no better than the base student,
and its rows kept out of training and test when the plan runs."""

from __future__ import annotations

import json

from bot.blocks import plan_card
from pipeline import splits
from pipeline.labelling import choose_rows
from pipeline.pilot import pilot_rows
from pipeline.spec import validate_spec
from skills import operations as ops
from teacher_profiles import write_profiles


def test_a_pilot_puts_the_teacher_and_base_scores_on_the_card_and_warns(isolated_home, tiny_model):
    # a random tiny teacher is no better than the same random tiny student: exactly what the pilot must flag
    write_profiles(isolated_home, {"tiny": {"provider": "local", "model": str(tiny_model), "few_shot": 2, "prompt_format": "plain",
                                            "device": "cpu", "params_b": 1}}, default="tiny", students=[str(tiny_model)])
    plain = ops.plan_distillation("sst2", student=str(tiny_model), rows=40)
    assert plain.summary["pilot"]["status"] == "not run" and plain.summary["pilot"]["cost_usd"] == 0.0
    assert "teacher pilot not run" in ops.plan_text(plain) and "free: the local teacher" in ops.plan_text(plain)

    import asyncio

    from bot.agent import build_agent
    from pipeline.registry import Registry
    from skills.plans import PlanStore

    # command mode (Slack, terminal): "pilot=true" on the distill line
    reply = asyncio.run(build_agent(Registry()).respond("G1", "U1", f"distill sst2 into {tiny_model} rows=40 pilot=true"))
    assert reply.plan_id, reply.text
    plan = PlanStore().get(reply.plan_id)
    facts = plan.summary["pilot"]
    assert facts["status"] == "done" and facts["rows"] == 32
    assert 0.0 <= facts["teacher"] <= 1.0 and 0.0 <= facts["student_base"] <= 1.0
    assert set(facts["cue_scores"]) >= {"Sentiment", "Answer", "Label"} and facts["answer_cue"] in facts["cue_scores"]
    assert facts["clearly_better"] is False and "not clearly better than the base student" in facts["warning"]
    line = f"the teacher agrees with gold on {facts['teacher'] * 100:.0f} %, the base student scores {facts['student_base'] * 100:.0f} %"
    text = ops.plan_text(plan)
    card = json.dumps(plan_card(plan.id, plan.summary))
    for shown in (text, card):
        assert line in shown and "Warning: the teacher agrees with gold" in shown
        assert "more shots" in shown and "chain of thought" in shown and "stronger teacher profile" in shown
    # the pilot rows are never labelled, demonstrations or test rows of the run the plan starts
    spec = validate_spec(plan.spec)
    pilot = {splits.fields_key(e) for e in pilot_rows(spec)}
    assert len(pilot) == 32
    labelled, demos = choose_rows(spec)
    assert not pilot & {splits.fields_key(e) for e in labelled + demos} and not pilot & splits.test_keys(spec)
    # the pilot's answers live in its own folder, never in a run folder
    assert list((isolated_home / "pilots").iterdir()) and not (isolated_home / "runs").exists()
