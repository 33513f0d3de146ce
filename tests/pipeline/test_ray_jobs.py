"""Runs as Ray Jobs on a real local Ray head (`ray start --head`, token auth on, loopback, stopped after).

The worker runs in a thread of the test with DISTILLERY_RAY_ADDRESS set; each run executes as a Ray job whose
driver is `python -m pipeline.ray_executor job OUT ...` on the head. The teacher is the fake OpenAI-compatible
server on 127.0.0.1, the student the tiny random Llama. Run these under `flock /tmp/heavy.lock`.
"""

import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest

from fake_llm_server import FakeLLMServer, Reply
from pipeline.cli import cli, run_cli
from pipeline.ray_executor import EVENTS_FILE, submission_id
from pipeline.registry import Registry
from test_worker import answer, answered, tiny_spec, wait_for


class Worker:
    def __init__(self, reg: Registry):
        from pipeline.worker import run_worker

        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_worker, args=(reg,), daemon=True,
                                       kwargs={"poll_s": 0.2, "stop": self.stop, "stale_after_s": 600})
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=120)


def job_lines(out: Path, kind: str, attempt: int | None = None) -> list[dict]:
    path = out / EVENTS_FILE
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return [x for x in lines if x["kind"] == kind and (attempt is None or x["attempt"] == attempt)]


def driver_pid(out: Path, attempt: int) -> int | None:
    started = job_lines(out, "started", attempt)
    return started[-1]["pid"] if started else None


def jobs_of(head, run_id: str) -> list:
    from ray.job_submission import JobSubmissionClient

    return [j for j in JobSubmissionClient(head.address).list_jobs() if (j.submission_id or "").startswith(run_id + "-")]


def test_ray_run_ends_done_with_report_and_status_shows_progress(cluster, tmp_path, tiny_model, capsys):
    with FakeLLMServer(responder=answer, latency=0.05) as server:
        reg = Registry()
        rec = reg.submit(tiny_spec(tmp_path / "run", server, tiny_model, **{"train.max_steps": 6}), {"source": "cli"})
        with Worker(reg):
            seen = wait_for(lambda: (r := reg.get(rec.id)).progress and r.running and r, timeout=400, what="progress")
            assert run_cli(cli, ["status", rec.id]) == 0
            shown = capsys.readouterr().out
            wait_for(lambda: reg.get(rec.id).finished, timeout=400, what="the run to finish")
    got = reg.get(rec.id)
    assert got.status == "done", got.error
    assert f"run {rec.id}: {seen.status}" in shown and "progress:" in shown
    assert set(got.scores) == {"teacher", "student_base", "student_distilled"}
    out = Path(got.out)
    assert json.loads((out / "report.json").read_text())["scores"] == got.scores
    kinds = [(e.kind, e.stage) for e in reg.events(rec.id)]
    assert ("stage_finished", "labelling") in kinds and ("stage_finished", "evaluating") in kinds
    submitted = [e.data for e in reg.events(rec.id) if e.kind == "ray_submitted"]
    assert [d["submission_id"] for d in submitted] == [submission_id(rec.id, 1)]
    wait_for(lambda: [j.status for j in jobs_of(cluster, rec.id)] == ["SUCCEEDED"], timeout=60, what="SUCCEEDED")
    # the cluster read the copy in the run folder, never the box's file
    spec = (out / "spec.yaml").read_text()
    assert str(out / "data" / "train.jsonl") in spec and str(out / "data" / "test.jsonl") in spec
    assert (out / "data" / "train.jsonl").read_bytes() == (Path(__file__).parents[1] / "data" / "sst2.jsonl").read_bytes()
    assert json.loads((out / "training.json").read_text())["workers"] == 1


def test_lost_driver_is_resubmitted_and_resumes_without_paying_twice(cluster, tmp_path, tiny_model):
    with FakeLLMServer(responder=lambda req: Reply(text=answer(req), delay=0.4)) as server:
        reg = Registry()
        rec = reg.submit(tiny_spec(tmp_path / "run", server, tiny_model, **{"train.max_steps": 40}), {"source": "cli"})
        out = Path(rec.out)
        with Worker(reg):
            # 1. mid-labelling: kill the job's driver once a few answers are saved
            wait_for(lambda: answered(out) >= 4, timeout=400, what="answers")
            pid = driver_pid(out, 1)
            os.kill(pid, signal.SIGKILL)
            in_flight = len(server.requests)
            # 2. mid-training: kill the second attempt's driver once it wrote a checkpoint
            wait_for(lambda: driver_pid(out, 2), timeout=400, what="attempt 2")
            wait_for(lambda: list((out / "checkpoints").glob("step-*")), timeout=400, what="a checkpoint")
            os.kill(driver_pid(out, 2), signal.SIGKILL)
            wait_for(lambda: reg.get(rec.id).finished, timeout=500, what="the run to finish")
        got = reg.get(rec.id)
        counts = Counter(r.prompt_key for r in server.requests)
        before_kill = {r.prompt_key for r in server.requests[: in_flight - 1]}  # concurrency 1: all answered
    assert got.status == "done", got.error
    assert got.attempts == 3
    assert [e.data["submission_id"] for e in reg.events(rec.id) if e.kind == "ray_submitted"] == \
        [submission_id(rec.id, n) for n in (1, 2, 3)]
    assert all(counts[key] == 1 for key in before_kill), "an answered teacher request was sent again"
    assert sum(counts.values()) <= len(counts) + 1  # at most the one request in flight at the kill was repeated
    training = json.loads((Path(got.out) / "training.json").read_text())
    assert training["resumed_from"] > 0 and training["steps"] == 40


def test_cancel_stops_the_job_and_keeps_the_files(cluster, tmp_path, tiny_model):
    with FakeLLMServer(responder=lambda req: Reply(text=answer(req), delay=0.5)) as server:
        reg = Registry()
        rec = reg.submit(tiny_spec(tmp_path / "run", server, tiny_model), {"source": "cli"})
        out = Path(rec.out)
        with Worker(reg):
            wait_for(lambda: answered(out) >= 2, timeout=400, what="answers")
            assert run_cli(cli, ["cancel", rec.id]) == 0
            wait_for(lambda: reg.get(rec.id).finished, timeout=120, what="the cancel")
        wait_for(lambda: [j.status for j in jobs_of(cluster, rec.id)] == ["STOPPED"], timeout=60, what="STOPPED")
    got = reg.get(rec.id)
    assert got.status == "cancelled"
    assert answered(out) >= 2 and (out / "spec.yaml").is_file() and (out / "data" / "train.jsonl").is_file()


def test_unreachable_cluster_or_too_few_gpus_fails_in_one_sentence_and_submits_nothing(cluster, monkeypatch, tmp_path,
                                                                                     tiny_model):
    from ray_head import free_ports

    from pipeline.worker import run_worker

    reg = Registry()
    with FakeLLMServer(responder=answer) as server:
        # the test head declares 2 GPUs: QLoRA on 4 Ray Train workers needs 4
        qlora = reg.submit(tiny_spec(tmp_path / "b", server, tiny_model, **{"student.method": "qlora", "train.workers": 4}))
        run_worker(reg, poll_s=0.1, once=True)
        nowhere = f"http://127.0.0.1:{free_ports(1)[0]}"
        monkeypatch.setenv("DISTILLERY_RAY_ADDRESS", nowhere)
        lost = reg.submit(tiny_spec(tmp_path / "a", server, tiny_model))
        run_worker(reg, poll_s=0.1, once=True)
        assert not server.requests
    a, b = reg.get(lost.id), reg.get(qlora.id)
    assert a.status == "failed" and a.error.startswith(f"cannot reach the Ray cluster at {nowhere};")
    assert b.status == "failed" and "(1 node, 4 CPUs, 2 GPUs (A100-80G, 80 GB each)) has 2 GPUs but this run needs 4" in b.error
    for err in (a.error, b.error):
        assert err.count(". ") == 0 and "\n" not in err and "Traceback" not in err and cluster.token not in err
    assert jobs_of(cluster, qlora.id) == [] and jobs_of(cluster, lost.id) == []


def test_runs_dir_holds_run_folders_and_ray_refuses_a_folder_outside_it(cluster, monkeypatch, tmp_path, tiny_model):
    from pipeline.spec import load_spec
    from pipeline.worker import run_worker

    shared = tmp_path / "shared-runs"
    monkeypatch.setenv("DISTILLERY_RUNS_DIR", str(shared))
    reg = Registry()
    default = reg.submit(load_spec(None))  # the embedded default out: the run gets RUNS_DIR/<id>
    assert Path(default.out) == shared / default.id
    reg.cancel(default.id)
    with FakeLLMServer(responder=answer) as server:
        outside = reg.submit(tiny_spec(tmp_path / "elsewhere", server, tiny_model))
        run_worker(reg, poll_s=0.1, once=True)
        assert not server.requests
    got = reg.get(outside.id)
    assert got.status == "failed" and got.error.startswith(f"the run folder '{tmp_path / 'elsewhere'}' is not under DISTILLERY_RUNS_DIR")
    assert jobs_of(cluster, outside.id) == []
