"""The LLM agent end to end: real Semantic Kernel, real HTTP to a scripted model that issues tool calls."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from teacher_profiles import write_profiles
from scripted_chat_server import ScriptedChatServer, call, echo_tool_result, tool_results, tools_offered

from bot.agent import build_agent
from pipeline.errors import DistilleryError
from pipeline.registry import Registry
from skills.plans import PlanStore

FUNCTIONS = {"list_datasets", "describe_dataset", "list_models", "plan_distillation", "start_distillation",
             "run_status", "list_runs", "cancel_run", "get_report"}


def _use(monkeypatch, provider: str, url: str) -> None:
    monkeypatch.setenv("DISTILLERY_CHAT_PROVIDER", provider)
    monkeypatch.setenv("DISTILLERY_CHAT_MODEL", "scripted-model")
    monkeypatch.setenv("DISTILLERY_CHAT_BASE_URL", url)
    monkeypatch.setenv("DISTILLERY_CHAT_API_KEY", "test-key")


def _plan_id_in_history(req: dict) -> dict:
    text = " ".join(str(m.get("content")) for m in req["messages"])
    return {"plan_id": re.findall(r"plan-[0-9a-f]{6}", text)[-1]}


def _run_id_in_history(req: dict) -> dict:
    text = " ".join(str(m.get("content")) for m in req["messages"])
    return {"run_id": re.findall(r"as run ([0-9a-f]+)", text)[-1]}


def test_plan_start_status_cancel_through_semantic_kernel(monkeypatch, isolated_home):
    write_profiles(isolated_home, {"mini": {"provider": "openai", "model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY"}})
    script = [
        call("distillery-plan_distillation", dataset="sst2", student="gemma-3-270m", teacher="gpt-4o-mini", rows=20),
        echo_tool_result(),
        call("distillery-start_distillation", _plan_id_in_history),
        echo_tool_result(),
        call("distillery-cancel_run", _run_id_in_history),
        echo_tool_result(),
    ]
    with ScriptedChatServer(script) as srv:
        _use(monkeypatch, "openai", srv.base_url)
        registry, plans = Registry(), PlanStore()
        agent = build_agent(registry=registry, plans=plans)

        async def conversation():
            r1 = await agent.respond("C1:T1", "U1", "distil sst2 into gemma-3-270m with gpt-4o-mini, 20 rows", {"channel": "C1"})
            assert plans.get(r1.plan_id).status == "open" and registry.list_runs() == []  # planning spends nothing
            r2 = await agent.respond("C1:T1", "U1", "yes, start it")
            r3 = await agent.respond("C1:T1", "U1", "actually cancel it")
            return r1, r2, r3

        r1, r2, r3 = asyncio.run(conversation())

    # every skill was offered as a tool, under the plugin's name
    assert {n.split("-", 1)[1] for n in tools_offered(srv.requests[0]) if n.startswith("distillery-")} == FUNCTIONS
    # turn 1: a real plan row, reported back with its id
    assert r1.mode == "llm" and r1.plan_id and r1.run_id is None
    plan = plans.get(r1.plan_id)
    assert plan.summary["rows"] == 20 and plan.summary["student"] == "gemma-3-270m"
    assert plan.spec["teacher"]["provider"] == "openai" and plan.spec["teacher"]["model"] == "gpt-4o-mini"
    assert plan.requested_by["user"] == "U1" and plan.requested_by["channel"] == "C1"
    assert r1.plan_id in r1.text
    # turn 2: the model saw turn 1 (history) and the start submitted a run to the registry
    assert any("distil sst2" in str(m.get("content")) for m in srv.requests[2]["messages"])
    assert r2.run_id and r2.plan_id is None
    record = registry.get(r2.run_id)
    assert record.requested_by["plan"] == r1.plan_id and record.requested_by["conversation"] == "C1:T1"
    assert plans.get(r1.plan_id).status == "started" and plans.get(r1.plan_id).run_id == r2.run_id
    # turn 3: cancelled in the registry (it was still queued)
    assert registry.get(r2.run_id).status == "cancelled"
    assert "cancelled" in r3.text and r2.run_id in tool_results(srv.requests[-1])[-1]


def test_azure_ai_inference_provider_answers_model_questions(monkeypatch):
    script = [call("distillery-list_models", query="an 8B model"), echo_tool_result()]
    with ScriptedChatServer(script) as srv:
        _use(monkeypatch, "azure_ai_inference", srv.endpoint)
        agent = build_agent()
        reply = asyncio.run(agent.respond("D1", "U2", "which 8B students could I use?"))
    assert reply.mode == "llm"
    assert "meta-llama/Llama-3.1-8B-Instruct" in reply.text and "Qwen/Qwen3-8B" in reply.text
    assert "gemma-3-270m" not in reply.text
    assert srv.paths[0].startswith("/chat/completions?api-version=")


def test_azure_openai_v1_with_a_key(monkeypatch):
    script = [call("distillery-list_models", query="an 8B model"), echo_tool_result()]
    with ScriptedChatServer(script) as srv:
        _use(monkeypatch, "azure_openai", srv.endpoint)  # the resource URL: /openai/v1 is added
        reply = asyncio.run(build_agent().respond("F1", "U4", "which 8B students could I use?"))
    assert reply.mode == "llm" and "meta-llama/Llama-3.1-8B-Instruct" in reply.text
    assert srv.paths == ["/openai/v1/chat/completions"] * 2  # the v1 route: no deployments path, no api-version
    assert all(h["api-key"] == "test-key" and "authorization" not in h for h in srv.headers)
    assert srv.requests[0]["model"] == "scripted-model"


def test_azure_openai_v1_with_entra_id(monkeypatch):
    from azure.core.credentials import AccessTokenInfo

    class Credential:  # an AsyncTokenCredential handing out one token
        scopes: list = []

        async def get_token_info(self, *scopes, options=None):
            self.scopes.append(scopes)
            return AccessTokenInfo("entra-token-s3cr3t", int(time.time()) + 3600)

    script = [call("distillery-list_models", query="an 8B model"), echo_tool_result()]
    cred = Credential()
    with ScriptedChatServer(script) as srv:
        _use(monkeypatch, "azure_openai", srv.endpoint + "/openai/v1/")
        monkeypatch.delenv("DISTILLERY_CHAT_API_KEY")
        monkeypatch.setenv("DISTILLERY_CHAT_AUTH", "entra")
        reply = asyncio.run(build_agent(credential=cred).respond("G1", "U5", "which 8B students could I use?"))
    assert reply.mode == "llm" and "meta-llama/Llama-3.1-8B-Instruct" in reply.text
    assert [h["authorization"] for h in srv.headers] == ["Bearer entra-token-s3cr3t"] * 2
    assert all("api-key" not in h for h in srv.headers) and cred.scopes == [("https://cognitiveservices.azure.com/.default",)]
    assert "s3cr3t" not in reply.text


def test_tool_errors_come_back_as_sentences_and_start_nothing(monkeypatch):
    script = [call("distillery-start_distillation", plan_id="plan-nothex"), echo_tool_result(),
              call("distillery-run_status", run_id="deadbeef"), echo_tool_result(),
              call("distillery-plan_distillation", dataset="no-such-data", student="gemma-3-270m"), echo_tool_result()]
    with ScriptedChatServer(script) as srv:
        _use(monkeypatch, "openai", srv.base_url)
        registry = Registry()
        agent = build_agent(registry=registry)

        async def turns():
            return [await agent.respond("E1", "U3", t) for t in ("start plan-nothex", "status deadbeef", "plan no-such-data")]

        bad_plan, bad_run, bad_data = asyncio.run(turns())
    assert "is not a plan id" in bad_plan.text and bad_plan.run_id is None
    assert "no run 'deadbeef'" in bad_run.text
    assert "no dataset 'no-such-data'" in bad_data.text and bad_data.plan_id is None
    assert registry.list_runs() == []


def test_misconfigured_provider_is_one_sentence(monkeypatch):
    monkeypatch.setenv("DISTILLERY_CHAT_PROVIDER", "openai")
    with pytest.raises(DistilleryError, match="DISTILLERY_CHAT_MODEL"):
        build_agent()
    monkeypatch.setenv("DISTILLERY_CHAT_PROVIDER", "bard")
    with pytest.raises(DistilleryError, match="unknown DISTILLERY_CHAT_PROVIDER 'bard'"):
        build_agent()
    _use(monkeypatch, "azure_openai", "https://res.services.ai.azure.com/models")
    with pytest.raises(DistilleryError, match="retired Azure AI Inference route"):
        build_agent()
    monkeypatch.setenv("DISTILLERY_CHAT_AUTH", "entra")
    monkeypatch.setenv("DISTILLERY_CHAT_PROVIDER", "openai")
    with pytest.raises(DistilleryError, match="DISTILLERY_CHAT_AUTH=entra works with DISTILLERY_CHAT_PROVIDER=azure_openai only"):
        build_agent()
