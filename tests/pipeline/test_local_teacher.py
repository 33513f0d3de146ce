"""pipeline.teachers.local: the transformers teacher answers option requests by scoring and the rest by generating."""

from __future__ import annotations

import asyncio
import math

import pytest

from pipeline.models import load_model, render_chat, render_plain
from pipeline.scoring import score_options
from pipeline.spec import TeacherSpec
from pipeline.teachers import TeacherRequest, get_teacher
from pipeline.teachers.local import LocalTeacher

SYSTEM = {"role": "system", "content": "Classify the text as negative or positive. Reply with the answer only."}
PARAMS = {"max_tokens": 20, "temperature": 0.0, "top_p": 1.0}


def option_request(text: str) -> TeacherRequest:
    return TeacherRequest(messages=[SYSTEM, {"role": "user", "content": f"Text: {text}"}], params=PARAMS,
                          options=["negative", "positive"])


def test_registered_as_local():
    assert get_teacher("local") is LocalTeacher
    assert LocalTeacher.supports_options


@pytest.mark.parametrize("fmt", ["auto", "plain"])
def test_option_requests_are_scored(tiny_model, fmt):
    teacher = LocalTeacher(TeacherSpec(model=str(tiny_model), device="cpu", batch_size=3, prompt_format=fmt))
    assert teacher.batch_size == 3
    requests = [option_request(t) for t in ("good acting", "a dull film", "great", "bad")]
    answers = asyncio.run(teacher.answer_batch(requests))

    model, tok = load_model(str(tiny_model), "cpu")
    assert teacher.prompt_format(tok) == ("chat" if fmt == "auto" else "plain")  # the tiny tokenizer has a template
    lead = " " if fmt == "plain" else ""
    render = render_plain if fmt == "plain" else (lambda m: render_chat(tok, m))
    expected = score_options(model, tok, [render(r.messages) for r in requests], [[lead + "negative", lead + "positive"]] * 4)
    for answer, scores in zip(answers, expected):
        probs = answer.option_probs
        assert set(probs) == {"negative", "positive"} and sum(probs.values()) == pytest.approx(1.0)
        assert probs["positive"] == pytest.approx(1 / (1 + math.exp(scores[0] - scores[1])), rel=1e-4)
        assert answer.text == ("positive" if scores[1] > scores[0] else "negative")
        assert answer.finish_reason == "stop" and answer.prompt_tokens > 10 and answer.completion_tokens >= 1


@pytest.fixture(scope="module")
def parrot(tiny_model, tmp_path_factory):
    from parrot_model import build_parrot_model

    return build_parrot_model(tmp_path_factory.mktemp("parrot") / "model", tiny_model)


def test_free_form_and_option_requests_in_one_batch(parrot):
    teacher = LocalTeacher(TeacherSpec(model=str(parrot), device="cpu", batch_size=4))
    requests = [
        TeacherRequest(messages=[{"role": "user", "content": "hi"}], params=PARAMS),
        option_request("great"),
        TeacherRequest(messages=[{"role": "user", "content": "what is two plus two"}], params=PARAMS),
        TeacherRequest(messages=[{"role": "user", "content": "hi"}], params={**PARAMS, "max_tokens": 1}),
    ]
    answers = asyncio.run(teacher.answer_batch(requests))
    assert (answers[0].text, answers[0].finish_reason) == ("hello world", "stop")
    assert answers[0].completion_tokens >= 2 and answers[0].option_probs is None
    assert answers[1].text in ("negative", "positive") and answers[1].option_probs
    assert (answers[2].text, answers[2].finish_reason) == ("four", "stop")
    assert answers[3].finish_reason == "length" and answers[3].completion_tokens == 1
    single = asyncio.run(teacher.answer(requests[0]))
    assert single.text == "hello world"


@pytest.mark.gemma
def test_gemma_teacher_labels_sst2_rows(gemma_path):
    from pipeline.datasets import read_records, to_examples
    from pipeline.tasks import get_task, teacher_messages

    labels = ["negative", "positive"]
    rows = to_examples(read_records("sst2/test.jsonl"), "classification", labels, None, "t")[:8]
    demos = to_examples(read_records("sst2/train.jsonl"), "classification", labels, None, "t")[:8]
    task = get_task("classification")
    requests = [TeacherRequest(messages=teacher_messages(task, ex, labels, demos), params=PARAMS,
                               options=task.options(ex, labels)) for ex in rows]
    teacher = LocalTeacher(TeacherSpec(model="gemma-3-270m", device="cpu", batch_size=8))
    answers = asyncio.run(teacher.answer_batch(requests))
    assert teacher.prompt_format(teacher._tokenizer) == "plain"  # a base model: its chat template was added by us
    right = sum(a.text == ex.gold for a, ex in zip(answers, rows))
    assert right >= 6, [a.text for a in answers]
