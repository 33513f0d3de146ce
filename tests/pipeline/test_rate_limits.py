"""Rate limits are back-pressure: a rate-limited local endpoint (token bucket, 429 + Retry-After) behind the real
openai client; counts are asserted, never times (benchmarks/rate_limit.py measures the times)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, Reply, last_user

import pipeline.labelling as labelling
from pipeline.errors import TeacherError
from pipeline.labelling import label
from pipeline.pacing import Pace
from pipeline.spec import load_spec
from pipeline.teachers.base import estimate_tokens
from pipeline.teachers.openai import rate_limit_headers


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(labelling, "BACKOFF_BASE_S", 0.01)


def answer(req) -> str:
    return "positive" if "good" in last_user(req) else "negative"


def _spec(tmp_path: Path, server: FakeLLMServer, rows: int, *overrides: str):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"a {'good' if i % 2 else 'bad'} film number {i}", "label": i % 2}) + "\n" for i in range(rows)))
    return load_spec(None, [f"dataset.train={train}", f"dataset.test={_test_file(tmp_path)}", "teacher.few_shot=0", "teacher.provider=openai",
                            "teacher.model=fake-model", f"teacher.base_url={server.openai_base_url}", "teacher.api_key_env=null",
                            "teacher.timeout_s=5", f"out={tmp_path / 'run'}", *overrides])


def test_a_rate_limited_endpoint_labels_every_row_and_429s_spend_no_retries(tmp_path):
    seen: list[str] = []
    with FakeLLMServer(responder=answer, latency=0.05, rate_limit=20, burst=4) as server:
        # max_retries=0: before pacing, the first 429 of a row failed it
        spec = _spec(tmp_path, server, 40, "teacher.concurrency=16", "teacher.max_retries=0")
        summary = label(spec, progress=lambda p: seen.append(p.info.get("sending", "")))
        assert (summary.accepted, summary.rejected) == (40, 0)
        assert server.answered == 40 and 0 < server.limited <= 40  # at most one 429 per row on average
    assert any(s.startswith("rate limited, ") and s.endswith(" in flight") for s in seen)


def test_retry_after_ms_and_ratelimit_headers_are_followed(tmp_path):
    with FakeLLMServer(responder=answer, latency=0.02, rate_limit=25, burst=5, retry_after="ms", ratelimit_headers=True) as server:
        summary = label(_spec(tmp_path, server, 30, "teacher.concurrency=32", "teacher.max_retries=0"))
        assert summary.accepted == 30 and server.limited <= 30


def test_rpm_below_the_limit_sends_no_429(tmp_path):
    with FakeLLMServer(responder=answer, latency=0.02, rate_limit=10, burst=10) as server:
        summary = label(_spec(tmp_path, server, 20, "teacher.concurrency=8", "teacher.rpm=480"))
        assert summary.accepted == 20 and server.limited == 0


def test_tpm_paces_by_estimated_tokens(tmp_path):
    with FakeLLMServer(responder=answer, latency=0.02, rate_limit=10, burst=6) as server:
        spec = _spec(tmp_path, server, 10, "teacher.concurrency=8", "teacher.params.max_tokens=40")
        rows, _ = labelling.choose_rows(spec)
        reqs = labelling._build_requests(spec, labelling.get_task(spec.task or "classification"), ["negative", "positive"], rows, [])
        cost = max(estimate_tokens(r[0].messages) for r in reqs) + 40  # prompt estimate + max_tokens, as providers count
        spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"tpm": cost * 60 * 5})})  # 5 requests/s
        summary = label(spec)
        assert summary.accepted == 10 and server.limited == 0


def test_rows_fail_on_429s_only_after_max_wait_s(tmp_path):
    with FakeLLMServer(responder=lambda r: Reply(status=429, headers={"Retry-After": "0"})) as server:
        spec = _spec(tmp_path, server, 3, "teacher.concurrency=2", "teacher.max_retries=0", "teacher.max_wait_s=0.3",
                     "teacher.min_success_ratio=0")
        summary = label(spec)
        assert summary.by_reason == {"request failed after retries": 3}
        assert len(server.requests) > 3  # each row kept being asked while it waited, well past max_retries=0
    rejected = [json.loads(line) for line in (Path(spec.out) / "rejected.jsonl").read_text().splitlines()]
    assert all("teacher.max_wait_s" in r["detail"] and "HTTP 429" in r["detail"] for r in rejected)


def test_insufficient_quota_is_not_a_rate_limit(tmp_path):
    body = json.dumps({"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota", "code": "insufficient_quota"}})
    with FakeLLMServer(responder=lambda r: Reply(status=429, raw=body)) as server:
        with pytest.raises(TeacherError, match="no quota left"):
            label(_spec(tmp_path, server, 20, "teacher.concurrency=4"))
        assert len(server.requests) <= 4


def test_aimd_cuts_once_per_event_and_grows_back():
    now = [100.0]
    pace = Pace(8, clock=lambda: now[0])

    async def scenario():
        epochs = [await pace.acquire() for _ in range(8)]
        pace.rate_limited(epochs[0], 2.0)
        assert pace.limit == 4 and pace.resume_at == 102.0
        pace.rate_limited(epochs[1], 1.0)  # sent before the cut: no second cut, the pause stays the longest asked
        assert pace.limit == 4 and pace.resume_at == 102.0
        for _ in range(6):
            pace.answered()
        assert 4 < pace.limit < 6 and pace.in_flight == 0
        epoch = await asyncio.wait_for(_acquire_after(pace, now, 102.0), 5)
        pace.rate_limited(epoch, None)  # no Retry-After: a short backoff, and a cut
        assert pace.limit < 4 and pace.resume_at > 102.0

    asyncio.run(scenario())


async def _acquire_after(pace: Pace, now: list[float], at: float) -> int:
    task = asyncio.ensure_future(pace.acquire())
    await asyncio.sleep(0.05)
    assert not task.done()  # paused until the server's Retry-After
    now[0] = at
    return await task


def test_ratelimit_headers_parse_and_pause():
    limits = rate_limit_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
                                 "x-ratelimit-remaining-tokens": "1500", "x-ratelimit-reset-tokens": "20ms", "x-ratelimit-limit-requests": "500"})
    assert limits == {"remaining_requests": 0, "limit_requests": 500, "reset_requests_s": 360.0, "remaining_tokens": 1500, "reset_tokens_s": 0.02}
    assert rate_limit_headers({}) is None and rate_limit_headers({"x-ratelimit-reset-requests": "soon"}) is None
    pace = Pace(4, clock=lambda: 10.0)

    async def one():
        await pace.acquire()
        pace.answered({"remaining_requests": 0, "reset_requests_s": 1.5})

    asyncio.run(one())
    assert pace.resume_at == 11.5


def _test_file(folder: Path) -> Path:
    """A separate test file, so every row of train.jsonl is labelled (no held-out split)."""
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps({"text": f"a good test film {i}", "label": 1}) + "\n" for i in range(4)))
    return path
