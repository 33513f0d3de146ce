"""Prompt building, answer parsing (lenient but strict about ambiguity) and metrics."""

import pytest

from pipeline.datasets import Example
from pipeline.errors import SpecError
from pipeline.metrics import exact_match, macro_f1, rouge_l
from pipeline.tasks import format_target, get_task, student_messages, teacher_messages

LABELS = ["negative", "positive"]
EX = Example(1, {"text": "a fine film"}, "positive")


@pytest.mark.parametrize("text,label", [
    ("positive", "positive"),
    ("Positive.", "positive"),
    ("Final answer: **Positive**.", "positive"),
    ('{"reason": "warm words", "answer": "negative"}', "negative"),
    ("Answer: 1", "positive"),
    ("The sentiment is clearly negative.", "negative"),
    ("Let me think. The reviewer praises it.\nFinal answer: positive", "positive"),
    ("  `NEGATIVE`  ", "negative"),
])
def test_classification_parser_is_lenient(text, label):
    assert get_task("classification").parse(text, EX, LABELS).label == label


@pytest.mark.parametrize("text,error", [
    ("It is positive and also negative", "ambiguous"),
    ("no idea", "unparseable"),
    ("", "empty"),
    ("Answer: 7", "unparseable"),
])
def test_classification_parser_rejects(text, error):
    parsed = get_task("classification").parse(text, EX, LABELS)
    assert parsed.label is None and parsed.error == error


def test_rationale_is_kept():
    parsed = get_task("classification").parse("The film is praised.\nFinal answer: positive", EX, LABELS)
    assert parsed.rationale == "The film is praised."
    assert format_target(parsed.label, parsed.rationale, True) == "The film is praised.\nFinal answer: positive"
    assert format_target(parsed.label, parsed.rationale, False) == "positive"


@pytest.mark.parametrize("text,value,error", [
    ("16 - 3 - 4 = 9 eggs; 9 * 2 = 18\n#### 18", "18", None),
    ("Final answer: $1,234.00", "1234", None),
    ("so it is \\boxed{42}", "42", None),
    ("The answer is 18.", "18", None),
    ("Final answer: 3 or 4", None, "ambiguous"),
    ("I cannot solve this", None, "unparseable"),
])
def test_math_parser(text, value, error):
    parsed = get_task("math").parse(text, EX, None)
    assert (parsed.label, parsed.error) == (value, error)


def test_multiple_choice_parser():
    mc = get_task("multiple_choice")
    ex = Example(1, {"question": "Which is odd?", "choices": ["red car", "blue", "green"]}, "B")
    assert mc.parse("(B)", ex, None).label == "B"
    assert mc.parse("Answer: C. green", ex, None).label == "C"
    assert mc.parse("blue", ex, None).label == "B"
    assert mc.parse("b", ex, None).label == "B"
    assert mc.parse("I'd say D", ex, None).label is None


def test_nli_labels_and_prompt():
    nli = get_task("nli")
    ex = Example(3, {"premise": "A man sleeps.", "hypothesis": "A man is awake."}, "contradiction")
    msgs = student_messages(nli, ex, None)
    assert msgs[0]["role"] == "system" and "entailment, neutral, contradiction" in msgs[0]["content"]
    assert "Premise: A man sleeps." in msgs[1]["content"]
    assert nli.parse("Final answer: Contradiction", ex, None).label == "contradiction"


def test_teacher_prompt_has_demonstrations_before_the_row():
    demos = [Example(10, {"text": "awful"}, "negative"), Example(11, {"text": "lovely"}, "positive")]
    msgs = teacher_messages(get_task("classification"), EX, LABELS, demos)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == "negative" and msgs[-1]["content"] == "Text: a fine film"
    cot = teacher_messages(get_task("classification"), EX, LABELS, [], chain_of_thought=True)
    assert "step by step" in cot[0]["content"] and "Final answer:" in cot[0]["content"]


def test_unknown_task():
    with pytest.raises(SpecError, match="unknown task 'poetry'; known: "):
        get_task("poetry")


def test_metrics():
    assert macro_f1(["a", "a", "b", None], ["a", "b", "b", "a"], ["a", "b"]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert exact_match(["18", "1,000", None], ["18.0", "1000", "3"]) == pytest.approx(2 / 3)
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert 0 < rouge_l(["the cat sat"], ["a cat sat on a mat"]) < 1
    assert rouge_l([None], ["x"]) == 0.0
