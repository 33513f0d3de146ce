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
import re
from pathlib import Path
from typing import Any

from pipeline.datasets import detect_task, label_column, read_records
from pipeline.errors import DistilleryError, ModelError, RunError, TeacherError
from pipeline.profiles import PROFILES_FILE, Profiles, TeacherProfile, endpoint_host, load_profiles
from pipeline.registry import Registry, RunRecord
from pipeline.splits import split_info
from pipeline.spec import TASKS, apply_overrides, validate_spec
from pipeline.worker import queue_warning
from pipeline.targets import spec_notes

from .catalog import (CATALOG, ModelEntry, best_method, can_train, deployment_hardware, find_model, gpus_to_use,
                      local_model_params_b, resolve_models)
from .data_access import describe_dataset as _describe
from .data_access import DatasetInfo, find_dataset
from .data_access import list_datasets as _list
from .plans import Plan, PlanStore
from .policy import chat_overrides
from .uploads import Upload, UploadStore

__all__ = [
    "list_datasets", "describe_dataset", "list_models", "plan_distillation", "start_plan", "run_status", "list_runs",
    "cancel_run", "get_report", "plan_text", "run_text", "resolve_teacher", "resolve_student", "SMALL_STUDENTS",
    "teacher_facts", "list_teachers",
]

SMALL_STUDENTS = ("gemma-3-270m", "Qwen/Qwen3-0.6B")
DEFAULT_ROWS = 1000  # rows labelled when none are asked for (caps cost on big files)
KNOWN_LABELS = {"sst2": ["negative", "positive"]}
_PLAIN = re.compile(r"^[\w .:/+-]*$")  # echoed back only when it is plain words (no markup, no mentions)


def _uploaded(scope: Any) -> list[Upload]:
    scope = scope if isinstance(scope, dict) else {}
    return UploadStore().visible(scope) if scope.get("channel") else []


def _upload_info(upload: Upload) -> DatasetInfo:
    return DatasetInfo(upload.name, upload.path, None, str(Path(upload.path).parent), False)


def _find(name: str, scope: Any) -> tuple[DatasetInfo, dict[str, str] | None]:
    """A dataset uploaded in the asker's conversation (skills/uploads.py), else one from the data folders."""
    scope = scope if isinstance(scope, dict) else {}
    upload = UploadStore().find(name, scope) if scope.get("channel") else None
    if upload is not None:
        return _upload_info(upload), upload.fields
    return find_dataset(name), None


def list_datasets(scope: Any = None) -> list[dict[str, Any]]:
    """The data folders' datasets, plus the files uploaded where `scope` ({"channel", "user"}) asks from."""
    uploaded = [{**_upload_info(u).to_dict(), "uploaded": True} for u in _uploaded(scope)]
    return uploaded + [d.to_dict() for d in _list()]


def describe_dataset(name: str, scope: Any = None) -> dict[str, Any]:
    info, fields = _find(name, scope)
    return _describe(name, info=info, fields=fields)


def list_teachers() -> list[dict[str, Any]]:
    """The operator's teacher profiles (the names chat picks a teacher by), default first."""
    profiles = load_profiles()
    items = [{**p.to_dict(), "params_b": _teacher_params_b(p), "default": p.name == profiles.default_name}
             for p in profiles.profiles.values()]
    return sorted(items, key=lambda d: not d["default"])


def list_models(query: str | None = None) -> list[dict[str, Any]]:
    """Catalog entries matching query (all when empty), with memory needs and whether this deployment can train them
    (the Ray cluster when DISTILLERY_RAY_ADDRESS is set, with the GPUs it would use).

    API teachers say which teacher profile serves them (`profiles`), empty when the operator configured none.
    """
    hw = deployment_hardware()
    profiles = load_profiles()
    out = []
    for e in resolve_models(query or ""):
        d = e.to_dict()
        d["profiles"] = [p.name for p in profiles.profiles.values() if p.model.lower() in (e.id.lower(), e.id.split("/")[-1].lower())]
        if e.trainable:
            method = best_method(e, hw)
            d["trainable_here"], d["why"] = can_train(e, method, hw)
            d["method_here"] = method
            if hw.extra.get("ray"):
                d["runs_on"], d["gpus"] = hw.describe(), gpus_to_use(e, hw)
        else:
            d["trainable_here"], d["why"] = False, "teacher only (served by an API)"
        out.append(d)
    return out


# resolution ------------------------------------------------------------------------------------------------


def _teacher_params_b(profile: TeacherProfile) -> float | None:
    if profile.params_b:
        return profile.params_b
    entry = find_model(profile.model)
    return entry.params_b if entry and entry.params_b else None


def resolve_teacher(phrase: str | None, profiles: Profiles | None = None) -> TeacherProfile:
    """The operator's teacher profile a phrase names: a profile name, or the model of exactly one profile.

    No phrase (or "default") is the operator's default profile; "local" is the embedded teacher. Chat never
    builds a teacher from a provider, endpoint or folder: those live in the profiles (pipeline/profiles.py).
    """
    profiles = profiles or load_profiles()
    text = (phrase or "").strip()
    if not text or text.lower() == "default":
        return profiles.default
    found = profiles.find(text)
    if found is None:
        by_model = [p for p in profiles.profiles.values() if p.model.lower() == text.lower()
                    or p.model.split("/")[-1].lower() == text.lower()]
        found = by_model[0] if len(by_model) == 1 else None
    if found is None:
        shown = text[:60] if _PLAIN.match(text[:60]) else "that"
        raise TeacherError(f"unknown teacher '{shown}'; pick a configured teacher profile ({', '.join(profiles.names())}); "
                           f"operators declare teachers in DISTILLERY_HOME/{PROFILES_FILE}.")
    return found


def _custom_student(model: str) -> ModelEntry:
    path = Path(model).expanduser()
    params = (local_model_params_b(path) or 0.0) if path.is_dir() else 0.0
    return ModelEntry(str(path.resolve()) if path.is_dir() else model, "custom", round(params, 4), 0,
                      "see the model's own licence", "student", ("local",))


def resolve_student(phrase: str | None, profiles: Profiles | None = None) -> tuple[ModelEntry, list[ModelEntry]]:
    """A catalog entry, or one of the operator's allowed students, and the other candidates the phrase matched."""
    if not phrase:
        return find_model("gemma-3-270m"), []
    text = phrase.strip()
    allowed = (profiles or load_profiles()).students
    for model in allowed:  # the operator's list: exactly, or by its last path part
        if text in (model, model.rstrip("/").split("/")[-1]) or (Path(text).expanduser().is_dir()
                                                                  and Path(text).expanduser().resolve() == Path(model).expanduser().resolve()):
            return _custom_student(model), []
    if text.startswith(("/", "~", ".", "\\")) or Path(text).expanduser().exists():
        raise ModelError("no student model matches that folder: chat cannot name model folders; pick one from `models` "
                         f"or ask the operator to allow it (`students:` in DISTILLERY_HOME/{PROFILES_FILE}).")
    exact = find_model(text)
    if exact is not None:
        if not exact.trainable:
            raise ModelError(f"{exact.id} is an API model and cannot be a student; pick one from `models small` or `models 8b`.")
        return exact, []
    matches = [e for e in resolve_models(text, role="student") if e.trainable]
    if not matches:
        shown = text[:80] if _PLAIN.match(text[:80]) else "that"
        raise ModelError(f"no student model matches '{shown}'; pick one from `models` (the catalog) or one the operator "
                         f"allows (`students:` in DISTILLERY_HOME/{PROFILES_FILE}).")
    return matches[0], matches[1:]


def _who(requested_by: Any) -> dict[str, Any]:
    if isinstance(requested_by, dict):
        return dict(requested_by)
    return {"user": requested_by} if requested_by else {}


# planning --------------------------------------------------------------------------------------------------


def _labels_for(name: str, records: list[dict], task: str, fields: dict[str, str] | None = None) -> tuple[list[str] | None, str | None]:
    if task not in ("classification", "nli"):
        return None, None
    for key, labels in KNOWN_LABELS.items():
        if key in name.lower():
            return labels, None
    col = label_column(records[0], fields)
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
                    "cost_usd": round(est.cost_usd, 4), "requests": est.requests, "pricing": est.pricing}
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


def teacher_facts(profile_name: str, teacher: dict[str, Any]) -> dict[str, Any]:
    """What the card and the plan text say about the teacher, read from the final spec's teacher section."""
    provider, model = teacher.get("provider") or "local", teacher.get("model") or "?"
    host = endpoint_host(teacher)
    key = teacher.get("api_key_env")
    if teacher.get("auth") == "entra":
        key = "Microsoft Entra ID (no key)"
    shots = f", {teacher.get('few_shot')}-shot" if teacher.get("few_shot") else ""
    where = "local, offline" if provider == "local" else f"{provider} at {host}"
    return {"teacher_profile": profile_name, "teacher_provider": provider, "teacher_model": model,
            "teacher_endpoint": host, "teacher_key_env": key,
            "teacher": f"{profile_name}: {Path(model).name if provider == 'local' else model} ({where}{shots})"}


def _pick_teacher(teacher: str | None, student: ModelEntry, profiles: Profiles) -> tuple[TeacherProfile, list[str], str | None]:
    """The profile, notes about its size, and a reason the plan cannot run (a smaller default for a bigger student)."""
    profile = resolve_teacher(teacher, profiles)
    t_size, s_size = _teacher_params_b(profile), student.params_b or 0.0
    if not t_size or t_size >= s_size:
        return profile, [], None
    if teacher and teacher.strip().lower() != "default":
        return profile, [f"the teacher {profile.name} ({t_size:g}B) is smaller than the student {student.id} "
                         f"({s_size:g}B): distilling into a bigger model usually makes it worse."], None
    bigger = [p for p in profiles.profiles.values() if (_teacher_params_b(p) or float("inf")) >= s_size and not p.builtin]
    if len(bigger) == 1:
        return bigger[0], [f"teacher {bigger[0].name} was chosen because the default teacher {profile.name} "
                           f"({t_size:g}B) is smaller than the student {student.id} ({s_size:g}B)."], None
    if bigger:
        names = ", ".join(p.name for p in bigger)
        return profile, [], (f"the default teacher {profile.name} ({t_size:g}B) is smaller than the student {student.id} "
                             f"({s_size:g}B); name a bigger teacher ({names}).")
    return profile, [], (f"the only teacher available here, {profile.name} ({t_size:g}B), is smaller than the student "
                         f"{student.id} ({s_size:g}B); an operator must declare a bigger teacher in "
                         f"DISTILLERY_HOME/{PROFILES_FILE} (provider, model, base_url, api_key_env).")


def plan_distillation(dataset: str, student: str | None = None, teacher: str | None = None, task: str | None = None,
                      rows: int | None = None, overrides: Any = None, requested_by: Any = None, *,
                      plans: PlanStore | None = None, pilot: bool = False) -> Plan:
    """Validate a request from chat against the allow-list, resolve defaults, estimate, and store a plan.

    Every caller of this function is a front door (Slack, the agent, MCP): overrides pass skills.policy first,
    the teacher is an operator's profile, and the summary is read back from the final validated spec.
    pilot=True labels a few gold rows first (pipeline/pilot.py; free for the local teacher) and puts the teacher's
    agreement with gold and the base student's score on the card; without it the card says what a pilot costs.
    """
    plans = plans or PlanStore()
    chat_keys = chat_overrides(overrides)  # first: nothing a refused key names is ever read
    profiles = load_profiles()
    # 1. dataset and task
    info, fields = _find(dataset, requested_by)
    records = read_records(info.train)
    if task and task not in TASKS:
        raise DistilleryError(f"unknown task '{task[:40] if _PLAIN.match(task[:40]) else 'that'}'; known: {', '.join(TASKS)} (or leave it out to detect it).")
    task = task or detect_task(records[0], fields)
    labels, label_note = _labels_for(info.name, records, task, fields)
    # 2. models
    student_entry, others = resolve_student(student, profiles)
    profile, teacher_notes, teacher_block = _pick_teacher(teacher, student_entry, profiles)
    hw = deployment_hardware()  # the Ray cluster when one is configured
    gpus = gpus_to_use(student_entry, hw)
    # 3. the spec: defaults, then the allowed overrides; validated once, and everything below reads it
    wanted_rows = int(rows) if rows else (DEFAULT_ROWS if len(records) > DEFAULT_ROWS else None)  # None: all, as the CLI
    data: dict[str, Any] = {
        "task": task,
        "labels": labels,
        "dataset": {"train": info.train, "test": info.test, "train_size": wanted_rows, "fields": fields},
        "teacher": dict(profile.section),
        "student": {"model": student_entry.id, "method": best_method(student_entry, hw)},
        **({"train": {"workers": gpus}} if gpus > 1 else {}),
        "out": "runs/default",  # decided again when the plan starts: DISTILLERY_HOME/runs/<run id>
    }
    spec = validate_spec(apply_overrides(data, chat_keys))
    method = spec.student.method
    test = split_info(spec)  # dataset.test, else rows held out of the training file (pipeline/splits.py)
    trainable = len(records) - (test["rows"] if test["source"] == "held_out" else 0)
    if (spec.dataset.train_size or len(records)) > trainable:
        spec.dataset.train_size = trainable  # the held-out rows are never labelled
    # 4. estimate, the teacher pilot, hardware, notes
    est = _estimate(spec)
    spec, pilot_facts, pilot_notes = _pilot(spec, pilot, est)
    trainable -= pilot_facts.get("rows", 0) if pilot_facts.get("set_aside") else 0
    rows_final = min(spec.dataset.train_size or trainable, trainable)
    runnable, why = can_train(student_entry, method, hw) if student_entry.params_b else (True, "custom student; size unknown")
    if teacher_block:
        runnable, why = False, teacher_block if runnable else f"{why} Also, {teacher_block}"
    notes = [n for n in (label_note,) if n] + teacher_notes + spec_notes(spec) + pilot_notes
    if others:
        notes.append(f"'{student}' also matches {', '.join(e.id for e in others)}; say which if you prefer another.")
    key_env = spec.teacher.api_key_env
    if key_env and not os.environ.get(key_env):
        notes.append(f"{key_env} is not set here; the worker that runs this plan needs it (export {key_env}=...).")
    if spec.teacher.provider.startswith("azure") and not spec.teacher.base_url:
        notes.append(f"the teacher profile {profile.name} has no base_url; the operator sets it in {PROFILES_FILE}.")
    if test["source"] == "none":
        notes.append(test["text"] + ".")
    if rows_final < trainable and not rows and not any(k.startswith("dataset.train_size=") for k in chat_keys):
        notes.append(f"labels {rows_final} of {trainable} rows; ask for more rows if you want them.")
    alternatives = []
    if not runnable and not teacher_block:
        need = student_entry.memory_gb(method if hw.gpu else "qlora")
        alternatives = [f"a smaller student such as {' or '.join(SMALL_STUDENTS)}",
                        f"a GPU worker with at least {need:g} GB (QLoRA) running `distillery worker`",
                        "a Ray cluster with such a GPU (set DISTILLERY_RAY_ADDRESS; docs/ray.md)"]
    elif teacher_block:
        alternatives = [f"a smaller student such as {' or '.join(SMALL_STUDENTS)}", "a bigger teacher profile"]
    summary = {
        "dataset": info.name, "task": spec.task, "labels": spec.labels, **teacher_facts(profile.name, spec.teacher.model_dump(mode="json")),
        "teacher_params_b": _teacher_params_b(profile), "student": student_entry.id,
        "student_params_b": student_entry.params_b, "method": method, "rows": rows_final,
        "test": test["text"], "test_rows": test["rows"], "estimate": est,
        "hardware_needed": f"~{student_entry.memory_gb(method):g} GB for {method}" if student_entry.params_b else "small",
        "hardware_here": hw.describe(), "runs_on": hw.describe() if hw.extra.get("ray") else "this deployment's worker",
        "gpus": spec.train.workers if hw.gpu else 0, "runnable": runnable, "why": why, "alternatives": alternatives,
        "expected_minutes": _expected_minutes(student_entry, rows_final, spec.train.epochs, hw.gpu), "notes": notes,
        "pilot": pilot_facts,
    }
    return plans.create(spec.model_dump(mode="json"), summary, _who(requested_by))


def _pilot(spec, run: bool, est: dict[str, Any]) -> tuple[Any, dict[str, Any], list[str]]:
    """(spec, the card's pilot facts, notes): the pilot's rows stay set aside in the spec once it ran."""
    from uuid import uuid4

    from pipeline import pilot as pilots
    from pipeline.home import distillery_home

    probe = spec
    if spec.dataset.pilot_size is None and not pilots.selects_cue(spec):
        probe = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"pilot_size": pilots.DEFAULT_PILOT})})
    rows = len(pilots.pilot_rows(probe))
    if not rows:
        return spec, {"status": "not possible"}, []
    local = spec.teacher.provider == "local"
    cost = 0.0 if local else round(est.get("cost_usd", 0.0) / max(est.get("rows") or 1, 1) * rows, 4)
    price = "free: the local teacher" if local else f"about {_money(cost)} of teacher tokens"
    set_aside = pilots.pilot_size(spec) > 0
    if not run:
        return spec, {"status": "not run", "rows": rows, "cost_usd": cost, "set_aside": set_aside}, [
            f"teacher pilot not run: ask for a pilot (pilot=true) to label {rows} gold rows first and see the teacher's "
            f"agreement with gold and the base student's score ({price})."]
    folder = distillery_home() / "pilots" / uuid4().hex[:12]  # the pilot's own answer cache; never a run folder
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # its own event loop: front doors (Slack, the agent, MCP) call this inside theirs
        result = pool.submit(pilots.run_pilot, probe.model_copy(update={"out": str(folder)})).result()
    facts = {**result, "cost_usd": cost, "set_aside": True}
    if result.get("status") != "done":
        return spec, facts, [f"teacher pilot: {result.get('why', 'not possible')}."]
    cue = f", answer cue {result['answer_cue']}" if local and result.get("answer_cue") else ""
    notes = [f"teacher pilot on {rows} gold rows (kept out of training and test{cue}): the teacher agrees with gold on "
             f"{result['teacher'] * 100:.0f} %, the base student scores {result['student_base'] * 100:.0f} %."]
    if result.get("warning"):
        notes.append("Warning: " + result["warning"])
    return probe, facts, notes


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
    try:  # the folder is decided now, never read from the plan: DISTILLERY_HOME/runs/<run id>
        record = registry.submit(validate_spec(plan.spec), who, own_folder=True)
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
    from pipeline.runlock import read_run_file

    text = read_run_file(path).decode("utf-8", errors="replace")  # never through a link planted in the folder
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


# short texts an LLM (or a person) can relay ----------------------------------------------------------------


def _money(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def plan_text(plan: Plan) -> str:
    s, est = plan.summary, plan.summary.get("estimate", {})
    key = f"; key variable {s['teacher_key_env']}" if s.get("teacher_key_env") else ""
    lines = [
        f"Plan {plan.id} ({plan.status}): distil {s['teacher']} into {s['student']} ({s['method']}) on {s['dataset']}, "
        f"task {s['task']}, {s['rows']} rows; {s.get('test') or 'no test rows'}.",
        f"Teacher profile {s.get('teacher_profile', '?')}: {s.get('teacher_model', '?')} via "
        f"{s.get('teacher_provider', '?')} at {s.get('teacher_endpoint', '?')}{key}.",
        f"Teacher cost: ~{est.get('prompt_tokens', 0):,} prompt + {est.get('completion_tokens', 0):,} completion tokens, "
        f"about {_money(est.get('cost_usd', 0.0))}{' (rough)' if est.get('rough') else ''}"
        f"{' at ' + est['pricing'] if est.get('pricing', 'list price') != 'list price' else ''}.",
        f"Hardware: {s['hardware_needed']}; this deployment: {s['hardware_here']}. Expected time: ~{s['expected_minutes']} min.",
    ]
    if s.get("runs_on", "").startswith("the Ray cluster"):
        lines.append(f"Runs on {s['runs_on']}, {s['method']}" + (f" on {s['gpus']} GPUs (Ray Train)." if s.get("gpus", 0) > 1
                                                                 else " on 1 GPU." if s.get("gpus") else " on CPU."))
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
        status = f", {p['info']['status']}" if (p.get("info") or {}).get("status") else ""  # "waiting for batch (x of y done)"
        text += f" ({record.stage or record.status} {p.get('done', 0)}/{p['total']}{rate}{eta}{status})"
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
