"""The Semantic Kernel plugin: the distillation skills as kernel functions an LLM agent (or an MCP client) can call.

    plugin = DistillationPlugin(registry=Registry(), plans=PlanStore())
    agent = ChatCompletionAgent(service=..., instructions=..., plugins=[plugin])   # a LIST: a dict sends no tools

Each function validates, calls skills.operations, and returns short factual text; a DistilleryError becomes its
sentence. Who is asking and what a turn created are tracked in a Turn held by `current_turn` (a ContextVar the
agent sets per turn), so the bot can render the plan or run of that turn.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any

from semantic_kernel.functions import kernel_function

from pipeline.errors import DistilleryError
from pipeline.registry import Registry

from . import operations as ops
from .plans import PlanStore

__all__ = ["DistillationPlugin", "Turn", "current_turn", "PLUGIN_NAME"]

PLUGIN_NAME = "distillery"  # tool names on the wire are distillery-<function>


@dataclass
class Turn:
    """What one agent turn did: who asked, and the plan created / run started during it."""

    requested_by: dict[str, Any] = field(default_factory=dict)
    plan_id: str | None = None
    run_id: str | None = None


current_turn: ContextVar[Turn | None] = ContextVar("distillery_turn", default=None)


NOT_ALLOWED = "You may ask about distillations here but not start or cancel runs; ask an admin of this deployment to do it."


def _sentence(err: Exception) -> str:
    return f"Could not do that: {err}"


class DistillationPlugin:
    """Datasets, models, plans and runs. Planning is free; starting a plan spends teacher tokens."""

    def __init__(self, registry: Registry | None = None, plans: PlanStore | None = None, source: str = "agent",
                 may_start: bool = True):
        self.registry = registry or Registry()
        self.plans = plans or PlanStore()
        self.source = source
        self.may_start = may_start  # the front door's own right (MCP: --rights); a turn can only narrow it

    def _who(self) -> dict[str, Any]:
        turn = current_turn.get()
        return {"source": self.source, **(turn.requested_by if turn else {})}

    def _may_start(self) -> bool:
        """Front doors with allow-lists (Slack) put may_start in the turn; the check holds whatever the model says."""
        turn = current_turn.get()
        return self.may_start and not (turn and turn.requested_by.get("may_start") is False)

    @kernel_function(description="List the datasets available for distillation (names to use in plan_distillation).")
    def list_datasets(self) -> str:
        try:
            items = ops.list_datasets(self._who())
        except DistilleryError as err:
            return _sentence(err)
        if not items:
            return "No datasets found in the data folders (DISTILLERY_DATA_DIRS)."
        lines = [f"- {d['name']}{' (train+test)' if d['test'] else ''}{' [bundled]' if d['bundled'] else ''}"
                 f"{' [uploaded here]' if d.get('uploaded') else ''}" for d in items[:40]]
        more = f"\n...and {len(items) - 40} more." if len(items) > 40 else ""
        return f"{len(items)} dataset(s):\n" + "\n".join(lines) + more

    @kernel_function(description="Describe a dataset: rows, fields, detected task, label distribution and a few quoted samples.")
    def describe_dataset(self, dataset: Annotated[str, "dataset name from list_datasets, or a file path inside a data folder"]) -> str:
        try:
            d = ops.describe_dataset(dataset, self._who())
        except DistilleryError as err:
            return _sentence(err)
        labels = f"; labels {d['label_distribution']}" if d["label_distribution"] else ""
        test = f", test file with {d['test_rows']} rows" if d["test"] else ", no test file"
        samples = "\n".join(f"  <<{json.dumps(s, ensure_ascii=False)}>>" for s in d["samples"])
        return (f"Dataset {d['name']}: {d['rows']} rows{test}; fields {', '.join(d['fields'])}; task {d['task'] or 'unknown'}{labels}.\n"
                f"Samples ({d['samples_note']}):\n{samples}")

    @kernel_function(description="List the configured teacher profiles (teachers are picked by profile name) and candidate student models matching a query such as 'an 8B model', 'something small', 'llama 8b' (empty: all), with memory needs and whether this machine can train them.")
    def list_models(self, query: Annotated[str, "what kind of model; empty for the whole catalog"] = "") -> str:
        try:
            teachers, items = ops.list_teachers(), ops.list_models(query)
        except DistilleryError as err:
            return _sentence(err)
        show_teachers = not query.strip() or "teacher" in query.lower()
        lines = ["Teacher profiles (pick a teacher by this name):"] if show_teachers else []
        for t in teachers if show_teachers else []:
            size = f", {t['params_b']:g}B" if t.get("params_b") else ""
            key = f", key {t['api_key_env']}" if t.get("api_key_env") else ""
            lines.append(f"- {t['name']}{' (default)' if t['default'] else ''}: {t['model']} via {t['provider']} at "
                         f"{t['endpoint']}{size}{key}")
        if query.strip().lower() in ("teacher", "teachers"):
            return "\n".join(lines)
        if not items:
            return "\n".join(lines + [f"No catalog model matches '{query[:60]}'; pick a student from `models`."])
        if show_teachers:
            lines.append("Models:")
        for m in items:
            if m["memory_gb"]:
                mem = m["memory_gb"]
                lines.append(f"- {m['id']} ({m['params_b']:g}B, {m['role']}): LoRA ~{mem['lora']} GB, QLoRA ~{mem['qlora']} GB, "
                             f"full ~{mem['full']} GB; here: {'yes' if m['trainable_here'] else 'no'} ({m['why']})")
            elif m["profiles"]:
                lines.append(f"- {m['id']} (teacher; profile {', '.join(m['profiles'])})")
            else:
                lines.append(f"- {m['id']} (teacher via {', '.join(m['providers'])}; not configured here: "
                             "an operator declares it in teachers.yaml)")
        return "\n".join(lines)

    @kernel_function(description="Make a distillation plan (free, spends nothing): resolves defaults, estimates teacher cost and hardware. Always call this and show the plan before starting.")
    def plan_distillation(
        self,
        dataset: Annotated[str, "dataset name or path inside a data folder"],
        student: Annotated[str, "student model: catalog id, phrase like 'something small', hub id, or local folder; empty for gemma-3-270m"] = "",
        teacher: Annotated[str, "teacher profile name from list_models (e.g. local); empty for the operator's default"] = "",
        task: Annotated[str, "classification, nli, multiple_choice, math, summarization or chat; empty to detect"] = "",
        rows: Annotated[int, "how many training rows to label; 0 for the default"] = 0,
        overrides: Annotated[str, "optional space-separated key=value knobs, e.g. 'train.epochs=1 teacher.few_shot=4' (endpoints, keys, providers, paths, instructions and out are the operator's and are refused)"] = "",
        pilot: Annotated[bool, "label a few gold rows first and show the teacher's agreement and the base student's score (free for the local teacher; costs a few cents for an API teacher)"] = False,
    ) -> str:
        try:
            plan = ops.plan_distillation(dataset, student or None, teacher or None, task or None, rows or None,
                                         overrides or None, self._who(), plans=self.plans, pilot=bool(pilot))
        except DistilleryError as err:
            return _sentence(err)
        turn = current_turn.get()
        if turn is not None:
            turn.plan_id = plan.id
        return ops.plan_text(plan)

    @kernel_function(description="Start a plan made by plan_distillation. This spends teacher tokens: only call it after the user confirmed this plan id.")
    def start_distillation(self, plan_id: Annotated[str, "the plan id, like plan-3f9a2c"]) -> str:
        if not self._may_start():
            return NOT_ALLOWED
        try:
            record = ops.start_plan(plan_id, self._who(), plans=self.plans, registry=self.registry)
        except DistilleryError as err:
            return _sentence(err)
        turn = current_turn.get()
        if turn is not None:
            turn.run_id = record.id
        return f"Started plan {plan_id.strip()} as run {record.id} (status {record.status}); ask for run_status {record.id} to follow it."

    @kernel_function(description="Status and progress of a run (stage, rows done, rate, ETA, scores when done).")
    def run_status(self, run_id: Annotated[str, "the run id"]) -> str:
        try:
            return ops.run_text(ops.run_status(run_id, registry=self.registry), registry=self.registry)
        except DistilleryError as err:
            return _sentence(err)

    @kernel_function(description="List recent runs, newest first.")
    def list_runs(self, status: Annotated[str, "optional filter: queued, running, active, finished, done, failed, cancelled"] = "") -> str:
        try:
            records = ops.list_runs(10, status or None, registry=self.registry)
        except DistilleryError as err:
            return _sentence(err)
        return "\n".join(ops.run_text(r) for r in records) if records else "No runs yet."

    @kernel_function(description="Cancel a queued or running run; what it produced so far is kept.")
    def cancel_run(self, run_id: Annotated[str, "the run id"]) -> str:
        if not self._may_start():
            return NOT_ALLOWED
        try:
            record = ops.cancel_run(run_id, registry=self.registry)
        except DistilleryError as err:
            return _sentence(err)
        if record.status == "cancelled":
            return f"Run {record.id} is cancelled."
        return f"Cancel requested for run {record.id} ({record.status}); its worker stops it within seconds."

    @kernel_function(description="The report of a finished run: teacher, student before and after, scores.")
    def get_report(self, run_id: Annotated[str, "the run id"]) -> str:
        try:
            return ops.get_report(run_id, registry=self.registry)
        except DistilleryError as err:
            return _sentence(err)
