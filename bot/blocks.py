"""Block Kit for the Slack bot, built by pure functions (data in, message dict out; no Slack calls).

    msg = plan_card(plan_id, plan.summary)            # {"text": fallback, "blocks": [...]} with Start / Cancel
    msg = plan_decided(plan_id, plan.summary, "Started by <@U1> as run `ab12cd34`.")   # same card, no buttons
    msg = status_message(run)                         # one line per update: stage, done/total, ETA
    msg = report_message(run_id, report)              # scores table, gap closed, labelling, training, adapter
    text = failure_text(run_id, error, out)

`run` and `report` are plain dicts (RunRecord.to_dict() / report.json). Every message has a `text` fallback,
which is also what notifications and screen readers show.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "START_ACTION",
    "CANCEL_ACTION",
    "plan_card",
    "plan_decided",
    "status_line",
    "status_message",
    "report_message",
    "failure_text",
    "cancelled_text",
    "format_duration",
    "format_count",
    "load_lines",
]

START_ACTION = "distill_start"
CANCEL_ACTION = "distill_cancel"
STAGES = ("labelling", "training", "evaluating")
PERCENT_METRICS = ("accuracy", "exact_match", "rouge_l", "macro_f1")


# ---- small formatters ----------------------------------------------------------------------------------------

def format_duration(seconds: float | None) -> str:
    """12 s, 4 min 05 s, 2 h 10 min; "unknown" for None."""
    if seconds is None:
        return "unknown"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def format_count(n: float | int | None) -> str:
    """1234 -> 1.2k, 3_400_000 -> 3.4M."""
    if n is None:
        return "unknown"
    n = float(n)
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return f"{n:.0f}"


def _money(usd: float | None, provider: str | None = None) -> str:
    """A cost; zero is "free" only for the local teacher (an API teacher at $0 has no price configured)."""
    if usd is None:
        return "unknown"
    if usd == 0:
        return "free (local)" if provider == "local" else "$0.00" if not provider else "$0.00 (no price set for this teacher)"
    return f"${usd:,.2f}" if usd >= 0.01 else f"${usd:.4f}"


def _score(value: float | None, metric: str | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:.1f}" if metric in PERCENT_METRICS else f"{value:.4f}"


def _pick(d: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if d.get(name) is not None:
            return d[name]
    return default


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "█" * filled + "░" * (width - filled)


def _fields(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Section blocks of two-column fields (Slack allows 10 fields per section)."""
    fields = [{"type": "mrkdwn", "text": f"*{label}*\n{value}"} for label, value in pairs]
    return [{"type": "section", "fields": fields[i:i + 10]} for i in range(0, len(fields), 10)]


# ---- the plan card -------------------------------------------------------------------------------------------

def _plan_pairs(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Label/value pairs of a plan summary (skills.operations.plan_distillation's summary dict)."""
    est = summary.get("estimate") or {}
    method = summary.get("method")
    rows = _pick(summary, "rows", default=est.get("rows"))
    tokens = _pick(summary, "estimated_tokens", default=None)
    if tokens is None and (est.get("prompt_tokens") is not None or est.get("completion_tokens") is not None):
        tokens = (est.get("prompt_tokens") or 0) + (est.get("completion_tokens") or 0)
    cost = _pick(summary, "estimated_cost_usd", default=est.get("cost_usd"))
    rough = " (rough)" if est.get("rough") else ""
    priced = f" at {est['pricing']}" if est.get("pricing") not in (None, "list price") else ""  # teacher.batch
    hardware = str(_pick(summary, "hardware_needed", "hardware", default="unknown"))
    if summary.get("hardware_here"):
        hardware += f"; here: {summary['hardware_here']}"
    if summary.get("runnable") is False:
        hardware += f"\n*Not runnable here:* {summary.get('why') or 'not enough memory'}"
    minutes = summary.get("expected_minutes")
    expected = f"~{minutes:g} min" if isinstance(minutes, (int, float)) else str(_pick(summary, "expected_time", default="unknown"))
    return [
        ("Dataset", f"`{_pick(summary, 'dataset', default='?')}`"),
        ("Task", str(_pick(summary, "task", default="?"))),
        ("Teacher", f"`{_pick(summary, 'teacher', default='?')}`"),
        *_teacher_endpoint(summary),
        ("Student", f"`{_pick(summary, 'student', default='?')}`" + (f" ({method})" if method else "")),
        ("Rows to label", format_count(rows) if isinstance(rows, (int, float)) else "all"),
        ("Test", str(summary.get("test") or "no test rows")),
        ("Teacher tokens (est.)", (format_count(tokens) + rough) if isinstance(tokens, (int, float)) else "unknown"),
        ("Teacher cost (est.)", (_money(cost, summary.get("teacher_provider")) + rough + priced) if isinstance(cost, (int, float)) else "unknown"),
        ("Hardware", hardware),
        ("Expected time", expected),
    ]


def _teacher_endpoint(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Where the teacher's requests go and which key variable they use (host only, never credentials)."""
    if not summary.get("teacher_endpoint"):
        return []
    key = f"; key `{summary['teacher_key_env']}`" if summary.get("teacher_key_env") else "; no key"
    return [("Teacher endpoint", f"{summary['teacher_endpoint']}{key}")]


def _plan_text(summary: dict[str, Any]) -> str:
    return (f"Plan: distil `{_pick(summary, 'dataset', default='?')}` from `{_pick(summary, 'teacher', default='?')}` "
            f"into `{_pick(summary, 'student', default='?')}`.")


def plan_card(plan_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The plan with Start and Cancel buttons; both buttons carry the plan id as their value."""
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{_plan_text(summary)}*"}}]
    blocks += _fields(_plan_pairs(summary))
    notes = summary.get("notes")
    if notes:
        notes = notes if isinstance(notes, list) else [notes]
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": "• " + "\n• ".join(map(str, notes))[:2900]}]})
    start = {"type": "button", "action_id": START_ACTION, "value": plan_id, "style": "primary",
             "text": {"type": "plain_text", "text": "Start"}}
    if summary.get("runnable") is False:
        start.pop("style")
        alternatives = summary.get("alternatives") or []
        if alternatives:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": "Alternatives: " + "; ".join(map(str, alternatives))[:2900]}]})
    blocks.append({"type": "actions", "block_id": f"plan:{plan_id}", "elements": [
        start,
        {"type": "button", "action_id": CANCEL_ACTION, "value": plan_id, "text": {"type": "plain_text", "text": "Cancel"}},
    ]})
    return {"text": _plan_text(summary) + " Start or cancel it here.", "blocks": blocks}


def plan_decided(plan_id: str, summary: dict[str, Any], note: str) -> dict[str, Any]:
    """The same card once decided: no buttons, a line saying what happened."""
    card = plan_card(plan_id, summary)
    blocks = [b for b in card["blocks"] if b["type"] != "actions"]
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
    return {"text": f"{_plan_text(summary)} {note}", "blocks": blocks}


# ---- the status message --------------------------------------------------------------------------------------

def status_line(run: dict[str, Any]) -> str:
    """One line: `ab12cd34` training 12/40 steps, 2.1 steps/s, ETA 13 s."""
    run_id, status = run.get("id", "?"), run.get("status", "queued")
    if status == "queued":
        return f"Run `{run_id}` is queued; a worker will pick it up."
    if status == "done":
        return f"Run `{run_id}` is done."
    if status == "failed":
        return f"Run `{run_id}` failed."
    if status == "cancelled":
        return f"Run `{run_id}` was cancelled."
    stage = run.get("stage") or status
    p = run.get("progress") or {}
    line = f"Run `{run_id}`: {stage}"
    if p.get("total"):
        unit = p.get("unit") or "rows"
        line += f" {p.get('done', 0)}/{p['total']} {unit}"
        if p.get("rate"):
            line += f", {p['rate']:.1f} {unit}/s"
        if p.get("eta_s") is not None:
            line += f", ETA {format_duration(p['eta_s'])}"
    if (p.get("info") or {}).get("status"):  # e.g. "waiting for batch (x of y done)" with teacher.batch
        line += f", {p['info']['status']}"
    return line + "."


def status_message(run: dict[str, Any]) -> dict[str, Any]:
    """The one status message of a run, updated in place: stages done/current, a bar and the numbers."""
    status = run.get("status", "queued")
    stage = run.get("stage") or (status if status in STAGES else None)
    current = STAGES.index(stage) if stage in STAGES else (len(STAGES) if status == "done" else -1)
    marks = []
    for i, name in enumerate(STAGES):
        mark = "✅" if i < current or status == "done" else ("⏳" if i == current and status in STAGES else "▫️")
        marks.append(f"{mark} {name}")
    line = status_line(run)
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": line}},
                                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "   ".join(marks)}]}]
    p = run.get("progress") or {}
    if status in STAGES and p.get("total"):
        blocks.insert(1, {"type": "section", "text": {"type": "mrkdwn",
                                                       "text": f"`{_bar(p.get('done', 0) / p['total'])}` {100 * p.get('done', 0) / p['total']:.0f} %"}})
    return {"text": line, "blocks": blocks}


# ---- the report ----------------------------------------------------------------------------------------------

def _scores_table(report: dict[str, Any]) -> str:
    metric = report.get("metric") or "score"
    scores = report.get("scores") or {}
    unit = f"{metric} (%)" if metric in PERCENT_METRICS else metric
    rows = [("model", unit), ("teacher", _score(scores.get("teacher"), metric)),
            ("student (base)", _score(scores.get("student_base"), metric)),
            ("student (distilled)", _score(scores.get("student_distilled"), metric))]
    width = max(len(r[0]) for r in rows) + 2
    return "```\n" + "\n".join(f"{name:<{width}}{value:>8}" for name, value in rows) + "\n```"


def report_message(run_id: str, report: dict[str, Any]) -> dict[str, Any]:
    """The final report: the three scores as a table, gap closed, labelling and training figures, the adapter."""
    gap = report.get("gap_closed")
    gap_text = "n/a" if gap is None else f"{gap * 100:.0f} %"
    if report.get("gap_within_noise"):  # a percentage of noise means nothing (pipeline/report.py)
        gap_text = "not meaningful (the teacher-base gap is within noise on this test size)"
    warnings = [str(w) for w in report.get("warnings") or []]
    lab = report.get("labelling") or {}
    tr = report.get("training") or {}
    ev = report.get("evaluation") or {}
    paths = report.get("paths") or {}
    scores = report.get("scores") or {}
    metric = report.get("metric")
    headline = (f"Run `{run_id}` is done: the distilled student scores {_score(scores.get('student_distilled'), metric)} "
                f"vs {_score(scores.get('student_base'), metric)} before and {_score(scores.get('teacher'), metric)} "
                f"for the teacher; gap closed {gap_text}."
                + "".join(f"\nWarning: {w}" for w in warnings))
    labelling = (f"{lab.get('accepted', 0)} of {lab.get('requested', 0)} rows accepted, {lab.get('rejected', 0)} rejected; "
                 f"{format_count(lab.get('prompt_tokens', 0))} prompt + {format_count(lab.get('completion_tokens', 0))} "
                 f"completion tokens, {_money(lab.get('cost_usd'), (report.get('teacher') or {}).get('provider') if isinstance(report.get('teacher'), dict) else None)}")
    final_loss = tr.get("final_loss")
    training = (f"{tr.get('examples', 0)} examples, {tr.get('steps', 0)} steps in {format_duration(tr.get('seconds'))}"
                f" ({tr.get('tokens_per_second') or 0:.0f} tokens/s)"
                + (f", final loss {final_loss:.4f}" if isinstance(final_loss, (int, float)) else ""))
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Run `{run_id}` is done* ({report.get('task', '?')}, "
                                                               f"{ev.get('examples', '?')} test rows)"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _scores_table(report)}},
        *[{"type": "section", "text": {"type": "mrkdwn", "text": f":warning: *Warning:* {w}"[:2900]}} for w in warnings],
        *_fields([("Gap closed", f"{gap_text}  _(distilled - base) / (teacher - base)_"),
                  ("Labelling", labelling), ("Training", training),
                  *([("Targets", _targets_text(report["targets"]))] if report.get("targets") else []),
                  ("Adapter", f"`{paths.get('adapter', '?')}`")]),
    ]
    from pipeline.report import judged_lines  # free text: the judge's win/tie/loss rates and its cost

    judged = judged_lines(report)
    if judged:
        blocks.insert(2, {"type": "section", "text": {"type": "mrkdwn", "text": ("*Judged*\n" + "\n".join(judged))[:2900]}})
    if paths.get("adapter"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Load it*\n```" + load_lines(report) + "```"}})
    return {"text": headline, "blocks": blocks}


def _targets_text(targets: dict[str, Any]) -> str:
    """What the student learnt from: the rationale mode and the label targets (report.json `targets`)."""
    labels = targets.get("labels") or "hard"
    rationale = targets.get("rationale_text") or ("yes" if targets.get("rationales_in_targets") else "no (answer only)")
    from pipeline.report import soft_source_text  # e.g. "soft labels: 16 from logprobs"

    source = soft_source_text(targets) if labels != "hard" else ""
    return (f"rationales: {rationale}; labels: {labels}" + (f" (KL weight {targets.get('kd_weight')})" if labels != "hard" else "")
            + (f"; {source}" if source else ""))


def load_lines(report: dict[str, Any]) -> str:
    """The two lines that load the distilled student (a peft adapter; a full model for method full)."""
    adapter = (report.get("paths") or {}).get("adapter") or "RUN/student"
    if ((report.get("student") or {}).get("method")) == "full":
        return f'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("{adapter}")'
    return f'from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained("{adapter}")'



def failure_text(run_id: str, error: str | None, out: str | None) -> str:
    """One sentence: which run failed, why, and that what it produced is kept."""
    why = (error or "no reason was recorded").rstrip(".")
    kept = f" What it produced is kept in `{out}`." if out else ""
    return f"Run `{run_id}` failed: {why}.{kept}"


def cancelled_text(run_id: str, out: str | None) -> str:
    kept = f"; what it produced is kept in `{out}`" if out else ""
    return f"Run `{run_id}` was cancelled{kept}."
