"""`distillery` commands for background runs: submit, runs, status, cancel, report, worker.

    distillery submit examples/sst2.yaml train.epochs=1     # prints the run id; a worker runs it
    distillery worker                                       # in another terminal (or a service)
    distillery runs                                         # the latest runs as a table
    distillery status 3f9a1c2e --json                       # everything the registry knows, as JSON
    distillery cancel 3f9a1c2e                              # stops it within seconds, keeps what it made
    distillery report 3f9a1c2e                              # report.md, then where report.json/png are

Plain click commands; pipeline/cli.py adds them to the `distillery` group, whose boundary turns a
DistilleryError into one sentence on stderr with exit code 1.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import click

from .errors import RunError, SpecError
from .redact import redact_logs
from .registry import Registry, RunRecord
from .runlock import read_run_file
from .worker import queue_warning

__all__ = ["submit_command", "runs_command", "status_command", "cancel_command", "report_command", "worker_command",
           "describe_progress"]


def _split(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    path, overrides = None, []
    for i, a in enumerate(args):
        if "=" in a:
            overrides.append(a)
        elif i == 0:
            path = a
        else:
            raise SpecError(f"unexpected argument '{a}'; give at most one spec file, then key=value overrides.")
    return path, overrides


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, int(time.time() - ts))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def describe_progress(rec: RunRecord) -> str:
    """'12/16 rows, 3.1 rows/s, ETA 1s' for a running run; '' when there is nothing to show."""
    p = rec.progress or {}
    if not rec.running or not p.get("total"):
        return ""
    text = f"{p.get('done', 0)}/{p['total']} {p.get('unit') or ''}".rstrip()
    if p.get("rate"):
        text += f", {p['rate']:.1f}/s"
    if p.get("eta_s") is not None:
        text += f", ETA {int(p['eta_s'])}s"
    return text


@click.command("submit")
@click.argument("args", nargs=-1)
def submit_command(args: tuple[str, ...]) -> None:
    """Queue a run for the background worker and print its id: [SPEC.yaml] [key=value ...]."""
    from .spec import load_spec

    path, overrides = _split(args)
    spec = load_spec(path, overrides)
    rec = Registry().submit(spec, {"source": "cli", "user": os.environ.get("USER")})
    click.echo(rec.id)
    click.echo(f"queued; `distillery worker` runs it, `distillery status {rec.id}` follows it. Folder: {rec.out}", err=True)


@click.command("runs")
@click.option("--limit", "-n", default=20, show_default=True, help="How many runs, newest first.")
@click.option("--status", "status", default=None, help="Only this status (or running, active, finished).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one run per line.")
def runs_command(limit: int, status: str | None, as_json: bool) -> None:
    """List the latest runs: id, status, stage, progress, created, task/student."""
    records = Registry().list_runs(limit=limit, status=status)
    if as_json:
        for rec in records:
            click.echo(json.dumps(rec.to_dict()))
        return
    if not records:
        click.echo("no runs yet; `distillery submit` queues one.")
        return
    rows = [("ID", "STATUS", "STAGE", "PROGRESS", "CREATED", "TASK/STUDENT")]
    for rec in records:
        rows.append((rec.id, rec.status + (" (cancelling)" if rec.cancel_requested and rec.running else ""),
                     rec.stage or "-", describe_progress(rec) or "-", _ago(rec.created_at),
                     f"{rec.task or '?'}/{Path(rec.student or '?').name}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@click.command("status")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The whole record as JSON (with the latest events).")
def status_command(run_id: str, as_json: bool) -> None:
    """Show one run: status, stage, progress, scores or error, folder and latest events."""
    reg = Registry()
    rec = reg.get(run_id)
    events = reg.events(run_id)[-10:]
    if as_json:
        click.echo(json.dumps({**rec.to_dict(), "events": [e.to_dict() for e in events]}, indent=2))
        return
    click.echo(f"run {rec.id}: {rec.status}" + (f" ({rec.stage})" if rec.stage and rec.running else "")
               + (" - cancel requested" if rec.cancel_requested and rec.running else ""))
    if describe_progress(rec):
        click.echo(f"progress: {describe_progress(rec)}")
    warning = queue_warning(reg, rec)
    if warning:
        click.echo(f"warning: {warning}")
    if rec.error:
        click.echo(f"error: {rec.error}")
    if rec.scores:
        click.echo("scores: " + ", ".join(f"{k} {_fmt(v)}" for k, v in rec.scores.items()))
    click.echo(f"task: {rec.task or '?'}  student: {rec.student or '?'}  attempts: {rec.attempts}")
    click.echo(f"created {_ago(rec.created_at)}, updated {_ago(rec.updated_at)}; folder: {rec.out}")
    for e in events:
        click.echo(f"  {time.strftime('%H:%M:%S', time.localtime(e.at))} {e.kind}{' ' + e.stage if e.stage else ''}"
                   f"{' ' + _brief(e.data) if e.data else ''}")


def _fmt(v: Any) -> str:
    return f"{v * 100:.1f} %" if isinstance(v, float) else str(v)


def _brief(data: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in data.items() if v is not None and not isinstance(v, (dict, list)))[:160]


@click.command("cancel")
@click.argument("run_id")
def cancel_command(run_id: str) -> None:
    """Cancel a run: a queued one at once, a running one within seconds (what it produced is kept)."""
    rec = Registry().cancel(run_id)
    if rec.status == "cancelled":
        click.echo(f"run {rec.id} cancelled.")
    else:
        click.echo(f"run {rec.id} is {rec.status}; asked its worker to stop it (what it produced is kept).")


@click.command("report")
@click.argument("run_id")
def report_command(run_id: str) -> None:
    """Print a finished run's report.md, then the paths of report.json and report.png."""
    rec = Registry().get(run_id)
    out = Path(rec.out)
    md = out / "report.md"
    if rec.status != "done" and not md.is_file():
        raise RunError(f"run {rec.id} has no report yet; {_state_sentence(rec)}")
    if not out.is_dir():
        raise RunError(f"run {rec.id}'s folder '{out}' is missing (moved or deleted?); "
                       f"its scores are still in `distillery status {rec.id}`.")
    try:
        text = read_run_file(md).decode("utf-8")
    except FileNotFoundError:
        raise RunError(f"run {rec.id}'s report.md is missing from '{out}'; re-submit the same spec to rebuild it.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunError(f"run {rec.id}'s report.md in '{out}' cannot be read ({type(err).__name__}); "
                       "re-submit the same spec to rebuild it.") from None
    click.echo(text.rstrip("\n"))
    click.echo("")
    for name in ("report.json", "report.png"):
        path = out / name
        note = "" if path.is_file() and _readable(path) else " (missing or unreadable)"
        click.echo(f"{name}: {path}{note}")


def _state_sentence(rec: RunRecord) -> str:
    """'it is training (12/24 steps, ETA 9s).' and the like, for a run without a report."""
    if rec.status == "failed":
        return f"it failed: {(rec.error or 'no reason recorded').rstrip('.')}."
    if rec.status == "cancelled":
        return "it was cancelled; submit the same spec again to resume it."
    if rec.status == "queued":
        return "it is queued; start `distillery worker` if none is running."
    detail = ", ".join(x for x in (rec.stage, describe_progress(rec)) if x)
    return f"it is {rec.status}" + (f" ({detail})." if detail else ".")


def _readable(path: Path) -> bool:
    if path.is_symlink():  # not something the run wrote
        return False
    if path.suffix != ".json":
        return path.stat().st_size > 0
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


@click.command("worker")
@click.option("--max-concurrent", "-k", default=1, show_default=True, help="Runs at once (a GPU is exclusive: keep 1).")
@click.option("--once", is_flag=True, help="Run what is queued now, then exit.")
@click.option("--poll", default=1.0, show_default=True, help="Seconds between looks at the queue.")
@click.option("--stale-after", default=30.0, show_default=True, help="Seconds without heartbeat before a run is resumed.")
def worker_command(max_concurrent: int, once: bool, poll: float, stale_after: float) -> None:
    """Run queued runs in the background (Ctrl-C hands running runs back to the next worker)."""
    from .worker import run_worker

    if max_concurrent < 1:
        raise RunError("--max-concurrent must be at least 1.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_logs()  # tracebacks of internal errors may quote URLs with credentials
    handled = run_worker(Registry(), max_concurrent=max_concurrent, poll_s=poll, once=once, stale_after_s=stale_after)
    click.echo(f"worker stopped after {handled} run(s).", err=True)
