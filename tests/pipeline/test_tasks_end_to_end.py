"""Every seed task end to end on a tiny model with a stand-in teacher that answers from gold (issue 15).

The teacher is a real OpenAI-compatible server (tests/fake_llm_server.py) behind the real client; the student is
a tiny random model, so its scores are near chance: these tests check that every task gets all three scores, that
closed answer sets are scored (never "unparseable"), and that the teacher's chain of thought stays on the
teacher's side unless a rationale option asks for it.
"""

from __future__ import annotations

import json

import pytest
from testpaths import DATA
from fake_llm_server import FakeLLMServer
from gold_teacher import gold_responder

from pipeline.errors import TrainingError
from pipeline.runner import run
from pipeline.spec import load_spec

# task -> (data slice, extra overrides)
TASKS = {
    "classification": ("sst2", ["labels=[negative, positive]"]),
    "nli": ("conjnli", ["labels=null"]),
    "multiple_choice": ("comve", ["labels=null"]),
    "math": ("gsm8k", ["labels=null"]),
    "summarization": ("dialogsum", ["labels=null"]),
    "chat": ("chat", ["labels=null"]),
}


def _overrides(task, tiny_model, out, cot, url="http://127.0.0.1:9/v1", *extra):
    data, more = TASKS[task]
    return [f"task={task}", *more, f"dataset.train={DATA / data}.jsonl", f"dataset.test={DATA / data}_test.jsonl",
            "dataset.train_size=8", "dataset.test_size=4", "teacher.provider=openai", "teacher.model=stand-in",
            f"teacher.base_url={url}", "teacher.few_shot=0", f"teacher.chain_of_thought={str(cot).lower()}",
            f"student.model={tiny_model}", "train.epochs=1", "train.batch_size=4", "eval.max_new_tokens=8", f"out={out}", *extra]


def _run(task, tiny_model, out, cot, *extra):
    probe = load_spec(None, _overrides(task, tiny_model, out, cot, "http://127.0.0.1:9/v1", *extra))
    with FakeLLMServer(responder=gold_responder(probe)) as server:
        report = run(load_spec(None, _overrides(task, tiny_model, out, cot, server.openai_base_url, *extra)))
    return report, server


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_reports_all_three_scores_with_chain_of_thought(task, tiny_model, tmp_path):
    out = tmp_path / "run"
    report, _ = _run(task, tiny_model, out, True)
    assert report["metric"] is not None
    assert set(report["scores"]) == {"teacher", "student_base", "student_distilled"}
    for name, value in report["scores"].items():
        assert value is not None and 0.0 <= value <= 1.0, (name, value)
    assert report["scores"]["teacher"] == 1.0  # the stand-in answers from gold, parsed through its rationale
    # the teacher reasoned; the student learns the answer only (the default) and says so
    assert (report["targets"]["rationale"], report["targets"]["rationales_in_targets"]) == ("none", False)
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert labels and all(r["messages"][-1]["content"] == r["label"] for r in labels)
    assert all("step by step" not in json.dumps(r["messages"]) for r in labels)
    teacher_rows = [json.loads(x) for x in (out / "predictions_teacher.jsonl").read_text().splitlines()]
    # the teacher's own answer text is kept (chat has no chain of thought: the plain reply)
    assert all(("Final answer:" in r["text"]) == (task != "chat") and r["text"] for r in teacher_rows)
    evaluation = json.loads((out / "evaluation.json").read_text())["results"]
    if task in ("classification", "nli", "multiple_choice"):
        for name in ("student_base", "student_distilled"):
            assert evaluation[name]["method"] == "scored options"
            assert evaluation[name]["errors"] == {}  # never "unparseable": options are scored, not parsed
    assert "trained on answer-only targets" in (out / "report.md").read_text()


@pytest.mark.parametrize("task", ["nli", "multiple_choice"])
def test_rationale_target_student_reasons_then_its_options_are_scored(task, tiny_model, tmp_path):
    out = tmp_path / "run"
    report, _ = _run(task, tiny_model, out, True, "train.rationale=target")
    assert (report["targets"]["rationale"], report["targets"]["rationales_in_targets"]) == ("target", True)
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["content"].endswith(f"Final answer: {r['label']}") for r in labels)
    assert all("Think step by step" in r["messages"][0]["content"] for r in labels)
    evaluation = json.loads((out / "evaluation.json").read_text())["results"]
    for name in ("student_base", "student_distilled"):
        assert evaluation[name]["method"] == "scored options" and evaluation[name]["errors"] == {}
        rows = [json.loads(x) for x in (out / f"predictions_{name}.jsonl").read_text().splitlines()]
        assert all("text" in r and r["prediction"] in r["option_logprobs"] for r in rows)  # reasoned, then scored


def test_student_prompt_is_the_same_with_and_without_teacher_chain_of_thought(tiny_model, tmp_path):
    from pipeline.labelling import label

    prompts = {}
    for cot in (False, True):
        spec = load_spec(None, _overrides("nli", tiny_model, tmp_path / f"run-{cot}", cot))
        with FakeLLMServer(responder=gold_responder(spec)) as server:
            spec = load_spec(None, _overrides("nli", tiny_model, tmp_path / f"run-{cot}", cot, server.openai_base_url))
            label(spec)
            teacher_system = server.requests[0].messages[0]["content"]
        assert ("Think step by step" in teacher_system) == cot  # the teacher's prompt does change
        rows = [json.loads(x) for x in (tmp_path / f"run-{cot}" / "labels.jsonl").read_text().splitlines()]
        prompts[cot] = {r["row"]: r["messages"] for r in rows}
    assert prompts[False] == prompts[True]  # same student prompts and targets (answer only)


def test_training_refuses_labels_written_for_another_rationale_setting(tiny_model, tmp_path):
    from pipeline.labelling import label
    from pipeline.training import train

    out = tmp_path / "run"
    spec = load_spec(None, _overrides("nli", tiny_model, out, True))
    with FakeLLMServer(responder=gold_responder(spec)) as server:
        label(load_spec(None, _overrides("nli", tiny_model, out, True, server.openai_base_url)))
    with pytest.raises(TrainingError, match="distillery label"):
        train(load_spec(None, _overrides("nli", tiny_model, out, True, "http://127.0.0.1:9/v1", "train.rationale=target")))


def test_keep_rationale_still_works_as_an_alias():
    assert load_spec(None, ["train.keep_rationale=true"]).train.rationale_mode == "target"
    assert load_spec(None, ["train.keep_rationale=false"]).train.rationale_mode == "none"
    assert load_spec(None, []).train.rationale_mode == "none"
    with pytest.raises(Exception, match="contradicts"):
        load_spec(None, ["train.keep_rationale=true", "train.rationale=none"])


def test_retraining_in_the_same_folder_rescores_the_distilled_student(tiny_model, tmp_path):
    out = tmp_path / "run"
    _run("classification", tiny_model, out, False)
    first = json.loads((out / "evaluation.json").read_text())["results"]
    before = [json.loads(x)["option_logprobs"] for x in (out / "predictions_student_distilled.jsonl").read_text().splitlines()]
    _run("classification", tiny_model, out, False, "train.learning_rate=0.05", "student.lora.rank=4")
    second = json.loads((out / "evaluation.json").read_text())["results"]
    after = [json.loads(x)["option_logprobs"] for x in (out / "predictions_student_distilled.jsonl").read_text().splitlines()]
    assert second["student_distilled"]["fingerprint"] != first["student_distilled"]["fingerprint"]
    assert after != before  # the new adapter was scored, not the old numbers shown again
    assert second["student_base"]["fingerprint"] == first["student_base"]["fingerprint"]  # nothing it depends on changed
    assert second["teacher"]["fingerprint"] == first["teacher"]["fingerprint"]
