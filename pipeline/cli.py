"""`distillery` pipeline commands: spec, label, train, eval, run (plus the run-registry commands).

    distillery run                                   # the embedded default, end to end
    distillery label examples/azure-405b.yaml --estimate
    distillery eval runs/x/spec.yaml --adapter runs/x/student dataset.test=other.jsonl --json

A spec file (YAML) is optional; key=value overrides use dotted keys (teacher.few_shot=8). Errors are one
sentence on stderr and exit code 1; re-running a command after a crash or Ctrl-C resumes it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .errors import DistilleryError, SpecError
from .redact import redact

__all__ = ["cli", "main", "run_cli", "split_args"]


def split_args(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """(spec path or None, overrides) from positional arguments."""
    path, overrides = None, []
    for i, a in enumerate(args):
        if i == 0 and "=" not in a:
            path = a
        elif "=" in a:
            overrides.append(a)
        else:
            raise SpecError(f"unexpected argument '{a}'; give at most one spec file, then key=value overrides.")
    return path, overrides


def _spec(args: tuple[str, ...]):
    from .spec import load_spec

    path, overrides = split_args(args)
    return load_spec(path, overrides)


def _notes(spec) -> None:
    """Settings that have no effect as combined, said before anything runs (stderr, so --json output stays clean)."""
    from .targets import spec_notes
    from .tasks import resolve_spec

    try:
        resolved = resolve_spec(spec)
    except DistilleryError:
        return  # the stage itself will say what is wrong
    for note in spec_notes(resolved):
        click.echo(f"note: {note}", err=True)


def _bar():
    from .progress import TerminalBar

    return TerminalBar()


def _with_bar(stage_fn, *args, **kwargs):
    """Run a stage with a terminal progress bar that is closed whatever happens."""
    bar = _bar()
    try:
        return stage_fn(*args, progress=bar, **kwargs)
    finally:
        bar.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Distillery: a large teacher labels your data, a small student learns from it, the report says how much."""


@cli.command("spec")
@click.argument("args", nargs=-1)
def spec_cmd(args: tuple[str, ...]) -> None:
    """Print the fully resolved run spec (the embedded default when no file is given)."""
    spec = _spec(args)
    _notes(spec)
    click.echo(spec.to_yaml(), nl=False)


@cli.command("label")
@click.argument("args", nargs=-1)
@click.option("--estimate", is_flag=True, help="Print rows, estimated tokens and cost; send nothing.")
def label_cmd(args: tuple[str, ...], estimate: bool) -> None:
    """Label the training rows with the teacher: [SPEC.yaml] [key=value ...]."""
    from .labelling import estimate as estimate_fn, label
    from .tasks import resolve_spec

    spec = resolve_spec(_spec(args))
    _notes(spec)
    if estimate:
        e = estimate_fn(spec)
        click.echo(f"rows: {e.rows}  requests to send: {e.requests}  answers already cached: {e.cached}")
        click.echo(f"estimated tokens: {e.prompt_tokens:,} prompt + {e.completion_tokens:,} completion")
        click.echo(f"estimated cost: ${e.cost_usd:.4f} at {e.pricing} (teacher.price_per_mtok input={spec.teacher.price_per_mtok.input}, output={spec.teacher.price_per_mtok.output})")
        return
    summary = _with_bar(label, spec)
    out = Path(spec.out)
    click.echo(f"accepted {summary.accepted} of {summary.requested} rows; rejected {summary.rejected}; cost ${summary.cost_usd:.4f} at {summary.pricing}")
    click.echo(f"labels:   {out / 'labels.jsonl'}")
    click.echo(f"rejected: {out / 'rejected.jsonl'}")


@cli.command("train")
@click.argument("args", nargs=-1)
@click.option("--merge", is_flag=True, help="Also write a merged full model (student/merged).")
def train_cmd(args: tuple[str, ...], merge: bool) -> None:
    """Fine-tune the student on labels.jsonl: [SPEC.yaml] [key=value ...]."""
    from .tasks import resolve_spec
    from .training import train

    spec = resolve_spec(_spec(args + (("train.merge=true",) if merge else ())))
    summary = _with_bar(train, spec)
    click.echo(f"trained {summary.steps} steps on {summary.examples} examples; final loss {summary.final_loss}")
    click.echo(f"adapter: {Path(spec.out) / 'student'}")


@cli.command("eval")
@click.argument("args", nargs=-1)
@click.option("--model", "model", default=None, help="Hub id or folder to evaluate (default: student.model).")
@click.option("--adapter", default=None, help="A peft adapter folder to apply (e.g. RUN/student).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: metric, score, examples.")
def eval_cmd(args: tuple[str, ...], model: str | None, adapter: str | None, as_json: bool) -> None:
    """Evaluate a model (with or without an adapter) on the test split with the student's prompt."""
    from .evaluation import evaluate_model, test_examples
    from .tasks import resolve_spec

    spec = resolve_spec(_spec(args))
    if adapter and not Path(adapter).is_dir():
        raise SpecError(f"adapter folder '{adapter}' does not exist; give the student/ folder of a finished run.")
    examples = test_examples(spec)
    bar = None if as_json else _bar()
    try:
        result = evaluate_model(spec, examples, model or spec.student.model, adapter, progress=bar)
    finally:
        if bar:
            bar.close()
    if as_json:
        click.echo(json.dumps({"metric": result.metric, "score": result.score, "examples": result.examples, "scores": result.scores}))
    else:
        shown = "n/a" if result.score is None else f"{result.score * 100:.1f} %"
        click.echo(f"{result.metric or 'score'}: {shown} on {result.examples} examples")
        for k, v in result.scores.items():
            if k != result.metric:
                click.echo(f"{k}: {v * 100:.1f} %")


@cli.command("run")
@click.argument("args", nargs=-1)
def run_cmd(args: tuple[str, ...]) -> None:
    """Label, train, evaluate and report in one command (re-run to resume): [SPEC.yaml] [key=value ...]."""
    from .report import render_markdown
    from .worker import run_foreground

    spec = _spec(args)
    _notes(spec)
    bar = _bar()
    try:
        record, report = run_foreground(spec, {"source": "cli", "user": os.environ.get("USER")}, progress=bar)
    finally:
        bar.close()
    click.echo(render_markdown(report))
    click.echo(f"run:    {record.id} (distillery status {record.id})")
    click.echo(f"report: {report['paths']['report_md']}\nchart:  {report['paths']['report_png']}")


def _add_run_commands() -> None:
    try:
        from . import cli_runs
    except ImportError:
        return
    for name in ("submit", "runs", "status", "cancel", "report", "worker"):
        cmd = getattr(cli_runs, f"{name}_command", None) or getattr(cli_runs, name, None)
        if isinstance(cmd, click.Command):
            cli.add_command(cmd, name)


_add_run_commands()


def _quiet_libraries() -> None:
    """Our own bar shows progress: no per-file loading bars or deprecation chatter from the libraries."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is deprecated.*", category=DeprecationWarning)


def run_cli(group: click.Group, argv: list[str] | None = None) -> int:
    """The error boundary of every front door: sentences for our errors, no tracebacks."""
    _quiet_libraries()
    try:
        group.main(args=argv, prog_name="distillery", standalone_mode=False)
        return 0
    except DistilleryError as err:
        click.echo(f"error: {redact(str(err))}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("interrupted; re-run the same command to resume where it stopped.", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted; re-run the same command to resume where it stopped.", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    except Exception as err:  # the outermost boundary: say something went wrong, without a traceback
        if os.environ.get("DISTILLERY_DEBUG"):
            raise
        click.echo(f"error: internal error ({type(err).__name__}: {redact(str(err)[:300])}); set DISTILLERY_DEBUG=1 for the traceback and please report it.", err=True)
        return 2


def main() -> None:
    sys.exit(run_cli(cli))


if __name__ == "__main__":
    main()
