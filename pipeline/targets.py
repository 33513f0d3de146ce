"""What the student sees and learns: its prompt and its training target, chosen apart from the teacher's prompt.

    mode = rationale_mode(spec)                     # "none" (answer only, the default) | "target" | "multitask"
    msgs = student_prompt(spec, task, example)      # the prompt it is trained, evaluated and served with
    rec = training_record(spec, task, example, label, rationale)   # one labels.jsonl row
    pairs = training_pairs(spec, records)           # [(prompt messages, target text, weight)] for the trainer
    example_mean(spec)                              # whether each pair's loss is its own per-token mean

`teacher.chain_of_thought` changes only the teacher's prompt and parsing (better labels). The student is asked
for the answer alone unless `train.rationale: target` (with chain-of-thought labels): then it is prompted to
reason and learns "rationale, then Final answer: X". With `train.rationale: multitask` (Hsieh et al. 2023,
"Distilling step-by-step") every row with a rationale trains two examples: the answer after the predict prompt
(the ordinary answer-only student prompt, "... Reply with the answer only.") and the rationale after the
explain prompt (EXPLAIN_HINT), weighted 1 - train.rationale_weight and train.rationale_weight; each example's loss
is the mean over its own target tokens, so loss = (1 - w) * answer loss + w * rationale loss whatever their
lengths. The student is evaluated and served with the predict prompt only: no rationale at inference, no extra
cost. A labels.jsonl row records which target it holds (`target`: "answer" | "rationale" | "multitask"; a
multitask row keeps its explain example under `explain`), so training refuses rows written for another setting
instead of mixing.

Extension point (soft labels, new rationale modes): `training_pairs` is the one place that turns a labelled
row into weighted (prompt, target) pairs; a new `train.rationale` or `train.targets` value adds a branch there.
"""

from __future__ import annotations

from typing import Any

from .errors import TrainingError
from .tasks import Task, format_target, student_messages, task_instruction

__all__ = ["rationale_mode", "student_reasons", "student_prompt", "explain_prompt", "training_record", "training_pairs",
           "example_mean", "rationale_text", "spec_notes", "TARGET_KINDS", "EXPLAIN_HINT"]

TARGET_KINDS = ("answer", "rationale", "multitask")  # what a labels.jsonl row's target is
EXPLAIN_HINT = "Explain step by step the reasoning that leads to the answer."  # the multitask explain instruction


def rationale_mode(spec) -> str:
    """none | target | multitask, as the spec asks (train.rationale, or the older train.keep_rationale)."""
    return spec.train.rationale_mode


def student_reasons(spec) -> bool:
    """Whether the student is prompted to reason before its answer: only with rationale targets to learn from."""
    return rationale_mode(spec) == "target" and bool(spec.teacher.chain_of_thought) and spec.task != "chat"


def student_prompt(spec, task: Task, ex) -> list[dict[str, str]]:
    """The student's zero-shot prompt for one row (no assistant turn): the same in training and evaluation."""
    return student_messages(task, ex, spec.labels, student_reasons(spec), spec.instructions)


def explain_prompt(spec, task: Task, ex) -> list[dict[str, str]]:
    """The multitask explain prompt: the row as the student sees it, asked for the reasoning instead of the answer."""
    msgs = student_prompt(spec, task, ex)
    if task.name == "chat":
        return msgs
    hint = task.answer_hint(ex, spec.labels) if task.choice_based else ""
    system = f"{task_instruction(task, ex, spec.labels, spec.instructions)} {hint} {EXPLAIN_HINT}"
    return [{"role": "system", "content": " ".join(system.split())}] + msgs[1:]


def _multitask(spec) -> bool:
    return rationale_mode(spec) == "multitask"


def example_mean(spec) -> bool:
    """Whether each training example's loss is the mean over its own target tokens (multitask) rather than each
    token counting alike (answer or rationale targets: today's token-level mean, unchanged)."""
    return _multitask(spec)


def _kind(spec) -> str:
    if _multitask(spec):
        return "multitask"
    return "rationale" if student_reasons(spec) else "answer"


def training_record(spec, task: Task, ex, label: str, rationale: str | None) -> dict[str, Any]:
    """One labels.jsonl row: the student prompt plus the target the spec asks for, and what that target is.

    multitask: `messages` is the predict example (answer only) and `explain` the explain example (explain prompt
    + rationale), present only when the teacher gave a rationale.
    """
    kind = _kind(spec)
    msgs = student_prompt(spec, task, ex)
    msgs.append({"role": "assistant", "content": format_target(label, rationale, with_rationale=kind == "rationale")})
    rec = {"row": ex.row, "messages": msgs, "label": label, "rationale": rationale, "target": kind}
    if kind == "multitask" and rationale and rationale.strip():
        rec["explain"] = explain_prompt(spec, task, ex) + [{"role": "assistant", "content": rationale.strip()}]
    return rec


def training_pairs(spec, records: list[dict[str, Any]]) -> list[tuple[list[dict[str, str]], str, float]]:
    """(prompt messages, target text, loss weight) for each labelled row, as the current spec wants them.

    Rows written for another rationale setting are refused with a sentence (the labels are rebuilt for free from
    the answer cache by `distillery label`); rows from older versions without `target` are used as written.
    """
    want = _kind(spec)
    if want == "multitask":
        _check_multitask(spec)
    w = float(spec.train.rationale_weight)
    pairs = []
    for rec in records:
        msgs = rec["messages"]
        kind = rec.get("target")
        if (kind is not None or want == "multitask") and kind != want:
            raise TrainingError(f"labels.jsonl holds '{kind or 'answer'}' targets but train.rationale={rationale_mode(spec)} wants "
                                f"'{want}' targets; run `distillery label` again (cached answers are reused, nothing is paid twice).")
        target = str(msgs[-1]["content"])
        if kind is None and want == "answer" and rec.get("rationale") and rec.get("label") is not None:
            target = format_target(str(rec["label"]), None, False)  # an older row with its rationale kept
        explain = rec.get("explain") if want == "multitask" else None
        if explain:  # predict (answer) and explain (rationale) examples, weighted 1 - w and w
            pairs.append((msgs[:-1], target, 1.0 - w))
            pairs.append((explain[:-1], str(explain[-1]["content"]), w))
        else:  # no rationale (or not multitask): the answer alone, at full weight
            pairs.append((msgs[:-1], target, 1.0))
    return pairs


def _check_multitask(spec) -> None:
    if getattr(spec.train, "targets", "hard") != "hard":
        raise TrainingError("train.rationale=multitask trains on hard labels only; set train.targets=hard or train.rationale=none.")
    if spec.train.workers > 1:
        raise TrainingError("train.rationale=multitask trains in one process for now; set train.workers=1 or train.rationale=none.")


def rationale_text(spec) -> str:
    """How rationales entered training, in words (model card, report)."""
    if _multitask(spec):
        return (f"as a second task (answer after the predict prompt, rationale after the explain prompt, rationale weight "
                f"{spec.train.rationale_weight}; evaluated and served with the predict prompt)")
    return "yes (reasoning, then the answer)" if student_reasons(spec) else "no (answer only)"


def spec_notes(spec) -> list[str]:
    """Sentences about settings that have no effect as combined (shown at plan and spec time, never silently ignored)."""
    notes = []
    if spec.task == "chat" and spec.teacher.chain_of_thought:
        notes.append("teacher.chain_of_thought has no effect on chat: the teacher replies to each conversation directly and the "
                     "student learns those replies.")
    elif rationale_mode(spec) in ("target", "multitask") and not spec.teacher.chain_of_thought:
        notes.append(f"train.rationale={rationale_mode(spec)} needs teacher.chain_of_thought=true (the teacher gives no rationale "
                     "otherwise); the student learns the answer only.")
    if _multitask(spec) and (getattr(spec.train, "targets", "hard") != "hard" or spec.train.workers > 1):
        notes.append("train.rationale=multitask trains on hard labels in one process; set train.targets=hard and train.workers=1 "
                     "(training would stop otherwise).")
    from .judge import judge_sentence  # who judges free text (eval.judge), or why nobody does
    from .teachers.base import logprobs_note  # teacher.logprobs on a teacher or model that returns none

    notes += [n for n in (soft_label_note(spec), logprobs_note(spec), judge_sentence(spec)) if n]
    return notes


def soft_label_note(spec) -> str | None:
    """Why train.targets=soft|mixed cannot work as configured (training would refuse after labelling), or None."""
    if getattr(spec.train, "targets", "hard") == "hard":
        return None
    from .teachers.base import logprobs_note

    want = f"train.targets={spec.train.targets} needs soft labels"
    logprobs = bool(getattr(spec.teacher, "logprobs", 0)) and logprobs_note(spec) is None
    if spec.task is not None and spec.task not in ("classification", "nli", "multiple_choice"):
        if logprobs:  # free text: the teacher's per-token top-k (pipeline/kd_text.py), used as sent
            return None if spec.train.kd_temperature == 1 else (
                f"train.kd_temperature={spec.train.kd_temperature:g} has no effect on free text: the teacher's top-k "
                "probabilities are used as sent (it applies to closed answer sets).")
        return (f"{want}: on free text ({spec.task}) the per-token top-k of an API teacher asked with teacher.logprobs=K "
                "(openai or azure); set it or use train.targets=hard.")
    if rationale_mode(spec) == "target" and spec.teacher.chain_of_thought:
        return f"{want} with answer-only targets; set train.rationale=none or train.targets=hard."
    sampled = spec.teacher.self_consistency > 1
    if not sampled and not logprobs and (spec.teacher.provider != "local" or spec.teacher.chain_of_thought):
        return (f"{want}: the local teacher's scored options (without chain of thought), teacher.logprobs=K on an API "
                "teacher, or teacher.self_consistency > 1 (vote shares); this teacher gives hard labels only, so training "
                "would stop; use train.targets=hard.")
    return None
