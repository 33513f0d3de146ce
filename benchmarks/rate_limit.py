"""Labelling under a provider rate limit: the paced engine vs the fixed-concurrency engine it replaced.

    flock /tmp/heavy.lock python benchmarks/rate_limit.py                  # both scenarios below
    flock /tmp/heavy.lock python benchmarks/rate_limit.py --only limited --rows 300 --rps 10 --latency 0.3 --concurrency 64

Scenario "limited" (issue 12): an OpenAI-compatible endpoint admitting --rps requests per second (token bucket,
burst one second's worth; 429 with an integer Retry-After above it; --latency per answer), --rows rows at
teacher.concurrency --concurrency. Ideal wall time: rows / rps. Targets: every row labelled, wall <= 1.15x
ideal, at most one 429 per row on average.
Scenario "unlimited": no limit, latency-bound (--fast-rows rows, --fast-latency, 64 in flight: ideal
concurrency / latency, 1,280 req/s by default): the pacing must keep the old engine's throughput.

Both engines run label() end to end on the same data against a fresh server process each (the fake server of
tests/fake_llm_server.py); they differ only in the sender: "paced" is pipeline/sending.py's (AIMD concurrency,
Retry-After pauses, 429s never spend a retry), "fixed" is the previous sender, kept here: teacher.concurrency
workers, each retrying a request teacher.max_retries times with Retry-After honoured per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.labelling import start_server, write_rows  # noqa: E402  the same server process and rows


async def fixed_sender(teacher, pending, store, state, should_stop) -> None:
    """The sender before pacing: fixed concurrency, a 429 spends one of teacher.max_retries like any error."""
    from pipeline.errors import TeacherError
    from pipeline.sending import _with_retries, store_answer
    from pipeline.teachers import TransientError

    state.queue.extend(pending)

    async def worker() -> None:
        while state.queue and not state.fatal:
            req = state.queue.popleft()
            try:
                store_answer(store, req, await _with_retries(teacher.answer, req, state))
            except (TransientError, TeacherError) as err:
                state.fail(req, err)
            state.done(req.key)

    await asyncio.gather(*(worker() for _ in range(min(state.concurrency, len(pending)) or 1)))


def run_once(engine: str, rows: int, latency: float, rps: float | None, concurrency: int) -> dict:
    import pipeline.sending as sending
    from pipeline.errors import LabellingError
    from pipeline.labelling import label
    from pipeline.spec import load_spec

    sending.register_sender("fixed", fixed_sender)
    original = sending.pick_sender
    if engine == "fixed":
        sending.pick_sender = lambda spec, teacher: "fixed"
    server, url = start_server(latency, *(["--rate-limit", str(rps)] if rps else []))
    url = url.removesuffix("/v1")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train = write_rows(Path(tmp), rows)
            # dataset.test given (any file): no rows are held out of train.jsonl, every row is labelled
            spec = load_spec(None, [f"dataset.train={train}", f"dataset.test={train}", "teacher.provider=openai", "teacher.model=bench",
                                    f"teacher.base_url={url}/v1", "teacher.api_key_env=null", f"teacher.concurrency={concurrency}",
                                    "teacher.few_shot=0", f"out={Path(tmp) / 'run'}"])
            t0 = time.perf_counter()
            try:
                summary = label(spec)
                accepted, failed = summary.accepted, summary.by_reason.get("request failed after retries", 0)
            except LabellingError:
                info = json.loads((Path(tmp) / "run" / "labelling.json").read_text())
                accepted, failed = info["accepted"], info["by_reason"].get("request failed after retries", 0)
            wall = time.perf_counter() - t0
        stats = json.loads(urllib.request.urlopen(f"{url}/stats", timeout=10).read())
    finally:
        sending.pick_sender = original
        server.stdin.close()
        server.wait(10)
    return {"accepted": accepted, "failed": failed, "wall": wall, "limited": stats["limited"], "answered": stats["answered"]}


def main() -> None:
    ap = argparse.ArgumentParser(description="rate-limit benchmark")
    ap.add_argument("--only", choices=["limited", "unlimited"], default=None)
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--rps", type=float, default=10.0)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--fast-rows", type=int, default=3000)
    ap.add_argument("--fast-latency", type=float, default=0.05)
    args = ap.parse_args()
    if args.only in (None, "limited"):
        ideal = args.rows / args.rps
        print(f"limited: {args.rows} rows, endpoint {args.rps:g} req/s (Retry-After, latency {args.latency * 1000:.0f} ms), "
              f"concurrency {args.concurrency}; ideal {ideal:.1f} s")
        print(f"{'engine':<8}{'labelled':>10}{'failed':>8}{'429s':>7}{'429/row':>9}{'wall s':>9}{'x ideal':>9}")
        for engine in ("fixed", "paced"):
            r = run_once(engine, args.rows, args.latency, args.rps, args.concurrency)
            print(f"{engine:<8}{r['accepted']:>10}{r['failed']:>8}{r['limited']:>7}{r['limited'] / args.rows:>9.2f}{r['wall']:>9.1f}"
                  f"{r['wall'] / ideal:>9.2f}")
            if engine == "paced":
                ok = r["accepted"] == args.rows and r["wall"] <= 1.15 * ideal and r["limited"] <= args.rows
                print(f"targets (all labelled, <= 1.15x ideal, <= 1 429/row): {'met' if ok else 'NOT met'}")
    if args.only in (None, "unlimited"):
        ideal = args.concurrency / args.fast_latency
        print(f"unlimited: {args.fast_rows} rows, latency {args.fast_latency * 1000:.0f} ms, concurrency {args.concurrency}; "
              f"ideal {ideal:.0f} req/s")
        print(f"{'engine':<8}{'req/s':>9}{'of ideal':>10}{'wall s':>9}")
        rates = {}
        for engine in ("fixed", "paced", "fixed", "paced"):  # twice each, alternating: the machine is shared
            r = run_once(engine, args.fast_rows, args.fast_latency, None, args.concurrency)
            rate = r["answered"] / r["wall"]
            rates.setdefault(engine, []).append(rate)
            print(f"{engine:<8}{rate:>9.0f}{rate / ideal:>10.2f}{r['wall']:>9.2f}")
        best = {e: max(v) for e, v in rates.items()}
        print(f"paced / fixed throughput (best of 2 each): {best['paced'] / best['fixed']:.2f}x")


if __name__ == "__main__":
    main()
