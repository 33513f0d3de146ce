"""Labelling throughput: our engine vs the ideal and vs distilabel's OpenAILLM, against one local server.

    python benchmarks/labelling.py                   # 2,000 rows, 50 ms server latency, 64 in flight
    python benchmarks/labelling.py --rows 500 --latency 0.02 --concurrency 32

The fake OpenAI-compatible server (tests/fake_llm_server.py) runs in its own process, so only the client's
CPU time is counted (time.process_time of this process). Ideal throughput is concurrency / latency.
Our figure is label() end to end: prompts, cache keys, sending with retries, parsing, the answer cache
(flushed per answer), labels.jsonl. distilabel runs the same prompts through OpenAILLM.agenerate at the same
concurrency (needs `pip install distilabel==1.5.3`, the `bench` extra); it writes nothing.
Targets: ours >= 0.95 of ideal and <= 1 ms of CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_server(latency: float, *extra: str) -> tuple[subprocess.Popen, str]:
    """tests/fake_llm_server.py in its own process (extra: more of its flags, e.g. --rate-limit 10); (process, /v1 URL)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_llm_server.py"), "--latency", str(latency), "--answer", "positive", *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}/v1"


def write_rows(folder: Path, n: int) -> Path:
    path = folder / "train.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"row": i, "text": f"review {i}: the film was {'good' if i % 2 else 'bad'} and the cast was fine", "label": i % 2}) + "\n")
    return path


def bench_ours(train: Path, url: str, out: Path, concurrency: int) -> tuple[float, float, int]:
    from pipeline.labelling import label
    from pipeline.spec import load_spec

    import aiohttp, httpx2, openai  # noqa: F401,E401  imports are not part of the per-request cost

    # dataset.test given (any file): no rows are held out of train.jsonl, every row is labelled
    spec = load_spec(None, [f"dataset.train={train}", f"dataset.test={train}", "teacher.provider=openai", "teacher.model=bench",
                            f"teacher.base_url={url}", "teacher.api_key_env=null", f"teacher.concurrency={concurrency}",
                            "teacher.few_shot=0", f"out={out}"])
    t0, c0 = time.perf_counter(), time.process_time()
    summary = label(spec)
    return time.perf_counter() - t0, time.process_time() - c0, summary.requests_sent


def bench_client_floor(train: Path, url: str, concurrency: int) -> tuple[float, float, int]:
    """The openai teacher alone (same prompts, no cache, no parsing): what the engine cannot go below."""
    from pipeline.datasets import read_records, to_examples
    from pipeline.spec import TeacherSpec
    from pipeline.tasks import get_task, teacher_messages
    from pipeline.teachers import TeacherRequest
    from pipeline.teachers.openai import OpenAITeacher

    task, labels = get_task("classification"), ["negative", "positive"]
    examples = to_examples(read_records(str(train)), "classification", labels, None, str(train))
    requests = [TeacherRequest(teacher_messages(task, ex, labels, []), {"max_tokens": 256, "temperature": 0.0}) for ex in examples]

    async def run() -> int:
        teacher = OpenAITeacher(TeacherSpec(provider="openai", model="bench", base_url=url, concurrency=concurrency))
        sem = asyncio.Semaphore(concurrency)

        async def one(r):
            async with sem:
                return await teacher.answer(r)

        outs = await asyncio.gather(*(one(r) for r in requests))
        await teacher.aclose()
        return len(outs)

    t0, c0 = time.perf_counter(), time.process_time()
    ok = asyncio.run(run())
    return time.perf_counter() - t0, time.process_time() - c0, ok


def bench_distilabel(train: Path, url: str, concurrency: int) -> tuple[float, float, int] | str:
    try:
        from distilabel.models.llms import OpenAILLM
    except ImportError as err:
        return f"distilabel is not installed ({err}); pip install distilabel==1.5.3"
    from pipeline.datasets import read_records, to_examples
    from pipeline.tasks import get_task, teacher_messages

    task, labels = get_task("classification"), ["negative", "positive"]
    examples = to_examples(read_records(str(train)), "classification", labels, None, str(train))
    prompts = [teacher_messages(task, ex, labels, []) for ex in examples]
    llm = OpenAILLM(model="bench", base_url=url, api_key="no-key-needed", max_retries=0, timeout=120)
    llm.load()

    async def run() -> int:
        sem = asyncio.Semaphore(concurrency)

        async def one(msgs):
            async with sem:
                return await llm.agenerate(input=msgs, max_new_tokens=256, temperature=0.0)

        outs = await asyncio.gather(*(one(p) for p in prompts))
        return sum(1 for o in outs if o["generations"] and o["generations"][0])

    t0, c0 = time.perf_counter(), time.process_time()
    ok = asyncio.run(run())
    return time.perf_counter() - t0, time.process_time() - c0, ok


def main() -> None:
    ap = argparse.ArgumentParser(description="labelling throughput benchmark")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    ideal = args.concurrency / args.latency
    server, url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train = write_rows(Path(tmp), args.rows)
            wall, cpu, sent = bench_ours(train, url, Path(tmp) / "run", args.concurrency)
            floor = bench_client_floor(train, url, args.concurrency)
            theirs = bench_distilabel(train, url, args.concurrency)
    finally:
        server.stdin.close()
        server.wait(10)
    ours_rps = sent / wall
    print(f"{args.rows} rows, server latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, ideal {ideal:.0f} req/s")
    print(f"{'client':<22}{'req/s':>9}{'of ideal':>10}{'CPU ms/req':>12}{'wall s':>9}")
    print(f"{'distillery label()':<22}{ours_rps:>9.0f}{ours_rps / ideal:>10.2f}{cpu / sent * 1000:>12.3f}{wall:>9.2f}")
    f_wall, f_cpu, f_n = floor
    print(f"{'  openai client alone':<22}{f_n / f_wall:>9.0f}{f_n / f_wall / ideal:>10.2f}{f_cpu / f_n * 1000:>12.3f}{f_wall:>9.2f}")
    if isinstance(theirs, str):
        print(f"{'distilabel OpenAILLM':<22} not run: {theirs}")
    else:
        t_wall, t_cpu, t_ok = theirs
        t_rps = t_ok / t_wall
        print(f"{'distilabel OpenAILLM':<22}{t_rps:>9.0f}{t_rps / ideal:>10.2f}{t_cpu / t_ok * 1000:>12.3f}{t_wall:>9.2f}")
        print(f"ours / distilabel throughput: {ours_rps / t_rps:.2f}x; CPU per request: {t_cpu / t_ok / (cpu / sent):.2f}x less")
    print(f"targets: >= 0.95 of ideal ({'met' if ours_rps / ideal >= 0.95 else 'NOT met'}), "
          f"<= 1 ms CPU/request ({'met' if cpu / sent <= 0.001 else 'NOT met'})")


if __name__ == "__main__":
    main()
