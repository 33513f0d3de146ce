"""Our ROUGE-L (pipeline/metrics.rouge_l) against the rouge-score package (Google's ROUGE-1.5.5 reimplementation).

Real DialogSum rows (tests/data/dialogsum*.jsonl): every reference summary scored against other rows' summaries and
against the dialogues (long, noisy candidates with "#Person1#" markers, apostrophes and punctuation), plus chat
reference replies; the two must agree to 1e-12. Hand-computed cases pin the formula itself.
"""

from __future__ import annotations

import itertools
import json

import pytest
from rouge_score import rouge_scorer
from testpaths import DATA

from pipeline.metrics import rouge_l


def _rows(name):
    return [json.loads(x) for x in (DATA / name).read_text().splitlines()]


def _reference(pred: str, gold: str) -> float:
    return rouge_scorer.RougeScorer(["rougeL"]).score(gold, pred)["rougeL"].fmeasure


def test_rouge_l_equals_rouge_score_on_dialogsum_rows():
    rows = _rows("dialogsum_test.jsonl") + _rows("dialogsum.jsonl")[:8]
    pairs = [(a["summary"], b["summary"]) for a, b in itertools.product(rows, rows[:6])]
    pairs += [(r["dialogue"], r["summary"]) for r in rows] + [(r["summary"], r["dialogue"]) for r in rows]
    assert len(pairs) > 100
    nonzero = 0
    for pred, gold in pairs:
        ours, theirs = rouge_l([pred], [gold]), _reference(pred, gold)
        assert ours == pytest.approx(theirs, abs=1e-12), (pred[:60], gold[:60])
        nonzero += theirs > 0
    assert nonzero > 50  # real overlaps were compared, not only zeros
    # the mean over a set is the mean of rouge-score's per-row F1s
    preds, golds = [r["dialogue"][:300] for r in rows], [r["summary"] for r in rows]
    assert rouge_l(preds, golds) == pytest.approx(sum(_reference(p, g) for p, g in zip(preds, golds)) / len(rows), abs=1e-12)


def test_rouge_l_equals_rouge_score_on_chat_references():
    replies = [r["messages"][-1]["content"] for r in _rows("chat_test.jsonl")]
    for pred, gold in itertools.product(replies, replies[:4]):
        assert rouge_l([pred], [gold]) == pytest.approx(_reference(pred, gold), abs=1e-12)


def test_rouge_l_by_hand():
    # LCS("the cat sat", "a cat sat on a mat") = 2: P = 2/3, R = 2/6, F = 2PR / (P + R) = 4/9
    assert rouge_l(["the cat sat"], ["a cat sat on a mat"]) == pytest.approx(4 / 9)
    assert rouge_l(["The CAT, sat!"], ["the cat sat"]) == pytest.approx(1.0)  # case and punctuation aside
    assert rouge_l(["snake_case words"], ["snake case words"]) == pytest.approx(_reference("snake_case words", "snake case words"))
    assert rouge_l([None, "x"], ["x", "x"]) == pytest.approx(0.5)  # a missing answer scores 0
    assert rouge_l([""], ["x"]) == _reference("", "x") == 0.0


def test_letters_outside_ascii_are_kept_where_rouge_score_drops_them():
    # rouge-score keeps only [a-z0-9]: "café" and "cafè" both become "caf"; "日本" vanishes entirely
    assert _reference("café", "cafè") == 1.0 and rouge_l(["café"], ["cafè"]) == 0.0
    assert _reference("日本", "日本") == 0.0 and rouge_l(["日本"], ["日本"]) == 1.0
