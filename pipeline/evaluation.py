"""Evaluation: the teacher, the base student and the distilled student on the test split, side by side.

    result = evaluate_model(spec, examples, "gemma-3-270m", adapter="runs/x/student")   # one model
    scores = evaluate_run(spec)      # teacher, student_base, student_distilled -> evaluation.json

The student is scored with exactly the zero-shot prompt it was trained with and the labelling parser.
Closed-set tasks (classification, nli, multiple choice) without chain of thought are scored by comparing
the log-likelihood of each allowed answer; the others generate and parse. The test split is never labelled
for training. Finished parts are kept in evaluation.json, so a re-run only does what is missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .datasets import Example
from .errors import EvaluationError
from .progress import ProgressFn, Tracker
from .runlock import holds_run_lock
from .tasks import get_task, student_messages

__all__ = ["EvalResult", "evaluate_model", "evaluate_teacher", "evaluate_run", "test_examples"]


@dataclass
class EvalResult:
    metric: str | None
    score: float | None
    scores: dict[str, float]
    examples: int
    seconds: float = 0.0
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, with_predictions: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_predictions:
            d.pop("predictions")
        return d


def test_examples(spec) -> list[Example]:
    from .splits import test_rows

    examples = test_rows(spec)  # dataset.test, else the rows held out of dataset.train
    task = get_task(spec.task)
    if task.metric_name is not None and not any(e.gold for e in examples):
        raise EvaluationError(f"test file '{spec.dataset.test}' has no gold labels; give a labelled test file (dataset.test=PATH).")
    return examples


def _score(spec, examples: list[Example], preds: list[str | None], seconds: float, extra: list[dict] | None = None) -> EvalResult:
    task = get_task(spec.task)
    golds = [e.gold for e in examples]
    scores = task.score(preds, golds, spec.labels) if task.metric_name else {}
    metric = task.metric_name
    rows = [{"row": e.row, "prediction": p, "gold": e.gold, **(x or {})} for e, p, x in zip(examples, preds, extra or [None] * len(preds))]
    return EvalResult(metric, scores.get(metric) if metric else None, scores, len(examples), round(seconds, 2), rows)


def _uses_scoring(spec) -> bool:
    task = get_task(spec.task)
    return task.choice_based and not (spec.teacher.chain_of_thought and spec.train.keep_rationale)


def evaluate_model(spec, examples: list[Example], model: str, adapter: str | Path | None = None,
                   progress: ProgressFn | None = None, stage: str = "evaluating", should_stop=None) -> EvalResult:
    """Score one student model (optionally with a peft adapter) with the student's zero-shot prompt."""
    from .models import load_model, render_chat
    from .scoring import generate, score_options

    t0 = time.monotonic()
    task = get_task(spec.task)
    lm, tok = load_model(model, spec.student.device, spec.student.dtype, adapter=str(adapter) if adapter else None)
    prompts = [render_chat(tok, student_messages(task, e, spec.labels, spec.teacher.chain_of_thought, spec.instructions)) for e in examples]
    tracker = Tracker(stage, len(examples), progress)
    preds: list[str | None] = []
    extra: list[dict] = []
    bs = spec.eval.batch_size
    for start in range(0, len(examples), bs):
        if should_stop and should_stop():
            from .errors import Cancelled

            raise Cancelled("evaluation was cancelled; finished parts are kept in evaluation.json.")
        chunk = examples[start:start + bs]
        ptexts = prompts[start:start + bs]
        if _uses_scoring(spec):
            opts = [task.options(e, spec.labels) for e in chunk]
            logps = score_options(lm, tok, ptexts, opts, batch_size=bs)
            for o, lp in zip(opts, logps):
                best = max(range(len(o)), key=lambda i: lp[i])
                preds.append(o[best])
                extra.append({})
        else:
            gens = generate(lm, tok, ptexts, max_new_tokens=spec.eval.max_new_tokens, batch_size=bs)
            for e, g in zip(chunk, gens):
                parsed = task.parse(g.text, e, spec.labels)
                preds.append(parsed.label)
                extra.append({"text": g.text[:2000], "error": parsed.error})
        tracker.advance(len(chunk))
    return _score(spec, examples, preds, time.monotonic() - t0, extra)


def evaluate_teacher(spec, examples: list[Example], progress: ProgressFn | None = None, should_stop=None) -> EvalResult:
    """The teacher as configured (few-shot, chain of thought) on the test rows; answers are cached like labels."""
    from .labelling import ask_teacher, choose_rows

    t0 = time.monotonic()
    _, demos = choose_rows(spec)
    results = ask_teacher(spec, examples, demos, progress=progress, should_stop=should_stop, stage="evaluating teacher")
    preds = [r.label if not r.reason else None for r in results]
    extra = [{"confidence": r.confidence, "error": r.reason} for r in results]
    return _score(spec, examples, preds, time.monotonic() - t0, extra)


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


@holds_run_lock  # one process per run folder (pipeline/runlock.py)
def evaluate_run(spec, progress: ProgressFn | None = None, should_stop=None) -> dict[str, Any]:
    """Teacher, student_base and student_distilled on the test split; returns and saves evaluation.json."""
    out = Path(spec.out)
    path = out / "evaluation.json"
    state = _load_state(path)
    fingerprint = {"test": spec.dataset.test, "test_size": spec.dataset.test_size, "seed": spec.dataset.seed,
                   "student": spec.student.model, "teacher": [spec.teacher.provider, spec.teacher.model, spec.teacher.few_shot],
                   "held_out": None if spec.dataset.test else [spec.dataset.train, spec.dataset.test_share]}  # pipeline/splits.py
    if state.get("fingerprint") != fingerprint:
        state = {"fingerprint": fingerprint, "results": {}}
    examples = test_examples(spec)
    adapter = out / "student"
    if not (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").is_file():
        raise EvaluationError(f"no trained student in {adapter}; run `distillery train` (or `distillery run`) first.")
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
            result = evaluate_teacher(spec, examples, progress, should_stop)
        else:
            result = evaluate_model(spec, examples, model, adp, progress, f"evaluating {name}", should_stop)
        state["results"][name] = result.to_dict()
        _write_predictions(out / f"predictions_{name}.jsonl", result.predictions)
        _save_state(path, state)
    return state


def _write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
