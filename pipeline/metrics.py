"""Metrics: pure functions over predicted and gold answers (None prediction counts as wrong)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from collections.abc import Sequence

__all__ = ["accuracy", "macro_f1", "exact_match", "rouge_l", "normalize_number"]


def accuracy(preds: Sequence[str | None], golds: Sequence[str]) -> float:
    if not golds:
        return 0.0
    return sum(p is not None and p == g for p, g in zip(preds, golds)) / len(golds)


def macro_f1(preds: Sequence[str | None], golds: Sequence[str], labels: Sequence[str] | None = None) -> float:
    classes = list(labels) if labels else sorted(set(golds))
    if not classes:
        return 0.0
    f1s = []
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(preds, golds))
        fp = sum(p == c and g != c for p, g in zip(preds, golds))
        fn = sum(p != c and g == c for p, g in zip(preds, golds))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return sum(f1s) / len(f1s)


def normalize_number(text: str | None) -> str | None:
    """'1,234.50' -> '1234.5', '$18' -> '18', '18.0' -> '18', '1e3' -> '1000'; None if no number.

    Exact decimal arithmetic (no float): a 400-digit answer is compared digit for digit and never overflows.
    """
    if text is None:
        return None
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    m = re.fullmatch(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", t)
    if not m:
        return None
    exponent = re.search(r"[eE]([-+]?\d+)$", t)
    if exponent and abs(int(exponent.group(1))) > 10_000:  # "1e999999999" is no answer anyone means
        return None
    try:
        value = Decimal(t)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def exact_match(preds: Sequence[str | None], golds: Sequence[str]) -> float:
    if not golds:
        return 0.0
    return sum(p is not None and normalize_number(p) == normalize_number(g) for p, g in zip(preds, golds)) / len(golds)


def _tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: the rouge-score package's tokens for ASCII text ("don't" -> don, t;
    "a_b" -> a, b). Unlike rouge-score, letters outside ASCII are kept ("café" stays one word, not "caf")."""
    return re.findall(r"[^\W_]+", text.lower())


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(preds: Sequence[str | None], golds: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over word tokens (lower-cased, no stemming): equal to rouge-score's
    `RougeScorer(["rougeL"]).score(gold, pred)["rougeL"].fmeasure` on ASCII text (tests/pipeline/test_rouge.py)."""
    if not golds:
        return 0.0
    total = 0.0
    for p, g in zip(preds, golds):
        pt, gt = _tokens(p or ""), _tokens(g)
        lcs = _lcs(pt, gt)
        if lcs:
            prec, rec = lcs / len(pt), lcs / len(gt)
            total += 2 * prec * rec / (prec + rec)
    return total / len(golds)
