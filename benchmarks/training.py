"""Benchmark: Distillery's trainer against trl's SFTTrainer on the same labelled data, model and LoRA settings.

    DISTILLERY_MODELS=~/.cache/distillery-test-models python benchmarks/training.py            # Gemma 3 270M, 64 SST-2 rows
    python benchmarks/training.py --labels runs/x/labels.jsonl --steps 16 --json bench.json   # your own labels

Both trainers run in their own subprocess (one after the other, so they never share the CPU) on the same chat
records: the student's zero-shot prompt (pipeline.tasks.student_messages) with the gold label as the assistant
turn, unless --labels gives a labels.jsonl. Same model, LoRA (r=16, alpha=32, dropout 0.05, all linear layers),
batch size, steps, learning rate, cosine schedule without warmup, gradient clipping, sequence length, seed;
loss on the completion only in both; gradient checkpointing off in both unless --gradient-checkpointing (trl
turns it on by default: compare like with like).

Reported per trainer: tokens/s over steps 2..N (the same token count, rows x epochs in our encoding, timed from
the end of step 1 to the end of step N by a progress callback in both), the same per CPU-second of the process
(robust when other work shares the CPU), peak resident memory of its process (VmHWM), final training loss
(the trained model's mean loss per target token on the training rows, dropout off, computed the same way for
both), the mean of the last 5 logged step losses, the loop's own seconds and the whole subprocess wall time.
Targets: tokens/s ratio >= 2, our peak memory no higher, final losses within 5 %.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = ["negative", "positive"]
SETTINGS = {"learning_rate": 2e-4, "batch_size": 8, "grad_accum": 1, "warmup_ratio": 0.0, "weight_decay": 0.0, "seed": 0}
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}


def sst2_records(n: int) -> list[dict]:
    """n labelled chat records from the bundled SST-2 training rows: the student's prompt plus the gold label."""
    from pipeline.datasets import BUNDLED_DIR, Example
    from pipeline.tasks import get_task, student_messages

    task = get_task("classification")
    rows = [json.loads(line) for line in (BUNDLED_DIR / "sst2" / "train.jsonl").read_text().splitlines()[:n]]
    out = []
    for r in rows:
        ex = Example(row=r["row"], fields={"text": r["sentence"]}, gold=LABELS[r["label"]])
        msgs = student_messages(task, ex, LABELS) + [{"role": "assistant", "content": ex.gold}]
        out.append({"messages": msgs, "label": ex.gold, "rationale": None})
    return out


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def token_count(model: str, labels: Path, max_seq_len: int) -> int:
    """Tokens of one pass over the rows, in our encoding (the same numerator for both trainers)."""
    from transformers import AutoTokenizer

    from pipeline.batching import encode_records
    from pipeline.models import GEMMA_CHAT_TEMPLATE, render_chat, resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    tok.chat_template = tok.chat_template or GEMMA_CHAT_TEMPLATE
    records = [json.loads(line) for line in labels.read_text().splitlines() if line.strip()]
    return sum(r.length for r in encode_records(records, tok, render_chat, True, max_seq_len))


def target_loss(model, tok, args) -> float:
    """Mean loss per target token (label + end of turn) of a trained model on the training rows, dropout off:
    the same definition for both trainers (their logged losses cover different token sets)."""
    import torch

    from pipeline.batching import collate, encode_records, supervised_loss
    from pipeline.models import render_chat

    records = [json.loads(line) for line in Path(args.labels_file).read_text().splitlines() if line.strip()]
    rows = encode_records(records, tok, render_chat, True, args.max_seq_len)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), SETTINGS["batch_size"]):
            loss_sum, n = supervised_loss(model, collate(rows[i:i + SETTINGS["batch_size"]], tok.pad_token_id))
            total, count = total + float(loss_sum), count + n
    return total / count


def run_ours(args) -> dict:
    from pipeline.spec import RunSpec
    from pipeline.training import train

    out = Path(args.work) / "ours"
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.jsonl").write_text(Path(args.labels_file).read_text())
    spec = RunSpec.model_validate({"student": {"model": args.model, "device": "cpu", "method": "lora", "lora": LORA},
                                   "train": {**SETTINGS, "max_steps": args.steps, "max_seq_len": args.max_seq_len,
                                             "checkpoint_every": 10_000, "gradient_checkpointing": args.gradient_checkpointing},
                                   "out": str(out)})
    marks: list[tuple[int, float, float]] = []
    summary = train(spec, progress=lambda p: marks.append((p.done, time.perf_counter(), time.process_time())))
    from pipeline.training import load_student

    model, tok = load_student(spec)
    return {"seconds": summary.seconds, "losses": [h["loss"] for h in summary.loss_history], "marks": marks,
            "final_loss": target_loss(model, tok, args)}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from pipeline.models import load_model

    torch.manual_seed(SETTINGS["seed"])
    model, tok = load_model(args.model, device="cpu", dtype="float32", for_training=True)
    records = [json.loads(line) for line in Path(args.labels_file).read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])
    config = SFTConfig(output_dir=str(Path(args.work) / "trl"), use_cpu=True, report_to=[], completion_only_loss=True,
                       per_device_train_batch_size=SETTINGS["batch_size"], gradient_accumulation_steps=SETTINGS["grad_accum"],
                       max_steps=args.steps, learning_rate=SETTINGS["learning_rate"], lr_scheduler_type="cosine",
                       warmup_steps=0, weight_decay=SETTINGS["weight_decay"], max_length=args.max_seq_len,
                       logging_steps=1, save_strategy="no", seed=SETTINGS["seed"], max_grad_norm=1.0, bf16=False,
                       gradient_checkpointing=args.gradient_checkpointing)
    lora = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    from transformers import TrainerCallback

    marks: list[tuple[int, float, float]] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((state.global_step, time.perf_counter(), time.process_time()))

    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok, peft_config=lora, callbacks=[Marks()])
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": result.metrics["train_runtime"], "losses": losses, "marks": marks,
            "final_loss": target_loss(trainer.model, tok, args)}


def worker(args) -> None:
    t0 = time.perf_counter()
    result = (run_ours if args.worker == "ours" else run_trl)(args)
    result.update(wall_s=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
    print("RESULT " + json.dumps(result), flush=True)


def launch(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--work", args.work, "--labels-file", args.labels_file,
           "--model", args.model, "--steps", str(args.steps), "--max-seq-len", str(args.max_seq_len), "--seed", str(args.seed)]
    cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--labels", help="a labels.jsonl to train on (default: SST-2 rows with gold labels)")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=24)  # 64 rows / batch 8 x 24 steps = 3 epochs
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="turn it on in both trainers (trl's default is on)")
    ap.add_argument("--seed", type=int, default=0, help="seed of both trainers (data order, LoRA init); at small sizes the final loss depends on it")
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--labels-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    SETTINGS["seed"] = args.seed
    if args.worker:
        return worker(args)

    import tempfile

    args.work = args.work or tempfile.mkdtemp(prefix="distillery-bench-")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    labels = Path(args.work) / "labels.jsonl"
    if args.labels:
        labels.write_text(Path(args.labels).read_text())
    else:
        labels.write_text("".join(json.dumps(r) + "\n" for r in sst2_records(args.rows)))
    args.labels_file = str(labels)
    from pipeline.models import resolve_model

    resolve_model(args.model)  # convert the embedded model once, outside the timed subprocesses
    rows = sum(1 for line in labels.read_text().splitlines() if line.strip())
    epochs = args.steps * SETTINGS["batch_size"] * SETTINGS["grad_accum"] / rows
    tokens = token_count(args.model, labels, args.max_seq_len) * epochs
    results = {name: launch(name, args) for name in ("ours", "trl")}
    for r in results.values():
        marks = r.pop("marks")
        (s0, w0, c0), (s1, w1, c1) = marks[0], marks[-1]  # steps 2..N: the same window for both, warm-up step excluded
        window = tokens * (s1 - s0) / args.steps
        r["tokens_per_second"] = window / (w1 - w0)
        r["tokens_per_cpu_second"] = window / (c1 - c0)
        r["logged_loss"] = sum(r["losses"][-5:]) / len(r["losses"][-5:])  # as each trainer logs it (trl counts "\n" too)
    ours, trl = results["ours"], results["trl"]
    summary = {
        "model": args.model, "rows": rows, "steps": args.steps, "epochs": epochs, "tokens": tokens, "max_seq_len": args.max_seq_len,
        "gradient_checkpointing": args.gradient_checkpointing,
        "ours": ours, "trl": trl,
        "speedup": ours["tokens_per_second"] / trl["tokens_per_second"],
        "cpu_speedup": ours["tokens_per_cpu_second"] / trl["tokens_per_cpu_second"],
        "memory_ratio": ours["peak_rss_mb"] / trl["peak_rss_mb"],
        "loss_diff_pct": 100 * abs(ours["final_loss"] - trl["final_loss"]) / trl["final_loss"],
    }
    print(f"{'trainer':8} {'tokens/s':>9} {'tok/cpu-s':>9} {'peak MB':>8} {'final loss':>10} {'logged':>7} {'loop s':>7} {'wall s':>7}")
    for name, r in results.items():
        print(f"{name:8} {r['tokens_per_second']:9.1f} {r['tokens_per_cpu_second']:9.1f} {r['peak_rss_mb']:8.0f} "
              f"{r['final_loss']:10.4f} {r['logged_loss']:7.3f} {r['seconds']:7.1f} {r['wall_s']:7.1f}")
    print(f"speed-up x{summary['speedup']:.2f} wall, x{summary['cpu_speedup']:.2f} CPU time (target >= 2); memory ours/trl {summary['memory_ratio']:.2f} (target <= 1); "
          f"final loss difference {summary['loss_diff_pct']:.1f} % (target <= 5 %)")
    if not math.isfinite(summary["speedup"]):
        raise SystemExit("no timing")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
