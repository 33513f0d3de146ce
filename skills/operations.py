"""The skills as plain functions: the one place their behaviour lives (the plugin, the grammar, Slack and MCP call these).

    plan = plan_distillation("sst2", student="gemma-3-270m", teacher="gpt-4o-mini", rows=200)
    print(plan_text(plan))                       # what it will do, cost, hardware, whether it can run here
    record = start_plan(plan.id, {"user": "U1"}) # queues the run in the registry (a worker executes it)
    print(run_text(run_status(record.id)))

Each function takes its services as keyword arguments (`plans=`, `registry=`), defaulting to the ones in
DISTILLERY_HOME. Mistakes raise DistilleryError subclasses whose message says what to do.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from pipeline.datasets import detect_task, label_column, read_records
from pipeline.errors import DistilleryError, ModelError, RunError, TeacherError
from pipeline.registry import Registry, RunRecord
from pipeline.splits import split_info
from pipeline.spec import TASKS, apply_overrides, validate_spec
from pipeline.worker import queue_warning

from .catalog import CATALOG, ModelEntry, best_method, can_train, detect_hardware, find_model, local_model_params_b, resolve_models
from .data_access import describe_dataset as _describe
from .data_access import find_dataset
from .data_access import list_datasets as _list
from .plans import Plan, PlanStore

__all__ = [
    "list_datasets", "describe_dataset", "list_models", "plan_distillation", "start_plan", "run_status", "list_runs",
    "cancel_run", "get_report", "plan_text", "run_text", "resolve_teacher", "resolve_student", "SMALL_STUDENTS",
]

SMALL_STUDENTS = ("gemma-3-270m", "Qwen/Qwen3-0.6B")
DEFAULT_ROWS = 1000  # rows labelled when none are asked for (caps cost on big files)
KNOWN_LABELS = {"sst2": ["negative", "positive"]}
PROVIDERS = ("openai", "azure", "local")
KEY_ENV = {"openai": "OPENAI_API_KEY", "azure": "AZURE_AI_API_KEY"}  # catalog teachers: where their key is expected


def list_datasets() -> list[dict[str, Any]]:
    return [d.to_dict() for d in _list()]


def describe_dataset(name: str) -> dict[str, Any]:
    return _describe(name)


def list_models(query: str | None = None) -> list[dict[str, Any]]:
    """Catalog entries matching query (all when empty), with memory needs and whether this machine can train them."""
    hw = detect_hardware()
    out = []
    for e in resolve_models(query or ""):
        d = e.to_dict()
        if e.trainable:
            method = best_method(e, hw)
            d["trainable_here"], d["why"] = can_train(e, method, hw)
            d["method_here"] = method
        else:
            d["trainable_here"], d["why"] = False, "teacher only (served by an API)"
        out.append(d)
    return out


# resolution ------------------------------------------------------------------------------------------------


def resolve_teacher(phrase: str | None) -> tuple[dict[str, Any], str]:
    """The spec's teacher section for a phrase ("gpt-4o", "openai:my-model", "Meta-Llama-3.1-405B-Instruct", "local")."""
    if not phrase or phrase.strip().lower() in ("local", "default", "gemma-3-270m"):
        return {"provider": "local", "model": "gemma-3-270m", "few_shot": 8}, "gemma-3-270m (local, 8-shot; free, offline)"
    text = phrase.strip()
    provider, sep, model = text.partition(":")
    if sep and provider.lower() in PROVIDERS and model:
        entry = find_model(model)
        section: dict[str, Any] = {"provider": provider.lower(), "model": model}
        if entry and entry.price_per_mtok:
            section["price_per_mtok"] = {"input": entry.price_per_mtok[0], "output": entry.price_per_mtok[1]}
        return section, f"{model} ({provider.lower()})"
    if Path(text).expanduser().is_dir():
        return {"provider": "local", "model": str(Path(text).expanduser().resolve())}, f"{text} (local folder)"
    entry = find_model(text)
    if entry is None:
        matches = resolve_models(text, role="teacher")
        entry = matches[0] if len(matches) == 1 else None
    if entry is None:
        known = ", ".join(e.id for e in CATALOG if e.teacher_provider != "local")
        raise TeacherError(f"unknown teacher '{text[:80]}'; use one of {known}, a provider:model such as openai:gpt-4o, or local.")
    section = {"provider": entry.teacher_provider, "model": entry.id}
    if entry.teacher_provider in KEY_ENV:
        section["api_key_env"] = KEY_ENV[entry.teacher_provider]
    if entry.teacher_provider == "azure" and os.environ.get("AZURE_AI_ENDPOINT"):
        section["base_url"] = os.environ["AZURE_AI_ENDPOINT"]
    if entry.price_per_mtok:
        section["price_per_mtok"] = {"input": entry.price_per_mtok[0], "output": entry.price_per_mtok[1]}
    return section, f"{entry.id} ({entry.teacher_provider})"


def resolve_student(phrase: str | None) -> tuple[ModelEntry, list[ModelEntry]]:
    """A catalog entry (or a local folder as a custom entry) and the other candidates the phrase matched."""
    if not phrase:
        return find_model("gemma-3-270m"), []
    text = phrase.strip()
    path = Path(text).expanduser()
    if path.is_dir():
        params = local_model_params_b(path) or 0.0
        return ModelEntry(str(path.resolve()), "local", round(params, 4), 0, "see the model's own licence", "student", ("local",)), []
    exact = find_model(text)
    if exact is not None:
        if not exact.trainable:
            raise ModelError(f"{exact.id} is an API model and cannot be a student; pick one from `models small` or `models 8b`.")
        return exact, []
    matches = [e for e in resolve_models(text, role="student") if e.trainable]
    if not matches:
        raise ModelError(f"no student model matches '{text[:80]}'; try `models` for the catalog, a hub id, or a local model folder.")
    return matches[0], matches[1:]


def _parse_overrides(overrides: Any) -> list[str]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return [f"{k}={v}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        return shlex.split(overrides) if "=" in overrides else []
    return [str(o) for o in overrides]


def _who(requested_by: Any) -> dict[str, Any]:
    if isinstance(requested_by, dict):
        return dict(requested_by)
    return {"user": requested_by} if requested_by else {}


# planning --------------------------------------------------------------------------------------------------


def _labels_for(name: str, records: list[dict], task: str) -> tuple[list[str] | None, str | None]:
    if task not in ("classification", "nli"):
        return None, None
    for key, labels in KNOWN_LABELS.items():
        if key in name.lower():
            return labels, None
    col = label_column(records[0])
    if col is None:
        return None, None
    values = sorted({str(r.get(col)) for r in records if r.get(col) not in (None, "")})
    if values and all(v.lstrip("-").isdigit() for v in values):
        return None, f"the labels are numbers ({', '.join(values[:6])}); name them with labels=[name0,name1,...] for better prompts."
    return (values if 2 <= len(values) <= 20 else None), None


def _estimate(spec) -> dict[str, Any]:
    try:
        from pipeline.labelling import estimate
    except ImportError:
        estimate = None
    if estimate is not None:
        try:
            est = estimate(spec)
            return {"rows": est.rows, "prompt_tokens": est.prompt_tokens, "completion_tokens": est.completion_tokens,
                    "cost_usd": round(est.cost_usd, 4), "requests": est.requests}
        except DistilleryError:
            raise
        except Exception:  # an estimate is advice: a bug there must not block planning
            pass
    rows = spec.dataset.train_size or 0
    prompt, completion = rows * 150 * max(1, spec.teacher.few_shot or 1), rows * 20
    price = spec.teacher.price_per_mtok
    cost = (prompt * price.input + completion * price.output) / 1e6
    return {"rows": rows, "prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": round(cost, 4),
            "requests": rows * spec.teacher.self_consistency, "rough": True}


def _expected_minutes(entry: ModelEntry, rows: int, epochs: float, gpu: bool, tokens_per_row: int = 160) -> float:
    params = max(entry.params_b, 0.001)
    tokens_per_s = (4000 * 8 / params) if gpu else (110 * 0.27 / params)  # measured: 270M LoRA ~110 tok/s on 2 cores
    train_s = rows * epochs * tokens_per_row / min(tokens_per_s, 50000)
    label_s = rows / 8 * 1.5  # 8 requests in flight, ~1.5 s each
    return round((train_s + label_s) / 60, 1)


def plan_distillation(dataset: str, student: str | None = None, teacher: str | None = None, task: str | None = None,
                      rows: int | None = None, overrides: Any = None, requested_by: Any = None, *,
                      plans: PlanStore | None = None) -> Plan:
    """Validate, resolve defaults, estimate cost and hardware, and store a plan that must be started explicitly."""
    plans = plans or PlanStore()
    # 1. dataset and task
    info = find_dataset(dataset)
    records = read_records(info.train)
    if task and task not in TASKS:
        raise DistilleryError(f"unknown task '{task}'; known: {', '.join(TASKS)} (or leave it out to detect it).")
    task = task or detect_task(records[0])
    labels, label_note = _labels_for(info.name, records, task)
    # 2. models
    student_entry, others = resolve_student(student)
    teacher_section, teacher_name = resolve_teacher(teacher)
    hw = detect_hardware()
    method = best_method(student_entry, hw)
    # 3. the spec: defaults, then the caller's overrides
    rows = int(rows) if rows else min(len(records), DEFAULT_ROWS)
    data: dict[str, Any] = {
        "task": task,
        "labels": labels,
        "dataset": {"train": info.train, "test": info.test, "train_size": rows},
        "teacher": teacher_section,
        "student": {"model": student_entry.id, "method": method},
        "out": "runs/default",  # the registry gives each submitted run its own folder
    }
    spec = validate_spec(apply_overrides(data, _parse_overrides(overrides)))
    method = spec.student.method
    test = split_info(spec)  # dataset.test, else rows held out of the training file (pipeline/splits.py)
    if test["source"] == "held_out" and rows > len(records) - test["rows"]:
        rows = spec.dataset.train_size = len(records) - test["rows"]  # the held-out rows are never labelled
    # 4. estimate, hardware, notes
    est = _estimate(spec)
    runnable, why = can_train(student_entry, method, hw) if student_entry.params_b else (True, "local student; size unknown")
    notes = [n for n in (label_note,) if n]
    if others:
        notes.append(f"'{student}' also matches {', '.join(e.id for e in others)}; say which if you prefer another.")
    key_env = spec.teacher.api_key_env
    if key_env and not os.environ.get(key_env):
        notes.append(f"{key_env} is not set here; the worker that runs this plan needs it (export {key_env}=...).")
    if spec.teacher.provider == "azure" and not spec.teacher.base_url:
        notes.append("the azure teacher needs its endpoint: add teacher.base_url=https://<resource>.openai.azure.com/openai/v1/ (or set AZURE_AI_ENDPOINT).")
    if test["source"] == "none":
        notes.append(test["text"] + ".")
    trainable = len(records) - (test["rows"] if test["source"] == "held_out" else 0)
    if rows < trainable and not (overrides and "train_size" in str(overrides)):
        notes.append(f"labels {rows} of {trainable} rows; ask for more rows if you want them.")
    alternatives = []
    if not runnable:
        need = student_entry.memory_gb(method if hw.gpu else "qlora")
        alternatives = [f"a smaller student such as {' or '.join(SMALL_STUDENTS)}",
                        f"a GPU worker with at least {need:g} GB (QLoRA) running `distillery worker`"]
    summary = {
        "dataset": info.name, "task": task, "labels": labels, "teacher": teacher_name, "student": student_entry.id,
        "student_params_b": student_entry.params_b, "method": method, "rows": rows,
        "test": test["text"], "test_rows": test["rows"], "estimate": est, "hardware_needed": f"~{student_entry.memory_gb(method):g} GB for {method}" if student_entry.params_b else "small",
        "hardware_here": hw.describe(), "runnable": runnable, "why": why, "alternatives": alternatives,
        "expected_minutes": _expected_minutes(student_entry, rows, spec.train.epochs, hw.gpu), "notes": notes,
    }
    return plans.create(spec.model_dump(mode="json"), summary, _who(requested_by))


def start_plan(plan_id: str, requested_by: Any = None, *, plans: PlanStore | None = None,
               registry: Registry | None = None) -> RunRecord:
    """Submit a plan's run to the registry (spends teacher tokens once a worker picks it up)."""
    plans, registry = plans or PlanStore(), registry or Registry()
    plan = plans.get(plan_id)
    if plan.status == "open" and not plan.runnable:
        alts = " or ".join(plan.summary.get("alternatives") or ["a smaller student"])
        raise DistilleryError(f"plan {plan.id} cannot run on this deployment ({plan.summary.get('why')}); plan again with {alts}.")
    plan = plans.claim(plan.id)
    who = {**plan.requested_by, **_who(requested_by), "plan": plan.id}
    try:
        record = registry.submit(validate_spec(plan.spec), who)
    except Exception:
        plans.reopen(plan.id)
        raise
    plans.set_run(plan.id, record.id)
    return record


def run_status(run_id: str, *, registry: Registry | None = None) -> RunRecord:
    return (registry or Registry()).get((run_id or "").strip())


def list_runs(limit: int = 10, status: str | None = None, *, registry: Registry | None = None) -> list[RunRecord]:
    return (registry or Registry()).list_runs(limit=limit, status=status or None)


def cancel_run(run_id: str, *, registry: Registry | None = None) -> RunRecord:
    return (registry or Registry()).cancel((run_id or "").strip())


def get_report(run_id: str, max_chars: int = 3000, *, registry: Registry | None = None) -> str:
    """The run's report.md (truncated), or a sentence saying why there is none yet."""
    record = run_status(run_id, registry=registry)
    if record.status != "done":
        raise RunError(f"run {record.id} is {record.status}, so it has no report yet; ask for its status.")
    path = Path((record.paths or {}).get("report_md") or Path(record.out) / "report.md")
    if not path.is_file():
        raise RunError(f"run {record.id} finished but its report.md is missing; run `distillery report {record.id}` to rebuild it.")
    text = path.read_text(encoding="utf-8")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


# short texts an LLM (or a person) can relay ----------------------------------------------------------------


def _money(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def plan_text(plan: Plan) -> str:
    s, est = plan.summary, plan.summary.get("estimate", {})
    lines = [
        f"Plan {plan.id} ({plan.status}): distil {s['teacher']} into {s['student']} ({s['method']}) on {s['dataset']}, "
        f"task {s['task']}, {s['rows']} rows; {s.get('test') or 'no test rows'}.",
        f"Teacher cost: ~{est.get('prompt_tokens', 0):,} prompt + {est.get('completion_tokens', 0):,} completion tokens, "
        f"about {_money(est.get('cost_usd', 0.0))}{' (rough)' if est.get('rough') else ''}.",
        f"Hardware: {s['hardware_needed']}; this deployment: {s['hardware_here']}. Expected time: ~{s['expected_minutes']} min.",
    ]
    if s.get("runnable"):
        lines.append(f"Say 'yes' or start_distillation {plan.id} to start it (plans expire after an hour).")
    else:
        lines.append(f"Cannot run here: {s.get('why')} Alternatives: {'; '.join(s.get('alternatives') or [])}.")
    lines += [f"Note: {n}" for n in s.get("notes", [])]
    return "\n".join(lines)


def run_text(record: RunRecord, registry: Registry | None = None) -> str:
    spec = record.spec or {}
    student = (spec.get("student") or {}).get("model", "?")
    text = f"Run {record.id}: {record.status}"
    p = record.progress or {}
    if record.status in ("labelling", "training", "evaluating") and p.get("total"):
        rate = f", {p['rate']:.1f} {p.get('unit', 'rows')}/s" if p.get("rate") else ""
        eta = f", ETA {p['eta_s']:.0f} s" if p.get("eta_s") is not None else ""
        text += f" ({record.stage or record.status} {p.get('done', 0)}/{p['total']}{rate}{eta})"
    text += f"; student {Path(student).name if '/' in student and Path(student).is_dir() else student}."
    if record.error:
        text += f" Error: {record.error}"
    warning = queue_warning(registry, record) if registry is not None else None
    if warning:
        text += f" {warning}"
    if record.scores:
        text += " Scores: " + ", ".join(f"{k} {_fmt(v)}" for k, v in list(record.scores.items())[:6]) + "."
    return text


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} {_fmt(x)}" for k, x in list(v.items())[:4]) + "}"
    return str(v)
