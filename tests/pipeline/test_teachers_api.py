"""The openai, azure (v1 API) and azure-inference teachers through their real clients against tests/fake_llm_server.py."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest
from fake_llm_server import FakeLLMServer, Reply

from pipeline.errors import TeacherError, UnknownTeacherError
from pipeline.spec import TeacherSpec
from pipeline.teachers import TeacherRequest, TransientError, get_teacher
from pipeline.teachers.openai import retry_after_seconds

KEY = "sk-test-secret-value"
REQ = TeacherRequest([{"role": "user", "content": "Text: a good film"}], {"max_tokens": 7, "temperature": 0.0, "top_p": 1.0, "stop": ["\n\n"]})


@pytest.fixture
def server():
    with FakeLLMServer(responder=lambda req: "Final answer: positive") as s:
        yield s


PROVIDERS = ["openai", "azure", "azure-inference"]


def _url(provider: str, server: FakeLLMServer) -> str:
    return {"openai": server.openai_base_url, "azure": f"{server.url}/openai/v1/", "azure-inference": server.azure_endpoint}[provider]


def _teacher(provider: str, server: FakeLLMServer, **kw):
    url = _url(provider, server)
    spec = TeacherSpec(provider=provider, model="fake-model", base_url=url, api_key_env="TEST_KEY", timeout_s=kw.pop("timeout_s", 2.0), **kw)
    return get_teacher(provider)(spec)


async def _ask(teacher, request=REQ):
    try:
        return await teacher.answer(request)
    finally:
        await teacher.aclose()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_answer_round_trip_sends_params_and_key(provider, server, monkeypatch):
    monkeypatch.setenv("TEST_KEY", KEY)
    server.enqueue(Reply(text="Final answer: positive", prompt_tokens=11, completion_tokens=3))
    ans = asyncio.run(_ask(_teacher(provider, server)))
    assert (ans.text, ans.finish_reason, ans.prompt_tokens, ans.completion_tokens) == ("Final answer: positive", "stop", 11, 3)
    req = server.requests[-1]
    assert req.body["messages"] == REQ.messages
    assert req.body["max_tokens"] == 7 and req.body["temperature"] == 0.0 and req.body["stop"] == ["\n\n"]
    assert req.body["model"] == "fake-model"
    if provider == "openai":
        assert req.path == "/v1/chat/completions" and req.headers["Authorization"] == f"Bearer {KEY}"
    elif provider == "azure":  # the v1 API: no api-version, the key in api-key
        assert req.path == "/openai/v1/chat/completions" and req.query == {} and req.headers["api-key"] == KEY
        assert "Authorization" not in req.headers  # the key goes once, in api-key
    else:
        assert req.path == "/chat/completions" and "api-version" in req.query and req.headers["api-key"] == KEY


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cut_off_answer_reports_length(provider, server, monkeypatch):
    monkeypatch.setenv("TEST_KEY", KEY)
    server.enqueue(Reply(text="Let me think", finish_reason="length"))
    assert asyncio.run(_ask(_teacher(provider, server))).finish_reason == "length"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("reply,retry_after", [
    (Reply(status=429, headers={"Retry-After": "3"}), 3.0),
    (Reply(status=429, headers={"retry-after-ms": "250"}), 0.25),
    (Reply(status=503), None),
    (Reply(status=500), None),
    (Reply(delay=1.5), None),  # slower than the 0.5 s timeout
    (Reply(raw="{not json"), None),
])
def test_retryable_failures_become_transient(provider, reply, retry_after, server, monkeypatch):
    monkeypatch.setenv("TEST_KEY", KEY)
    server.enqueue(reply)
    with pytest.raises(TransientError) as info:
        asyncio.run(_ask(_teacher(provider, server, timeout_s=0.5)))
    assert info.value.retry_after == retry_after
    assert len(server.requests) == 1  # the client's own retries are off


@pytest.mark.parametrize("provider", PROVIDERS)
def test_client_errors_are_final_and_name_no_secret(provider, server, monkeypatch):
    monkeypatch.setenv("TEST_KEY", KEY)
    server.enqueue(Reply(status=400))
    with pytest.raises(TeacherError) as bad:
        asyncio.run(_ask(_teacher(provider, server)))
    assert "HTTP 400" in str(bad.value) and not getattr(bad.value, "fatal", False)
    server.enqueue(Reply(status=401))
    with pytest.raises(TeacherError) as auth:
        asyncio.run(_ask(_teacher(provider, server)))
    assert auth.value.fatal and "TEST_KEY" in str(auth.value) and KEY not in str(auth.value)
    assert len(server.requests) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_key_variable_names_it(provider, server):
    with pytest.raises(TeacherError, match="environment variable TEST_KEY is not set; export it with your key"):
        _teacher(provider, server)


def test_openai_without_key_env_works_for_keyless_servers(server):
    spec = TeacherSpec(provider="openai", model="m", base_url=server.openai_base_url, api_key_env=None)
    assert asyncio.run(_ask(get_teacher("openai")(spec))).text == "Final answer: positive"
    assert server.requests[-1].headers["Authorization"].startswith("Bearer ")


@pytest.mark.parametrize("provider", ["azure", "azure-inference"])
def test_azure_requires_a_key_and_an_endpoint(provider, server):
    with pytest.raises(TeacherError, match="api_key_env"):
        get_teacher(provider)(TeacherSpec(provider=provider, model="m", base_url=_url(provider, server)))
    with pytest.raises(TeacherError, match="base_url"):
        get_teacher(provider)(TeacherSpec(provider=provider, model="m", api_key_env="X"))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unreachable_server_is_transient_and_marked(provider, monkeypatch):
    monkeypatch.setenv("TEST_KEY", KEY)
    with FakeLLMServer() as s:
        url = _url(provider, s)
    spec = TeacherSpec(provider=provider, model="m", base_url=url, api_key_env="TEST_KEY", timeout_s=2)
    with pytest.raises(TransientError) as info:
        asyncio.run(_ask(get_teacher(provider)(spec)))
    assert getattr(info.value, "unreachable", False) and s.url in str(info.value)  # scheme://host:port only


def test_unknown_teacher_lists_the_known_ones():
    with pytest.raises(UnknownTeacherError, match=r"unknown teacher 'nope'; known: azure, azure-inference, local, openai"):
        get_teacher("nope")


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_seconds({"retry-after": future}) <= 31
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None
