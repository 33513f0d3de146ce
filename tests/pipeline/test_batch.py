"""Batch labelling (teacher.batch) end to end: the real openai client against tests/fake_batch_api.py, real files,
a real kill -9 of `distillery label` while a batch is in progress."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_batch_api import FakeBatchAPI

from pipeline.answers import AnswerStore
from pipeline.batch import BATCHES_FILE, split_lines
from pipeline.errors import Cancelled, LabellingError, TeacherError
from pipeline.labelling import ANSWERS_FILE, estimate, label
from pipeline.spec import load_spec
from pipeline.teachers import get_teacher, register_teacher
from pipeline.teachers.openai import OpenAITeacher

ROOT = Path(__file__).resolve().parents[2]
ROWS = 12


def sentiment(body) -> str | dict:
    text = body["messages"][-1]["content"]
    if "film 5 " in text + " ":  # one row the provider fails inside an otherwise fine batch
        return {"status_code": 500, "message": "internal error on this request"}
    return "positive" if "good" in text else "negative"


def _spec(tmp_path, api_url: str, *overrides):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"text": f"a {'good' if i % 2 else 'bad'} film {i}", "label": i % 2}) + "\n" for i in range(ROWS)))
    test.write_text(json.dumps({"text": "a good film", "label": 1}) + "\n")
    return load_spec(None, [f"dataset.train={train}", f"dataset.test={test}", "dataset.train_size=null", "teacher.few_shot=0",
                            "teacher.provider=openai", "teacher.model=fake-model", f"teacher.base_url={api_url}",
                            "teacher.api_key_env=null", "teacher.batch=true", "teacher.batch_poll_s=0.05", "teacher.max_retries=1",
                            "teacher.min_success_ratio=0.5", f"out={tmp_path / 'run'}", *overrides])


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _ledger(spec) -> list[dict]:
    return json.loads((Path(spec.out) / BATCHES_FILE).read_text())["batches"]


def test_batch_round_trip_with_a_partial_failure_and_half_price(tmp_path):
    seen = []
    with FakeBatchAPI(answer=sentiment, rows_per_poll=4) as api:
        spec = _spec(tmp_path, api.openai_base_url, "teacher.price_per_mtok.input=1.0", "teacher.price_per_mtok.output=2.0")
        before = estimate(spec)
        summary = label(spec, progress=lambda p: seen.append(p.info.get("status")))
        assert api.creates == 1 and api.statuses() == ["completed"] and sum(api.submitted.values()) == ROWS
        again = label(spec)  # answers are cached: only the failed row goes out again (failures are not billed)
        assert api.creates == 2 and again.requests_sent == 1 and again.cached == ROWS - 1
        assert sorted(api.submitted.values()) == [1] * (ROWS - 1) + [2]
    assert (summary.requested, summary.accepted, summary.rejected, summary.requests_sent) == (ROWS, ROWS - 1, 1, ROWS)
    rejected = _lines(Path(spec.out) / "rejected.jsonl")
    assert [r["detail"] for r in rejected] == ["the batch answered HTTP 500: internal error on this request"]
    assert all(r["label"] == r["gold"] for r in _lines(Path(spec.out) / "labels.jsonl"))
    # the answers came from the batch output file and are in the answer cache, marked
    store = AnswerStore(Path(spec.out) / ANSWERS_FILE)
    assert len(store) == ROWS - 1 and all(store.get(k).extra == {"batch": True} for k in api.submitted if k in store)
    store.close()
    # progress showed the wait, with counts rising
    waits = [s for s in seen if s and s.startswith("waiting for batch")]
    assert "waiting for batch (0 of 12 done)" in waits and "waiting for batch (4 of 12 done)" in waits and "waiting for batch (12 of 12 done)" in waits
    # half price: batch_discount 0.5 of list, in the estimate and in labelling.json
    assert summary.cost_usd == pytest.approx(0.5 * (summary.prompt_tokens + 2 * summary.completion_tokens) / 1e6)
    assert summary.pricing == "batch price (50 % of list)" and before.pricing == summary.pricing
    listed = estimate(spec.model_copy(update={"out": str(tmp_path / "other"), "teacher": spec.teacher.model_copy(update={"batch": False})}))
    assert before.cost_usd == pytest.approx(listed.cost_usd * 0.5, abs=1e-4) and listed.pricing == "list price"
    assert json.loads((Path(spec.out) / "labelling.json").read_text())["pricing"] == "batch price (50 % of list)"


def test_azure_v1_batch_with_api_key(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key")
    with FakeBatchAPI(answer=sentiment, api_key="azure-key") as api:
        spec = _spec(tmp_path, api.url, "teacher.provider=azure", "teacher.api_key_env=AZURE_OPENAI_API_KEY")
        summary = label(spec)
        assert api.creates == 1 and api.unauthorized == 0
        batch = next(iter(api.batches.values()))
        assert api.key_headers == {"api-key"}  # uploads, creates and polls carried the key in api-key only
    assert batch["endpoint"] == "/chat/completions" and summary.accepted == ROWS - 1  # Azure names the route without /v1


def test_azure_v1_batch_with_entra_id(tmp_path):
    from azure.core.credentials import AccessTokenInfo

    from pipeline.teachers.azure import AzureTeacher

    class Credential:
        async def get_token_info(self, *scopes, options=None):
            return AccessTokenInfo("entra-token", int(time.time()) + 3600)

    original = get_teacher("azure")
    register_teacher("azure", functools.partial(AzureTeacher, credential=Credential()))
    try:
        with FakeBatchAPI(answer=sentiment, api_key="entra-token") as api:  # every call must carry the token
            summary = label(_spec(tmp_path, api.azure_base_url, "teacher.provider=azure", "teacher.auth=entra"))
    finally:
        register_teacher("azure", original)
    assert api.unauthorized == 0 and api.creates == 1 and summary.accepted == ROWS - 1


def test_estimate_on_the_command_line_says_batch_price(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    spec = _spec(tmp_path, "http://127.0.0.1:9/v1")
    args = ["label", f"dataset.train={spec.dataset.train}", f"dataset.test={spec.dataset.test}", "teacher.few_shot=0",
            "teacher.provider=openai", "teacher.model=m", "teacher.batch=true", "teacher.price_per_mtok.input=1",
            f"out={spec.out}", "--estimate"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "at batch price (50 % of list)" in result.output


def test_batches_are_split_under_the_provider_limit(tmp_path):
    class SmallLimits(OpenAITeacher):  # a provider with a 5-request file limit, registered like any teacher
        batch_max_requests = 5

    original = get_teacher("openai")
    register_teacher("openai", SmallLimits)
    try:
        with FakeBatchAPI(answer=sentiment) as api:
            summary = label(_spec(tmp_path, api.openai_base_url))
            sizes = sorted(b["request_counts"]["total"] for b in api.batches.values())
    finally:
        register_teacher("openai", original)
    assert api.creates == 3 and sizes == [2, 5, 5] and summary.accepted == ROWS - 1
    lines = [(f"k{i}", b"x" * 40 + b"\n") for i in range(10)]
    assert [len(f) for f in split_lines(lines, max_requests=50_000, max_bytes=100)] == [2, 2, 2, 2, 2]
    with pytest.raises(TeacherError, match="over the batch file limit"):
        split_lines([("k", b"x" * 200)], max_requests=10, max_bytes=100)


def test_failed_validation_then_a_fixed_rerun(tmp_path):
    with FakeBatchAPI(answer=sentiment, invalid="model fake-model is not a global batch deployment") as api:
        spec = _spec(tmp_path, api.openai_base_url)
        with pytest.raises(LabellingError, match="only 0 of 12 rows were labelled"):
            label(spec)
        details = {r["detail"] for r in _lines(Path(spec.out) / "rejected.jsonl")}
        assert details == {"batch batch-" + next(iter(api.batches))[6:] + " failed: model fake-model is not a global batch deployment"}
        api.invalid = None  # fixed on the provider's side: the rerun submits the rows again
        assert label(spec).accepted == ROWS - 1 and api.creates == 2


def test_expired_batch_keeps_finished_rows_and_resubmits_only_the_rest(tmp_path):
    with FakeBatchAPI(answer=sentiment, rows_per_poll=4, expire_after=4) as api:
        spec = _spec(tmp_path, api.openai_base_url)
        with pytest.raises(LabellingError) as info:
            label(spec)
        assert "request failed after retries" in str(info.value)
        assert "batch_expired" not in str(info.value)
        expired = [r for r in _lines(Path(spec.out) / "rejected.jsonl") if "could not be executed before the completion window" in r["detail"]]
        assert len(expired) == ROWS - 4 and api.statuses() == ["expired"]
        store = AnswerStore(Path(spec.out) / ANSWERS_FILE)
        answered = {k for k in api.submitted if k in store}  # the 4 rows done before expiry (less the failing one)
        store.close()
        api.expire_after = None
        summary = label(spec)
    assert summary.accepted == ROWS - 1 and api.creates == 2 and len(answered) >= 3
    assert all(api.submitted[k] == (1 if k in answered else 2) for k in api.submitted)  # answered rows never asked twice


def test_cancel_cancels_the_batch_and_the_next_run_keeps_what_it_answered(tmp_path):
    with FakeBatchAPI(answer=sentiment, rows_per_poll=3) as api:
        spec = _spec(tmp_path, api.openai_base_url)
        with pytest.raises(Cancelled):
            label(spec, should_stop=lambda: any(b["request_counts"]["completed"] >= 3 for b in api.batches.values()))
        assert api.cancels == 1
        assert _ledger(spec)[0]["collected"] is False  # read back by the next run
        summary = label(spec)
    assert api.statuses()[0] == "cancelled" and summary.accepted == ROWS - 1
    assert max(api.submitted.values()) <= 2 and api.creates == 2
    answered_by_cancelled = [k for k, n in api.submitted.items() if n == 1]
    assert len(answered_by_cancelled) >= 3


KILL = "from bot.cli import main; main()"  # the `distillery` console script


def _kill_when(proc, ready, what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"`distillery label` ended before {what}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _cli_args(spec) -> list[str]:
    t = spec.teacher
    return ["label", f"dataset.train={spec.dataset.train}", f"dataset.test={spec.dataset.test}", "dataset.train_size=null",
            "teacher.few_shot=0", "teacher.provider=openai", "teacher.model=fake-model", f"teacher.base_url={t.base_url}",
            "teacher.api_key_env=null", "teacher.batch=true", "teacher.batch_poll_s=0.05", "teacher.min_success_ratio=0.5", f"out={spec.out}"]


def test_kill_9_while_a_batch_is_in_progress_then_rerun_submits_nothing_twice(tmp_path):
    with FakeBatchAPI(answer=sentiment, hold=True) as api:
        spec = _spec(tmp_path, api.openai_base_url)
        proc = subprocess.Popen([sys.executable, "-c", KILL, *_cli_args(spec)], env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _kill_when(proc, lambda: "in_progress" in api.statuses(), "its batch was in progress")
        recorded = _ledger(spec)
        assert [r["batch_id"] for r in recorded] == list(api.batches) and api.creates == 1
        api.hold = False
        summary = label(spec)
    assert api.creates == 1 and all(n == 1 for n in api.submitted.values()) and len(api.submitted) == ROWS
    assert summary.accepted == ROWS - 1 and summary.requested == ROWS
    done = {r["row"] for r in _lines(Path(spec.out) / "labels.jsonl")} | {r["row"] for r in _lines(Path(spec.out) / "rejected.jsonl")}
    assert len(done) == ROWS


def test_kill_9_between_create_and_its_answer_finds_the_batch_again(tmp_path):
    with FakeBatchAPI(answer=sentiment, create_delay=30) as api:
        spec = _spec(tmp_path, api.openai_base_url)
        proc = subprocess.Popen([sys.executable, "-c", KILL, *_cli_args(spec)], env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _kill_when(proc, lambda: api.creates == 1, "it asked for a batch")
        recorded = _ledger(spec)
        assert len(recorded) == 1 and recorded[0]["batch_id"] is None and recorded[0]["input_file_id"]  # written before create
        api.create_delay = 0
        summary = label(spec)
    assert api.creates == 1 and _ledger(spec)[0]["batch_id"] == next(iter(api.batches))
    assert summary.accepted == ROWS - 1 and all(n == 1 for n in api.submitted.values())


def test_batch_needs_an_api_teacher(tmp_path):
    spec = _spec(tmp_path, "http://127.0.0.1:9/v1", "teacher.provider=local")
    original = get_teacher("local")
    register_teacher("local", _NoBatch)
    try:
        with pytest.raises(TeacherError, match="teacher.batch works with providers openai and azure, not 'local'"):
            label(spec)
    finally:
        register_teacher("local", original)


class _NoBatch:
    """A teacher without the Batch API (stands in for the local one without loading a model)."""

    batch_size = 1

    def __init__(self, spec):
        self.spec = spec

    async def aclose(self) -> None:
        return None


def test_the_batch_wait_shows_in_slack_and_chat_status():
    from bot.blocks import status_line

    wait = {"done": 3, "total": 12, "unit": "rows", "info": {"accepted": 3, "status": "waiting for batch (3 of 12 done)"}}
    assert status_line({"id": "ab12", "status": "labelling", "stage": "labelling", "progress": wait}) == \
        "Run `ab12`: labelling 3/12 rows, waiting for batch (3 of 12 done)."


def test_a_batch_teacher_profile_plans_at_batch_price(tmp_path, monkeypatch):
    from skills import operations as ops

    profiles = tmp_path / "teachers.yaml"
    profiles.write_text("teachers:\n  foundry-batch:\n    provider: azure\n    model: Meta-Llama-3.1-405B-Instruct\n"
                        "    base_url: https://res.openai.azure.com/openai/v1/\n    auth: entra\n    batch: true\n"
                        "    price_per_mtok: {input: 5.33, output: 16.0}\n")
    monkeypatch.setenv("DISTILLERY_TEACHERS", str(profiles))
    plan = ops.plan_distillation("sst2", "gemma-3-270m", "foundry-batch", rows=40)
    assert plan.spec["teacher"]["batch"] is True and plan.spec["teacher"]["auth"] == "entra"
    assert plan.summary["estimate"]["pricing"] == "batch price (50 % of list)"
    assert "at batch price (50 % of list)" in ops.plan_text(plan)
