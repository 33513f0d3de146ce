"""Reports: report.json (a contract), report.md and report.png (scores as bars, the training loss curve).

    report = build_report(spec, labelling, training, evaluation)   # pure
    write_report(spec, report, loss_history)                        # files in spec.out

Each file is written whole to a temp name and renamed into place, so a reader never sees half a report and a
symbolic link planted under a report's name is replaced, never written through.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

from .targets import rationale_mode, rationale_text, student_reasons

__all__ = ["build_report", "render_markdown", "write_report", "gap_closed", "outcome_warnings", "collapse_warnings", "gap_text",
           "judged_lines"]

ORDER = ("teacher", "student_base", "student_distilled")


def gap_closed(teacher: float | None, base: float | None, distilled: float | None) -> float | None:
    """(distilled - base) / (teacher - base); None when undefined (no teacher score, or teacher == base)."""
    if teacher is None or base is None or distilled is None or abs(teacher - base) < 1e-12:
        return None
    return (distilled - base) / (teacher - base)


UNREADABLE_WARN_SHARE = 0.5  # warn when at least this share of a model's answers could not be read


def unreadable_warnings(results: dict[str, Any]) -> list[str]:
    """One sentence per model whose answers were mostly unreadable (its score then measures format, not skill)."""
    out = []
    for name in ORDER:
        r = results.get(name) or {}
        errors, n = r.get("errors") or {}, r.get("examples") or 0
        bad = sum(errors.values())
        if n and bad / n >= UNREADABLE_WARN_SHARE:
            kinds = ", ".join(f"{v} {k}" for k, v in errors.items())
            out.append(f"{name}: {bad} of {n} answers could not be read ({kinds}); its score reflects the answer format more than "
                       "the task (raise eval.max_new_tokens for truncated answers, or see predictions_" + name + ".jsonl).")
    return out


# warnings about the outcome (issue 10): a teacher no better than the base, a student made worse ---------------

NOISE_SE = 2.0  # a teacher-base gap within this many binomial standard errors is noise


def _noise(teacher: float, base: float, n: int) -> float:
    from .pilot import standard_error

    return NOISE_SE * (standard_error(teacher, n) ** 2 + standard_error(base, n) ** 2) ** 0.5


def outcome_warnings(scores: dict[str, Any], n: int) -> tuple[list[str], bool]:
    """(warning sentences with the likely cause, whether the teacher-base gap is within noise) for a finished run."""
    t, b, d = scores.get("teacher"), scores.get("student_base"), scores.get("student_distilled")
    warnings: list[str] = []
    if t is None or b is None or not n:
        return warnings, False
    noise = _noise(t, b, n)
    within = abs(t - b) <= noise
    weak = t - b <= noise
    if weak:
        warnings.append(f"the teacher ({t * 100:.1f}) was not clearly better than the base student ({b * 100:.1f}) on {n} test rows, "
                        "so distillation had little to teach; try more shots (teacher.few_shot=16), chain of thought "
                        "(teacher.chain_of_thought=true) or a stronger teacher profile.")
    if d is not None and d < b:
        cause = ("its teacher was no better than it, so the labels taught it the teacher's mistakes" if weak else
                 "the labels or the training hurt it (few accepted rows, too many epochs or too high a learning rate); "
                 "check rejected.jsonl and the loss curve")
        warnings.append(f"the distilled student ({d * 100:.1f}) scores below its base ({b * 100:.1f}): {cause}.")
    return warnings, within


def gap_text(report: dict[str, Any]) -> str:
    """"75 %", "n/a", or words when the teacher-base gap is within noise (a percentage of noise means nothing)."""
    if report.get("gap_within_noise"):
        return "not meaningful (the teacher-base gap is within noise on this test size)"
    gap = report.get("gap_closed")
    return "n/a" if gap is None else f"{gap * 100:.0f} %"


def _cue_line(report: dict[str, Any]) -> list[str]:
    cue = (report.get("labelling") or {}).get("answer_cue") or {}
    if not cue.get("scores"):
        return []
    scores = ", ".join(f"{c} {v * 100:.0f} %" for c, v in cue["scores"].items())
    return [f"Answer cue: {cue['answer_cue']} ({cue.get('source', 'chosen')}; agreement with gold: {scores})."]


COLLAPSE_MIN_ROWS = 4  # a single answer over fewer test rows says little


def collapse_warnings(results: dict[str, Any]) -> list[str]:
    """A closed-set student that gave one answer to every test row: its score is that answer's share of the rows.

    Seen on 24-row runs (benchmarks/README.md): the base Gemma 270M answers the shortest option everywhere and a
    student trained for 6 steps another one, so "distilled below base" was one option's share against another's.
    """
    out = []
    for name in ("student_base", "student_distilled"):
        r = results.get(name) or {}
        answers, n = r.get("answers") or {}, r.get("examples") or 0
        if n >= COLLAPSE_MIN_ROWS and len(answers) == 1 and sum(answers.values()) == n:
            option = str(next(iter(answers)))[:40]
            advice = ("it has not learnt the task yet: train on more rows or for more steps (train.max_steps)"
                      if name == "student_distilled" else "an untrained base often does this")
            out.append(f"{name} gave the same answer ('{option}') to all {n} test rows, so its score is that answer's share of "
                       f"the test rows, not skill at the task; {advice}.")
    return out


def build_report(spec, labelling: dict[str, Any], training: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    results = evaluation.get("results", {})
    metric = next((r.get("metric") for r in results.values() if r.get("metric")), None)
    scores = {name: (results[name]["score"] if name in results else None) for name in ORDER}
    out = Path(spec.out)
    examples = max((r.get("examples", 0) for r in results.values()), default=0)
    warnings, within_noise = outcome_warnings(scores, examples)
    warnings += collapse_warnings(results)
    return {
        "task": spec.task,
        "metric": metric,
        "scores": scores,
        "gap_closed": gap_closed(scores["teacher"], scores["student_base"], scores["student_distilled"]),
        "gap_within_noise": within_noise,
        "warnings": warnings,
        "all_scores": {name: results[name].get("scores", {}) for name in ORDER if name in results},
        "labelling": {
            "requested": labelling.get("requested", 0),
            "accepted": labelling.get("accepted", 0),
            "rejected": labelling.get("rejected", 0),
            "prompt_tokens": labelling.get("prompt_tokens", 0),
            "completion_tokens": labelling.get("completion_tokens", 0),
            "cost_usd": labelling.get("cost_usd", 0.0),
            "pricing": labelling.get("pricing", "list price"),
            "by_reason": labelling.get("by_reason", {}),
            "agreement_with_gold": labelling.get("agreement_with_gold"),
            "answer_cue": labelling.get("answer_cue") or {},  # the cue and how it was chosen (pipeline/pilot.py)
        },
        "training": {
            "examples": training.get("examples", 0),
            "steps": training.get("steps", 0),
            "seconds": training.get("seconds", 0.0),
            "tokens_per_second": training.get("tokens_per_second", 0.0),
            "final_loss": training.get("final_loss"),
            "method": spec.student.method,
        },
        "evaluation": {"examples": max((r.get("examples", 0) for r in results.values()), default=0),
                       "method": {name: results[name].get("method") for name in ORDER if name in results},
                       "unreadable": {name: results[name].get("errors") or {} for name in ORDER if name in results},
                       "warnings": unreadable_warnings(results)},
        "targets": {"rationale": rationale_mode(spec), "rationales_in_targets": student_reasons(spec),
                    "rationale_weight": spec.train.rationale_weight if rationale_mode(spec) == "multitask" else None,
                    "rationale_text": rationale_text(spec),
                    "labels": training.get("targets", "hard"), "kd_weight": training.get("kd_weight"),
                    "kd_temperature": training.get("kd_temperature"), "kd_positions": training.get("kd_positions"),
                    "soft_labels": labelling.get("soft_labels") or {}},
        "judged": evaluation.get("judged"),  # free text: pairwise verdicts vs the reference (pipeline/judge.py), or None
        "teacher": {"provider": spec.teacher.provider, "model": spec.teacher.model, "few_shot": spec.teacher.few_shot,
                    "chain_of_thought": spec.teacher.chain_of_thought},
        "student": {"model": spec.student.model, "method": spec.student.method},
        "paths": {
            "run": str(out.resolve()),
            "spec": str((out / "spec.yaml").resolve()),
            "labels": str((out / "labels.jsonl").resolve()),
            "rejected": str((out / "rejected.jsonl").resolve()),
            "adapter": str((out / "student").resolve()),
            "report_json": str((out / "report.json").resolve()),
            "report_md": str((out / "report.md").resolve()),
            "report_png": str((out / "report.png").resolve()),
        },
    }


def _fmt(value: float | None, metric: str | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:.1f}" if metric in ("accuracy", "exact_match", "rouge_l") else f"{value:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    metric = report.get("metric") or "score"
    s = report["scores"]
    lab, tr = report["labelling"], report["training"]
    lines = [
        f"# Distillation report: {report['task']}",
        "",
        f"Teacher `{report['teacher']['model']}` ({report['teacher']['provider']}, {report['teacher']['few_shot']}-shot"
        f"{', chain of thought' if report['teacher']['chain_of_thought'] else ''}) -> student `{report['student']['model']}` ({report['student']['method']}).",
        "",
        f"| model | {metric} (%) |",
        "| --- | --- |",
        f"| teacher | {_fmt(s.get('teacher'), metric)} |",
        f"| student_base | {_fmt(s.get('student_base'), metric)} |",
        f"| student_distilled | {_fmt(s.get('student_distilled'), metric)} |",
        "",
        *judged_lines(report, markdown=True),
        f"Gap closed: {gap_text(report)} (distilled - base) / (teacher - base), on {report['evaluation']['examples']} test rows.",
        *[f"**Warning:** {w}" for w in report.get("warnings") or []],
        *_cue_line(report),
        _eval_line(report),
        "",
        f"Labelling: {lab['accepted']} of {lab['requested']} rows accepted, {lab['rejected']} rejected"
        + (f" ({', '.join(f'{k}: {v}' for k, v in lab['by_reason'].items())})" if lab.get("by_reason") else "")
        + f"; {lab['prompt_tokens']:,} prompt + {lab['completion_tokens']:,} completion tokens, ${lab['cost_usd']:.4f} at {lab.get('pricing', 'list price')}.",
        f"Training: {tr['examples']} examples, {tr['steps']} steps in {tr['seconds']:.0f} s "
        f"({tr['tokens_per_second']:.0f} tokens/s), final loss {tr['final_loss'] if tr['final_loss'] is None else round(tr['final_loss'], 4)}.",
        "",
        f"Adapter: `{report['paths']['adapter']}`",
    ]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f} %"


def _rate(part: dict[str, Any], kind: str) -> str:
    ci = (part.get("ci95") or {}).get(kind)
    interval = f" [{ci[0] * 100:.0f}-{ci[1] * 100:.0f}]" if ci else ""
    return f"{_pct(part.get(kind + '_rate'))}{interval}"


def judged_lines(report: dict[str, Any], markdown: bool = False) -> list[str]:
    """The judged evaluation in words (report.md with a table, Slack and chat as plain lines); [] when not judged."""
    judged = report.get("judged") or {}
    judge = judged.get("judge") or {}
    if not judge:
        return []
    who = f"{judge.get('provider')}/{judge.get('model')}"
    if judge.get("error"):
        return [f"Judged evaluation by {who} did not run: {judge['error']}", ""] if markdown else [f"Judge {who}: not run ({judge['error']})"]
    against = "the teacher's answers" if judge.get("opponent") == "teacher" else "the reference answers"
    head = (f"Judged by {who} against {against}: pairwise, both orders (a win needs both; disagreement is a tie); "
            "95 % Wilson intervals in brackets.")
    rows = []
    for name, part in (judged.get("parts") or {}).items():
        left_out = ", ".join(f"{part[k]} {k.replace('_', ' ')}" for k in ("unparseable", "failed") if part.get(k))
        rows.append((name, _rate(part, "win"), _rate(part, "tie"), _rate(part, "loss"), _pct(part.get("score")), part.get("n", 0),
                     (left_out + " left out") if left_out else ""))
    cost = (f"Judge: {judge.get('requests', 0)} verdicts ({judge.get('sent', 0)} sent this run), {judge.get('prompt_tokens', 0):,} prompt + "
            f"{judge.get('completion_tokens', 0):,} completion tokens, ${judge.get('cost_usd', 0.0):.4f}.")
    if not markdown:
        return [f"{head}"] + [f"{n}: win {w}, tie {t}, loss {l}; score {sc} on {k} rows" + (f" ({x})" if x else "")
                              for n, w, t, l, sc, k, x in rows] + [cost]
    table = ["| model | win | tie | loss | score (win + tie/2) | rows | left out |", "| --- | --- | --- | --- | --- | --- | --- |"]
    table += [f"| {n} | {w} | {t} | {l} | {sc} | {k} | {x or '-'} |" for n, w, t, l, sc, k, x in rows]
    return ["", head, "", *table, "", cost, ""]


def _rationale_phrase(targets: dict[str, Any]) -> str:
    if targets.get("rationale") == "multitask":
        return f"trained on answer-only targets plus rationales {targets.get('rationale_text') or 'as a second task'}"
    return "trained on " + ("rationale + answer" if targets.get("rationales_in_targets") else "answer-only") + " targets"


def soft_source_text(targets: dict[str, Any]) -> str:
    """Where the soft labels came from (report.json `targets.soft_labels`), e.g. "soft labels: 16 from logprobs", or ""."""
    soft = targets.get("soft_labels") or {}
    sources = ", ".join(f"{n} from {src}" for src, n in (soft.get("sources") or {}).items())
    text = f"soft labels: {sources}" if sources else ""
    if soft.get("answers_without_logprobs"):
        text += f"{', ' if text else ''}{soft['answers_without_logprobs']} cached answers without logprobs"
    return text


def _labels_phrase(targets: dict[str, Any]) -> str:
    """How the labels were learnt: hard labels, or the teacher's soft distribution (train.targets)."""
    kind = targets.get("labels") or "hard"
    if kind == "hard":
        return "hard labels (train.targets=hard)"
    where = f"; {soft_source_text(targets)}" if soft_source_text(targets) else ""
    pos = targets.get("kd_positions")
    if pos:  # free text: the teacher's per-token top-k (pipeline/kd_text.py)
        return (f"{kind} labels (train.targets={kind}, KL weight {targets.get('kd_weight')}; top-k KL at {pos.get('kl', 0)} answer "
                f"tokens, plain cross-entropy at {pos.get('ce_only', 0)} the student's vocabulary could not take{where})")
    return (f"{kind} labels (train.targets={kind}, KL weight {targets.get('kd_weight')}, "
            f"temperature {targets.get('kd_temperature')}{where})")


def _eval_line(report: dict[str, Any]) -> str:
    ev = report.get("evaluation", {})
    targets = report.get("targets") or {}
    method = ev.get("method", {}).get("student_base")
    parts = [f"Student answers {method}" if method else "Student answers evaluated",
             _rationale_phrase(targets),
             _labels_phrase(targets)]
    unread = {n: e for n, e in (ev.get("unreadable") or {}).items() if e}
    if unread:
        parts.append("unreadable answers: " + "; ".join(f"{n} " + ", ".join(f"{v} {k}" for k, v in e.items()) for n, e in unread.items()))
    lines = ["; ".join(parts) + "."]
    lines += [f"**Warning:** {w}" for w in ev.get("warnings") or []]
    return "\n".join(lines)


def _chart(report: dict[str, Any], loss_history: list[dict[str, Any]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(ORDER)
    values = [report["scores"].get(n) or 0.0 for n in names]
    bars = ax1.bar(names, [v * 100 for v in values], color=["#6c757d", "#adb5bd", "#2a9d8f"])
    for b, v, n in zip(bars, values, names):
        ax1.text(b.get_x() + b.get_width() / 2, b.get_height() + 1, "n/a" if report["scores"].get(n) is None else f"{v * 100:.1f}", ha="center")
    ax1.set_ylim(0, 105)
    ax1.set_ylabel(f"{report.get('metric') or 'score'} (%)")
    ax1.set_title(f"{report['task']}: teacher vs student")
    if loss_history:
        ax2.plot([p["step"] for p in loss_history], [p["loss"] for p in loss_history], color="#264653")
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss")
    ax2.set_title("student training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _replace_file(path: Path, data: bytes) -> None:
    """Write `path` as a new file renamed into place: a symbolic link planted there is replaced, never followed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover (or a link) is removed, not written through
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_report(spec, report: dict[str, Any], loss_history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    _replace_file(out / "report.md", render_markdown(report).encode("utf-8"))
    png = io.BytesIO()
    _chart(report, loss_history or [], png)
    _replace_file(out / "report.png", png.getvalue())
    _replace_file(out / "report.json", json.dumps(report, indent=2).encode("utf-8"))
    return report
