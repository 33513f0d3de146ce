"""The main job: label, then train, then evaluate, then report, in one call.

    report = run(load_spec(None))     # the embedded default; `distillery run` in a terminal

Re-running the same spec after a crash or a kill continues where it stopped: labelling re-sends nothing that
was answered (the answer cache), training resumes from its last checkpoint, evaluation keeps finished parts,
and finished stages are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .progress import ProgressFn
from .tasks import resolve_spec

__all__ = ["run", "STAGES"]

STAGES = ("labelling", "training", "evaluating", "reporting")
StageFn = Callable[[str, str, dict], None]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _labelling_done(spec) -> dict[str, Any] | None:
    """labelling.json of a finished labelling of this very spec, else None."""
    out = Path(spec.out)
    summary = _read_json(out / "labelling.json")
    if not summary or not (out / "labels.jsonl").is_file():
        return None
    if summary.get("fingerprint") not in (None, _labelling_fingerprint(spec)):
        return None
    return summary if summary.get("complete", True) else None


def _labelling_fingerprint(spec) -> dict[str, Any]:
    t, d = spec.teacher, spec.dataset
    return {"train": d.train, "train_size": d.train_size, "seed": d.seed, "task": spec.task, "labels": spec.labels,
            "provider": t.provider, "model": t.model, "few_shot": t.few_shot, "cot": t.chain_of_thought,
            "self_consistency": t.self_consistency, "min_confidence": t.min_confidence, "agree_with_gold": t.agree_with_gold}


def run(spec, progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
        on_stage: StageFn | None = None) -> dict[str, Any]:
    """Run every stage that is not finished yet and return report.json's content."""
    from .evaluation import evaluate_run
    from .labelling import label
    from .report import build_report, write_report
    from .training import train

    def stage(name: str, event: str, data: dict | None = None) -> None:
        if on_stage:
            on_stage(name, event, data or {})

    # 1. resolve the spec (task, labels) and write it into the run folder
    spec = resolve_spec(spec)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")

    # 2. teacher labels the training rows (skipped when labelling.json says this spec finished)
    labelling = _labelling_done(spec)
    if labelling is None:
        stage("labelling", "started")
        summary = label(spec, progress=progress, should_stop=should_stop)
        labelling = _read_json(out / "labelling.json") or _as_dict(summary)
        stage("labelling", "finished", {k: labelling.get(k) for k in ("requested", "accepted", "rejected", "cost_usd")})
    else:
        stage("labelling", "skipped", {"accepted": labelling.get("accepted")})

    # 3. student learns from the labels (train() resumes from checkpoints and skips a finished adapter)
    stage("training", "started")
    training = _as_dict(train(spec, progress=progress, should_stop=should_stop))
    stage("training", "finished", {k: training.get(k) for k in ("steps", "final_loss", "seconds")})

    # 4. teacher, base student and distilled student on the test split
    stage("evaluating", "started")
    evaluation = evaluate_run(spec, progress=progress, should_stop=should_stop)
    stage("evaluating", "finished", {n: r.get("score") for n, r in evaluation["results"].items()})

    # 5. report.json, report.md, report.png
    stage("reporting", "started")
    report = build_report(spec, labelling, training, evaluation)
    write_report(spec, report, training.get("loss_history") or [])
    _refresh_model_card(spec)
    stage("reporting", "finished", {"scores": report["scores"], "gap_closed": report["gap_closed"]})
    return report


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    from dataclasses import asdict, is_dataclass

    return asdict(obj) if is_dataclass(obj) else dict(vars(obj))


def _refresh_model_card(spec) -> None:
    """Let the trainer rewrite the model card now that report.json has the scores (if it offers that)."""
    try:
        from .training import write_model_card
    except ImportError:
        return
    write_model_card(spec)
