"""Command mode: a small grammar used when no chat model is configured (DISTILLERY_CHAT_PROVIDER unset).

    distill <dataset> into <student> [with <teacher>] [rows=N] [pilot=true] [key=value ...]   make a plan (free)
    yes | start [plan-id]          start the conversation's last plan (spends teacher tokens)
    status [run] | runs | cancel [run] | report [run]
    models [query] | datasets | describe <dataset> | help

The words themselves live in bot/commands.py (shared with the Slack app). `handle_command(plugin, text,
last_plan_id, last_run_id)` returns the reply text; the plan created or run started is recorded in the plugin's
current Turn, exactly as when an LLM calls the same functions.
"""

from __future__ import annotations

import re
import shlex

from skills.plugin import DistillationPlugin

from . import commands

__all__ = ["handle_command", "HELP", "MODE_NOTE"]

MODE_NOTE = "(command mode: no chat model configured; set DISTILLERY_CHAT_PROVIDER to talk freely)"
HELP = f"""Commands {MODE_NOTE}:
- distill <dataset> into <student> [with <teacher>] [rows=N] [pilot=true] [key=value ...]  e.g. distill sst2 into gemma-3-270m with gpt-4o-mini rows=200
- yes / start [plan-id]: start the last plan (this spends teacher tokens)
- status [run], runs, cancel [run] (also: stop, abort), report [run]
- models [query] (e.g. models an 8B model), datasets, describe <dataset>, help"""

_DISTILL = re.compile(r"^(?P<dataset>\S+)\s+(?:into|to)\s+(?P<rest>.+)$", re.I | re.S)


def _split_distill(rest: str) -> tuple[str, str, list[str]]:
    """student phrase, teacher, key=value overrides from 'an 8B model with gpt-4o rows=10'."""
    tokens = commands.split_words(rest)
    overrides = [t for t in tokens if "=" in t]
    words = [t for t in tokens if "=" not in t]
    teacher = ""
    lowered = [w.lower() for w in words]
    if "with" in lowered:
        i = len(lowered) - 1 - lowered[::-1].index("with")
        teacher = " ".join(words[i + 1:])
        words = words[:i]
    return " ".join(words), teacher, overrides


def handle_command(plugin: DistillationPlugin, text: str, last_plan_id: str | None = None, last_run_id: str | None = None) -> str:
    """The reply to one command line."""
    line = " ".join((text or "").strip().split())
    cmd = commands.parse(line)
    if cmd is None:
        return f"I did not understand '{line[:80]}'. {HELP}"
    arg = cmd.arg
    if cmd.name == "distill":
        m = _DISTILL.match(arg)
        if not m:
            return f"I did not understand '{line[:80]}'; say distill <dataset> into <student>. {HELP}"
        student, teacher, overrides = _split_distill(m.group("rest"))
        rows, pilot = 0, False
        for o in list(overrides):
            if o.lower().startswith("rows="):
                overrides.remove(o)
                rows = int(o.split("=", 1)[1]) if o.split("=", 1)[1].isdigit() else 0
            elif o.lower().startswith("pilot="):  # label a few gold rows first (pipeline/pilot.py)
                overrides.remove(o)
                pilot = o.split("=", 1)[1].lower() in ("true", "yes", "1", "on")
        return plugin.plan_distillation(m.group("dataset"), student, teacher, "", rows, " ".join(shlex.quote(o) for o in overrides),
                                        pilot)
    if cmd.name == "start":
        plan_id = arg or last_plan_id
        if not plan_id:
            return "There is no plan to start in this conversation; make one first, e.g. distill sst2 into gemma-3-270m."
        return plugin.start_distillation(plan_id)
    if cmd.name == "status":
        run_id = arg or last_run_id
        return plugin.run_status(run_id) if run_id else plugin.list_runs("active")
    if cmd.name == "runs":
        return plugin.list_runs(arg)
    if cmd.name == "cancel":
        run_id = arg or last_run_id
        return plugin.cancel_run(run_id) if run_id else "Which run? Say cancel <run id> (runs lists them)."
    if cmd.name == "report":
        run_id = arg or last_run_id
        return plugin.get_report(run_id) if run_id else "Which run? Say report <run id> (runs lists them)."
    if cmd.name == "models":
        return plugin.list_models(arg)
    if cmd.name == "datasets":
        return plugin.list_datasets()
    if cmd.name == "describe":
        return plugin.describe_dataset(arg) if arg else "Which dataset? Say describe <dataset> (datasets lists them)."
    return HELP
