"""Student fine-tuning: LoRA, QLoRA or full training on the teacher's labels, resumable and cancellable.

    summary = train(spec, progress=TerminalBar())      # OUT/labels.jsonl -> OUT/student/, OUT/training.json
    model, tok = load_student(spec)                     # base + adapter in eval mode, for evaluation

The recipe reads top to bottom in `train`. Batching and the loss (assistant tokens only, logits computed only at
supervised positions, length-grouped batches) are in pipeline/batching.py; atomic checkpoints in
pipeline/checkpoints.py. A re-run with the same spec resumes from the newest checkpoint and ends where an
uninterrupted run ends; a finished student whose fingerprint matches the spec is returned without retraining.

One process on one device (cuda, mps or cpu; bf16 weights on CUDA, LoRA weights stay fp32); with train.workers
N > 1, data parallel over N processes with Ray Train (pipeline/distributed.py, the same loop sharded).
With early stopping, the weights of the best validation loss are the ones saved.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .batching import collate, encode_pairs, epoch_batches, split_rows, supervised_loss
from .checkpoints import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .errors import Cancelled, TrainingError
from .jsonl import jsonl_lines
from .kd import distillation_loss
from .progress import ProgressFn, Tracker
from .runlock import holds_run_lock
from .steps import Validation, accumulate, step_forward, token_pieces, val_loss
from .targets import example_mean, rationale_text, training_pairs

__all__ = ["TrainSummary", "train", "check_student", "load_student", "read_labelled", "run_fingerprint", "write_model_card", "MAX_GRAD_NORM"]

MAX_GRAD_NORM = 1.0  # gradient clipping, as in most fine-tuning recipes


@dataclass
class TrainSummary:
    examples: int  # labelled rows trained on (validation rows excluded)
    steps: int  # optimizer steps
    seconds: float  # time in the training loop (all sessions of a resumed run)
    tokens_per_second: float  # non-padding tokens through the model per second
    final_loss: float | None
    loss_history: list[dict[str, float]] = field(default_factory=list)  # [{step, loss}]
    val_losses: list[dict[str, float]] = field(default_factory=list)  # [{step, loss}]
    method: str = "lora"
    device: str = "cpu"
    val_examples: int = 0
    resumed_from: int = 0  # step of the checkpoint this session started from (0: from scratch)
    stopped_early: bool = False
    fingerprint: str = ""
    workers: int = 1  # data-parallel processes (train.workers; > 1: Ray Train, pipeline/distributed.py)
    targets: str = "hard"  # train.targets: hard | soft | mixed (soft labels, pipeline/kd.py)
    kd_weight: float | None = None  # the KL share of the loss (soft: 1.0; hard: None)
    kd_temperature: float | None = None
    kd_positions: dict[str, int] | None = None  # free text: answer tokens trained on the teacher's top-k ("kl") and on CE only
    batch_tokens: int | None = None  # train.batch_tokens: padded tokens per forward/backward (None: a micro-batch each)
    forwards: int = 0  # forward/backward passes (all sessions): more than steps x grad_accum when batch_tokens cut batches


def read_labelled(out: Path) -> list[dict[str, Any]]:
    """The labelled chat records of a run folder; TrainingError when there are none."""
    path = out / "labels.jsonl"
    rows: list[dict[str, Any]] = []
    if path.is_file():
        for n, line in jsonl_lines(path.read_text(encoding="utf-8")):
            try:
                rec = json.loads(line)
            except ValueError:
                raise TrainingError(f"{path} line {n} is not valid JSON; run `distillery label` again to rewrite it from the answer cache.") from None
            if isinstance(rec, dict) and rec.get("messages") and rec["messages"][-1].get("role") == "assistant":
                rows.append(rec)
    if not rows:
        raise TrainingError(f"no labelled rows in {path}; run `distillery label` first.")
    return rows


def run_fingerprint(spec, labels_path: Path) -> str:
    """A hash of everything that changes the trained weights: labels file, student and training settings."""
    digest = hashlib.sha256(labels_path.read_bytes()).hexdigest()
    student = spec.student.model_dump(mode="json", exclude={"device"})
    unused = {"targets", "kd_weight", "kd_temperature"} if spec.train.targets == "hard" else set()  # hard: as before
    unused |= set() if spec.train.rationale_mode == "multitask" else {"rationale_weight"}  # only multitask uses it
    training = spec.train.model_dump(mode="json", exclude={"merge", "checkpoint_every", "batch_tokens"} | unused)  # batch_tokens: same update
    blob = json.dumps({"labels": digest, "student": student, "train": training}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_student(spec) -> str:
    """The training device, or TrainingError for what cannot work here (QLoRA without CUDA, multi-process)."""
    from .models import pick_device

    device = pick_device(spec.student.device)
    if spec.student.method == "qlora" and spec.train.workers == 1:  # with Ray Train the workers hold the GPUs
        import torch

        if not torch.cuda.is_available() or not device.startswith("cuda"):
            raise TrainingError("QLoRA needs a CUDA GPU (bitsandbytes 4-bit); use student.method=lora on this machine.")
    return device


def _check_seq_len(path: str, max_seq_len: int) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    if limit and max_seq_len > limit:
        raise TrainingError(f"train.max_seq_len={max_seq_len} is longer than the student's {limit} positions; set train.max_seq_len={limit} or less.")


def _load_for_training(spec, device: str):
    """(model with only the trainable weights requiring grad, tokenizer) for student.method."""
    import torch

    from .models import load_model, resolve_model

    method, lora = spec.student.method, spec.student.lora
    if method == "qlora":
        model, tokenizer = _load_4bit(resolve_model(spec.student.model))
    else:
        model, tokenizer = load_model(spec.student.model, device=device, dtype=spec.student.dtype, for_training=True)
    if spec.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "full":
        model.requires_grad_(True)
        return model, tokenizer
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    torch.manual_seed(spec.train.seed)  # LoRA initialisation
    return get_peft_model(model, config), tokenizer


def _load_4bit(path: str):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TrainingError("QLoRA needs the bitsandbytes package; run pip install bitsandbytes (or use student.method=lora).") from None
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from .models import GEMMA_CHAT_TEMPLATE

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0})
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = tokenizer.chat_template or GEMMA_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), tokenizer


def _optimizer(model, spec, total_steps: int):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": spec.train.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=spec.train.learning_rate)
    warmup = int(round(spec.train.warmup_ratio * total_steps))

    def factor(step: int) -> float:  # linear warmup, then cosine decay to zero
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _trainable(model) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model, weights: dict[str, Any]) -> None:
    import torch

    params = _trainable(model)
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def _val_loss(model, rows, pad_id, device, cfg) -> float:
    model.eval()
    try:
        return val_loss(lambda piece: supervised_loss(model, collate(piece, pad_id, device)), rows, cfg.batch_size, cfg.batch_tokens)
    finally:
        model.train()


def _finished(out: Path, fingerprint: str) -> TrainSummary | None:
    try:
        data = json.loads((out / "training.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    student = out / "student"
    has_weights = (student / "adapter_config.json").is_file() or (student / "config.json").is_file()
    if data.get("fingerprint") != fingerprint or not has_weights:
        return None
    names = TrainSummary.__dataclass_fields__
    return TrainSummary(**{k: v for k, v in data.items() if k in names})


@holds_run_lock  # one process per run folder (pipeline/runlock.py)
def train(spec, progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None) -> TrainSummary:
    """Fine-tune the student on OUT/labels.jsonl; writes OUT/student/, OUT/checkpoints/ and OUT/training.json."""
    out, cfg = spec.out_dir, spec.train

    # 1. check everything that can be checked before loading a model
    device = check_student(spec)
    records = read_labelled(out)
    pairs = training_pairs(spec, records)  # refuses labels written for another train.rationale
    kd = distillation_loss(spec, records)  # None: hard targets, today's loss; KDLoss (closed sets) or TopKLoss (free text)
    fingerprint = run_fingerprint(spec, out / "labels.jsonl")
    done = _finished(out, fingerprint)
    if done is not None:
        if cfg.merge and not (out / "student" / "merged").is_dir():
            _write_merged(spec, out / "student", device)
        return done
    if cfg.workers > 1 and kd is not None:
        raise TrainingError("train.targets=soft|mixed trains in one process for now; set train.workers=1 or train.targets=hard.")
    if cfg.workers > 1:  # data parallel on Ray Train, same recipe (pipeline/distributed.py)
        from .distributed import train_distributed

        return train_distributed(spec, progress, should_stop)
    from .models import render_chat, resolve_model

    _check_seq_len(resolve_model(spec.student.model), cfg.max_seq_len)

    # 2. load the student and attach LoRA (or unfreeze everything)
    import torch

    torch.manual_seed(cfg.seed)
    model, tokenizer = _load_for_training(spec, device)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # 3. tokenize, hold out the validation share, plan the steps
    if kd is not None:  # with the teacher's option distribution (closed sets) or per-token top-k (free text)
        rows = kd.encode(records, pairs, tokenizer, render_chat, cfg.max_seq_len)
    else:
        rows = encode_pairs(pairs, tokenizer, render_chat, cfg.max_seq_len, per_example=example_mean(spec))  # multitask weights
    train_rows, val_rows = split_rows(rows, cfg.val_share, cfg.seed)
    lengths = [r.length for r in train_rows]
    micro_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))
    opt, sched = _optimizer(model, spec, total_steps)

    # 4. resume from the newest checkpoint of this spec, if any
    ckpt_root = out / "checkpoints"
    pos = {"epoch": 0, "cursor": 0}
    step, seconds, tokens, history, forwards = 0, 0.0, 0, [], 0
    checks = Validation(cfg.eval_every, cfg.early_stopping_patience)
    found = latest_checkpoint(ckpt_root, fingerprint)
    if found is not None:
        weights, state, meta, best_weights = load_checkpoint(found)
        _load_trainable(model, weights)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step, seconds, tokens = meta["step"], meta["seconds"], meta["tokens"]
        pos, history, forwards = meta["position"], meta["loss_history"], meta.get("forwards", 0)
        checks.restore(meta, best_weights)
    resumed_from = step
    batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, pos["epoch"])

    def checkpoint() -> None:
        meta = {"fingerprint": fingerprint, "step": step, "seconds": seconds, "tokens": tokens, "position": pos, "forwards": forwards,
                "epoch_order": batches, "loss_history": history, **checks.meta()}
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state()}
        save_checkpoint(ckpt_root, step, _trainable(model), state, meta, best=checks.best_weights)

    # 5. train: grad_accum micro-batches per step, each cut to train.batch_tokens padded tokens (pipeline/steps.py);
    #    every piece's loss is divided by the whole step's target tokens, so the update is the unsplit step's
    tracker = Tracker("training", total_steps, progress, unit="steps", start=step)
    stopped_early = False
    while step < total_steps and not stopped_early:
        t0 = time.perf_counter()
        micro = []
        for _ in range(cfg.grad_accum):
            if pos["cursor"] >= len(batches):
                pos = {"epoch": pos["epoch"] + 1, "cursor": 0}
                batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, pos["epoch"])
            micro.append([train_rows[i] for i in batches[pos["cursor"]]])
            pos["cursor"] += 1
        n_target = sum(r.n_target for mb in micro for r in mb)
        if kd is None:  # the step's total loss weight (its target tokens when every row weighs 1, as before)
            n_target = sum(r.n_target * r.weight for mb in micro for r in mb)
        n_rows = sum(len(mb) for mb in micro)
        if kd is not None:  # (1 - w) * CE + w * KL, each piece's share of the step (pipeline/kd.py, kd_text.py)
            def forward(piece):
                loss, value = kd.micro_loss(model, piece, pad_id, device, n_target, n_rows)
                return loss, value, kd.tokens(piece)
        else:
            forward = step_forward(lambda batch: supervised_loss(model, batch)[0], pad_id, device, n_target)
        pieces = token_pieces(micro, cfg.batch_tokens)
        step_loss, step_tokens = accumulate(pieces, forward)
        tokens, forwards = tokens + step_tokens, forwards + len(pieces)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], MAX_GRAD_NORM)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        seconds += time.perf_counter() - t0
        history.append({"step": step, "loss": step_loss})
        if val_rows and checks.due(step, total_steps):
            val = _val_loss(model, [r.hard for r in val_rows] if kd else val_rows, pad_id, device, cfg)  # hard CE
            stopped_early = checks.record(step, val, lambda: _trainable(model))
        tracker.advance(1, loss=history[-1]["loss"], tokens_per_second=tokens / max(seconds, 1e-9))
        if should_stop is not None and should_stop():
            checkpoint()
            raise Cancelled(f"training was cancelled at step {step} of {total_steps}; run it again to resume from there.")
        if step % cfg.checkpoint_every == 0 and step < total_steps and not stopped_early:
            checkpoint()
    if stopped_early and checks.best_weights is not None:
        _load_trainable(model, checks.best_weights)

    # 6. save the student, then training.json and the model card
    summary = TrainSummary(
        examples=len(train_rows), steps=step, seconds=round(seconds, 3), tokens_per_second=tokens / max(seconds, 1e-9),
        final_loss=history[-1]["loss"] if history else None, loss_history=history, val_losses=checks.history,
        method=spec.student.method, device=device, val_examples=len(val_rows), resumed_from=resumed_from,
        stopped_early=stopped_early, fingerprint=fingerprint, workers=1, targets=cfg.targets,
        kd_weight=None if kd is None else kd.weight, kd_temperature=None if kd is None else kd.temperature,
        kd_positions=None if kd is None else kd.positions(train_rows),
        batch_tokens=cfg.batch_tokens or None, forwards=forwards)
    _save_student(spec, model, tokenizer, device)
    _write_json(out / "training.json", asdict(summary))
    write_model_card(spec)
    return summary


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _save_student(spec, model, tokenizer, device: str) -> None:
    """Write the adapter (or full model) and tokenizer to a temp folder, then swap it in as OUT/student."""
    out = spec.out_dir
    tmp, final, old = out / ".student-tmp", out / "student", out / ".student-old"
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if spec.train.merge:
        _write_merged(spec, tmp, device, model if spec.student.method == "lora" else None)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _write_merged(spec, student_dir: Path, device: str, model=None) -> None:
    """student_dir/merged: base + adapter folded into one plain model (the full model is copied as is)."""
    from .models import load_model

    target = student_dir / "merged"
    shutil.rmtree(target, ignore_errors=True)
    if spec.student.method == "full":
        model, tokenizer = load_model(str(student_dir), device=device, for_training=True)
    else:
        if model is None:  # QLoRA (4-bit base) or a finished run: merge into a freshly loaded full-precision base
            model, _ = load_model(spec.student.model, device=device, dtype=spec.student.dtype, adapter=str(student_dir), for_training=True)
        tokenizer = None
        model = model.merge_and_unload()
    model.save_pretrained(target)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(student_dir)
    tokenizer.save_pretrained(target)


def load_student(spec, adapter_dir: str | Path | None = None):
    """(model, tokenizer) of the trained student in eval mode: base + adapter, or the full fine-tuned model."""
    from .models import load_model

    student = Path(adapter_dir) if adapter_dir else spec.out_dir / "student"
    if not student.is_dir():
        raise TrainingError(f"no trained student in {student}; run `distillery train` first.")
    if (student / "adapter_config.json").is_file():
        return load_model(spec.student.model, device=spec.student.device, dtype=spec.student.dtype, adapter=str(student))
    return load_model(str(student), device=spec.student.device, dtype=spec.student.dtype)


def write_model_card(spec) -> Path:
    """OUT/student/README.md: base model, teacher, data, hyperparameters, and scores when report.json exists."""
    out = spec.out_dir
    training = json.loads((out / "training.json").read_text(encoding="utf-8")) if (out / "training.json").is_file() else {}
    report = json.loads((out / "report.json").read_text(encoding="utf-8")) if (out / "report.json").is_file() else {}
    s, t = spec.student, spec.train
    adapter = s.method != "full"
    lines = ["---", f"base_model: {s.model}", f"library_name: {'peft' if adapter else 'transformers'}",
             "tags: [distillery, distillation" + (", lora" if adapter else "") + "]", "---", "",
             f"# Distilled student of {s.model}", "",
             f"Fine-tuned by Distillery ({s.method}) on answers from the teacher `{spec.teacher.provider}/{spec.teacher.model}`.", "",
             "## Data", "",
             f"- task: {spec.task or 'detected from the dataset'}; labels: {', '.join(spec.labels) if spec.labels else 'n/a'}",
             f"- dataset: {spec.dataset.train or 'n/a'}; labelled rows trained on: {training.get('examples', '?')}"
             f" (validation: {training.get('val_examples', 0)})",
             f"- rationales in targets: {rationale_text(spec)}",
             f"- label targets: {training.get('targets', 'hard')}" + (f" (KL weight {training.get('kd_weight')}, temperature "
                                                                       f"{training.get('kd_temperature')})" if training.get('kd_weight') else ""),
             "", "## Hyperparameters", "",
             f"- method {s.method}" + (f", LoRA rank {s.lora.rank}, alpha {s.lora.alpha}, dropout {s.lora.dropout}, "
                                       f"target modules {s.lora.target_modules}" if adapter else ""),
             f"- learning rate {t.learning_rate}, epochs {t.epochs}, max steps {t.max_steps}, batch size {t.batch_size}, "
             f"grad accum {t.grad_accum}, max seq len {t.max_seq_len}, warmup {t.warmup_ratio}, weight decay {t.weight_decay}, seed {t.seed}",
             f"- steps {training.get('steps', '?')}, final loss {_num(training.get('final_loss'))}, device {training.get('device', '?')}"]
    scores = report.get("scores") or {}
    if scores:
        lines += ["", f"## Scores ({report.get('metric') or 'metric'})", "", "| model | score |", "| --- | --- |"]
        lines += [f"| {name} | {_num(value)} |" for name, value in scores.items()]
        if report.get("gap_closed") is not None:
            lines += ["", f"Gap closed: {report['gap_closed']:.1%} of the way from the base student to the teacher."]
    if "gemma" in s.model.lower():
        lines += ["", "Gemma is provided under and subject to the Gemma Terms of Use (https://ai.google.dev/gemma/terms)."]
    path = out / "student" / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "n/a")
