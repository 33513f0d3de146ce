"""GPU check: LoRA, QLoRA and full fine-tuning of Gemma 3 270M in bf16 on 1 GPU, and on 2 GPUs through Ray Train,
side by side with trl's SFTTrainer on the same data.

    python benchmarks/gpu_check.py                       # on a CUDA machine (pip install -e ".[bench,qlora]")
    python benchmarks/gpu_check.py --steps 40 --json gpu.json

Status: written without a GPU (the session that wrote it had none) and NOT RUN yet. On a machine without CUDA it
exits at once with one sentence. Every configuration runs in its own subprocess (so peak GPU memory is its own):

    ours  lora / qlora / full, 1 GPU        pipeline.training.train (train.workers=1)
    ours  lora / full, 2 GPUs (if present)  train.workers=2: Ray Train DDP for LoRA, FSDP for full (local Ray instance)
    trl   lora / qlora / full, 1 GPU        trl.SFTTrainer, completion-only loss, same LoRA, lr, batch, steps, seed

Printed per configuration: tokens/s (non-padding tokens through the model per second of the training loop: ours
from training.json, trl from our token count of the same rows over its train_runtime), peak GPU memory
(torch.cuda.max_memory_allocated; for 2 GPUs rank 0's), final loss (mean of the last 5 step losses), wall seconds.
Then the ratios: ours/trl tokens/s per method, and 2-GPU/1-GPU tokens/s for LoRA (target >= 1.8).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SETTINGS = {"learning_rate": 2e-4, "batch_size": 8, "grad_accum": 1, "warmup_ratio": 0.0, "weight_decay": 0.0, "seed": 0}
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}


def run_ours(args) -> dict:
    import torch

    from pipeline.spec import RunSpec
    from pipeline.training import train

    out = Path(args.work) / f"ours-{args.method}-{args.gpus}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.jsonl").write_text(Path(args.labels_file).read_text())
    lr = 1e-5 if args.method == "full" else SETTINGS["learning_rate"]
    spec = RunSpec.model_validate({
        "student": {"model": args.model, "device": "cuda", "dtype": "bfloat16", "method": args.method, "lora": LORA},
        "train": {**SETTINGS, "learning_rate": lr, "max_steps": args.steps, "max_seq_len": args.max_seq_len,
                  "checkpoint_every": 10_000, "workers": args.gpus},
        "out": str(out)})
    torch.cuda.reset_peak_memory_stats()
    summary = train(spec)
    data = json.loads((out / "training.json").read_text())
    losses = [h["loss"] for h in summary.loss_history]
    peak = data.get("peak_gpu_memory_gb") if args.gpus > 1 else torch.cuda.max_memory_allocated() / 1e9
    return {"tokens_per_second": summary.tokens_per_second, "peak_gpu_gb": peak, "final_loss": sum(losses[-5:]) / len(losses[-5:]),
            "loop_s": summary.seconds}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from pipeline.models import load_model
    from training import token_count

    torch.manual_seed(SETTINGS["seed"])
    torch.cuda.reset_peak_memory_stats()
    if args.method == "qlora":
        from pipeline.models import resolve_model
        from pipeline.training import _load_4bit

        model, tok = _load_4bit(resolve_model(args.model))
    else:
        model, tok = load_model(args.model, device="cuda", dtype="bfloat16", for_training=True)
    records = [json.loads(line) for line in Path(args.labels_file).read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])
    lr = 1e-5 if args.method == "full" else SETTINGS["learning_rate"]
    config = SFTConfig(output_dir=str(Path(args.work) / f"trl-{args.method}"), report_to=[], completion_only_loss=True,
                       per_device_train_batch_size=SETTINGS["batch_size"], gradient_accumulation_steps=SETTINGS["grad_accum"],
                       max_steps=args.steps, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0,
                       weight_decay=SETTINGS["weight_decay"], max_length=args.max_seq_len, logging_steps=1,
                       save_strategy="no", seed=SETTINGS["seed"], max_grad_norm=1.0, bf16=True, gradient_checkpointing=False)
    peft = None if args.method == "full" else LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                        target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok, peft_config=peft)
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    rows = len(records)
    tokens = token_count(args.model, Path(args.labels_file), args.max_seq_len) * args.steps * SETTINGS["batch_size"] / rows
    return {"tokens_per_second": tokens / result.metrics["train_runtime"], "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9,
            "final_loss": sum(losses[-5:]) / len(losses[-5:]), "loop_s": result.metrics["train_runtime"]}


def worker(args) -> None:
    t0 = time.perf_counter()
    result = (run_ours if args.worker == "ours" else run_trl)(args)
    result["wall_s"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(result), flush=True)


def launch(args, trainer: str, method: str, gpus: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", trainer, "--method", method, "--gpus", str(gpus), "--work", args.work,
           "--labels-file", args.labels_file, "--model", args.model, "--steps", str(args.steps),
           "--max-seq-len", str(args.max_seq_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout[-1500:] + proc.stderr[-3000:]).strip().splitlines()
        return {"error": tail[-1] if tail else f"exit code {proc.returncode}", "log_tail": "\n".join(tail[-30:])}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    ap.add_argument("--gpus", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--labels-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU and this machine has none; run it on a CUDA machine "
                         "(pip install -e \".[bench,qlora]\").")
    from training import sst2_records

    from pipeline.models import resolve_model

    args.work = args.work or tempfile.mkdtemp(prefix="distillery-gpu-")
    labels = Path(args.work) / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in sst2_records(args.rows)))
    args.labels_file = str(labels)
    resolve_model(args.model)  # convert the embedded model once, outside the timed subprocesses
    n_gpus = torch.cuda.device_count()
    print(f"{n_gpus} x {torch.cuda.get_device_name(0)}; {args.rows} rows, {args.steps} steps, batch {SETTINGS['batch_size']}, bf16")
    plan = [("ours", m, 1) for m in ("lora", "qlora", "full")] + [("trl", m, 1) for m in ("lora", "qlora", "full")]
    if n_gpus >= 2:
        plan += [("ours", "lora", 2), ("ours", "full", 2)]
    results = {}
    print(f"{'trainer':7} {'method':6} {'GPUs':>4} {'tokens/s':>10} {'peak GB':>8} {'loss':>7} {'wall s':>7}")
    for trainer, method, gpus in plan:
        r = results[f"{trainer}-{method}-{gpus}"] = launch(args, trainer, method, gpus)
        if "error" in r:
            print(f"{trainer:7} {method:6} {gpus:4} failed: {r['error']}")
            continue
        peak = f"{r['peak_gpu_gb']:8.2f}" if r.get("peak_gpu_gb") is not None else f"{'?':>8}"
        print(f"{trainer:7} {method:6} {gpus:4} {r['tokens_per_second']:10.0f} {peak} {r['final_loss']:7.3f} {r['wall_s']:7.1f}")

    def ratio(a: str, b: str) -> float | None:
        ra, rb = results.get(a, {}), results.get(b, {})
        return ra["tokens_per_second"] / rb["tokens_per_second"] if "tokens_per_second" in ra and "tokens_per_second" in rb else None

    for m in ("lora", "qlora", "full"):
        r = ratio(f"ours-{m}-1", f"trl-{m}-1")
        print(f"{m}: ours/trl tokens/s x{r:.2f}" if r else f"{m}: no ratio (a configuration failed)")
    scale = ratio("ours-lora-2", "ours-lora-1")
    print(f"LoRA 2 GPUs / 1 GPU tokens/s: x{scale:.2f} (target >= 1.8)" if scale else "LoRA on 2 GPUs: not run (needs 2 GPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
