"""Evaluation: the teacher, the base student and the distilled student on the test split, side by side.

    result = evaluate_model(spec, examples, "gemma-3-270m", adapter="runs/x/student")   # one model
    scores = evaluate_run(spec)      # teacher, student_base, student_distilled -> evaluation.json

The student is scored with exactly the zero-shot prompt it is trained with (pipeline/targets.py: answer only,
unless train.rationale=target), whatever the teacher's chain of thought. Closed-set tasks (classification, nli,
multiple choice) are always scored by the log-likelihood of each allowed answer, base and distilled, so a format
failure never counts as a wrong answer; free-form tasks generate and parse, and answers that could not be read
(unparseable, truncated at eval.max_new_tokens, ...) are counted for the report. Each model is loaded for its
stage and freed after it. The test split is never labelled for training. Finished parts are kept in
evaluation.json under a fingerprint of everything they depend on, so a re-run only does what is missing.
Free text (summarization, chat) is then judged pairwise against the references when a judge is configured
(pipeline/judge.py, eval.judge): evaluation.json `judged`, verdicts cached in judge_answers.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .datasets import Example
from .errors import EvaluationError
from .progress import ProgressFn, Tracker
from .runlock import holds_run_lock
from .tasks import get_task

__all__ = ["EvalResult", "evaluate_model", "evaluate_teacher", "evaluate_run", "test_examples"]


@dataclass
class EvalResult:
    metric: str | None
    score: float | None
    scores: dict[str, float]
    examples: int
    seconds: float = 0.0
    predictions: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # answers that could not be read, by kind (unparseable, truncated, ...)
    method: str = "generated"  # "scored options" (closed sets) | "generated" (parsed answers) | "teacher"
    answers: dict[str, int] = field(default_factory=dict)  # closed sets: how often each option was answered (collapse shows)

    def to_dict(self, with_predictions: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_predictions:
            d.pop("predictions")
        return d


def test_examples(spec) -> list[Example]:
    from .splits import test_rows

    examples = test_rows(spec)  # dataset.test, else the rows held out of dataset.train
    task = get_task(spec.task)
    if task.metric_name is not None and task.name != "chat" and not any(e.gold for e in examples):
        raise EvaluationError(f"test file '{spec.dataset.test}' has no gold labels; give a labelled test file (dataset.test=PATH).")
    return examples


def _score(spec, examples: list[Example], preds: list[str | None], seconds: float, extra: list[dict] | None = None,
           method: str = "generated") -> EvalResult:
    task = get_task(spec.task)
    golds = [e.gold for e in examples]
    scores = task.score(preds, golds, spec.labels) if task.metric_name else {}
    metric = task.metric_name if scores else None
    rows = [{"row": e.row, "prediction": p, "gold": e.gold, **(x or {})} for e, p, x in zip(examples, preds, extra or [None] * len(preds))]
    errors = dict(Counter(r["error"] for r in rows if r.get("error")).most_common())
    answers = dict(Counter(p for p in preds if p is not None).most_common()) if task.choice_based else {}
    return EvalResult(metric, scores.get(metric) if metric else None, scores, len(examples), round(seconds, 2), rows, errors, method,
                      answers)


ERROR_KINDS = ("unparseable", "ambiguous", "empty", "truncated")


def _exact_answers(task) -> bool:
    """Tasks whose answer is a value (math): a cut-off output is no answer, not a wrong short one."""
    return task.name == "math"


def _answered_before_cut(text: str) -> bool:
    """Whether a cut-off output had already finished its marked answer line ("Final answer: 18\n..." then cut)."""
    from .tasks import split_answer

    answer, _, marked = split_answer(text)
    line = answer.strip().splitlines()[0] if marked and answer.strip() else ""
    at = text.rfind(line) if line else -1
    return at >= 0 and "\n" in text[at + len(line):]


def evaluate_model(spec, examples: list[Example], model: str, adapter: str | Path | None = None,
                   progress: ProgressFn | None = None, stage: str = "evaluating", should_stop=None) -> EvalResult:
    """Score one student model (optionally with a peft adapter) with the prompt the student is trained with.

    Closed answer sets are scored by option log-likelihood after that prompt (after the student's own reasoning
    when it was trained to reason), so a format failure can never turn into a wrong answer; free-form answers are
    generated and parsed. The model is loaded for this call only and freed before returning.
    """
    from .models import free_memory, load_model

    t0 = time.monotonic()
    lm, tok = load_model(model, spec.student.device, spec.student.dtype, adapter=str(adapter) if adapter else None, cache=False)
    try:
        preds, extra = _predict(spec, lm, tok, examples, Tracker(stage, len(examples), progress), should_stop)
    finally:
        del lm, tok
        free_memory()
    method = "scored options" if get_task(spec.task).choice_based else "generated"
    return _score(spec, examples, preds, time.monotonic() - t0, extra, method)


def _predict(spec, lm, tok, examples, tracker, should_stop) -> tuple[list[str | None], list[dict]]:
    from .models import render_chat
    from .scoring import generate, score_options
    from .targets import student_prompt, student_reasons
    from .tasks import COT_MARKER

    task = get_task(spec.task)
    reasons = student_reasons(spec)
    budget = spec.eval.batch_tokens
    prompts = [render_chat(tok, student_prompt(spec, task, e)) for e in examples]
    preds: list[str | None] = []
    extra: list[dict] = []
    step = max(spec.eval.batch_size, 1) * 4  # rows per progress/cancel check; batches inside follow the token budget
    for start in range(0, len(examples), step):
        if should_stop and should_stop():
            from .errors import Cancelled

            raise Cancelled("evaluation was cancelled; finished parts are kept in evaluation.json.")
        chunk, ptexts = examples[start:start + step], prompts[start:start + step]
        gens = None
        if not task.choice_based or reasons:
            gens = generate(lm, tok, ptexts, max_new_tokens=spec.eval.max_new_tokens, batch_size=spec.eval.batch_size,
                            stop=[COT_MARKER] if task.choice_based else None, max_batch_tokens=budget)
        if task.choice_based:
            opts = [task.options(e, spec.labels) for e in chunk]
            if gens is not None:  # the student's reasoning, then the options scored after "Final answer: "
                ptexts = [p + g.text.rstrip() + f"\n{COT_MARKER} " for p, g in zip(ptexts, gens)]
            logps = score_options(lm, tok, ptexts, opts, batch_size=spec.eval.batch_size, max_batch_tokens=budget)
            for i, (o, lp) in enumerate(zip(opts, logps)):
                preds.append(o[max(range(len(o)), key=lambda k: lp[k])])
                row = {"option_logprobs": {k: round(v, 4) for k, v in zip(o, lp)}}
                if gens is not None:
                    row.update(text=gens[i].text[:2000], truncated=gens[i].finish_reason == "length")
                extra.append(row)
        else:
            for e, g in zip(chunk, gens):
                truncated = g.finish_reason == "length"
                parsed = task.parse(g.text, e, spec.labels)
                label, error = parsed.label, parsed.error
                if truncated and _exact_answers(task) and not _answered_before_cut(g.text):
                    label, error = None, "truncated"  # cut inside "$10" must not count as the answer "1"
                extra.append({"text": g.text[:2000], "error": error, "truncated": truncated})
                preds.append(label)
        tracker.advance(len(chunk))
    return preds, extra


def evaluate_teacher(spec, examples: list[Example], progress: ProgressFn | None = None, should_stop=None) -> EvalResult:
    """The teacher as configured (few-shot, chain of thought) on the test rows; answers are cached like labels."""
    from .labelling import ask_teacher, choose_rows

    t0 = time.monotonic()
    _, demos = choose_rows(spec)
    results = ask_teacher(spec, examples, demos, progress=progress, should_stop=should_stop, stage="evaluating teacher")
    preds = [r.label if not r.reason else None for r in results]
    extra = [{"text": (r.text or "")[:2000], "confidence": r.confidence, "error": r.reason} for r in results]
    return _score(spec, examples, preds, time.monotonic() - t0, extra, "teacher")


def _load_state(path: Path) -> dict[str, Any]:
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(source: str | None) -> str | None:
    from .datasets import resolve_path

    path = resolve_path(source) if source else None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path is not None else source


def fingerprints(spec, examples: list[Example]) -> dict[str, str]:
    """What each evaluation part depends on, hashed: a part is reused only when its fingerprint is unchanged.

    All parts: the test rows (file content, size, seed, fields), task, labels, instructions and the evaluation
    settings that change answers. Students: the student model and the exact prompts they are given (rationale
    mode included). The distilled student: also the training fingerprint (labels, training settings, LoRA,
    method; pipeline/training.run_fingerprint). The teacher: its settings (model, few-shot, chain of thought, ...).
    """
    from .targets import rationale_mode, student_prompt
    from .tasks import get_task
    from .training import run_fingerprint

    task = get_task(spec.task)
    common = {"test": _file_digest(spec.dataset.test or spec.dataset.train), "test_share": getattr(spec.dataset, "test_share", None),
              "test_size": spec.dataset.test_size, "seed": spec.dataset.seed,
              "fields": spec.dataset.fields, "task": spec.task, "labels": spec.labels, "instructions": spec.instructions,
              "max_new_tokens": spec.eval.max_new_tokens, "rows": [str(e.row) for e in examples]}
    mode = rationale_mode(spec)  # multitask students are asked exactly as answer-only ones (the predict prompt)
    student = {**common, "student": [spec.student.model, spec.student.dtype], "rationale": "none" if mode == "multitask" else mode,
               "prompts": _digest([student_prompt(spec, task, e) for e in examples])}
    labels = spec.out_dir / "labels.jsonl"
    adapter = spec.out_dir / "student"
    weights = next((adapter / n for n in ("adapter_model.safetensors", "model.safetensors") if (adapter / n).is_file()), None)
    trained = {"method": spec.student.model_dump(mode="json", exclude={"device"}), "training": run_fingerprint(spec, labels) if labels.is_file() else None,
               "weights": hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights is not None else None}
    from .pilot import resolve_cue

    teacher_spec = resolve_cue(spec, run=False)[0].teacher  # answer_cue=auto: the cue the run settled on (pilot.json)
    teacher = teacher_spec.model_dump(mode="json", exclude={"concurrency", "timeout_s", "max_retries", "batch_size", "device",
                                                             "min_success_ratio", "price_per_mtok", "api_key_env", "base_url"})
    return {"teacher": _digest({**common, "teacher": teacher, "train_size": spec.dataset.train_size, "train": spec.dataset.train}),
            "student_base": _digest(student), "student_distilled": _digest({**student, **trained})}


@holds_run_lock  # one process per run folder (pipeline/runlock.py)
def evaluate_run(spec, progress: ProgressFn | None = None, should_stop=None) -> dict[str, Any]:
    """Teacher, student_base and student_distilled on the test split; returns and saves evaluation.json.

    A part already in evaluation.json is kept only while its fingerprint (see `fingerprints`) is unchanged, so
    retraining in the same folder, or changing prompts or settings, re-scores what changed.
    """
    out = Path(spec.out)
    path = out / "evaluation.json"
    state = _load_state(path)
    examples = test_examples(spec)
    adapter = out / "student"
    if not (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").is_file():
        raise EvaluationError(f"no trained student in {adapter}; run `distillery train` (or `distillery run`) first.")
    prints = fingerprints(spec, examples)
    kept = {n: r for n, r in (state.get("results") or {}).items() if isinstance(r, dict) and r.get("fingerprint") == prints.get(n)}
    state = {"fingerprints": prints, "results": kept}
    if spec.student.method == "full":
        parts = [("student_base", spec.student.model, None), ("student_distilled", str(adapter), None)]
    else:
        parts = [("student_base", spec.student.model, None), ("student_distilled", spec.student.model, adapter)]
    if spec.eval.teacher:
        parts.insert(0, ("teacher", None, None))
    for name, model, adp in parts:
        if name in state["results"]:
            continue
        if name == "teacher":
            from .models import clear_model_cache, free_memory

            result = evaluate_teacher(spec, examples, progress, should_stop)
            clear_model_cache()  # a local teacher's model goes before the students are loaded
            free_memory()
        else:
            result = evaluate_model(spec, examples, model, adp, progress, f"evaluating {name}", should_stop)
        state["results"][name] = {**result.to_dict(), "fingerprint": prints[name]}
        _write_predictions(out / f"predictions_{name}.jsonl", result.predictions)
        _save_state(path, state)
    from .judge import judge_run

    judged = judge_run(spec, examples, progress, should_stop)  # free text: pairwise verdicts, cached (pipeline/judge.py)
    if judged is not None:
        state["judged"] = judged
    _save_state(path, state)
    return state


def _write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
