"""The labelling engine end to end: real OpenAI/Azure clients against a local server, real files, a real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, Reply, last_user

import pipeline.labelling as labelling
from pipeline.answers import AnswerStore
from pipeline.errors import Cancelled, LabellingError, TeacherError
from pipeline.labelling import ask_teacher, choose_rows, estimate, label
from pipeline.spec import load_spec
from pipeline.teachers import Teacher, TeacherAnswer, register_teacher

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(labelling, "BACKOFF_BASE_S", 0.01)


def _dataset(tmp_path: Path, n: int = 30, test: int = 6) -> tuple[Path, Path]:
    train, held = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    with train.open("w") as fh:
        for i in range(n):
            good = i % 2 == 0
            fh.write(json.dumps({"row": i, "text": f"a {'good' if good else 'bad'} film number {i}", "label": int(good)}) + "\n")
    with held.open("w") as fh:
        for i in range(test):
            fh.write(json.dumps({"row": 1000 + i, "text": f"a good film number {1000 + i}", "label": 1}) + "\n")
    return train, held


def _spec(tmp_path, server, *overrides, provider="openai"):
    train, held = _dataset(tmp_path)
    url = server.openai_base_url if provider == "openai" else server.azure_endpoint
    return load_spec(None, [f"dataset.train={train}", f"dataset.test={held}", "dataset.train_size=null", "teacher.few_shot=0",
                            f"teacher.provider={provider}", "teacher.model=fake-model", f"teacher.base_url={url}",
                            "teacher.api_key_env=null" if provider == "openai" else "teacher.api_key_env=TEST_KEY",
                            "teacher.concurrency=4", "teacher.max_retries=2", "teacher.timeout_s=2", f"out={tmp_path / 'run'}", *overrides])


def sentiment(req) -> str:
    """Answers like a decent model, in varied formats."""
    text = last_user(req)
    word = "positive" if "good" in text else "negative"
    n = int(text.rsplit(" ", 1)[-1]) if text.rsplit(" ", 1)[-1].isdigit() else 0
    return [word, f"Answer: {word.capitalize()}", f'{{"reason": "tone", "answer": "{word}"}}', f"**{word}**."][n % 4]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_label_writes_contract_files_and_rerun_sends_nothing(tmp_path):
    with FakeLLMServer(responder=sentiment) as server:
        spec = _spec(tmp_path, server, "teacher.price_per_mtok.input=1.0", "teacher.price_per_mtok.output=2.0")
        summary = label(spec)
        assert (summary.requested, summary.accepted, summary.rejected, summary.requests_sent) == (30, 30, 0, 30)
        assert summary.agreement_with_gold == 1.0
        out = Path(spec.out)
        rows = _lines(out / "labels.jsonl")
        first = rows[0]
        assert set(first) >= {"row", "messages", "label", "rationale", "confidence", "gold", "usage"}
        assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
        assert first["messages"][-1]["content"] == first["label"] == first["gold"]
        assert first["usage"]["prompt_tokens"] > 0
        info = json.loads((out / "labelling.json").read_text())
        assert info["accepted"] == 30 and info["cost_usd"] == pytest.approx((info["prompt_tokens"] + 2 * info["completion_tokens"]) / 1e6)
        assert (out / "spec.yaml").exists() and _lines(out / "rejected.jsonl") == []
        before = (out / "labels.jsonl").read_text()
        again = label(spec)
        assert again.requests_sent == 0 and again.cached == 30 and len(server.requests) == 30
        assert (out / "labels.jsonl").read_text() == before


@pytest.mark.parametrize("provider,path", [("azure", "/openai/v1/chat/completions"), ("azure-inference", "/chat/completions")])
def test_azure_teachers_label_too(provider, path, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "k")
    with FakeLLMServer(responder=sentiment) as server:
        summary = label(_spec(tmp_path, server, provider=provider))
    assert summary.accepted == 30 and all(r.path == path and r.headers["api-key"] == "k" for r in server.requests)


def test_retries_honour_retry_after_and_5xx(tmp_path):
    def flaky(req):
        if req.attempt == 0:
            return Reply(status=429, headers={"Retry-After": "0"}) if "good" in last_user(req) else Reply(status=503)
        if req.attempt == 1 and "number 3" in last_user(req):
            return Reply(delay=3)  # a timeout, retried too
        return sentiment(req)

    with FakeLLMServer(responder=flaky) as server:
        summary = label(_spec(tmp_path, server))
        assert summary.accepted == 30
        assert len(server.requests) == 61  # every row twice, row 3 three times


def test_failures_are_rejected_not_cached_and_retried_next_run(tmp_path):
    broken = {"number 5", "number 6"}
    with FakeLLMServer(responder=lambda r: Reply(status=500) if any(b in last_user(r) for b in broken) else sentiment(r)) as server:
        spec = _spec(tmp_path, server)
        summary = label(spec)
        assert summary.by_reason == {"request failed after retries": 2} and len(server.requests) == 28 + 2 * 3
        rejected = _lines(Path(spec.out) / "rejected.jsonl")
        assert {r["row"] for r in rejected} == {5, 6} and "HTTP 500" in rejected[0]["detail"]
        broken.clear()
        again = label(spec)
        assert again.accepted == 30 and again.requests_sent == 2


def test_reject_reasons(tmp_path):
    def odd(req):
        text = last_user(req)
        if "number 1" == text[-8:]:
            return Reply(text="It depends on", finish_reason="length")
        if text.endswith("number 2"):
            return "I cannot tell"
        if text.endswith("number 3"):
            return "positive or negative"
        if text.endswith("number 4"):
            return ""
        return sentiment(req)

    with FakeLLMServer(responder=odd) as server:
        spec = _spec(tmp_path, server)
        summary = label(spec)
    assert summary.by_reason == {"unparseable": 2, "cut off by max_tokens": 1, "ambiguous": 1}
    by_row = {r["row"]: r for r in _lines(Path(spec.out) / "rejected.jsonl")}
    assert by_row[1]["reason"] == "cut off by max_tokens" and by_row[4]["detail"] == "empty answer"


def test_below_min_success_ratio_raises_with_counts(tmp_path):
    with FakeLLMServer(responder=lambda r: "no idea" if "bad" in last_user(r) else sentiment(r)) as server:
        spec = _spec(tmp_path, server, "teacher.min_success_ratio=0.8")
        with pytest.raises(LabellingError, match=r"only 15 of 30 rows were labelled \(50%.*15 unparseable"):
            label(spec)
    assert len(_lines(Path(spec.out) / "labels.jsonl")) == 15  # kept


def test_unreachable_server_says_so(tmp_path):
    with FakeLLMServer() as server:
        spec = _spec(tmp_path, server, "teacher.max_retries=1")
    with pytest.raises(LabellingError, match=f"teacher server at {server.url} could not be reached"):
        label(spec)


def test_bad_key_stops_at_once(tmp_path):
    with FakeLLMServer(responder=lambda r: Reply(status=401)) as server:
        with pytest.raises(TeacherError, match="HTTP 401"):
            label(_spec(tmp_path, server))
        assert len(server.requests) <= 4  # the requests already in flight, not the whole dataset


def test_filters_and_self_consistency(tmp_path):
    def moody(req):  # samples 0 and 1 answer like the gold, sample 2 the opposite; row 7 always wrong
        text = last_user(req)
        right = "positive" if "good" in text else "negative"
        wrong = "negative" if right == "positive" else "positive"
        if text.endswith("number 7"):
            return wrong
        return wrong if req.attempt == 2 else right

    with FakeLLMServer(responder=moody) as server:
        spec = _spec(tmp_path, server, "teacher.self_consistency=3", "teacher.params.temperature=0.7", "teacher.min_agreement=0.7",
                     "teacher.min_success_ratio=0")
        summary = label(spec)
        assert len(server.requests) == 90
        accepted = _lines(Path(spec.out) / "labels.jsonl")
        assert summary.by_reason == {"filtered: min_agreement": 29}
        assert [r["row"] for r in accepted] == [7] and accepted[0]["confidence"] == 1.0
        spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"min_agreement": 0.5, "agree_with_gold": True})})
        summary = label(spec)
        assert summary.requests_sent == 0 and summary.by_reason == {"filtered: agree_with_gold": 1}


class ScoringTeacher(Teacher):
    """A batch teacher scoring options, like the local one: confident on 'good' rows only."""

    supports_options = True
    batches: list[int] = []

    def __init__(self, spec):
        super().__init__(spec)
        self.batch_size = spec.batch_size

    async def answer_batch(self, requests):
        ScoringTeacher.batches.append(len(requests))
        out = []
        for r in requests:
            good = "good" in r.messages[-1]["content"]
            probs = {"positive": 0.9, "negative": 0.1} if good else {"positive": 0.45, "negative": 0.55}
            out.append(TeacherAnswer(text=max(probs, key=probs.get), option_probs=probs, prompt_tokens=10, completion_tokens=1))
        return out


def test_scored_options_batches_and_min_confidence(tmp_path):
    register_teacher("scoring-test", ScoringTeacher)
    ScoringTeacher.batches = []
    with FakeLLMServer() as server:
        spec = _spec(tmp_path, server, "teacher.provider=scoring-test", "teacher.batch_size=8", "teacher.min_confidence=0.6",
                     "teacher.min_success_ratio=0")
    summary = label(spec)
    assert ScoringTeacher.batches == [8, 8, 8, 6]
    assert summary.accepted == 15 and summary.by_reason == {"filtered: min_confidence": 15}
    assert {r["confidence"] for r in _lines(Path(spec.out) / "labels.jsonl")} == {0.9}


def test_demos_are_gold_rows_never_labelled_nor_test(tmp_path):
    with FakeLLMServer(responder=sentiment) as server:
        spec = _spec(tmp_path, server, "teacher.few_shot=4", "dataset.train_size=20")
        rows, demos = choose_rows(spec)
        assert len(rows) == 20 and len(demos) == 4
        assert not {d.row for d in demos} & {r.row for r in rows} and all(d.gold for d in demos)
        assert [d.gold for d in demos] == ["negative", "positive", "negative", "positive"]  # classes taken in turn
        everything = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"train_size": None})})
        rows_all, demos_all = choose_rows(everything)  # no remainder: demos leave the labelled set
        assert len(rows_all) == 26 and not {d.row for d in demos_all} & {r.row for r in rows_all}
        summary = label(spec)
        assert summary.demos == [d.row for d in demos]
        assert all(len(r.messages) == 2 + 2 * 4 for r in server.requests)


def test_estimate_sends_nothing_and_knows_the_cache(tmp_path):
    with FakeLLMServer(responder=sentiment) as server:
        spec = _spec(tmp_path, server, "teacher.price_per_mtok.input=10")
        est = estimate(spec)
        assert (est.rows, est.requests, est.cached) == (30, 30, 0) and len(server.requests) == 0
        assert est.prompt_tokens > 30 * 20 and est.cost_usd == pytest.approx(est.prompt_tokens * 10 / 1e6, abs=1e-4)
        assert "30 requests" in str(est)
        label(spec)
        assert estimate(spec).requests == 0


def test_should_stop_cancels_and_keeps_answers(tmp_path):
    with FakeLLMServer(responder=sentiment, latency=0.1) as server:
        spec = _spec(tmp_path, server)
        with pytest.raises(Cancelled):
            ask_teacher(spec, choose_rows(spec)[0], [], should_stop=lambda: len(server.requests) >= 8)
        kept = len(AnswerStore(Path(spec.out) / "teacher_answers.jsonl"))
        assert 8 <= kept < 30
        assert label(spec).requests_sent == 30 - kept


def test_answer_store_skips_a_torn_line(tmp_path):
    path = tmp_path / "a.jsonl"
    store = AnswerStore(path)
    store.put("k1", TeacherAnswer(text="positive", prompt_tokens=3))
    store.close()
    with path.open("a") as fh:
        fh.write('{"key": "k2", "text": "nega')  # killed mid-write
    store = AnswerStore(path)
    assert store.get("k1").text == "positive" and store.get("k2") is None
    store.put("k3", TeacherAnswer(text="negative"))
    store.close()
    assert AnswerStore(path).get("k3").text == "negative"


KILL_SCRIPT = """
import sys
from pipeline.spec import load_spec
from pipeline.labelling import label
label(load_spec(None, sys.argv[1:]))
"""


def test_kill_and_resume_never_asks_twice(tmp_path):
    with FakeLLMServer(responder=sentiment, latency=0.1) as server:
        spec = _spec(tmp_path, server, "teacher.concurrency=4")
        args = [f"dataset.train={spec.dataset.train}", "dataset.train_size=null", "teacher.few_shot=0", "teacher.provider=openai",
                "teacher.model=fake-model", f"teacher.base_url={server.openai_base_url}", "teacher.api_key_env=null",
                "teacher.concurrency=4", f"out={spec.out}"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *args], env=env, cwd=ROOT)
        deadline = time.monotonic() + 120
        while len(server.requests) < 12 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        answers = Path(spec.out) / "teacher_answers.jsonl"
        cached = {json.loads(line)["key"] for line in answers.read_text().splitlines() if line.endswith("}")}
        assert 0 < len(cached) < 30
        summary = label(spec)
        rows = choose_rows(spec)[0]
        prompts = {r[0].key: json.dumps(r[0].messages, sort_keys=True)
                   for r in labelling._build_requests(spec, labelling.get_task("classification"), spec.labels, rows, [])}
        counts = server.count_by_prompt()
        assert all(counts[prompts[k]] == 1 for k in cached)  # nothing answered was asked again
        assert set(counts) == set(prompts.values())
        done = {r["row"] for r in _lines(Path(spec.out) / "labels.jsonl")} | {r["row"] for r in _lines(Path(spec.out) / "rejected.jsonl")}
        assert done == {e.row for e in rows} and summary.accepted == 30
