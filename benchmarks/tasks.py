"""Every seed task end to end with a stand-in teacher that answers from gold; scores and peak memory per stage.

    flock /tmp/heavy.lock python benchmarks/tasks.py                           # all tasks, chain of thought on and off
    flock /tmp/heavy.lock python benchmarks/tasks.py --tasks summarization --cot on
    python benchmarks/tasks.py --tasks sst2 --train 64 --test 32 --teacher local   # the default run's memory, smaller
    flock /tmp/heavy.lock python benchmarks/tasks.py --tasks dialogsum --cot on --train-memory 0 1024   # training only

Each configuration runs in its own process (so its peak memory is its own): a local OpenAI-compatible server
(tests/fake_llm_server.py) answers every row correctly from the gold labels, with a short rationale and a
"Final answer:" line when chain of thought is asked for (tests/gold_teacher.py); the student is the embedded
Gemma 3 270M (LoRA, the spec's defaults); data are the slices in tests/data (24 train rows, the next 12 rows of
the same split as test rows). The process's resident memory is sampled every 20 ms; the table shows the peak
per stage and the whole run's peak (ru_maxrss). `--teacher local` uses the embedded 8-shot local teacher instead
(the default run). `--train-memory B1 B2 ...` labels once, then only trains, once per train.batch_tokens value
(0: off), each in its own process and folder, and prints the training stage's peak RSS and time side by side
as ratios to the first value. Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# name -> (task, data slice, extra overrides)
CONFIGS = {
    "sst2": ("classification", "sst2", ["labels=[negative, positive]"]),
    "conjnli": ("nli", "conjnli", ["labels=null"]),
    "comve": ("multiple_choice", "comve", ["labels=null"]),
    "hellaswag": ("multiple_choice", "hellaswag", ["labels=null"]),
    "gsm8k": ("math", "gsm8k", ["labels=null"]),
    "dialogsum": ("summarization", "dialogsum", ["labels=null"]),
    "chat": ("chat", "chat", ["labels=null"]),
    "conjnli-96": ("nli", "conjnli_96", ["labels=null"]),  # 96 train / 48 test rows: --train 96 --test 48
    "comve-96": ("multiple_choice", "comve_96", ["labels=null"]),
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """Peak resident memory per stage, sampled in a thread; `stage(name)` switches the current stage."""

    def __init__(self, every_s: float = 0.02):
        self.peaks: dict[str, int] = {}
        self.current = "setup"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), rss)
            time.sleep(every_s)

    def stage(self, name: str) -> None:
        self.current = name

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def _spec_and_server(name: str, cot: bool, args, out: Path):
    """(run spec, the stand-in teacher's server or None): the configuration's overrides, as every mode uses them."""
    from fake_llm_server import FakeLLMServer
    from gold_teacher import gold_responder

    from pipeline.spec import load_spec

    task, data, extra = CONFIGS[name]
    overrides = [f"task={task}", *extra, f"dataset.train={DATA / data}.jsonl", f"dataset.test={DATA / data}_test.jsonl",
                 f"dataset.train_size={args.train}", f"dataset.test_size={args.test}", f"teacher.chain_of_thought={str(cot).lower()}",
                 f"student.model={args.student}", f"out={out}", *args.set]
    if args.teacher == "local":  # the embedded default (SST-2 shipped with Distillery, 8-shot local Gemma teacher)
        return load_spec(None, [f"dataset.train_size={args.train}", f"dataset.test_size={args.test}", f"student.model={args.student}",
                                f"out={out}", *args.set]), None
    overrides += ["teacher.provider=openai", "teacher.model=stand-in-405b", "teacher.few_shot=0"]
    probe = load_spec(None, overrides + ["teacher.base_url=http://127.0.0.1:9/v1"])
    server = FakeLLMServer(responder=gold_responder(probe))
    server.__enter__()
    return load_spec(None, overrides + [f"teacher.base_url={server.openai_base_url}"]), server


def run_one(name: str, cot: bool, args) -> dict:
    """One configuration in this process; returns scores, counts and memory."""
    from pipeline.runner import run

    task = CONFIGS[name][0]
    out = Path(args.out) / f"{name}-cot-{'on' if cot else 'off'}{'-' + args.tag if args.tag else ''}"
    spec, server = _spec_and_server(name, cot, args, out)
    sampler = Sampler()
    t0 = time.monotonic()
    seconds: dict[str, float] = {}

    def on_stage(stage: str, event: str, _data: dict) -> None:
        if event == "started":
            sampler.stage(stage)
            seconds[stage] = time.monotonic()
        else:
            seconds[stage] = round(time.monotonic() - seconds[stage], 1)

    try:
        report = run(spec, on_stage=on_stage)
    finally:
        peaks = sampler.stop()
        if server is not None:
            server.__exit__(None, None, None)
    evaluation = json.loads((out / "evaluation.json").read_text())["results"]
    return {
        "config": name, "task": task, "cot": cot, "metric": report["metric"], "scores": report["scores"],
        "unreadable": {n: r.get("errors") or {} for n, r in evaluation.items()},
        "method": {n: r.get("method") for n, r in evaluation.items()},
        "labelled": report["labelling"]["accepted"], "seconds": round(time.monotonic() - t0, 1), "stage_seconds": seconds,
        "peak_rss_gb": {k: round(v / 2**30, 2) for k, v in peaks.items()},
        "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 2),
    }


def train_one(name: str, cot: bool, args, budget: str) -> dict:
    """Label (stand-in teacher), then train only, with train.batch_tokens=budget; peak RSS of the training stage."""
    import shutil

    from pipeline.labelling import label
    from pipeline.training import train

    base = Path(args.out) / f"{name}-train-memory"
    spec, server = _spec_and_server(name, cot, args, base)
    try:
        if not (base / "labels.jsonl").is_file():
            label(spec)
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    out = base / f"batch-tokens-{budget}"  # each budget trains from scratch in its own folder on the same labels
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy(base / "labels.jsonl", out / "labels.jsonl")
    spec = spec.model_copy(update={"out": str(out), "train": spec.train.model_copy(update={"batch_tokens": int(budget)})})
    before = _rss_bytes()
    sampler = Sampler()
    sampler.stage("training")
    t0 = time.monotonic()
    summary = train(spec)
    peaks = sampler.stop()
    return {"config": name, "batch_tokens": int(budget), "rss_before_gb": round(before / 2**30, 2),
            "peak_training_gb": round(peaks["training"] / 2**30, 2),
            "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 2),
            "seconds": round(time.monotonic() - t0, 1), "steps": summary.steps, "forwards": summary.forwards,
            "final_loss": summary.final_loss, "rows": summary.examples}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def table(rows: list[dict]) -> str:
    lines = ["| data (task) | chain of thought | teacher | student base | student distilled | unreadable (base / distilled) | "
             "peak RSS GB: labelling / training / evaluating / whole run | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} ({r.get('task', '?')}) | {'on' if r['cot'] else 'off'} | failed: {r['error'][:120]} |||||")
            continue
        s, p = r["scores"], r["peak_rss_gb"]
        unread = " / ".join(", ".join(f"{v} {k}" for k, v in r["unreadable"].get(n, {}).items()) or "0" for n in ("student_base", "student_distilled"))
        lines.append(f"| {r['config']} ({r['task']}, {r['metric']}) | {'on' if r['cot'] else 'off'} | {_fmt(s['teacher'])} | "
                     f"{_fmt(s['student_base'])} | {_fmt(s['student_distilled'])} | {unread} | "
                     f"{p.get('labelling', 0):.2f} / {p.get('training', 0):.2f} / {p.get('evaluating', 0):.2f} / {r['max_rss_gb']:.2f} | "
                     f"{r['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=[n for n in CONFIGS if not n.endswith("-96")], choices=list(CONFIGS))
    ap.add_argument("--cot", choices=["on", "off", "both"], default="both")
    ap.add_argument("--train", type=int, default=24)
    ap.add_argument("--test", type=int, default=12)
    ap.add_argument("--student", default="gemma-3-270m")
    ap.add_argument("--teacher", choices=["stand-in", "local"], default="stand-in")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    ap.add_argument("--tag", default="", help="suffix of the run folders")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "distillery-bench-tasks"))
    ap.add_argument("--one", nargs=2, metavar=("CONFIG", "COT"), help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also append every result as a JSON line to this file")
    ap.add_argument("--train-memory", nargs="+", metavar="BATCH_TOKENS", default=None,
                    help="train only (after labelling) once per train.batch_tokens value (0: off) and compare peak RSS")
    ap.add_argument("--train-one", nargs=3, metavar=("CONFIG", "COT", "BATCH_TOKENS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one[0], args.one[1] == "on", args)), flush=True)
        return
    if args.train_one:
        print("RESULT " + json.dumps(train_one(args.train_one[0], args.train_one[1] == "on", args, args.train_one[2])), flush=True)
        return
    common = ["--train", str(args.train), "--test", str(args.test), "--student", args.student, "--teacher", args.teacher,
              "--out", args.out, "--tag", args.tag, "--set", *args.set]
    rows = []
    for name in args.tasks:
        for cot in ([True, False] if args.cot == "both" else [args.cot == "on"]):
            if name == "chat" and not cot and args.cot == "both":
                continue  # chain of thought has no effect on chat (one run is the same as the other)
            if args.train_memory:
                runs = [["--train-one", name, "on" if cot else "off", b] for b in args.train_memory]
            else:
                runs = [["--one", name, "on" if cot else "off"]]
            for mode in runs:  # each in its own process, so each peak is its own
                done = subprocess.run([sys.executable, __file__, *mode, *common], capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)})
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                row = json.loads(line[7:]) if line else {"config": name, "task": CONFIGS[name][0], "cot": cot,
                                                          "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    with open(args.json, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
    print(memory_table(rows) if args.train_memory else table(rows))


def memory_table(rows: list[dict]) -> str:
    """Training-only peaks side by side; ratios against the first budget given (the reference, e.g. 0 = off)."""
    ok = [r for r in rows if "error" not in r]
    lines = ["| data | train.batch_tokens | forward/backward passes | peak RSS GB (training) | x reference | RSS before training GB | "
             "seconds | x reference | final loss |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error'][:120]} ||||||||")
            continue
        ref = next(x for x in ok if x["config"] == r["config"])
        lines.append(f"| {r['config']} ({r['rows']} rows, {r['steps']} steps) | {r['batch_tokens'] or 'off'} | {r['forwards']} | "
                     f"{r['peak_training_gb']:.2f} | {r['peak_training_gb'] / ref['peak_training_gb']:.2f} | {r['rss_before_gb']:.2f} | "
                     f"{r['seconds']:.0f} | {r['seconds'] / ref['seconds']:.2f} | {r['final_loss']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
