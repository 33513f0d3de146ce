"""Judging teacher answers: parse each answer, vote over self-consistency samples, filter, write the label files.

    res = judge(task, example, labels, messages, answers, failures)   # one row -> TeacherResult
    apply_filters(spec, task, results)                                # min_agreement, min_confidence, agree_with_gold
    accepted, rejected = records(spec, task, results)                 # labels.jsonl / rejected.jsonl records
    write_jsonl(out / "labels.jsonl", accepted)                       # temp file + rename

Pure functions over answers already received (the sending engine, pipeline/sending.py, gets them); nothing here
talks to a teacher. A row is rejected with one of REASONS; accepted rows carry label, rationale and confidence, and
on closed answer sets `soft`: the teacher's distribution over the options, from (in this order) a local teacher's
scored option probabilities, the answer token's top-k log-probabilities of an API teacher (teacher.logprobs; with
`soft_mass`, the mass outside the options; averaged over samples with self-consistency), or self-consistency vote
shares; API answers with none of these carry none (hard label only). Free-text rows of an API teacher with
logprobs carry `topk` (pipeline/logprobs.compact_topk), for the top-k KD loss (pipeline/kd_text.py).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .datasets import Example
from .logprobs import compact_topk, option_distribution
from .targets import training_record
from .teachers import TeacherAnswer

__all__ = ["TeacherResult", "judge", "judge_one", "apply_filters", "records", "write_jsonl", "same_label", "soft_label", "soft_summary",
           "FAILED", "CUT_OFF", "UNPARSEABLE", "AMBIGUOUS", "REASONS"]

log = logging.getLogger(__name__)

FAILED, CUT_OFF, UNPARSEABLE, AMBIGUOUS = "request failed after retries", "cut off by max_tokens", "unparseable", "ambiguous"
REASONS = (FAILED, CUT_OFF, UNPARSEABLE, AMBIGUOUS, "filtered: ...")


@dataclass
class TeacherResult:
    row: Any
    messages: list[dict[str, str]]  # the teacher prompt
    text: str | None = None  # the teacher's answer (the winning sample with self-consistency)
    label: str | None = None  # parsed final answer; None when rejected before filters
    rationale: str | None = None
    confidence: float | None = None  # option probability (scored options, or logprobs) or vote share (self-consistency)
    soft: dict[str, float] | None = None  # closed sets: the teacher's distribution over every option (soft label)
    soft_source: str | None = None  # "scored options" | "logprobs" | "votes"
    soft_mass: float | None = None  # logprobs: the answer token's probability outside the options (before renormalising)
    topk: list | None = None  # free text with logprobs: per answer token [[token, logprob], ...] (the written token first)
    logprobs_missing: int = 0  # answers of this row without logprobs (asked before teacher.logprobs was set, or not sent)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reason: str | None = None  # why the row is rejected, None when accepted
    detail: str | None = None
    example: Example | None = field(default=None, repr=False)


Judged = tuple[str | None, str | None, float | None, str | None, str | None]  # label, rationale, confidence, reason, detail


def judge_one(task, ex: Example, labels, ans: TeacherAnswer) -> Judged:
    """(label, rationale, confidence, reason, detail) of one answer."""
    if ans.option_probs:
        best = max(ans.option_probs, key=ans.option_probs.get)
        label = best if not ans.text else (task.parse(ans.text, ex, labels).label or best)
        return label, None, float(ans.option_probs.get(label, 0.0)), None, None
    if ans.finish_reason == "length":
        return None, None, None, CUT_OFF, f"{ans.completion_tokens} completion tokens; raise teacher.params.max_tokens"
    parsed = task.parse(ans.text, ex, labels)
    if parsed.label is None:
        reason = AMBIGUOUS if parsed.error == "ambiguous" else UNPARSEABLE
        return None, parsed.rationale, None, reason, "empty answer" if parsed.error == "empty" else (ans.text or "")[:200]
    return parsed.label, parsed.rationale, None, None, None


def judge(task, ex: Example, labels, msgs, answers: list[TeacherAnswer | None], failures: list[Any]) -> TeacherResult:
    """One row from its samples' answers (None where the request failed; failures[i].detail says why)."""
    res = TeacherResult(row=ex.row, messages=msgs, example=ex)
    res.prompt_tokens = sum(a.prompt_tokens for a in answers if a)
    res.completion_tokens = sum(a.completion_tokens for a in answers if a)
    judged: list[Judged] = []
    for ans, fail in zip(answers, failures):
        if ans is None:
            judged.append((None, None, None, FAILED, fail.detail if fail else "no answer"))
        else:
            judged.append(judge_one(task, ex, labels, ans))
    res.logprobs_missing = sum(1 for a in answers if a is not None and not a.logprobs and not a.option_probs)
    if len(answers) == 1:
        res.label, res.rationale, res.confidence, res.reason, res.detail = judged[0]
        res.text = answers[0].text if answers[0] else None
        if res.reason is None and answers[0]:
            _soft_from_one(res, task, ex, labels, answers[0])
        return res
    votes = Counter(j[0] for j in judged if j[0] is not None)
    if not votes:
        reasons = Counter(j[3] for j in judged)
        res.reason = reasons.most_common(1)[0][0]
        res.detail = next(j[4] for j in judged if j[3] == res.reason)
        res.text = next((a.text for a in answers if a), None)
        return res
    (top, count), *others = votes.most_common()
    if others and others[0][1] == count:
        res.reason, res.detail = AMBIGUOUS, f"self-consistency tie between {top} and {others[0][0]} ({count} votes each)"
        return res
    winner = next(i for i, j in enumerate(judged) if j[0] == top)
    res.label, res.rationale = top, judged[winner][1]
    res.text = answers[winner].text
    res.confidence = count / len(answers)
    if task.choice_based:
        options = task.options(ex, labels)
        read = [option_distribution(a.logprobs, options, j[0]) for a, j in zip(answers, judged) if a and a.logprobs and j[0]]
        read = [(d, m) for d, m in read if d]
        if read:  # the samples' answer-token distributions, averaged
            res.soft = soft_label(options, {o: sum(d[o] for d, _ in read) / len(read) for o in options})
            res.soft_source, res.soft_mass = "logprobs", round(sum(m for _, m in read) / len(read), 6)
        else:  # the vote shares among the samples that gave an answer
            cast = sum(votes.values())
            res.soft, res.soft_source = soft_label(options, {k: v / cast for k, v in votes.items()}), "votes"
    elif answers[winner].logprobs:
        res.topk = compact_topk(answers[winner].logprobs)
    return res


def _soft_from_one(res: TeacherResult, task, ex: Example, labels, ans: TeacherAnswer) -> None:
    """The soft label (closed sets) or top-k (free text) of a row answered once."""
    if task.choice_based and ans.option_probs:
        res.soft, res.soft_source = soft_label(task.options(ex, labels), ans.option_probs), "scored options"
    elif task.choice_based and ans.logprobs:
        soft, outside = option_distribution(ans.logprobs, task.options(ex, labels), res.label)
        if soft is not None:  # the label's share is the row's confidence (teacher.min_confidence applies)
            res.soft, res.soft_source, res.soft_mass = soft_label(list(soft), soft), "logprobs", outside
            res.confidence = res.soft.get(res.label) if res.label in res.soft else None
    elif not task.choice_based and ans.logprobs:
        res.topk = compact_topk(ans.logprobs)


def soft_label(options: list[str], probs: dict[str, float]) -> dict[str, float] | None:
    """{option: probability} over every option (0.0 where the teacher gave none), renormalised; None if all are 0."""
    raw = {o: max(float(probs.get(o, 0.0)), 0.0) for o in options}
    total = sum(raw.values())
    if total <= 0:
        return None
    return {o: round(v / total, 6) for o, v in raw.items()}


def same_label(task, label: str | None, gold: str | None) -> bool:
    """Whether a teacher label equals the gold label (numbers compared by value for math)."""
    if label is None or gold is None:
        return False
    if task.name == "math":
        from .metrics import normalize_number

        return normalize_number(label) == normalize_number(gold)
    return label == gold


def apply_filters(spec, task, results: list[TeacherResult]) -> None:
    """Reject accepted rows that fail min_agreement, min_confidence or agree_with_gold (in place)."""
    t = spec.teacher
    comparable = task.choice_based or task.name == "math"
    if t.min_confidence is not None and any(r.reason is None and r.confidence is None for r in results):
        log.warning("teacher.min_confidence applies only to rows with a confidence (scored options or self-consistency)")
    for r in results:
        if r.reason is not None:
            continue
        if t.self_consistency > 1 and r.confidence is not None and r.confidence < t.min_agreement:
            r.reason, r.detail = "filtered: min_agreement", f"{r.confidence:.2f} of samples agree, below teacher.min_agreement={t.min_agreement}"
        elif t.min_confidence is not None and r.confidence is not None and r.confidence < t.min_confidence:
            r.reason, r.detail = "filtered: min_confidence", f"confidence {r.confidence:.2f} below teacher.min_confidence={t.min_confidence}"
        elif t.agree_with_gold and comparable and r.example is not None and r.example.gold is not None and not same_label(task, r.label, r.example.gold):
            r.reason, r.detail = "filtered: agree_with_gold", f"teacher said {r.label!r}, gold is {r.example.gold!r}"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write records whole through a temp file and a rename (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in rows:
            fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)


def records(spec, task, results: list[TeacherResult]) -> tuple[list[dict], list[dict]]:
    """(labels.jsonl records with the student's messages, rejected.jsonl records with reason and detail)."""
    accepted, rejected = [], []
    for r in results:
        ex = r.example
        if r.reason is None:
            rec = training_record(spec, task, ex, r.label, r.rationale)  # the student's prompt and target (pipeline/targets.py)
            rec["confidence"] = r.confidence
            if r.soft is not None:
                rec["soft"] = r.soft  # the teacher's option distribution, for train.targets=soft|mixed (pipeline/kd.py)
                if r.soft_mass is not None:
                    rec["soft_mass"] = r.soft_mass
            if r.topk is not None:
                rec["topk"] = r.topk  # free text: the teacher's per-token top-k, for train.targets=soft|mixed (pipeline/kd_text.py)
            if ex.gold is not None:
                rec["gold"] = ex.gold
            rec["usage"] = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
            accepted.append(rec)
        else:
            rec = {"row": r.row, "reason": r.reason, "detail": r.detail, "text": r.text}
            if ex.gold is not None:
                rec["gold"] = ex.gold
            rejected.append(rec)
    return accepted, rejected


def soft_summary(spec, results: list[TeacherResult], accepted: list[dict]) -> dict[str, Any]:
    """labelling.json `soft_labels`: how many accepted rows carry a soft label or top-k, from what, and how many
    answers came without logprobs although teacher.logprobs asked for them (cached before it was set)."""
    sources = Counter(r.soft_source for r in results if r.reason is None and r.soft is not None)
    masses = [rec["soft_mass"] for rec in accepted if rec.get("soft_mass") is not None]
    out: dict[str, Any] = {"rows": sum(1 for rec in accepted if rec.get("soft")), "sources": dict(sources),
                           "topk_rows": sum(1 for rec in accepted if rec.get("topk"))}
    if masses:
        out["mass_outside_options_mean"] = round(sum(masses) / len(masses), 6)
    if getattr(spec.teacher, "logprobs", 0):
        out["answers_without_logprobs"] = sum(r.logprobs_missing for r in results)
    return out
