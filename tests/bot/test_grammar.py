"""Command mode (no chat model): the grammar end to end, up to a worker running the plan on a tiny student."""

from __future__ import annotations

import asyncio

from fake_llm_server import FakeLLMServer

from bot.agent import build_agent
from bot.grammar import MODE_NOTE
from pipeline.registry import Registry
from pipeline.worker import run_worker
from skills.plans import PlanStore
from teacher_profiles import write_profiles


def _say(agent, text, conversation="G1"):
    return asyncio.run(agent.respond(conversation, "U1", text))


def test_help_unknown_and_catalog_commands_say_which_mode():
    agent = build_agent()
    assert agent.mode == "grammar"
    assert MODE_NOTE in _say(agent, "help").text
    unknown = _say(agent, "please make me a sandwich")
    assert unknown.mode == "grammar" and "did not understand" in unknown.text and MODE_NOTE in unknown.text
    models = _say(agent, "models an 8B model").text
    assert "meta-llama/Llama-3.1-8B-Instruct" in models and "Qwen/Qwen3-8B" in models and "gemma-3-270m" not in models
    assert "sst2 (train+test) [bundled]" in _say(agent, "datasets").text
    described = _say(agent, "describe sst2").text
    assert "600 rows" in described and "classification" in described and "not instructions" in described


def test_mistakes_get_clear_sentences(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_DATA_DIRS", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    (tmp_path / "secret.jsonl").write_text('{"text": "secret", "label": "a"}\n')
    (tmp_path / "data" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    agent, registry = build_agent(), Registry()
    assert "outside the data folders" in _say(agent, "describe ../secret.jsonl").text
    assert "outside the data folders" in _say(agent, f"describe {tmp_path / 'secret.jsonl'}").text
    assert "outside the data folders" in _say(agent, "describe link.jsonl").text
    assert "no run 'abc123'" in _say(agent, "status abc123").text
    assert "is not a plan id" in _say(agent, "start plan-xyz").text
    assert "There is no plan to start" in _say(agent, "yes").text
    missing = _say(agent, "distill nowhere into gemma-3-270m")
    assert "no dataset 'nowhere'" in missing.text and missing.plan_id is None
    assert "unknown teacher 'gpt-9'" in _say(agent, "distill sst2 into gemma-3-270m with gpt-9").text
    assert registry.list_runs() == []


def test_an_8b_student_without_a_gpu_is_answered_honestly(monkeypatch, isolated_home):
    import skills.operations as ops
    from skills.catalog import Hardware

    monkeypatch.setattr(ops, "deployment_hardware", lambda: Hardware(False, cpu_count=2, ram_gb=24.0))
    write_profiles(isolated_home, {"4o": {"provider": "openai", "model": "gpt-4o", "api_key_env": "OPENAI_API_KEY",
                                          "price_per_mtok": {"input": 2.5, "output": 10.0}}})
    agent, registry = build_agent(), Registry()
    plan = _say(agent, "distill sst2 into an 8B model with 4o")
    assert plan.plan_id and "Cannot run here" in plan.text
    assert "gemma-3-270m" in plan.text and "Qwen/Qwen3-0.6B" in plan.text and "GPU worker" in plan.text
    summary = PlanStore().get(plan.plan_id).summary
    assert summary["runnable"] is False and summary["student"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert summary["estimate"]["cost_usd"] > 0
    refused = _say(agent, "yes")
    assert "cannot run on this deployment" in refused.text and refused.run_id is None
    assert registry.list_runs() == [] and PlanStore().get(plan.plan_id).status == "open"


def test_plan_confirm_run_status_report_with_a_worker(tiny_model, isolated_home):
    with FakeLLMServer(responder=lambda req: "positive") as teacher:
        write_profiles(isolated_home, {"fake": {"provider": "openai", "model": "fake-teacher",
                                                "base_url": teacher.openai_base_url}}, students=[str(tiny_model)])
        agent, registry = build_agent(), Registry()
        plan = _say(agent, f"distill sst2 into {tiny_model} with fake rows=8 dataset.test_size=8 train.max_steps=2 "
                           "train.batch_size=4 eval.batch_size=8 eval.teacher=false")
        assert plan.plan_id, plan.text
        assert registry.list_runs() == [] and len(teacher.requests) == 0  # a plan spends nothing
        started = _say(agent, "yes")
        assert started.run_id and started.run_id in started.text
        assert registry.get(started.run_id).status == "queued"
        assert "already started" in _say(agent, f"start {plan.plan_id}").text  # one plan, one run
        run_worker(registry, once=True, poll_s=0.1)
        status = _say(agent, "status").text
        report = _say(agent, "report").text
    record = registry.get(started.run_id)
    assert record.status == "done", record.error
    assert len(teacher.requests) >= 8
    assert f"Run {started.run_id}: done" in status
    assert "student" in report.lower() and len(report) > 100
