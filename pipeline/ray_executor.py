"""Runs as Ray Jobs: with DISTILLERY_RAY_ADDRESS set, `distillery worker` submits each claimed run to the cluster.

    handle = submit_run(registry, run_id, worker_id)   # JobSubmissionClient.submit_job, submission_id "<run>-<attempt>"
    handle.poll()                                      # None while it runs; copies its progress into the registry

The worker claims, heartbeats and cancels exactly as for a local child process (pipeline/worker.py calls
`submit_run` instead of starting `python -m pipeline.worker --execute`); the handle answers the same calls
(poll/kill/terminate/wait/returncode).

How the run's state flows back: the job (`python -m pipeline.ray_executor job OUT ...`, on a cluster node) appends
its stages, its progress (at most once a second) and its outcome to OUT/ray_events.jsonl in the run folder,
which lives on storage both sides see (DISTILLERY_RUNS_DIR). The handle reads the new lines on every poll (each
worker tick, 1 s) and writes them into the registry through the same RunHooks a local run uses, so the registry on
the submitting box stays the only source of truth; the cluster never opens the SQLite file.

Before each submission the run folder gets the job's inputs: spec.yaml, and a copy of every dataset file given as a
local path (OUT/data/train.<ext>, OUT/data/test.<ext>; the whole file, since the held-out test split and the
few-shot demonstrations are drawn from all of it), so the cluster never reads the box's data folders.

Cancel: `distillery cancel` -> `stop_job` (Ray sends SIGTERM; the job saves a checkpoint at the next should_stop
check) -> the run ends `cancelled` with its files kept. A job that is lost (its driver killed, its node preempted,
the head restarted, the job unknown to the cluster) is submitted again as attempt + 1: labelling re-sends nothing
answered (the answer cache in the run folder) and training continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .errors import Cancelled, ClusterError, DistilleryError, RunError
from .progress import Progress
from .distributed import DRIVER_GPU_SHARE
from .ray_cluster import cluster_info, gpu_needed, jobs_client, ray_address, translate
from .registry import Registry

__all__ = ["EVENTS_FILE", "submission_id", "submit_run", "RayJob", "stage_inputs", "job_resources", "main"]

log = logging.getLogger("distillery.ray")

EVENTS_FILE = "ray_events.jsonl"
LOST_AFTER_S = 180.0  # a cluster unreachable this long: the job is treated as lost and submitted again
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def submission_id(run_id: str, attempt: int) -> str:
    """The Ray Jobs submission id of one attempt of a run (a contract: `<run id>-<attempt>`)."""
    return f"{run_id}-{attempt}"


# ---- before submitting: the run folder holds everything the job reads ------------------------------------------

def stage_inputs(spec, out: Path):
    """Copy local dataset files into OUT/data and return the spec the job runs (its datasets point at the copies)."""
    from .datasets import resolve_path

    update: dict[str, Any] = {}
    for split in ("train", "test"):
        source = getattr(spec.dataset, split)
        path = resolve_path(str(source)) if source else None
        if path is None:  # no file, or a hub id (the cluster reads the hub itself), or a file copied before and gone since
            earlier = sorted((out / "data").glob(f"{split}.*")) if source else []
            if earlier:
                update[split] = str(earlier[0])
            continue
        dest = out / "data" / f"{split}{path.suffix.lower()}"
        if path.resolve() != dest.resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        update[split] = str(dest)
    dataset = spec.dataset.model_copy(update=update)
    return spec.model_copy(update={"dataset": dataset, "out": str(out)})


def _check_shared(out: Path) -> None:
    shared = os.environ.get("DISTILLERY_RUNS_DIR")
    if not shared:
        return
    root = Path(shared).expanduser().absolute()
    if root != out and root not in out.absolute().parents:
        raise RunError(f"the run folder '{out}' is not under DISTILLERY_RUNS_DIR ({root}), the storage the Ray cluster "
                       "reads; submit without out= (runs get RUNS_DIR/<id>) or with a folder under it.")


def job_resources(spec, info) -> dict[str, float]:
    """entrypoint_num_cpus/num_gpus for the job's driver; ClusterError when the cluster lacks a GPU the run needs.

    One-process training takes one GPU for the driver. With train.workers N > 1 the driver takes a tenth of a GPU
    and each Ray Train worker the other nine tenths of one (pipeline/distributed.py), so N GPUs are enough and the
    driver still has a GPU to evaluate on once training has released them (it holds nothing there meanwhile).
    """
    workers = int(getattr(spec.train, "workers", 1) or 1)
    needs = gpu_needed(spec)
    if needs and info.gpus < max(1, workers if workers > 1 else 1):
        raise ClusterError(f"{info.describe()} has {'no GPU' if not info.gpus else f'{info.gpus:g} GPUs'} but this run needs "
                           f"{max(1, workers)} (student.method={spec.student.method}, device={spec.student.device}); "
                           "add GPU nodes or use student.method=lora with student.device=auto.")
    device = str(spec.student.device)
    wants_gpu = needs or (info.gpus > 0 and (device == "auto" or device.startswith("cuda")))
    if not (wants_gpu and info.gpus):
        return {"entrypoint_num_cpus": 1, "entrypoint_num_gpus": 0}
    return {"entrypoint_num_cpus": 1, "entrypoint_num_gpus": 1 if workers == 1 else DRIVER_GPU_SHARE}


# ---- the submitting side -------------------------------------------------------------------------------------

def submit_run(reg: Registry, run_id: str, worker_id: str, address: str | None = None) -> "RayJob":
    """Submit the claimed run's current attempt; ClusterError/RunError (one sentence) when nothing could be submitted."""
    address = address or ray_address()
    rec = reg.get(run_id)
    job = RayJob(reg, run_id, worker_id, address, Path(rec.out))
    job.submit(max(1, rec.attempts))
    return job


class RayJob:
    """One run executing on the cluster, looked after like a child process (poll/kill/terminate/wait/returncode)."""

    def __init__(self, reg: Registry, run_id: str, worker_id: str, address: str, out: Path):
        self.reg, self.run_id, self.worker_id, self.address, self.out = reg, run_id, worker_id, address, out
        self.events_path = out / EVENTS_FILE
        self.returncode: int | None = None
        self.attempt = 0
        self.job_id = ""
        self._offset = 0
        self._client = None
        self._hooks = None
        self._stop_sent = self._handing_back = False
        self._last_ok = time.monotonic()
        self._lock = threading.RLock()  # the worker polls from its loop and from its heartbeat thread

    # -- submission
    def submit(self, attempt: int) -> None:
        from .worker import RunHooks

        spec = self.reg.get(self.run_id).run_spec()
        _check_shared(self.out)
        client = self._client or jobs_client(self.address)
        info = cluster_info(self.address, fresh=True)
        resources = job_resources(spec, info)
        self._stop_earlier(client, attempt)
        self.out.mkdir(parents=True, exist_ok=True)
        job_spec = stage_inputs(spec, self.out)
        (self.out / "spec.yaml").write_text(job_spec.to_yaml(), encoding="utf-8")
        self._offset = self.events_path.stat().st_size if self.events_path.exists() else 0
        sid = submission_id(self.run_id, attempt)
        entrypoint = (f"python -m pipeline.ray_executor job {shlex.quote(str(self.out))} --run-id {self.run_id} "
                      f"--attempt {attempt}")
        env = {"PYTHONUNBUFFERED": "1", "DISTILLERY_RUN_ID": self.run_id, "DISTILLERY_RUN_ATTEMPT": str(attempt)}
        try:  # env_vars name only what the job needs: secrets come from the cluster's environment (spec: *_env names)
            self.job_id = client.submit_job(entrypoint=entrypoint, submission_id=sid, runtime_env={"env_vars": env},
                                            metadata={"distillery_run": self.run_id, "attempt": str(attempt)}, **resources)
        except Exception as err:
            raise translate(err, self.address) from None
        self._client, self.attempt, self._hooks = client, attempt, RunHooks(self.reg, self.run_id)
        self._stop_sent, self._last_ok = False, time.monotonic()
        self.reg.add_event(self.run_id, "ray_submitted", None, {"submission_id": sid, "address": self.address, **resources})
        log.info("run %s: submitted to %s as %s", self.run_id, self.address, sid)

    def _stop_earlier(self, client, attempt: int) -> None:
        """A worker that died may have left an earlier attempt running on the cluster: stop it first."""
        for earlier in range(1, attempt):
            try:
                if str(client.get_job_status(submission_id(self.run_id, earlier))) not in _TERMINAL:
                    client.stop_job(submission_id(self.run_id, earlier))
            except Exception:  # unknown to the cluster (never submitted, or the head restarted): nothing to stop
                pass

    # -- the Popen-like interface the worker uses
    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            try:
                self._sync()
            except DistilleryError as err:  # a resubmission that could not be made: the run fails with the sentence
                self.reg.fail(self.run_id, str(err))
                self.returncode = 1
            return self.returncode

    def kill(self) -> None:
        self._stop()

    def terminate(self) -> None:
        """The worker is shutting down: stop the job and hand the run back (the next worker submits it again)."""
        self._handing_back = True
        self._stop()

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else 60.0)
        while self.poll() is None:
            if time.monotonic() > deadline:
                if timeout is not None:
                    raise subprocess.TimeoutExpired(f"ray job {self.job_id}", timeout)
                self.returncode = -9  # the cluster does not answer: give up on this job
                break
            time.sleep(0.5)
        return self.returncode

    # -- internals
    def _stop(self) -> None:
        if self._stop_sent or not self.job_id:
            return
        self._stop_sent = True
        try:
            self._client.stop_job(self.job_id)
        except Exception:
            log.warning("run %s: could not stop Ray job %s", self.run_id, self.job_id, exc_info=True)

    def _sync(self) -> None:
        outcome = self._read_events()
        if outcome and outcome.get("status") in ("done", "failed") and not self._handing_back:
            self.returncode = 0 if outcome["status"] == "done" else 1  # recorded; the job's process is just exiting
            self._save_logs()
            return
        if outcome is None and not self._stop_sent and self.reg.is_cancel_requested(self.run_id):
            self._stop()
        try:
            status = str(self._client.get_job_status(self.job_id))
            self._last_ok = time.monotonic()
        except Exception as err:
            if "does not exist" in str(err):  # the head restarted and forgot the job
                status = "LOST"
            elif time.monotonic() - self._last_ok > LOST_AFTER_S:
                status = "LOST"
            else:
                return
        if status not in _TERMINAL and status != "LOST":
            return
        if outcome is None:
            outcome = self._read_events()  # lines written just before the job ended
        self._save_logs()
        if self._handing_back:
            self.returncode = 0
            return
        if outcome and outcome.get("status") in ("done", "failed"):
            self.returncode = 0 if outcome["status"] == "done" else 1
            return
        if self.reg.is_cancel_requested(self.run_id):
            if self.reg.get(self.run_id).running:
                self.reg.mark_cancelled(self.run_id)
            self.returncode = 0
            return
        why = f"Ray job {self.job_id} ended {status.lower()} without an outcome (driver killed, node lost or head restarted)"
        log.warning("run %s: %s; submitting it again", self.run_id, why)
        attempt = self.reg.next_attempt(self.run_id, self.worker_id, why)
        if attempt is None:
            self.returncode = 1
            return
        self.submit(attempt)

    def _read_events(self) -> dict[str, Any] | None:
        """Apply the job's new lines to the registry; returns the outcome line once the job wrote one."""
        try:
            with open(self.events_path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return None
        end = data.rfind(b"\n")
        if end < 0:
            return None
        self._offset += end + 1
        outcome = None
        for line in data[: end + 1].splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("attempt") != self.attempt:
                continue
            outcome = self._apply(ev) or outcome
        return outcome

    def _apply(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        kind = ev.get("kind")
        if kind == "progress":
            self._hooks.progress(Progress(ev["stage"], ev["done"], ev["total"], ev.get("rate"), ev.get("eta_s"),
                                          ev.get("unit", "rows"), ev.get("info") or {}))
        elif kind == "stage":
            self._hooks.on_stage(ev["stage"], ev["event"], ev.get("data") or {})
        elif kind == "started":
            self.reg.add_event(self.run_id, "ray_started", None, {"attempt": ev["attempt"], "node": ev.get("node")})
        elif kind == "outcome" and not self._handing_back:
            if ev["status"] == "done":
                self.reg.finish(self.run_id, ev.get("report") or {})
            elif ev["status"] == "failed":
                self.reg.fail(self.run_id, ev.get("error") or "the Ray job failed; see the run's log.")
            return ev
        return None

    def _save_logs(self) -> None:
        try:
            logs = self._client.get_job_logs(self.job_id)
        except Exception:
            return
        path = self.reg.home / "logs" / f"{self.run_id}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"--- Ray job {self.job_id} ({self.address})\n{logs[-200_000:]}\n")


# ---- the job side (runs on the cluster) -------------------------------------------------------------------------

class _FileHooks:
    """runner.run callbacks that append to OUT/ray_events.jsonl (the submitter copies them into the registry)."""

    def __init__(self, out: Path, attempt: int, every_s: float = 1.0):
        self.path, self.attempt, self.every_s = out / EVENTS_FILE, attempt, every_s
        self._last = 0.0
        self._stage: str | None = None
        self.stop = False

    def write(self, kind: str, **data: Any) -> None:
        line = json.dumps({"attempt": self.attempt, "at": time.time(), "kind": kind, **data}, default=str)
        with open(self.path, "a", encoding="utf-8") as fh:  # open-append-close: close-to-open consistency on NFS
            fh.write(line + "\n")

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        if p.stage != self._stage or (p.total and p.done >= p.total) or now - self._last >= self.every_s:
            self._last, self._stage = now, p.stage
            self.write("progress", stage=p.stage, done=p.done, total=p.total, rate=p.rate, eta_s=p.eta_s, unit=p.unit,
                       info=p.info)

    def on_stage(self, stage: str, event: str, data: dict) -> None:
        self._stage = None
        self.write("stage", stage=stage, event=event, data=data)

    def should_stop(self) -> bool:
        return self.stop


def run_job(out: Path, run_id: str, attempt: int) -> int:
    """Execute the run in OUT (its spec.yaml) as the job's driver; every outcome ends up as one line in the events."""
    from .runner import run
    from .spec import load_spec

    hooks = _FileHooks(out, attempt)

    def on_term(signum, frame) -> None:  # stop_job (cancel, worker shutdown, preemption): stop at the next check
        hooks.stop = True

    signal.signal(signal.SIGTERM, on_term)
    hooks.write("started", pid=os.getpid(), node=os.uname().nodename, run_id=run_id)
    try:
        report = run(load_spec(out / "spec.yaml"), progress=hooks.progress, should_stop=hooks.should_stop,
                     on_stage=hooks.on_stage)
    except (Cancelled, KeyboardInterrupt):
        hooks.write("outcome", status="stopped")
        return 0
    except DistilleryError as err:
        hooks.write("outcome", status="failed", error=str(err))
        return 1
    except Exception as err:
        log.exception("run %s failed with an internal error", run_id)
        hooks.write("outcome", status="failed", error=f"internal error: {type(err).__name__}: {err}; the log has the details.")
        return 1
    hooks.write("outcome", status="done", report=report)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.ray_executor", description="A Distillery run as a Ray job.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    job = sub.add_parser("job", help="execute the run in OUT (the Ray job's entrypoint)")
    job.add_argument("out")
    job.add_argument("--run-id", required=True)
    job.add_argument("--attempt", type=int, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_job(Path(args.out), args.run_id, args.attempt)


if __name__ == "__main__":
    sys.exit(main())
