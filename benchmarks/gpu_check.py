"""GPU check: our trainer (LoRA, full, QLoRA) against trl's SFTTrainer on a Gemma 3 270M-shaped model, an
8B-shaped (Llama 3.1 8B) LoRA run through pipeline.training.train, and a CUDA smoke of label -> train -> evaluate.

    python benchmarks/gpu_check.py --out OUT            # on one CUDA GPU, in about 7 minutes (--budget 420)
    python benchmarks/gpu_check.py --tiny --out OUT     # the same flow on CPU with tiny shapes (< 2 minutes)

Made for a lent machine with no network: the models are RANDOMLY INITIALISED with the real architectures (Gemma 3
270M's config.json and Llama 3.1 8B's shape, benchmarks/gpu_check_models.json) and the real Gemma tokenizer
(.gpu/tokenizer.json.gz), so tokens/s and memory are real and losses and scores mean nothing. The 8B-shaped model
takes the Gemma tokenizer's 262144-id vocabulary (Llama's is 128256), so it has ~9.1B parameters, not 8.0B.

Every stage runs in its own subprocess with its own timeout inside one overall budget; a stage that fails or
times out is recorded with its exception's last line and the next one runs. Results are printed as they come and
rewritten to OUT/gpu_check.json after every stage; the stages' own output goes to OUT/gpu_check_stages.log.

    env          versions, the GPU, free disk; which optional packages import (trl, datasets, bitsandbytes)
    prepare      the 270M-shaped model (bf16 on the GPU) saved with the Gemma tokenizer; SST-2 training records
    ours-lora    pipeline.training.train: tokens/s over steps 2..N, peak GPU memory, mean of the last 5 losses
    smoke        pipeline.runner.run on CUDA: local-teacher labelling (option scoring) of 32 SST-2 rows, training,
                 evaluation (teacher, base, distilled by option scoring), report; then 4 batched generations
    8b-lora      the 8B shape built in bf16 on the GPU, saved as safetensors, trained by train() (LoRA)
    ours-full, trl-lora, trl-full, ours-qlora, trl-qlora (QLoRA only where bitsandbytes imports)
Ratios printed at the end: ours/trl tokens/s and peak memory per method (same rows, batch, steps, lr, seed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).with_name("gpu_check_models.json")
SETTINGS = {"learning_rate": 2e-4, "batch_size": 8, "grad_accum": 1, "warmup_ratio": 0.0, "weight_decay": 0.0, "seed": 0}
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
# (stage, timeout s, least s left to start it, stages it needs)
PLAN = [("env", 60, 15, ()), ("prepare", 120, 30, ("env",)), ("ours-lora", 90, 30, ("prepare",)),
        ("smoke", 150, 45, ("prepare",)), ("8b-lora", 260, 120, ("prepare",)), ("ours-full", 90, 30, ("prepare",)),
        ("trl-lora", 120, 40, ("prepare",)), ("trl-full", 120, 40, ("prepare",)), ("ours-qlora", 90, 30, ("prepare",)),
        ("trl-qlora", 90, 30, ("prepare",))]


# ------------------------------------------------------------------------------------------------ the stages


def _dev(args) -> tuple[str, str]:
    return ("cpu", "float32") if args.tiny else ("cuda", "bfloat16")


def _peak_gb(args) -> float:
    if not args.tiny:
        import torch

        return torch.cuda.max_memory_allocated() / 1e9
    for line in Path("/proc/self/status").read_text().splitlines():  # CPU: the process's peak resident memory
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def _config(name: str, tiny: bool) -> dict:
    data = json.loads(CONFIGS.read_text())
    return {**data[name], **(data["tiny"][name] if tiny else {})}


def _build(args, name: str, folder: Path, tokenizer_dir: Path) -> dict:
    """A randomly initialised model of `name`'s shape, built on the device in its dtype and saved with the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import GEMMA_CHAT_TEMPLATE

    device, dtype = _dev(args)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_config(name, args.tiny)))
    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = [1, 106], 0
    params = sum(p.numel() for p in model.parameters())
    if device == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    print(f"NOTE {name}: {params / 1e9:.2f}B parameters built on {device} in {t1 - t0:.1f} s; saving", flush=True)
    model.save_pretrained(folder, max_shard_size="5GB")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    tok.save_pretrained(folder)
    (folder / "distillery.json").write_text(json.dumps({"source": "gpu_check random init", "chat_template_added": True}) + "\n")
    del model
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return {"params_b": params / 1e9, "build_s": t1 - t0, "save_s": time.perf_counter() - t1, "saved_gb": size / 1e9}


def stage_env(args) -> dict:
    import importlib
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "free_disk_gb": shutil.disk_usage(args.work).free / 1e9}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_gb=props.total_memory / 1e9, gpus=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
    elif not args.tiny:
        raise SystemExit("no CUDA GPU is visible (torch.cuda.is_available() is False); run on a CUDA machine or pass --tiny.")
    for mod in ("transformers", "peft", "accelerate", "tokenizers", "safetensors", "pydantic", "yaml", "click", "numpy",
                "pyarrow", "openai", "aiohttp", "matplotlib", "datasets", "trl", "bitsandbytes"):
        try:
            with warnings.catch_warnings():  # click warns about __version__
                warnings.simplefilter("ignore")
                info[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except Exception as err:  # noqa: BLE001 - any import failure means "not usable here"
            info[mod] = f"missing ({type(err).__name__}: {str(err)[:120]})"
    return info


def stage_prepare(args) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from training import sst2_records, token_count

    work = Path(args.work)
    tok_dir = work / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(Path(args.assets) / "tokenizer.json.gz", "rb") as src, open(tok_dir / "tokenizer.json", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(json.loads(CONFIGS.read_text())["tokenizer_config"]))
    result = _build(args, "gemma-3-270m", work / "gemma-270m", tok_dir)
    labels = work / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in sst2_records(args.rows)))
    result.update(rows=args.rows, tokens_per_epoch=token_count(str(work / "gemma-270m"), labels, args.max_seq_len))
    return result


def _window(args, marks: list[tuple[int, float]], steps: int) -> float:
    """Tokens/s from the first to the last progress mark (step 1's warm-up excluded), the same numerator for both trainers."""
    epoch = json.loads((Path(args.work) / "results" / "prepare.json").read_text())["tokens_per_epoch"]
    tokens = epoch * steps * SETTINGS["batch_size"] / args.rows
    (s0, t0), (s1, t1) = marks[0], marks[-1]
    return tokens * (s1 - s0) / steps / (t1 - t0) if s1 > s0 else float("nan")


def _train_ours(args, model: str, method: str, out: Path, steps: int, lr: float) -> dict:
    import torch

    from pipeline.spec import RunSpec
    from pipeline.training import train

    device, dtype = _dev(args)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(args.work) / "labels.jsonl", out / "labels.jsonl")
    spec = RunSpec.model_validate({
        "student": {"model": model, "device": device, "dtype": dtype, "method": method, "lora": LORA},
        "train": {**SETTINGS, "learning_rate": lr, "max_steps": steps, "max_seq_len": args.max_seq_len, "checkpoint_every": 10_000},
        "out": str(out)})
    start_gb = torch.cuda.memory_allocated() / 1e9 if device == "cuda" else None  # 0 unless a model was left behind
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    marks: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    print(f"NOTE train {method} {Path(model).name}: {steps} steps on {device}", flush=True)
    summary = train(spec, progress=lambda p: marks.append((p.done, time.perf_counter())))
    losses = [h["loss"] for h in summary.loss_history]
    return {"tokens_per_second": _window(args, marks, steps), "tokens_per_second_loop": summary.tokens_per_second,
            "peak_gb": _peak_gb(args), "final_loss": sum(losses[-5:]) / len(losses[-5:]), "loop_s": summary.seconds,
            "train_call_s": time.perf_counter() - t0, "steps": summary.steps, "allocated_at_start_gb": start_gb}


def stage_ours(args, method: str) -> dict:
    lr = 1e-5 if method == "full" else SETTINGS["learning_rate"]
    return _train_ours(args, str(Path(args.work) / "gemma-270m"), method, Path(args.work) / f"ours-{method}", args.steps, lr)


def stage_trl(args, method: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from pipeline.models import load_model

    device, dtype = _dev(args)
    model_dir = str(Path(args.work) / "gemma-270m")
    torch.manual_seed(SETTINGS["seed"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if method == "qlora":
        from pipeline.training import _load_4bit

        model, tok = _load_4bit(model_dir)
    else:
        model, tok = load_model(model_dir, device=device, dtype=dtype, for_training=True)
    records = [json.loads(line) for line in (Path(args.work) / "labels.jsonl").read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])
    lr = 1e-5 if method == "full" else SETTINGS["learning_rate"]
    config = SFTConfig(output_dir=str(Path(args.work) / f"trl-{method}"), report_to=[], completion_only_loss=True,
                       per_device_train_batch_size=SETTINGS["batch_size"], gradient_accumulation_steps=SETTINGS["grad_accum"],
                       max_steps=args.steps, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0,
                       weight_decay=SETTINGS["weight_decay"], max_length=args.max_seq_len, logging_steps=1, save_strategy="no",
                       seed=SETTINGS["seed"], max_grad_norm=1.0, bf16=device == "cuda", use_cpu=device == "cpu",
                       gradient_checkpointing=False, dataloader_num_workers=0)
    peft = None if method == "full" else LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                     target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    marks: list[tuple[int, float]] = []

    class Marks(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            marks.append((state.global_step, time.perf_counter()))

    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok, peft_config=peft, callbacks=[Marks()])
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens_per_second": _window(args, marks, args.steps), "peak_gb": _peak_gb(args),
            "final_loss": sum(losses[-5:]) / len(losses[-5:]), "loop_s": result.metrics["train_runtime"], "steps": len(marks)}


def stage_8b(args) -> dict:
    import gc

    import torch

    work = Path(args.work)
    free = shutil.disk_usage(work).free / 1e9
    if not args.tiny and free < 25:
        raise SystemExit(f"only {free:.0f} GB free under {work}; the 8B-shaped checkpoint needs about 19 GB.")
    built = _build(args, "llama-3.1-8b", work / "llama-8b", work / "tokenizer")
    print(f"NOTE llama-3.1-8b: saved {built['saved_gb']:.1f} GB in {built['save_s']:.1f} s", flush=True)
    gc.collect()
    if not args.tiny:
        torch.cuda.empty_cache()
    steps = 3 if args.tiny else 10
    trained = _train_ours(args, str(work / "llama-8b"), "lora", work / "ours-8b", steps, SETTINGS["learning_rate"])
    trained["load_and_save_s"] = trained["train_call_s"] - trained["loop_s"]
    shutil.rmtree(work / "llama-8b", ignore_errors=True)  # 18 GB of random weights: nothing to keep
    return {**built, **trained, "vocab": 262144, "note": "random init; Llama 3.1 8B shape with the Gemma vocabulary (262144 ids)"}


def stage_smoke(args) -> dict:
    """label -> train -> evaluate -> report on the device through pipeline.runner.run, then a few generations."""
    from pipeline.runner import run
    from pipeline.scoring import generate
    from pipeline.spec import RunSpec
    from pipeline.training import load_student

    device, dtype = _dev(args)
    model = str(Path(args.work) / "gemma-270m")
    out = Path(args.work) / "smoke"
    spec = RunSpec.model_validate({
        "task": "classification", "labels": ["negative", "positive"],
        "dataset": {"train": "sst2/train.jsonl", "test": "sst2/test.jsonl", "train_size": 32, "test_size": 32, "pilot_size": 0},
        "teacher": {"provider": "local", "model": model, "few_shot": 4, "device": device, "answer_cue": "Sentiment", "batch_size": 16},
        "student": {"model": model, "device": device, "dtype": dtype, "method": "lora"},
        "train": {"max_steps": 6, "batch_size": 8, "max_seq_len": args.max_seq_len, "checkpoint_every": 3},
        "eval": {"batch_size": 16}, "out": str(out)})
    stages: dict[str, str] = {}
    t0 = time.perf_counter()

    def on_stage(name: str, event: str, data: dict) -> None:
        stages[name] = "passed" if event == "finished" else "failed"  # "started" stays "failed" unless it finishes
        print(f"NOTE smoke {name} {event} at {time.perf_counter() - t0:.1f} s", flush=True)

    result: dict = {"stages": stages}
    try:
        report = run(spec, on_stage=on_stage)
        result["scores"] = report.get("scores")
        evaluation = json.loads((out / "evaluation.json").read_text())
        result["methods"] = {n: r.get("method") for n, r in evaluation["results"].items()}
        result["labelled"] = sum(1 for _ in (out / "labels.jsonl").open())
    except Exception as err:  # noqa: BLE001 - recorded per stage, the generations still run
        result["error"] = f"{type(err).__name__}: {str(err).splitlines()[-1] if str(err) else ''}"
    try:
        lm, tok = load_student(spec)
        prompts = ["Hello", "Classify the sentiment: a dull, boring film.", "Write one word:", "The capital of France is"]
        gens = generate(lm, tok, prompts, max_new_tokens=16, batch_size=4)
        stages["generate"] = "passed"
        print(f"NOTE smoke generate finished at {time.perf_counter() - t0:.1f} s", flush=True)
        result["generations"] = [{"finish": g.finish_reason, "prompt_tokens": g.prompt_tokens, "new_tokens": g.completion_tokens}
                                 for g in gens]
    except Exception as err:  # noqa: BLE001
        stages["generate"] = "failed"
        result["generate_error"] = f"{type(err).__name__}: {str(err).splitlines()[-1] if str(err) else ''}"
    if any(v != "passed" for v in stages.values()) or len(stages) < 5:
        print("PARTIAL " + json.dumps(result, default=str), flush=True)
        raise SystemExit(f"smoke failed: {result.get('error') or result.get('generate_error') or stages}")
    return result


def _imported() -> list[str]:
    """Distributions of the third-party modules this process imported (what the device must have)."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    tops = {m.split(".")[0] for m in list(sys.modules)} - set(sys.stdlib_module_names) - {"pipeline", "training", "__main__"}
    return sorted({d for t in tops if not t.startswith("_") for d in dists.get(t, [t])})


def child(args) -> None:
    name = args.stage
    fn = {"env": stage_env, "prepare": stage_prepare, "smoke": stage_smoke, "8b-lora": stage_8b}.get(name)
    if fn is None:
        trainer, method = name.split("-")
        fn = (lambda a: stage_ours(a, method)) if trainer == "ours" else (lambda a: stage_trl(a, method))
    t0 = time.perf_counter()
    result = fn(args)
    result.update(wall_s=time.perf_counter() - t0, imports=_imported())
    (Path(args.work) / "results").mkdir(exist_ok=True)
    (Path(args.work) / "results" / f"{name}.json").write_text(json.dumps(result, default=str))
    print("RESULT " + json.dumps(result, default=str), flush=True)
    sys.stderr.flush()
    os._exit(0)  # the result is out: no interpreter or CUDA teardown that could hang past the stage's timeout


# ------------------------------------------------------------------------------------------------ the driver


def launch(args, name: str, timeout: float, log) -> dict:
    """One stage in its own process group; its stdout NOTE lines are echoed live, everything else goes to the log."""
    cmd = [sys.executable, "-u", __file__, "--stage", name, "--work", args.work, "--assets", args.assets, "--steps", str(args.steps),
           "--rows", str(args.rows), "--max-seq-len", str(args.max_seq_len)] + (["--tiny"] if args.tiny else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
           "DISTILLERY_HOME": str(Path(args.work) / "home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    log.write(f"\n===== {name} (timeout {timeout:.0f} s) =====\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log.write(line)
            if line.startswith("NOTE "):
                print(f"    {line[5:].rstrip()}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage's own process group (it started a new session)
        proc.wait()
    reader.join(timeout=5)
    log.flush()
    results = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
    if results:  # printed only on success, as the stage's last act (killed after it: still a result)
        return {"status": "passed", **results[-1]}
    partial = [json.loads(line[8:]) for line in lines if line.startswith("PARTIAL ")]
    tail = [line for line in lines if line.strip() and not line.startswith(("PARTIAL ", "NOTE "))]
    if proc.returncode in (-signal.SIGKILL, 137):
        why = f"timed out after {timeout:.0f} s" + (f" (last line: {tail[-1][:300]})" if tail else "")
    else:
        why = tail[-1][:400] if tail else f"exit code {proc.returncode}"
    return {"status": "failed", "error": why, "log_tail": tail[-25:], **(partial[-1] if partial else {})}


def _line(name: str, r: dict) -> str:
    if r.get("status") != "passed":
        return f"{name:10} {r.get('status', '?').upper()}: {r.get('error') or r.get('why')}"
    if name == "env":
        keys = ("gpu", "gpu_gb", "python", "torch", "cuda", "transformers", "peft", "trl", "datasets", "bitsandbytes", "free_disk_gb")
        return f"{name:10} " + ", ".join(f"{k}={r[k]:.0f}" if isinstance(r.get(k), float) else f"{k}={r.get(k)}" for k in keys if k in r)
    if name == "smoke":
        return f"{name:10} {r.get('stages')} scores={r.get('scores')} generations={r.get('generations')}"
    parts = [f"{k}={r[k]:.2f}" for k in ("params_b", "build_s", "save_s", "saved_gb", "tokens_per_second", "peak_gb", "final_loss",
                                         "loop_s", "load_and_save_s", "wall_s") if isinstance(r.get(k), (int, float))]
    return f"{name:10} " + " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="folder for gpu_check.json and gpu_check_stages.log (default: a temp folder)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: every code path in about 2 minutes, no GPU needed")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all stages (default 420; --tiny 900)")
    ap.add_argument("--only", help="comma-separated stages to run (env and prepare always run)")
    ap.add_argument("--assets", default=str(REPO / ".gpu"), help="folder holding tokenizer.json.gz")
    ap.add_argument("--steps", type=int, default=None, help="training steps per 270M configuration (default 30; --tiny 4)")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        sys.path.insert(0, str(REPO))
        return child(args)
    args.steps = args.steps or (4 if args.tiny else 30)
    args.rows = 32 if args.tiny and args.rows == 256 else args.rows
    budget = args.budget or (900 if args.tiny else 420)
    slow = 4 if args.tiny else 1  # --tiny runs on a (shared) CPU: the same stages, with longer timeouts
    if not (Path(args.assets) / "tokenizer.json.gz").is_file():
        raise SystemExit(f"{args.assets}/tokenizer.json.gz is missing; build .gpu/ as benchmarks/README.md says (GPU check).")
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-check-out-"))
    out.mkdir(parents=True, exist_ok=True)
    args.work = tempfile.mkdtemp(prefix="gpu-check-")
    deadline = time.monotonic() + budget
    only = set(args.only.split(",")) | {"env", "prepare"} if args.only else None
    report = {"mode": "tiny (CPU, tiny shapes)" if args.tiny else "gpu", "budget_s": budget, "steps": args.steps, "rows": args.rows,
              "batch_size": SETTINGS["batch_size"], "max_seq_len": args.max_seq_len, "lora": LORA,
              "note": ("tiny shapes on CPU: every number is meaningless, this only runs each code path" if args.tiny else
                       "random-init models with real shapes and the real Gemma tokenizer: tokens/s and memory are real, losses and scores are not"),
              "stages": {}}
    print(f"gpu_check ({report['mode']}): {args.steps} steps x batch {SETTINGS['batch_size']}, {args.rows} SST-2 rows, "
          f"seq <= {args.max_seq_len}, budget {budget:.0f} s; work {args.work}; {report['note']}", flush=True)
    stages = report["stages"]
    with open(out / "gpu_check_stages.log", "w") as log:
        for name, timeout, least, needs in PLAN:
            left = deadline - time.monotonic()
            if only is not None and name not in only:
                continue
            if any(stages.get(n, {}).get("status") != "passed" for n in needs):
                stages[name] = {"status": "skipped", "why": f"needs {', '.join(needs)}, which did not pass"}
            elif name.endswith("qlora") and not str(stages["env"].get("bitsandbytes", "missing")[0]).isdigit():
                stages[name] = {"status": "skipped", "why": f"bitsandbytes is not importable here ({stages['env'].get('bitsandbytes')})"}
            elif args.tiny and name.endswith("qlora"):
                stages[name] = {"status": "skipped", "why": "QLoRA needs CUDA"}
            elif left < least * slow:
                stages[name] = {"status": "skipped", "why": f"out of time ({left:.0f} s left of {budget:.0f}, needs {least})"}
            else:
                print(f"[{budget - left:5.0f} s] {name} ...", flush=True)
                stages[name] = launch(args, name, min(timeout * slow, left - 3), log)
            print(_line(name, stages[name]), flush=True)
            tmp = out / "gpu_check.json.tmp"
            tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
            tmp.replace(out / "gpu_check.json")
    ratios = {}
    for m in ("lora", "full", "qlora"):
        a, b = stages.get(f"ours-{m}", {}), stages.get(f"trl-{m}", {})
        if a.get("status") == b.get("status") == "passed":
            ratios[m] = {"tokens_per_second": a["tokens_per_second"] / b["tokens_per_second"], "peak_memory": a["peak_gb"] / b["peak_gb"]}
            print(f"{m}: ours/trl tokens/s x{ratios[m]['tokens_per_second']:.2f}, peak memory x{ratios[m]['peak_memory']:.2f}")
        else:
            print(f"{m}: no ours/trl ratio (ours {a.get('status', 'not run')}, trl {b.get('status', 'not run')})")
    report["ratios"] = ratios
    report["imports"] = sorted({d for r in stages.values() for d in r.get("imports", [])})
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    passed = sum(r.get("status") == "passed" for r in stages.values())
    print(f"{passed} of {len(stages)} stages passed; results in {out / 'gpu_check.json'}", flush=True)
    again = [n for n, r in stages.items() if r.get("status") != "passed" and "out of time" in str(r.get("why"))]
    if again:
        print(f"out of time for: {', '.join(again)}; run them with --only {','.join(again)}", flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    if any(r.get("status") == "failed" for r in stages.values()):
        raise SystemExit(f"gpu_check: {stages['env'].get('error')}" if stages["env"].get("status") == "failed" else 1)


if __name__ == "__main__":
    main()
