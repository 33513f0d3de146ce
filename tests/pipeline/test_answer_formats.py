"""What real teachers and students write (issue 15 "also found", issue 9 item 14): markdown, preambles, cut-off
answers, empty trailing markers, huge numbers, and the wording of ComVE and HellaSwag rows."""

from __future__ import annotations

import json

import pytest
from testpaths import DATA

from pipeline.datasets import load_examples
from pipeline.metrics import exact_match, normalize_number
from pipeline.spec import load_spec
from pipeline.targets import spec_notes, student_prompt, training_record
from pipeline.tasks import format_target, get_task, student_messages, teacher_messages

NLI_LABELS = ["entailment", "neutral", "contradiction"]


@pytest.mark.parametrize("text", [
    "The hypothesis restates the premise.\n**Final answer:** entailment",
    "The hypothesis restates the premise.\n**Final answer: entailment**",
    "The hypothesis restates the premise.\n### Final answer: entailment",
])
def test_markdown_around_the_marker_never_leaks_into_the_target(text):
    parsed = get_task("nli").parse(text, None, NLI_LABELS)
    assert parsed.label == "entailment"
    target = format_target(parsed.label, parsed.rationale, with_rationale=True)
    assert target == "The hypothesis restates the premise.\nFinal answer: entailment"
    assert "*" not in target and "#" not in target


@pytest.mark.parametrize("text,expected", [
    ("Here is a summary of the conversation:\n\n#Person1# asks #Person2# about the trip.", "#Person1# asks #Person2# about the trip."),
    ("Sure! Here's a concise summary:\n**#Person1#** asks about the trip.", "#Person1# asks about the trip."),
    ("**Summary:** #Person1# asks about the trip.", "#Person1# asks about the trip."),
    ("Let me read it.\n**Final answer:** ** #Person1# asks about the trip.", "#Person1# asks about the trip."),
    ("#Person1# asks about the trip: it was long.", "#Person1# asks about the trip: it was long."),
])
def test_summaries_lose_chatty_preambles_and_markdown(text, expected):
    assert get_task("summarization").parse(text, None, None).label == expected


def test_summarization_prompt_asks_for_the_summary_only():
    spec = load_spec(None, ["task=summarization", "labels=null", f"dataset.train={DATA / 'dialogsum.jsonl'}"])
    ex = load_examples(spec, "train")[0]
    system = student_messages(get_task("summarization"), ex, None)[0]["content"]
    assert "Reply with the summary only." in system


def test_a_trailing_empty_final_answer_falls_back_to_the_earlier_one():
    text = "2 + 3 = 5, so Final answer: 5\nLet me double check.\nFinal answer:"
    assert get_task("math").parse(text, None, None).label == "5"
    assert get_task("nli").parse("Final answer: neutral\n\nFinal answer: **", None, NLI_LABELS).label == "neutral"


def test_math_answers_with_hundreds_of_digits_are_compared_exactly():
    big = "1" * 320
    parsed = get_task("math").parse(f"It is huge.\nFinal answer: {big}", None, None)
    assert parsed.label == big
    assert exact_match([big], [big]) == 1.0
    assert exact_match([big[:-1] + "2"], [big]) == 0.0  # a float would call these equal (or overflow)
    assert normalize_number("1,000.50") == "1000.5" and normalize_number("$18.00") == "18"
    assert normalize_number("1e999999999") is None


def test_math_truncated_output_is_marked_truncated_not_parsed(tiny_model, tmp_path):
    """A student cut off at eval.max_new_tokens has no answer (a GSM8K "$10" cut to "$1" must not score as 1)."""
    from parrot_like import teach_reply

    from pipeline.evaluation import evaluate_model, test_examples

    spec = load_spec(None, ["task=math", "labels=null", f"dataset.train={DATA / 'gsm8k.jsonl'}", f"dataset.test={DATA / 'gsm8k.jsonl'}",
                            "dataset.test_size=1", "student.device=cpu"])
    ex = test_examples(spec)[0]
    model = teach_reply(tiny_model, tmp_path / "student", student_prompt(spec, get_task("math"), ex), "$10 in total", steps=150)
    short = evaluate_model(spec.model_copy(update={"eval": spec.eval.model_copy(update={"max_new_tokens": 2})}), [ex], str(model))
    full = evaluate_model(spec.model_copy(update={"eval": spec.eval.model_copy(update={"max_new_tokens": 16})}), [ex], str(model))
    assert full.predictions[0]["text"].startswith("$10 in") and full.predictions[0]["prediction"] == "10"
    assert short.predictions[0]["text"] != full.predictions[0]["text"]  # really cut off
    assert short.predictions[0]["prediction"] is None and short.predictions[0]["error"] == "truncated"
    assert short.errors == {"truncated": 1}


def test_hellaswag_keeps_its_activity_and_comve_states_its_task():
    mc = get_task("multiple_choice")
    hs = load_examples(load_spec(None, ["task=multiple_choice", "labels=null", f"dataset.train={DATA / 'hellaswag.jsonl'}"]), "train")
    rec = {json.loads(x)["row"]: json.loads(x) for x in (DATA / "hellaswag.jsonl").read_text().splitlines()}
    system, user = (m["content"] for m in student_messages(mc, hs[0], None))
    assert user.startswith(f"Activity: {rec[hs[0].row]['activity_label']}\n")
    assert "continues" in system
    cv = load_examples(load_spec(None, ["task=multiple_choice", "labels=null", f"dataset.train={DATA / 'comve.jsonl'}"]), "train")
    system, user = (m["content"] for m in student_messages(mc, cv[0], None))
    assert "against common sense" in system and "reason" in system
    assert user.startswith("Statement: ")
    # an ordinary question keeps the generic wording
    from pipeline.datasets import Example

    q = Example(row=1, fields={"question": "Which is a mammal?", "choices": ["cat", "trout", "crow"]})
    assert student_messages(mc, q, None)[1]["content"].startswith("Question: Which is a mammal?")


def test_student_prompt_ignores_teacher_chain_of_thought_unless_rationale_target():
    base = ["task=nli", "labels=null", f"dataset.train={DATA / 'conjnli.jsonl'}"]
    nli = get_task("nli")
    ex = load_examples(load_spec(None, base), "train")[0]
    plain = student_prompt(load_spec(None, base), nli, ex)
    assert student_prompt(load_spec(None, base + ["teacher.chain_of_thought=true"]), nli, ex) == plain
    reasoning = student_prompt(load_spec(None, base + ["teacher.chain_of_thought=true", "train.rationale=target"]), nli, ex)
    assert reasoning != plain and "Think step by step" in reasoning[0]["content"]
    # the teacher's prompt does follow chain_of_thought
    assert "Think step by step" in teacher_messages(nli, ex, NLI_LABELS, [], True)[0]["content"]
    rec = training_record(load_spec(None, base + ["teacher.chain_of_thought=true"]), nli, ex, "neutral", "because")
    assert rec["messages"][-1]["content"] == "neutral" and rec["target"] == "answer"


def test_settings_without_effect_are_said_at_spec_time():
    chat = load_spec(None, ["task=chat", "labels=null", "teacher.chain_of_thought=true"])
    assert any("no effect on chat" in n for n in spec_notes(chat))
    lonely = load_spec(None, ["train.rationale=target"])
    assert any("needs teacher.chain_of_thought=true" in n for n in spec_notes(lonely))
    assert spec_notes(load_spec(None, [])) == []


def test_generation_prints_no_deprecation_warning(tiny_model):
    """stop_strings travel in the generation config: no "deprecated" warning on every generation evaluation."""
    import io
    import logging

    import transformers

    from pipeline.models import load_model
    from pipeline.scoring import generate

    model, tok = load_model(str(tiny_model), "cpu")
    logger = transformers.logging.get_logger("transformers")
    once = getattr(logger.warning_once, "cache_clear", None)
    if once:
        once()  # warning_once remembers messages already shown in this process
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger.addHandler(handler)
    try:
        generate(model, tok, ["hello there"], max_new_tokens=3, stop=["Final answer:"])
        generate(model, tok, ["hello there"], max_new_tokens=3)
    finally:
        logger.removeHandler(handler)
    assert "deprecated" not in buf.getvalue()


def test_a_cut_off_output_keeps_an_answer_line_it_had_finished():
    from pipeline.evaluation import _answered_before_cut

    assert _answered_before_cut("Final answer: 18\nQuestion: Tom has")  # cut in the rambling after the answer
    assert not _answered_before_cut("Final answer: 1")  # cut inside the number ("$10" -> "$1")
    assert not _answered_before_cut("She pays $10 in total and then")  # no marked answer: the last number is a guess
