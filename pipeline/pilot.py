"""The teacher pilot: a few gold rows set aside before labelling, to choose the answer cue and to measure the teacher.

    rows = pilot_rows(spec)                         # never labelled, never a demonstration, never a test row
    spec, choice = resolve_cue(spec)                # teacher.answer_cue=auto -> the best candidate (OUT/pilot.json)
    result = run_pilot(spec)                        # the teacher's agreement with gold and the base student's score

Why: a base model's few-shot accuracy depends on the word before its answer. On SST-2, Gemma 3 270M 8-shot scores
68 % after "Answer:" and 85 % after "Sentiment:"; a prompt detail tuned for one dataset decided whether distillation
helped or hurt. So the cue is chosen from the data, the same way whatever front door planned the run:

- `answer_cue: auto` (the default) with a local teacher in plain-text format on a closed-answer task with gold
  labels: each candidate (teacher.answer_cues, else one derived from the task and label names, then Answer, Label,
  Sentiment, Category, Topic) labels the pilot rows; the best agreement with gold wins, ties go to the first;
- otherwise `auto` is the derived cue (an API or chat-format teacher never sees the cue).

The pilot rows (dataset.pilot_size, default 32 when cue selection applies, at most an eighth of the gold training
rows, none below 8) are drawn, seeded, from the training pool after the test rows were removed (pipeline/splits.py)
and are taken out of the rows to label and the demonstrations (labelling.choose_rows). The choice and every
candidate's score are kept in OUT/pilot.json: a resume with the same settings reuses it and sends nothing.
Answers go to the run's answer cache like any other (the cache key covers the cue).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

from . import splits
from .datasets import Example
from .tasks import get_task, resolve_spec

__all__ = ["AUTO", "CUE_CANDIDATES", "PILOT_FILE", "DEFAULT_PILOT", "MIN_PILOT", "derived_cue", "cue_candidates",
           "selects_cue", "pilot_size", "pilot_rows", "pilot_keys", "resolve_cue", "run_pilot", "standard_error",
           "clearly_better"]

AUTO = "auto"
CUE_CANDIDATES = ("Answer", "Label", "Sentiment", "Category", "Topic")
PILOT_FILE = "pilot.json"
DEFAULT_PILOT = 32
MIN_PILOT = 8

_SENTIMENT = {"positive", "negative", "neutral", "pos", "neg", "mixed", "very positive", "very negative"}
_NLI = {"entailment", "contradiction", "neutral", "not_entailment", "not entailment", "non-entailment"}
_TOPIC = {"world", "sports", "business", "sci/tech", "science", "technology", "politics", "health",
          "entertainment", "finance", "sport", "tech", "travel", "education"}
_EMOTION = {"joy", "sadness", "anger", "fear", "love", "surprise", "disgust"}


def derived_cue(task: str | None, labels: list[str] | None) -> str:
    """The cue a person would write for these labels: Sentiment, Relation, Topic, Emotion, else Label or Answer."""
    names = {str(x).strip().lower() for x in labels or []}
    if names and names <= _SENTIMENT:
        return "Sentiment"
    if task == "nli" or (names and names <= _NLI):
        return "Relation"
    if names and len(names & _TOPIC) * 2 >= len(names):
        return "Topic"
    if names and len(names & _EMOTION) * 2 >= len(names):
        return "Emotion"
    return "Label" if task == "classification" else "Answer"


def cue_candidates(spec) -> list[str]:
    """The cues tried, in order (ties go to the first): teacher.answer_cues, else the derived cue then the defaults."""
    if spec.teacher.answer_cues:
        return list(dict.fromkeys(c for c in spec.teacher.answer_cues if c and c != AUTO))
    return list(dict.fromkeys([derived_cue(spec.task, spec.labels), *CUE_CANDIDATES]))


def _plain_format(t) -> bool:
    """Whether the local teacher renders plain text (a base model without a chat template of its own)."""
    if t.prompt_format != "auto":
        return t.prompt_format == "plain"
    from .models import EMBEDDED, MARKER

    if t.model == EMBEDDED:
        return True  # converted from GGUF; its chat template is ours (models.MARKER says so)
    folder = Path(t.model).expanduser()
    if not folder.is_dir():
        return False  # a hub id: chat models are the usual case; set teacher.prompt_format=plain to select cues
    marker = folder / MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8") or "{}").get("chat_template_added"):
        return True
    config = folder / "tokenizer_config.json"
    has = (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file()
    if config.is_file():
        has = has or bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    return not has


def selects_cue(spec) -> bool:
    """Whether answer_cue=auto is settled by trying candidates (local plain-format teacher, closed answers)."""
    t, task = spec.teacher, get_task(spec.task)
    return (t.answer_cue == AUTO and t.provider == "local" and task.choice_based and not t.chain_of_thought
            and t.self_consistency == 1 and _plain_format(t))


def pilot_size(spec) -> int:
    """Rows wanted for the pilot: dataset.pilot_size, else DEFAULT_PILOT when cue selection applies, else 0."""
    wanted = spec.dataset.pilot_size
    if wanted is None:
        return DEFAULT_PILOT if selects_cue(spec) else 0
    return int(wanted)


def pilot_rows(spec) -> list[Example]:
    """The pilot sample: seeded gold rows of the training pool (never test rows), classes taken in turn."""
    spec = resolve_spec(spec)
    task = get_task(spec.task)
    want = pilot_size(spec)
    if want <= 0 or task.metric_name is None:
        return []
    gold = [e for e in splits.training_pool(spec) if e.gold not in (None, "")]
    size = min(want, len(gold) // 8)
    if size < MIN_PILOT:
        return []
    order = list(gold)
    random.Random(f"distillery-pilot-{spec.dataset.seed}").shuffle(order)
    if not task.choice_based or spec.task == "multiple_choice":
        return order[:size]
    by_class: dict[str, list[Example]] = {}
    for e in order:
        by_class.setdefault(str(e.gold), []).append(e)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[Example] = []
    while len(chosen) < size:
        for q in queues:
            if q and len(chosen) < size:
                chosen.append(q.pop(0))
    return chosen


def pilot_keys(spec) -> set[str]:
    """splits.fields_key of every pilot row (labelling leaves them out of rows and demonstrations)."""
    return {splits.fields_key(e) for e in pilot_rows(spec)}


# choosing the cue --------------------------------------------------------------------------------------------


def _with_cue(spec, cue: str, rows: int | None = None):
    """The spec with a concrete cue; after a pilot also its pilot_size, so the pilot rows stay set aside."""
    update: dict[str, Any] = {"teacher": spec.teacher.model_copy(update={"answer_cue": cue})}
    if rows is not None:
        update["dataset"] = spec.dataset.model_copy(update={"pilot_size": pilot_size(spec)})
    return spec.model_copy(update=update)


def _agreement(task, results, rows: list[Example]) -> float:
    from .judging import same_label

    right = sum(1 for r, e in zip(results, rows) if r.reason is None and same_label(task, r.label, e.gold))
    return right / len(rows) if rows else 0.0


def _fingerprint(spec, rows: list[Example], candidates: list[str]) -> str:
    t = spec.teacher
    data = [t.provider, t.model, t.few_shot, t.prompt_format, t.params.model_dump(mode="json"), spec.task, spec.labels,
            spec.instructions, spec.dataset.train, spec.dataset.seed, [str(e.row) for e in rows], candidates]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / PILOT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(out: Path, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (PILOT_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(out / PILOT_FILE)


def resolve_cue(spec, progress=None, should_stop=None, run: bool = True) -> tuple[Any, dict[str, Any]]:
    """(spec with a concrete teacher.answer_cue, the choice: answer_cue, source, scores, pilot rows).

    An explicit cue is kept. `auto` is settled on the pilot rows when cue selection applies (run=False: only a
    choice already in OUT/pilot.json is used, else the derived cue), else it is the derived cue.
    """
    spec = resolve_spec(spec)
    if spec.teacher.answer_cue != AUTO:
        return spec, {"answer_cue": spec.teacher.answer_cue, "source": "spec"}
    candidates = cue_candidates(spec) or [derived_cue(spec.task, spec.labels)]
    rows = pilot_rows(spec) if selects_cue(spec) else []
    if not rows:
        why = "derived from the task and labels" + ("" if selects_cue(spec) else " (the teacher does not use a cue)"
                                                    if spec.teacher.provider != "local" else "")
        return _with_cue(spec, candidates[0]), {"answer_cue": candidates[0], "source": why}
    out = Path(spec.out)
    fingerprint = _fingerprint(spec, rows, candidates)
    saved = _load(out).get("cue") or {}
    if saved.get("fingerprint") == fingerprint and saved.get("answer_cue") in candidates:
        return _with_cue(spec, saved["answer_cue"], len(rows)), saved
    if not run:
        return _with_cue(spec, candidates[0], len(rows)), {"answer_cue": candidates[0], "source": "derived (pilot not run yet)"}
    from .labelling import ask_teacher, choose_rows

    task = get_task(spec.task)
    _, demos = choose_rows(spec)  # the run's own demonstrations (the pilot rows are not among them)
    scores: dict[str, float] = {}
    for cue in candidates:
        results = ask_teacher(_with_cue(spec, cue), rows, demos, progress, should_stop, stage=f"pilot: answer cue {cue}")
        scores[cue] = round(_agreement(task, results, rows), 4)
    best = max(candidates, key=lambda c: (scores[c], -candidates.index(c)))
    choice = {"answer_cue": best, "source": f"best of {len(candidates)} cues on {len(rows)} gold pilot rows",
              "scores": scores, "pilot_rows": [e.row for e in rows], "fingerprint": fingerprint}
    data = _load(out)
    data["cue"] = choice
    _save(out, data)
    return _with_cue(spec, best, len(rows)), choice


# the pilot on a plan -----------------------------------------------------------------------------------------


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of a share p measured on n rows."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("inf")


def clearly_better(teacher: float | None, base: float | None, n: int, k: float = 1.0) -> bool | None:
    """Whether teacher - base exceeds k standard errors of that difference (None when either is unknown)."""
    if teacher is None or base is None or not n:
        return None
    se = math.sqrt(standard_error(teacher, n) ** 2 + standard_error(base, n) ** 2)
    return teacher - base > max(k * se, 1e-9)


ADVICE = "try more shots (few_shot=16), chain of thought (chain_of_thought=true) or a stronger teacher profile"


def run_pilot(spec, progress=None, should_stop=None, student: bool = True) -> dict[str, Any]:
    """Label the pilot rows with the teacher (choosing the cue first) and score the base student on them.

    Answers are cached in spec.out. Returns rows, teacher (agreement with gold), student_base, answer_cue,
    cue_scores, clearly_better and, when the teacher is not clearly better than the base student, a warning.
    """
    from .labelling import ask_teacher, choose_rows

    spec = resolve_spec(spec)
    if spec.dataset.pilot_size is None and not selects_cue(spec):
        spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"pilot_size": DEFAULT_PILOT})})
    rows = pilot_rows(spec)
    if not rows:
        return {"status": "not possible", "why": "the dataset has too few training rows with gold labels for a pilot"}
    spec, choice = resolve_cue(spec, progress, should_stop)
    task = get_task(spec.task)
    _, demos = choose_rows(spec)
    results = ask_teacher(spec, rows, demos, progress, should_stop, stage="pilot: teacher")
    out: dict[str, Any] = {"status": "done", "rows": len(rows), "teacher": round(_agreement(task, results, rows), 4),
                           "answer_cue": choice.get("answer_cue"), "cue_scores": choice.get("scores"),
                           "prompt_tokens": sum(r.prompt_tokens for r in results),
                           "completion_tokens": sum(r.completion_tokens for r in results)}
    if student:
        from .evaluation import evaluate_model

        base = evaluate_model(spec, rows, spec.student.model, None, progress, "pilot: base student", should_stop)
        out["student_base"] = None if base.score is None else round(base.score, 4)
        better = clearly_better(out["teacher"], out["student_base"], len(rows))
        out["clearly_better"] = better
        if better is False:
            out["warning"] = (f"the teacher agrees with gold on {out['teacher'] * 100:.0f} % of {len(rows)} pilot rows, not clearly "
                              f"better than the base student's {out['student_base'] * 100:.0f} %: distilling may not help; {ADVICE}.")
    return out
