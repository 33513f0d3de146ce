"""The background worker: takes queued runs from the registry and runs them, each in its own child process.

    python -m pipeline.worker                    # or `distillery worker`; Ctrl-C hands running runs back
    python -m pipeline.worker --once             # run what is queued now, then exit
    run_worker(Registry(), once=True)            # the same from Python (tests call it in threads and processes)

Design: the worker process only claims, watches and heartbeats; each run executes in a child process
(`python -m pipeline.worker --execute RUN_ID`, its output in DISTILLERY_HOME/logs/RUN_ID.log), so a crash,
an out-of-memory kill or a stuck cancel cannot take the worker down. At most `max_concurrent` runs at once (1 by
default: a GPU is exclusive). The child records its own progress, stages and outcome in the registry and stops at
the next should_stop check once `distillery cancel` asks (the worker kills it after `cancel_grace_s` if it does
not). The child dies with its worker (PR_SET_PDEATHSIG on Linux, a parent watch elsewhere), so a worker killed
with -9 behaves like a crashed machine: its runs stop heartbeating and the next worker resumes them after
`stale_after_s` (finished stages are skipped, answered teacher requests come from the answer cache, training
continues from its last checkpoint).

`run_foreground(spec)` runs a spec in the calling process with the same bookkeeping (`distillery run`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Cancelled, DistilleryError, RunError
from .progress import Progress, ProgressFn
from .registry import Registry, RunRecord

__all__ = ["run_worker", "execute_run", "run_foreground", "RunHooks", "EmbeddedWorker", "queue_warning", "main"]

log = logging.getLogger("distillery.worker")

NOT_FOR_RUNS = frozenset({"SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "DISTILLERY_CHAT_API_KEY",
                          "DISTILLERY_MCP_TOKEN", "RAY_AUTH_TOKEN"})  # front-door secrets kept out of run processes
STAGE_STATUS = {"labelling": "labelling", "training": "training", "evaluating": "evaluating", "reporting": "evaluating"}


# ---- one run: hooks from the runner into the registry ---------------------------------------------------------

class RunHooks:
    """progress / should_stop / on_stage callbacks for runner.run that write into the registry (throttled)."""

    def __init__(self, registry: Registry, run_id: str, progress: ProgressFn | None = None,
                 progress_every_s: float = 1.0, event_every_s: float = 10.0, cancel_check_s: float = 0.5):
        self.registry, self.run_id, self.forward = registry, run_id, progress
        self.progress_every_s, self.event_every_s, self.cancel_check_s = progress_every_s, event_every_s, cancel_check_s
        self._last_write = self._last_event = self._last_check = 0.0
        self._last_stage: str | None = None
        self._stop = False

    def progress(self, p: Progress) -> None:
        if self.forward:
            self.forward(p)
        now = time.monotonic()
        new_stage = p.stage != self._last_stage
        last = p.total and p.done >= p.total
        if new_stage or last or now - self._last_write >= self.progress_every_s:
            self._last_write = now
            self.registry.update_progress(self.run_id, p)
        if new_stage or last or now - self._last_event >= self.event_every_s:
            self._last_event = now
            self.registry.add_event(self.run_id, "progress", p.stage,
                                    {"done": p.done, "total": p.total, "unit": p.unit, "rate": p.rate, "info": p.info})
        self._last_stage = p.stage

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last_check >= self.cancel_check_s:
            self._last_check = now
            self._stop = self.registry.is_cancel_requested(self.run_id)
        return self._stop

    def on_stage(self, stage: str, event: str, data: dict) -> None:
        if event == "started":
            self.registry.set_status(self.run_id, STAGE_STATUS.get(stage, "evaluating"), stage=stage, clear_progress=True)
            self._last_stage = None
        self.registry.add_event(self.run_id, f"stage_{event}", stage, data)


class _Heartbeat(threading.Thread):
    """Heartbeats one run from a daemon thread (foreground runs; the worker heartbeats its children itself)."""

    def __init__(self, registry: Registry, run_id: str, worker_id: str, every_s: float):
        super().__init__(daemon=True, name=f"heartbeat-{run_id}")
        self.registry, self.run_id, self.worker_id, self.every_s = registry, run_id, worker_id, every_s
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            try:
                self.registry.heartbeat(self.run_id, self.worker_id)
            except Exception:  # a missed beat is retried; never kill the run over it
                log.warning("heartbeat of run %s failed", self.run_id, exc_info=True)


def execute_run(run_id: str, registry: Registry | None = None, progress: ProgressFn | None = None,
                raise_errors: bool = False) -> dict[str, Any] | None:
    """Run one registered run with runner.run and record how it ended; returns the report (None if it did not finish)."""
    from .runner import run

    reg = registry or Registry()
    hooks = RunHooks(reg, run_id, progress)
    try:
        rec = reg.get(run_id)
        spec = rec.run_spec()
        _check_folder(reg, rec)
        report = run(spec, progress=hooks.progress, should_stop=hooks.should_stop, on_stage=hooks.on_stage)
    except (Cancelled, KeyboardInterrupt):
        reg.mark_cancelled(run_id)
        if raise_errors:
            raise
        return None
    except DistilleryError as err:
        reg.fail(run_id, str(err))
        if raise_errors:
            raise
        return None
    except Exception as err:
        log.exception("run %s failed with an internal error", run_id)
        reg.fail(run_id, f"internal error: {type(err).__name__}: {err}; the log has the details.")
        if raise_errors:
            raise
        return None
    reg.finish(run_id, report)
    return report


def _check_folder(reg: Registry, rec: RunRecord) -> None:
    """A run folder that vanished is recreated (with a warning); a file where the folder should be is an error."""
    out = Path(rec.out)
    if out.exists() and not out.is_dir():
        raise RunError(f"the run folder '{out}' is a file, not a folder; move it away or submit with another out=.")
    if rec.attempts > 1 and not out.exists():
        reg.add_event(rec.id, "warning", None, {"message": f"run folder '{out}' was missing; starting over in it"})


def run_foreground(spec, requested_by: dict[str, Any] | None = None, progress: ProgressFn | None = None,
                   registry: Registry | None = None, heartbeat_s: float = 5.0) -> tuple[RunRecord, dict[str, Any]]:
    """Run a spec in this process, recorded in the registry (`distillery run`); errors are recorded and raised.

    `distillery cancel ID` stops it like a background run; Ctrl-C marks it cancelled.
    """
    reg = registry or Registry()
    rec = reg.start_foreground(spec, requested_by)
    beat = _Heartbeat(reg, rec.id, rec.worker_id or "", heartbeat_s)
    beat.start()
    try:
        report = execute_run(rec.id, reg, progress, raise_errors=True)
    finally:
        beat.done.set()
    return reg.get(rec.id), report or {}


# ---- the worker loop ------------------------------------------------------------------------------------------

@dataclass
class _Child:
    run_id: str
    proc: subprocess.Popen
    cancel_seen_at: float | None = None


def _spawn(reg: Registry, run_id: str, worker_id: str) -> subprocess.Popen:
    if os.environ.get("DISTILLERY_RAY_ADDRESS"):  # the run executes as a Ray job; the handle acts like a Popen
        from .ray_executor import submit_run

        return submit_run(reg, run_id, worker_id)
    logs = reg.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline.worker", "--execute", run_id, "--home", str(reg.home),
           "--parent", str(os.getpid())]
    env = {k: v for k, v in os.environ.items() if k not in NOT_FOR_RUNS}  # a run never needs the front doors' secrets
    env.update({"DISTILLERY_HOME": str(reg.home), "PYTHONUNBUFFERED": "1", "DISTILLERY_WORKER_ID": worker_id})
    with open(logs / f"{run_id}.log", "ab") as logf:
        logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} worker {worker_id} starts run {run_id}\n".encode())
        logf.flush()
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def run_worker(registry: Registry | None = None, max_concurrent: int = 1, poll_s: float = 1.0, once: bool = False,
               stale_after_s: float = 30, worker_id: str | None = None, stop: threading.Event | None = None,
               heartbeat_s: float | None = None, cancel_grace_s: float = 30.0, kind: str = "worker") -> int:
    """Claim and execute runs until `stop` is set (or, with once=True, until nothing is left); returns runs handled.

    Runs whose worker died are claimed when their heartbeat is older than stale_after_s. On exit (stop, Ctrl-C,
    SIGTERM) running children are stopped and their runs released, so the next worker resumes them at once.
    The worker heartbeats itself in the registry (`Registry.live_workers`), so a queued run can tell whether
    anyone is watching; `kind` says what runs it ("worker", or "embedded in distillery slack").
    """
    reg = registry or Registry()
    worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    stop = stop or threading.Event()
    heartbeat_s = heartbeat_s or max(0.2, min(5.0, stale_after_s / 4))
    children: dict[str, _Child] = {}
    lock = threading.Lock()
    handled = 0
    beating = threading.Event()

    def announce() -> None:
        try:
            reg.worker_alive(worker_id, kind)
        except Exception:  # a missed beat is retried; never stop the worker over it
            log.warning("worker heartbeat failed", exc_info=True)

    def beat() -> None:
        while not beating.wait(heartbeat_s):
            announce()
            with lock:
                live = list(children.values())
            for child in live:
                try:
                    if not reg.heartbeat(child.run_id, worker_id) and child.proc.poll() is None:
                        rec = reg.get(child.run_id)
                        if rec.running and rec.worker_id != worker_id:
                            log.warning("run %s was taken over by %s; stopping our copy", child.run_id, rec.worker_id)
                            child.proc.kill()
                except Exception:
                    log.warning("heartbeat of run %s failed", child.run_id, exc_info=True)

    announce()
    threading.Thread(target=beat, daemon=True, name=f"heartbeat-{worker_id}").start()
    log.info("worker %s watching %s (max %d at a time)", worker_id, reg.path, max_concurrent)
    try:
        while not stop.is_set():
            try:
                claimed = _tick(reg, children, lock, worker_id, max_concurrent, stale_after_s, cancel_grace_s, stop)
            except (DistilleryError, OSError, sqlite3.Error):  # a full disk, a vanished file: log, wait, go on
                log.exception("worker %s: error while looking after runs; retrying", worker_id)
                claimed = []
            handled += len(claimed)
            if once and not children and not claimed:
                break
            stop.wait(poll_s)
    except KeyboardInterrupt:
        log.info("worker %s interrupted", worker_id)
    finally:
        beating.set()
        _shutdown(reg, children, worker_id)
        try:
            reg.worker_stopped(worker_id)
        except Exception:
            log.warning("could not record that worker %s stopped", worker_id, exc_info=True)
    return handled


def _tick(reg: Registry, children: dict[str, _Child], lock: threading.Lock, worker_id: str, max_concurrent: int,
          stale_after_s: float, cancel_grace_s: float, stop: threading.Event) -> list[str]:
    """One look after the runs: reap, enforce cancels, claim while there is room; returns the ids claimed."""
    # 1. reap finished children; a child that died without recording an outcome fails its run
    for child in list(children.values()):
        if child.proc.poll() is not None:
            _reap(reg, child, worker_id)
            with lock:
                children.pop(child.run_id)
        else:
            _enforce_cancel(reg, child, cancel_grace_s)
    # 2. claim while there is room
    claimed: list[str] = []
    while len(children) < max_concurrent and not stop.is_set():
        rec = reg.claim_next(worker_id, stale_after_s=stale_after_s)
        if rec is None:
            break
        log.info("run %s: claimed (attempt %d)", rec.id, rec.attempts)
        try:
            proc = _spawn(reg, rec.id, worker_id)
        except DistilleryError as err:  # Ray: cluster unreachable, no GPU for a GPU plan; nothing was submitted
            reg.fail(rec.id, str(err))
            continue
        except OSError as err:
            reg.fail(rec.id, f"the worker could not start the run's process ({err}); check the worker's environment.")
            continue
        with lock:
            children[rec.id] = _Child(rec.id, proc)
        claimed.append(rec.id)
    return claimed


def _enforce_cancel(reg: Registry, child: _Child, grace_s: float) -> bool:
    """Kill a child that has not stopped `grace_s` after its run was cancelled; True when it was killed."""
    if child.cancel_seen_at is None:
        if reg.is_cancel_requested(child.run_id):
            child.cancel_seen_at = time.monotonic()
        return False
    if time.monotonic() - child.cancel_seen_at < grace_s:
        return False
    log.warning("run %s did not stop within %.0f s of its cancel; killing it", child.run_id, grace_s)
    child.proc.kill()
    child.proc.wait()
    if reg.get(child.run_id).running:
        reg.mark_cancelled(child.run_id, reason=f"its process did not stop within {grace_s:g} s and was killed")
    return True


def _reap(reg: Registry, child: _Child, worker_id: str) -> None:
    code = child.proc.returncode
    rec = reg.get(child.run_id)
    if rec.running and rec.worker_id == worker_id:
        if rec.cancel_requested:
            reg.mark_cancelled(rec.id)
            return
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        reg.fail(rec.id, f"the run's process {how} (out of memory?); see {reg.home / 'logs' / (rec.id + '.log')} "
                         "and submit it again to resume.")
    log.info("run %s: %s", rec.id, reg.get(rec.id).status)


def _shutdown(reg: Registry, children: dict[str, _Child], worker_id: str) -> None:
    """Stop running children and hand their runs back for the next worker."""
    for child in children.values():
        if child.proc.poll() is None:
            child.proc.terminate()
    deadline = time.monotonic() + 10
    for child in children.values():
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
        if reg.get(child.run_id).running:
            reg.release(child.run_id, worker_id)


# ---- an embedded worker, and telling a queued run nobody watches -----------------------------------------------

LIVE_WITHIN_S = 30.0  # a worker that has not heartbeated for this long is not counted as watching


class EmbeddedWorker:
    """run_worker in a daemon thread of a front door (`distillery slack`, `distillery chat`): the same guarantees
    as `distillery worker` (a child process per run, heartbeats, resume, cancel); stop() hands running runs back."""

    def __init__(self, registry: Registry, kind: str, poll_s: float = 1.0, **kwargs: Any):
        self.registry, self.stop_event = registry, threading.Event()
        self.thread = threading.Thread(target=run_worker, name="distillery-embedded-worker", daemon=True,
                                       kwargs=dict(registry=registry, poll_s=poll_s, stop=self.stop_event, kind=kind, **kwargs))

    def start(self) -> "EmbeddedWorker":
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)


def queue_warning(registry: Registry, record: RunRecord) -> str | None:
    """One sentence when `record` is queued and no live worker watches this registry; None otherwise."""
    if record.status != "queued" or registry.live_workers(LIVE_WITHIN_S):
        return None
    return (f"No worker is watching this Distillery home, so run {record.id} stays queued: start `distillery worker` "
            "with the same DISTILLERY_HOME, or run `distillery slack` / `distillery chat` without --no-worker.")


# ---- command line ----------------------------------------------------------------------------------------------

def _watch_parent(parent_pid: int) -> None:
    """Die with the worker: PR_SET_PDEATHSIG where Linux offers it, and a thread watching the parent pid anyway."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(70)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(70)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _exit_on_term(signum, frame) -> None:
    """SIGTERM from a worker shutting down: leave the run as it is (the worker releases it for the next one)."""
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.worker", description="Run queued Distillery runs.")
    ap.add_argument("--max-concurrent", type=int, default=1, help="runs at once (default 1: a GPU is exclusive)")
    ap.add_argument("--once", action="store_true", help="run what is queued, then exit")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the queue")
    ap.add_argument("--stale-after", type=float, default=30.0, help="seconds without heartbeat before a run is resumed")
    ap.add_argument("--worker-id", default=None)
    ap.add_argument("--execute", metavar="RUN_ID", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    ap.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reg = Registry(args.home) if args.home else Registry()
    if args.execute:
        if args.parent:
            _watch_parent(args.parent)
        signal.signal(signal.SIGTERM, _exit_on_term)
        execute_run(args.execute, reg)
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_worker(reg, max_concurrent=args.max_concurrent, poll_s=args.poll, once=args.once,
               stale_after_s=args.stale_after, worker_id=args.worker_id, stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
