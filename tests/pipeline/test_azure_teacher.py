"""The azure teacher on the OpenAI v1 API: `api-key` auth, Microsoft Entra ID tokens, and labelling through both.

Real openai client, real azure-identity token provider and azure-core token cache, real HTTP to
tests/fake_llm_server.py. Entra ID uses a fake credential object (the documented seam: AzureTeacher(spec,
credential=...) registered with register_teacher); the real DefaultAzureCredential is exercised where it fails.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time

import pytest
from azure.core.credentials import AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError
from fake_llm_server import FakeLLMServer, Reply, last_user

from pipeline.errors import TeacherError
from pipeline.labelling import label
from pipeline.spec import TeacherSpec, load_spec
from pipeline.teachers import TeacherRequest, get_teacher, register_teacher
from pipeline.teachers.azure import ENTRA_SCOPE, AzureTeacher, azure_v1_url

KEY = "azure-key-0123456789"
REQ = TeacherRequest([{"role": "user", "content": "Text: a good film"}], {"max_tokens": 5})


class FakeCredential:
    """An AsyncTokenCredential handing out tok-1, tok-2, ... valid for `lifetime_s` on `clock`."""

    def __init__(self, clock, lifetime_s: int = 3600, fail: Exception | None = None):
        self.clock, self.lifetime_s, self.fail = clock, lifetime_s, fail
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    @property
    def issued(self) -> int:
        return len(self.scopes)

    async def get_token_info(self, *scopes, options=None) -> AccessTokenInfo:
        if self.fail is not None:
            raise self.fail
        self.scopes.append(scopes)
        return AccessTokenInfo(f"tok-{self.issued}-s3cr3t", int(self.clock.now) + self.lifetime_s)

    async def close(self) -> None:
        self.closed = True


class Clock:
    """Stands in for the `time` module inside azure-core's token policy, so a test can move past an expiry."""

    def __init__(self):
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    import azure.core.pipeline.policies._authentication as policy

    c = Clock()
    monkeypatch.setattr(policy, "time", c)  # a third-party clock, never our code
    return c


@pytest.fixture
def azure_registration():
    """Restores the built-in azure teacher after a test registers one with its own credential."""
    original = get_teacher("azure")
    yield
    register_teacher("azure", original)


def _answer(teacher, n: int = 1):
    async def go():
        try:
            return [await teacher.answer(REQ) for _ in range(n)]
        finally:
            await teacher.aclose()

    return asyncio.run(go())


def test_entra_token_in_authorization_cached_then_refreshed_on_expiry(clock, caplog):
    caplog.set_level(logging.DEBUG)
    cred = FakeCredential(clock)
    with FakeLLMServer(responder=lambda r: "positive") as server:
        teacher = AzureTeacher(TeacherSpec(provider="azure", model="Meta-Llama-3.1-405B-Instruct", base_url=server.url, auth="entra"), credential=cred)

        async def go():
            try:
                await teacher.answer(REQ)
                await teacher.answer(REQ)
                clock.now += 3601  # tok-1 has expired
                await teacher.answer(REQ)
            finally:
                await teacher.aclose()

        asyncio.run(go())
        sent = [r.headers.get("Authorization") for r in server.requests]
        assert sent == ["Bearer tok-1-s3cr3t", "Bearer tok-1-s3cr3t", "Bearer tok-2-s3cr3t"]
        assert all("api-key" not in r.headers for r in server.requests)
        assert all(r.path == "/openai/v1/chat/completions" and r.body["model"] == "Meta-Llama-3.1-405B-Instruct" for r in server.requests)
    assert cred.scopes == [(ENTRA_SCOPE,), (ENTRA_SCOPE,)] and not cred.closed  # a credential we were given is not ours to close
    assert "s3cr3t" not in caplog.text


def test_entra_refused_token_stops_labelling_and_is_never_shown(tmp_path, clock, caplog, azure_registration):
    caplog.set_level(logging.DEBUG)
    cred = FakeCredential(clock)
    register_teacher("azure", functools.partial(AzureTeacher, credential=cred))
    with FakeLLMServer(responder=lambda r: Reply(status=401)) as server:
        spec = _label_spec(tmp_path, server, "teacher.auth=entra", "teacher.concurrency=2")
        with pytest.raises(TeacherError) as info:
            label(spec)
        assert len(server.requests) <= 2  # stopped at once: every row would be refused the same way
    message = str(info.value)
    assert "refused the Microsoft Entra ID token (HTTP 401)" in message and "s3cr3t" not in message
    assert "s3cr3t" not in caplog.text
    answers = tmp_path / "run" / "teacher_answers.jsonl"
    assert not answers.exists() or answers.read_text() == ""


def test_entra_labelling_end_to_end_with_the_registered_credential(tmp_path, clock, azure_registration):
    cred = FakeCredential(clock)
    register_teacher("azure", functools.partial(AzureTeacher, credential=cred))

    def needs_token(req):
        if req.headers.get("Authorization") != "Bearer tok-1-s3cr3t":
            return Reply(status=401)
        return "positive" if "good" in last_user(req) else "negative"

    with FakeLLMServer(responder=needs_token) as server:
        summary = label(_label_spec(tmp_path, server, "teacher.auth=entra"))
    assert summary.accepted == summary.requested == summary.requests_sent == len(server.requests) > 0 and cred.issued == 1


def test_entra_sign_in_failure_is_one_sentence_and_fatal(clock):
    cred = FakeCredential(clock, fail=ClientAuthenticationError("AADSTS7000215: client secret s3cr3t is invalid"))
    with FakeLLMServer(responder=lambda r: "positive") as server:
        teacher = AzureTeacher(TeacherSpec(provider="azure", model="m", base_url=server.url, auth="entra"), credential=cred)
        with pytest.raises(TeacherError) as info:
            _answer(teacher)
        assert server.requests == []
    assert info.value.fatal and "s3cr3t" not in str(info.value)
    assert str(info.value).startswith("Microsoft Entra ID sign-in failed (ClientAuthenticationError); sign in with `az login`")


def test_default_credential_without_an_identity_says_how_to_sign_in(monkeypatch):
    # the real DefaultAzureCredential, limited to environment credentials (nothing leaves the machine)
    for var in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME", "AZURE_CLIENT_CERTIFICATE_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
    with FakeLLMServer(responder=lambda r: "positive") as server:
        teacher = get_teacher("azure")(TeacherSpec(provider="azure", model="m", base_url=server.url, auth="entra"))
        with pytest.raises(TeacherError, match=r"^Microsoft Entra ID sign-in failed \(ClientAuthenticationError\); sign in with `az login`"):
            _answer(teacher)
        assert server.requests == []


def test_wrong_key_stops_the_run_at_once_with_a_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "not-the-key")

    def checks_key(req):
        return "positive" if req.headers.get("api-key") == KEY else Reply(status=401)

    with FakeLLMServer(responder=checks_key) as server:
        spec = _label_spec(tmp_path, server, "teacher.api_key_env=AZURE_OPENAI_API_KEY", "teacher.concurrency=2")
        with pytest.raises(TeacherError) as info:
            label(spec)
        assert len(server.requests) <= 2
        assert str(info.value) == (f"the teacher at {server.url} refused the key in AZURE_OPENAI_API_KEY (HTTP 401); "
                                   "check it and its access to model 'fake-model'.")
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)  # fixed: the same spec labels every row
        fixed = label(spec)
        assert fixed.accepted == fixed.requested > 0


def test_urls_and_auth_choices_are_checked():
    assert azure_v1_url("https://res.openai.azure.com") == "https://res.openai.azure.com/openai/v1"
    assert azure_v1_url("https://res.openai.azure.com/openai/v1/") == "https://res.openai.azure.com/openai/v1/"
    with pytest.raises(TeacherError, match="retired Azure AI Inference route; use https://<resource>.openai.azure.com/openai/v1/"):
        azure_v1_url("https://res.services.ai.azure.com/models")
    with pytest.raises(TeacherError, match="works with provider azure only"):
        get_teacher("openai")(TeacherSpec(provider="openai", model="m", auth="entra"))
    with pytest.raises(TeacherError, match="takes teacher.auth=key only"):
        get_teacher("azure-inference")(TeacherSpec(provider="azure-inference", model="m", base_url="http://127.0.0.1:9/", auth="entra"))


def _label_spec(tmp_path, server, *overrides):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"a {'good' if i % 2 else 'bad'} film {i}", "label": i % 2}) + "\n" for i in range(10)))
    return load_spec(None, [f"dataset.train={train}", "dataset.test=null", "dataset.train_size=null", "teacher.few_shot=0",
                            "teacher.provider=azure", "teacher.model=fake-model", f"teacher.base_url={server.url}",
                            "teacher.max_retries=1", "teacher.timeout_s=5", f"out={tmp_path / 'run'}", *overrides])
