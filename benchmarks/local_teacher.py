"""Benchmark: the local teacher's option scoring on SST-2 with and without the shared-prefix KV cache.

    python benchmarks/local_teacher.py                      # 200 rows, 8-shot plain prompt, Gemma 3 270M, CPU
    python benchmarks/local_teacher.py --rows 50 --naive-rows 20 --device cuda

The prompts are the product's: pipeline.tasks.teacher_messages(...) rendered by render_plain, options scored as
" negative" / " positive". Three ways are timed on the same rows and must give the same labels:
  prefix cache   score_options per batch of rows, as the local teacher calls it (shared prefix run once and kept,
                 suffixes batched, LM head at the scored positions only)
  no cache       score_options(prefix_cache=False) on the same batches (every row in full, LM head at scored positions)
  naive          one full forward per (prompt, option) with logits over the whole sequence (first --naive-rows rows)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "positive"]


def build_prompts(rows: int, shots: int):
    from pipeline.datasets import read_records, to_examples
    from pipeline.models import render_plain
    from pipeline.tasks import get_task, teacher_messages

    data = ROOT / "pipeline" / "data" / "sst2"
    test = to_examples(read_records(str(data / "test.jsonl")), "classification", LABELS, None, "sst2/test")[:rows]
    demos = to_examples(read_records(str(data / "train.jsonl")), "classification", LABELS, None, "sst2/train")[:shots]
    task = get_task("classification")
    return [render_plain(teacher_messages(task, ex, LABELS, demos)) for ex in test], [ex.gold for ex in test]


def naive_scores(model, tokenizer, prompts, options):
    import torch

    from pipeline.scoring import encode_prompt

    out = []
    for prompt, opts in zip(prompts, options):
        row = []
        for option in opts:
            ids, full = encode_prompt(tokenizer, prompt), encode_prompt(tokenizer, prompt + option)
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([full], device=model.device)).logits[0].float().log_softmax(-1)
            row.append(sum(logp[i - 1, full[i]].item() for i in range(len(ids), len(full))))
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--naive-rows", type=int, default=8, help="rows for the slow naive baseline (0: skip)")
    args = parser.parse_args()

    import torch

    from pipeline.models import load_model
    from pipeline.scoring import encode_prompt, score_options

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared machine one thread avoids waiting on descheduled peers
    model, tokenizer = load_model(args.model, args.device)
    prompts, golds = build_prompts(args.rows, args.shots)
    options = [[" " + label for label in LABELS]] * len(prompts)
    n_tokens = sum(len(encode_prompt(tokenizer, p)) for p in prompts) / len(prompts)
    score_options(model, tokenizer, prompts[:2], options[:2], prefix_cache=False)  # warm-up (and the head check)

    # the two ways alternate batch by batch (as the local teacher calls them), so a busy machine slows both alike
    results = {"prefix cache": [0, 0.0, []], "no cache": [0, 0.0, []]}
    for start in range(0, len(prompts), args.batch_size):
        rows = slice(start, start + args.batch_size)
        for name, kwargs in (("prefix cache", {}), ("no cache", {"prefix_cache": False})):
            began = time.perf_counter()
            scores = score_options(model, tokenizer, prompts[rows], options[rows], batch_size=args.batch_size, **kwargs)
            results[name][1] += time.perf_counter() - began
            results[name][0] += len(scores)
            results[name][2] += scores
    if args.naive_rows:
        n = min(args.naive_rows, len(prompts))
        start = time.perf_counter()
        scores = naive_scores(model, tokenizer, prompts[:n], options[:n])
        results["naive"] = (n, time.perf_counter() - start, scores)

    def labels_of(scores):
        return [LABELS[max(range(len(LABELS)), key=lambda k: s[k])] for s in scores]

    cached = results["prefix cache"][2]
    print(f"model {args.model} on {args.device}, {len(prompts)} SST-2 rows, {args.shots}-shot plain prompt, "
          f"{n_tokens:.0f} prompt tokens per row, batch {args.batch_size}, {torch.get_num_threads()} threads\n")
    print(f"{'method':<14} {'rows':>5} {'seconds':>8} {'rows/s':>8} {'cache is':>9} {'accuracy':>9} {'same labels':>12} {'max |diff|':>11}")
    base_rate = results["prefix cache"][0] / results["prefix cache"][1]
    for name, (n, secs, scores) in results.items():
        rate = n / secs
        acc = sum(p == g for p, g in zip(labels_of(scores), golds)) / n
        same = labels_of(scores) == labels_of(cached[:n])
        diff = max(abs(a - b) for ra, rb in zip(scores, cached) for a, b in zip(ra, rb))
        print(f"{name:<14} {n:>5} {secs:>8.2f} {rate:>8.2f} {base_rate / rate:>7.2f}x  {acc:>9.1%} {str(same):>12} {diff:>11.2e}")


if __name__ == "__main__":
    main()
