"""The main job: label, then train, then evaluate, then report, in one call.

    report = run(load_spec(None))     # the embedded default; `distillery run` in a terminal

Re-running the same spec after a crash or a kill continues where it stopped: labelling re-sends nothing that
was answered (the answer cache), training resumes from its last checkpoint or returns the finished adapter,
and evaluation keeps its finished parts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .progress import ProgressFn
from .runlock import holds_run_lock
from .tasks import resolve_spec

__all__ = ["run", "STAGES"]

STAGES = ("labelling", "training", "evaluating", "reporting")
StageFn = Callable[[str, str, dict], None]


@holds_run_lock  # one process per run folder (pipeline/runlock.py)
def run(spec, progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
        on_stage: StageFn | None = None) -> dict[str, Any]:
    """Run every stage that is not finished yet and return report.json's content."""
    from .evaluation import evaluate_run
    from .judge import judge_spec
    from .models import clear_model_cache, free_memory
    from .labelling import label
    from .report import build_report, write_report
    from .training import check_student, train, write_model_card

    def stage(name: str, event: str, data: dict | None = None) -> None:
        if on_stage:
            on_stage(name, event, data or {})

    # 1. resolve the spec (task, labels) and write it into the run folder
    spec = resolve_spec(spec)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")

    # 2. fail early on what training would refuse (QLoRA without CUDA) or an unknown judge profile (eval.judge),
    #    before any teacher token is spent
    check_student(spec)
    judge_spec(spec)

    # 3. teacher labels the training rows (answers already in the cache are reused, never sent again)
    stage("labelling", "started")
    labelling = _as_dict(label(spec, progress=progress, should_stop=should_stop))
    clear_model_cache()  # a local teacher's model is not needed while the student trains
    free_memory()
    stage("labelling", "finished", {k: labelling.get(k) for k in ("requested", "accepted", "rejected", "cost_usd", "cached")})

    # 4. student learns from the labels (train() resumes from checkpoints and skips a finished adapter)
    stage("training", "started")
    training = _as_dict(train(spec, progress=progress, should_stop=should_stop))
    free_memory()  # the training model is gone: give its memory back before evaluation loads the next one
    stage("training", "finished", {k: training.get(k) for k in ("steps", "final_loss", "seconds")})

    # 5. teacher, base student and distilled student on the test split
    stage("evaluating", "started")
    evaluation = evaluate_run(spec, progress=progress, should_stop=should_stop)
    stage("evaluating", "finished", {n: r.get("score") for n, r in evaluation["results"].items()})

    # 6. report.json, report.md, report.png
    stage("reporting", "started")
    report = build_report(spec, labelling, training, evaluation)
    write_report(spec, report, training.get("loss_history") or [])
    write_model_card(spec)  # now with the scores
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
