"""Benchmark: the same tiny run through `distillery worker` (local child process) and through Ray Jobs, side by side.

    flock /tmp/heavy.lock python benchmarks/ray_overhead.py            # starts its own local Ray head, stops it after
    python benchmarks/ray_overhead.py --steps 12 --rows 16 --json ray.json

Both runs use the tiny random Llama (tests/tiny_model.py) and the fake OpenAI-compatible teacher on 127.0.0.1
(tests/fake_llm_server.py); the Ray run goes to a real `ray start --head` on loopback with token auth on
(tests/ray_head.py). Printed:

- wall seconds from submit to `done` in the registry, local worker vs Ray executor, and the difference
  (target: Ray at most 30 s slower);
- status lag: for every stage change the job wrote (ray_events.jsonl, the job's clock) the delay until the registry
  on the submitting side recorded it (the same machine's clock), mean and max (target <= 5 s);
- progress lag: the same for progress lines (throttled to one a second on the job's side).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def spec_for(out: Path, server, model: Path, rows: int, steps: int):
    from pipeline.spec import load_spec

    data = REPO / "tests" / "data" / "sst2.jsonl"
    settings = {"task": "classification", "labels": "[negative, positive]", "dataset.train": data, "dataset.test": data,
                "dataset.train_size": rows, "dataset.test_size": 8, "teacher.provider": "openai",
                "teacher.model": "fake-teacher", "teacher.base_url": server.openai_base_url, "teacher.concurrency": 4,
                "teacher.max_retries": 0, "teacher.params.max_tokens": 8, "student.model": model, "student.device": "cpu",
                "train.max_steps": steps, "train.batch_size": 2, "train.learning_rate": 0.01, "eval.batch_size": 8,
                "eval.max_new_tokens": 4, "out": out}
    return load_spec(None, [f"{k}={v}" for k, v in settings.items()])


def timed_run(reg, spec) -> tuple[str, float]:
    from pipeline.worker import run_worker

    stop = threading.Event()
    rec = reg.submit(spec, {"source": "benchmark"})
    t0 = time.perf_counter()
    thread = threading.Thread(target=run_worker, args=(reg,), kwargs={"poll_s": 0.2, "stop": stop}, daemon=True)
    thread.start()
    while not reg.get(rec.id).finished:
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    stop.set()
    thread.join(60)
    got = reg.get(rec.id)
    if got.status != "done":
        raise SystemExit(f"the run ended {got.status}: {got.error}")
    return rec.id, wall


def lags(reg, run_id: str, out: Path) -> dict[str, list[float]]:
    """Delay between a job line and the registry row/event it became (same machine, same clock)."""
    lines = [json.loads(x) for x in (out / "ray_events.jsonl").read_text().splitlines() if x.strip()]
    events = reg.events(run_id)
    stage_lag = []
    for line in (x for x in lines if x["kind"] == "stage"):
        match = [e.at for e in events if e.kind == f"stage_{line['event']}" and e.stage == line["stage"]]
        if match:
            stage_lag.append(min(match) - line["at"])
    progress_lag = []
    for line in (x for x in lines if x["kind"] == "progress"):
        later = [e.at for e in events if e.kind == "progress" and e.stage == line["stage"]
                 and e.data.get("done") == line["done"]]
        if later:
            progress_lag.append(min(later) - line["at"])
    return {"stage": stage_lag, "progress": progress_lag}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="distillery-ray-bench-"))
    os.environ["DISTILLERY_HOME"] = str(work / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fake_llm_server import FakeLLMServer
    from ray_head import RayHead
    from tiny_model import build_tiny_model

    from pipeline.registry import Registry

    model = build_tiny_model(work / "tiny")
    answer = lambda req: "negative" if "bad" in json.dumps(req.messages).lower() else "positive"  # noqa: E731
    with FakeLLMServer(responder=answer, latency=0.05) as server:
        reg = Registry()
        os.environ.pop("DISTILLERY_RAY_ADDRESS", None)
        _, local_s = timed_run(reg, spec_for(work / "local", server, model, args.rows, args.steps))
        with RayHead(num_cpus=4) as head:
            os.environ.update({"DISTILLERY_RAY_ADDRESS": head.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head.token})
            run_id, ray_s = timed_run(reg, spec_for(work / "ray", server, model, args.rows, args.steps))
            lag = lags(reg, run_id, Path(reg.get(run_id).out))
    result = {"local_worker_s": local_s, "ray_s": ray_s, "overhead_s": ray_s - local_s, "ratio": ray_s / local_s,
              "stage_lag_s": lag["stage"], "progress_lag_s": lag["progress"]}
    print(f"tiny run ({args.rows} rows, {args.steps} steps): distillery worker {local_s:.1f} s, Ray Jobs {ray_s:.1f} s; "
          f"overhead {ray_s - local_s:+.1f} s (x{ray_s / local_s:.2f}; target <= 30 s)")
    for name, values in lag.items():
        if values:
            print(f"{name} lag: mean {sum(values) / len(values):.2f} s, max {max(values):.2f} s over {len(values)} changes "
                  "(target <= 5 s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
