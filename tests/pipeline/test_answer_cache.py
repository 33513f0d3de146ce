"""The answer cache: odd answer shapes never make a run stuck, the key covers what shapes a request, raising
max_tokens re-sends only the cut-off answers, and every record names its row (real openai client, local server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, Reply, last_user

import pipeline.labelling as labelling
from pipeline.answers import answer_key
from pipeline.labelling import choose_rows, label
from pipeline.spec import load_spec
from pipeline.tasks import get_task

ANSWERS = "teacher_answers.jsonl"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(labelling, "BACKOFF_BASE_S", 0.01)


def _spec(tmp_path: Path, url: str = "http://127.0.0.1:9/v1", *overrides: str, rows: int = 12):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"id": f"r{i}", "text": f"a {'good' if i % 2 else 'bad'} film number {i}", "label": i % 2}) + "\n"
                             for i in range(rows)))
    return load_spec(None, [f"dataset.train={train}", f"dataset.test={_test_file(tmp_path)}", "teacher.few_shot=0", "teacher.provider=openai",
                            "teacher.model=fake-model", f"teacher.base_url={url}", "teacher.api_key_env=null", "teacher.concurrency=4",
                            "teacher.max_retries=1", "teacher.timeout_s=5", f"out={tmp_path / 'run'}", *overrides])


def _word(req) -> str:
    return "positive" if "good" in last_user(req) else "negative"


def _completion(content, usage=None) -> str:
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body)


def _requests(spec):
    spec = labelling.resolve_spec(spec)
    rows, demos = choose_rows(spec)
    return rows, labelling._build_requests(spec, get_task(spec.task), spec.labels, rows, demos)


def _records(spec) -> list[dict]:
    return [json.loads(line) for line in (Path(spec.out) / ANSWERS).read_text().splitlines()]


def test_content_parts_and_odd_usage_are_labelled(tmp_path):
    def odd(req):
        parts = [{"type": "text", "text": "Answer: "}, {"type": "text", "text": _word(req)}]
        n = int(last_user(req).rsplit(" ", 1)[-1])
        usage = [{"prompt_tokens": "n/a", "completion_tokens": "n/a"}, None, {"prompt_tokens": 7, "completion_tokens": 2}][n % 3]
        return Reply(raw=_completion(parts, usage))

    with FakeLLMServer(responder=odd) as server:
        spec = _spec(tmp_path, server.openai_base_url)
        summary = label(spec)
    assert (summary.accepted, summary.rejected) == (12, 0) and summary.agreement_with_gold == 1.0
    assert all(isinstance(r["text"], str) and r["text"].startswith("Answer: ") for r in _records(spec))
    assert all(r["prompt_tokens"] > 0 for r in _records(spec))  # "n/a" and missing usage are estimated, not zero


@pytest.mark.parametrize("prompt_tokens", [3, "n/a"])
def test_a_cached_list_of_content_parts_does_not_make_a_resume_stuck(tmp_path, prompt_tokens):
    spec = _spec(tmp_path)  # nothing listens there: every answer has to come from the cache
    rows, requests = _requests(spec)
    out = Path(spec.out)
    out.mkdir(parents=True)
    with (out / ANSWERS).open("w") as fh:  # what an older version cached for a list-shaped message.content
        for ex, (req,) in zip(rows, requests):
            word = "positive" if "good" in ex.fields["text"] else "negative"
            fh.write(json.dumps({"key": req.key, "text": [{"type": "text", "text": word}], "finish_reason": "stop",
                                 "prompt_tokens": prompt_tokens, "completion_tokens": 1}) + "\n")
    summary = label(spec)
    assert (summary.accepted, summary.requests_sent, summary.cached) == (12, 0, 12)


@pytest.mark.parametrize("change", ["teacher.answer_cue=Verdict", "teacher.prompt_format=plain", "teacher.chain_of_thought=true",
                                    "instructions=Be terse.", "teacher.params.temperature=0.5", "teacher.few_shot=2"])
def test_the_key_covers_everything_that_shapes_a_local_request(tmp_path, change):
    base = _spec(tmp_path, "http://127.0.0.1:9/v1", "teacher.provider=local")
    changed = _spec(tmp_path, "http://127.0.0.1:9/v1", "teacher.provider=local", change)
    keys = lambda spec: [r.key for reqs in _requests(spec)[1] for r in reqs]  # noqa: E731
    assert len(set(keys(base))) == 12 and not set(keys(base)) & set(keys(changed))


def test_api_keys_ignore_local_rendering_settings_so_paid_answers_stay_cached(tmp_path):
    base = _spec(tmp_path)
    cue = _spec(tmp_path, "http://127.0.0.1:9/v1", "teacher.answer_cue=Verdict", "teacher.prompt_format=plain")
    assert [r.key for reqs in _requests(base)[1] for r in reqs] == [r.key for reqs in _requests(cue)[1] for r in reqs]


def test_raising_max_tokens_resends_only_cut_off_answers(tmp_path):
    def answers(req):
        n = int(last_user(req).rsplit(" ", 1)[-1])
        if n in (3, 7) and req.body["max_tokens"] < 50:
            return Reply(text="Let me think about", finish_reason="length")
        return f"Answer: {_word(req)}"

    with FakeLLMServer(responder=answers) as server:
        spec = _spec(tmp_path, server.openai_base_url, "teacher.params.max_tokens=16", "teacher.min_success_ratio=0.5")
        first = label(spec)
        assert first.by_reason == {"cut off by max_tokens": 2} and len(server.requests) == 12
        again = label(spec)  # the same limit: nothing is sent, the cut-off rows stay cut off
        assert again.requests_sent == 0 and again.by_reason == {"cut off by max_tokens": 2}
        raised = load_spec(None, [*_api_overrides(spec, server), "teacher.params.max_tokens=64"])
        summary = label(raised)
        assert (summary.accepted, summary.requests_sent, summary.cached) == (12, 2, 10)
        resent = [last_user(r) for r in server.requests[12:]]
        assert sorted(t.rsplit(" ", 1)[-1] for t in resent) == ["3", "7"] and all(r.body["max_tokens"] == 64 for r in server.requests[12:])
        assert label(raised).requests_sent == 0
        lowered = load_spec(None, [*_api_overrides(spec, server), "teacher.params.max_tokens=1"])  # "Answer: x" no longer fits
        assert label(lowered).requests_sent == 12


def _api_overrides(spec, server) -> list[str]:
    return [f"dataset.train={spec.dataset.train}", f"dataset.test={Path(spec.dataset.train).parent / 'test.jsonl'}", "teacher.few_shot=0", "teacher.provider=openai", "teacher.model=fake-model",
            f"teacher.base_url={server.openai_base_url}", "teacher.api_key_env=null", "teacher.min_success_ratio=0", f"out={spec.out}"]


def test_records_carry_the_row_and_the_limit_and_old_caches_still_count(tmp_path):
    with FakeLLMServer(responder=lambda r: f"Answer: {_word(r)}") as server:
        spec = _spec(tmp_path, server.openai_base_url, "teacher.params.max_tokens=32")
        label(spec)
        records = _records(spec)
        assert sorted(r["row"] for r in records) == sorted(f"r{i}" for i in range(12))
        assert {r["max_tokens"] for r in records} == {32}
        # a cache written before max_tokens left the key (and before rows were recorded) is still used
        rows, requests = _requests(spec)
        t = spec.teacher
        old = [json.dumps({"key": answer_key(t.provider, t.model, req.messages, req.params, req.options, 0), "text": r["text"],
                           "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 2})
               for (req,), r in zip(requests, sorted(records, key=lambda r: [e.row for e in rows].index(r["row"])))]
        (Path(spec.out) / ANSWERS).write_text("\n".join(old) + "\n")
        sent_before = len(server.requests)
        summary = label(spec)
        assert (summary.accepted, summary.requests_sent) == (12, 0) and len(server.requests) == sent_before


def _test_file(folder: Path) -> Path:
    """A separate test file, so every row of train.jsonl is labelled (no held-out split)."""
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps({"text": f"a good test film {i}", "label": 1}) + "\n" for i in range(4)))
    return path


def test_batch_answers_carry_rows_and_are_reused_after_raising_max_tokens(tmp_path):
    from fake_batch_api import FakeBatchAPI

    with FakeBatchAPI(answer=lambda body: "positive" if "good" in body["messages"][-1]["content"] else "negative") as api:
        spec = _spec(tmp_path, api.openai_base_url, "teacher.batch=true", "teacher.batch_poll_s=0.05", "teacher.params.max_tokens=16")
        assert label(spec).accepted == 12 and api.creates == 1
        params = spec.teacher.params.model_copy(update={"max_tokens": 64})
        summary = label(spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"params": params})}))
        assert (summary.accepted, summary.requests_sent, api.creates) == (12, 0, 1)  # nothing submitted again
    records = _records(spec)
    assert sorted(r["row"] for r in records) == sorted(f"r{i}" for i in range(12)) and {r["max_tokens"] for r in records} == {16}
