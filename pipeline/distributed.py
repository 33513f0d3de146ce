"""Data-parallel student training on Ray Train: train.workers N > 1 (GPUs on one or several nodes, or CPU workers).

    summary = train_distributed(spec, progress, should_stop)   # training.train() calls this when train.workers > 1

The recipe is training.train's, spread over N processes by `ray.train.torch.TorchTrainer`
(`ScalingConfig(num_workers=N, use_gpu=<the cluster has N GPUs and student.device is not cpu>)`, NCCL on GPUs,
gloo on CPUs). Our own loop is kept (loss and LM head only at supervised positions, pipeline/batching.py):

- the epoch's length-grouped batches are the same list on every rank; each optimizer step takes the next
  `grad_accum x N` micro-batches of it and rank r trains on its own `grad_accum` of them, so the ranks see disjoint
  shards, every row is seen once per epoch, and the global batch is `batch_size x grad_accum x N`;
- the loss of a step is the sum over all ranks' target tokens divided by their global count (an all-reduce of the
  count before the backward pass), so N workers compute the same step as one process with grad_accum x N;
- LoRA/QLoRA (and full fine-tuning on CPU) use torch DDP (gradients averaged in buckets during the backward
  pass); full fine-tuning on GPUs uses FSDP (parameters sharded per decoder layer). FSDP is implemented but was
  never run here (no GPU in the session that wrote it);
- rank 0 writes the checkpoints (pipeline/checkpoints.py, in the run folder), the student and training.json; every
  rank resumes from the newest checkpoint, after a lost worker (Ray Train restarts the group, FailureConfig) or a
  resubmitted run alike;
- progress and cancel cross process boundaries through OUT/.train_control (progress.json written by rank 0, a
  `stop` file written by the driver; the ranks agree on stopping with an all-reduce).

Without a cluster (no RAY_ADDRESS, as set inside a Ray job), N > 1 starts a local Ray instance on this machine.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .errors import Cancelled, TrainingError
from .progress import Progress, ProgressFn

__all__ = ["train_distributed", "step_micro_batches", "CONTROL_DIR", "DRIVER_GPU_SHARE"]

CONTROL_DIR = ".train_control"
DRIVER_GPU_SHARE = 0.1  # a Ray job's driver shares a GPU with rank 0 (evaluation runs there after training)


def step_micro_batches(pos: dict[str, int], batches: list[list[int]], lengths: list[int], batch_size: int, seed: int,
                       count: int) -> tuple[list[list[int]], dict[str, int], list[list[int]]]:
    """The next `count` micro-batches of the global order (epochs roll over as in one process); new pos and batches."""
    from .batching import epoch_batches

    micro = []
    for _ in range(count):
        if pos["cursor"] >= len(batches):
            pos = {"epoch": pos["epoch"] + 1, "cursor": 0}
            batches = epoch_batches(lengths, batch_size, seed, pos["epoch"])
        micro.append(batches[pos["cursor"]])
        pos = {"epoch": pos["epoch"], "cursor": pos["cursor"] + 1}
    return micro, pos, batches


def _loss_module(model):
    """The model wrapped so that DDP/FSDP's forward is our supervised loss (logits only at target positions)."""
    import torch

    from .batching import supervised_loss

    class LossModule(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, batch):
            return supervised_loss(self.inner, batch)[0]

    return LossModule(model)


def _wrap(model, spec, device, use_gpu: bool):
    """DDP (LoRA, QLoRA, and full fine-tuning on CPU) or FSDP (full fine-tuning on GPUs) around the loss module."""
    import torch

    core = _loss_module(model)
    if spec.student.method == "full" and use_gpu:  # implemented, not run here: no GPU in the writing session
        import functools

        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        layer = type(_decoder_layers(model)[0])
        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={layer})
        return FSDP(core, auto_wrap_policy=policy, device_id=device, use_orig_params=True), True
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(core, device_ids=[device] if use_gpu else None), False


def _decoder_layers(model):
    from .batching import decoder_parts

    body = decoder_parts(model)[0]
    return list(getattr(body, "layers"))


def _train_loop(config: dict[str, Any]) -> None:
    """One rank of Ray Train: the loop of training.train with sharded micro-batches and rank-0 writes."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from .batching import collate, encode_pairs, epoch_batches, split_rows
    from .checkpoints import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
    from .models import render_chat
    from .spec import validate_spec
    from .steps import Validation, accumulate, step_forward, token_pieces, val_loss
    from .targets import example_mean, training_pairs
    from .training import MAX_GRAD_NORM, TrainSummary, _load_for_training, _load_trainable, _optimizer, _trainable, read_labelled

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    spec = validate_spec(config["spec"])
    cfg, out, fingerprint, use_gpu = spec.train, spec.out_dir, config["fingerprint"], config["use_gpu"]
    control = out / CONTROL_DIR
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model, tokenizer = _load_for_training(spec, str(device))
    model.train()
    found = latest_checkpoint(out / "checkpoints", fingerprint)
    loaded = load_checkpoint(found) if found is not None else None
    if loaded is not None:  # every rank reads the same checkpoint from the run folder, before wrapping (FSDP shards)
        _load_trainable(model, loaded[0])
    wrapped, sharded = _wrap(model, spec, device, use_gpu)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    rows = encode_pairs(training_pairs(spec, read_labelled(out)), tokenizer, render_chat, cfg.max_seq_len,
                        per_example=example_mean(spec))  # the targets and weights of one process
    train_rows, val_rows = split_rows(rows, cfg.val_share, cfg.seed)
    lengths = [r.length for r in train_rows]
    micro_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * micro_per_epoch / (cfg.grad_accum * world)))
    opt, sched = _optimizer(wrapped, spec, total_steps)

    ckpt_root = out / "checkpoints"
    pos = {"epoch": 0, "cursor": 0}
    step, seconds, tokens, history, rows_seen, forwards = 0, 0.0, 0, [], [0] * world, 0
    checks = Validation(cfg.eval_every, cfg.early_stopping_patience)
    if loaded is not None:
        _, state, meta, best_weights = loaded
        if state["optimizer"] is not None:  # FSDP checkpoints keep no optimizer state (it is sharded): Adam restarts
            opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step, seconds, tokens = meta["step"], meta["seconds"], meta["tokens"]
        pos, history = meta["position"], meta["loss_history"]
        checks.restore(meta, best_weights)
        rows_seen, forwards = meta.get("rows_seen", rows_seen), meta.get("forwards", 0)
    resumed_from = step
    batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, pos["epoch"])

    def all_sum(*values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def gathered():
        """Full parameters on rank 0 while saving (FSDP shards them; a collective call, so every rank enters it)."""
        if not sharded:
            return nullcontext()
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(wrapped, writeback=False, rank0_only=True, offload_to_cpu=True)

    def checkpoint() -> None:
        with gathered():
            if rank == 0:
                _save(ckpt_root)

    def _save(root: Path) -> None:
        meta = {"fingerprint": fingerprint, "step": step, "seconds": seconds, "tokens": tokens, "position": pos,
                "epoch_order": batches, "loss_history": history, **checks.meta(), "workers": world, "rows_seen": rows_seen, "forwards": forwards}
        state = {"optimizer": None if sharded else opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state()}
        save_checkpoint(root, step, _trainable(model), state, meta, best=checks.best_weights)

    def report(info: dict[str, Any]) -> None:
        if rank == 0:
            control.mkdir(parents=True, exist_ok=True)
            tmp = control / "progress.json.tmp"
            tmp.write_text(json.dumps({"done": step, "total": total_steps, "info": info}), encoding="utf-8")
            os.replace(tmp, control / "progress.json")

    stopped_early = False
    last_report = 0.0
    while step < total_steps and not stopped_early:
        t0 = time.perf_counter()
        micro, pos, batches = step_micro_batches(pos, batches, lengths, cfg.batch_size, cfg.seed, cfg.grad_accum * world)
        for r in range(world):
            rows_seen[r] += sum(len(mb) for mb in micro[r * cfg.grad_accum:(r + 1) * cfg.grad_accum])
        mine = [[train_rows[i] for i in mb] for mb in micro[rank * cfg.grad_accum:(rank + 1) * cfg.grad_accum]]
        local_target = sum(r.n_target * r.weight for mb in mine for r in mb)  # the loss weight (target tokens when all weigh 1)
        n_target = all_sum(local_target)[0]
        # pieces of train.batch_tokens, each divided by the global target count; x world as DDP averages over ranks
        pieces = token_pieces(mine, cfg.batch_tokens)
        loss_local, tokens_local = accumulate(pieces, step_forward(wrapped, pad_id, device, n_target, world), wrapped.no_sync)
        if sharded:
            wrapped.clip_grad_norm_(MAX_GRAD_NORM)
        else:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], MAX_GRAD_NORM)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_loss, step_tokens, step_forwards = all_sum(loss_local, tokens_local, len(pieces))
        forwards += int(step_forwards)
        step += 1
        tokens += int(step_tokens)
        seconds += time.perf_counter() - t0
        history.append({"step": step, "loss": step_loss})
        if val_rows and checks.due(step, total_steps):
            wrapped.eval()
            val = val_loss(lambda piece: _loss_and_count(wrapped, collate(piece, pad_id, device)), val_rows, cfg.batch_size, cfg.batch_tokens)
            wrapped.train()
            stopped_early = checks.record(step, val, lambda: _trainable(model))
        if time.monotonic() - last_report >= 0.5 or step == total_steps:
            last_report = time.monotonic()
            report({"loss": history[-1]["loss"], "tokens_per_second": tokens / max(seconds, 1e-9)})
        stop = all_sum(1.0 if rank == 0 and (control / "stop").exists() else 0.0)[0] > 0
        if stop:
            checkpoint()
            dist.barrier()
            if rank == 0:
                (control / "cancelled").write_text(str(step), encoding="utf-8")
            return
        if step % cfg.checkpoint_every == 0 and step < total_steps and not stopped_early:
            checkpoint()
    if stopped_early and checks.best_weights is not None:
        _load_trainable(model, checks.best_weights)
    digests: list[Any] = [None] * world  # every rank's weights hashed: DDP must leave them bit-identical
    dist.all_gather_object(digests, None if sharded else _digest(_trainable(model)))
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if use_gpu else None
    summary = TrainSummary(
        examples=len(train_rows), steps=step, seconds=round(seconds, 3), tokens_per_second=tokens / max(seconds, 1e-9),
        final_loss=history[-1]["loss"] if history else None, loss_history=history, val_losses=checks.history,
        method=spec.student.method, device=f"{device.type} x{world}", val_examples=len(val_rows),
        resumed_from=resumed_from, stopped_early=stopped_early, fingerprint=fingerprint, workers=world,
        batch_tokens=cfg.batch_tokens or None, forwards=forwards)  # forwards: all ranks together
    extra = {"rows_seen_per_rank": rows_seen, "rank_weight_digests": digests, "peak_gpu_memory_gb": peak}
    with gathered():
        if rank == 0:
            _finish(spec, model, tokenizer, device, {**asdict(summary), **extra})
    dist.barrier()


def _finish(spec, model, tokenizer, device, training: dict[str, Any]) -> None:
    """Rank 0: the student, training.json (with workers, rows per rank, weight digests) and the model card."""
    from .training import _save_student, _write_json, write_model_card

    _save_student(spec, model, tokenizer, str(device))
    _write_json(spec.out_dir / "training.json", training)
    write_model_card(spec)


def _digest(weights: dict[str, Any]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(weights[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _loss_and_count(wrapped, batch):
    """(summed target-token loss through the wrapped model, its weight: target tokens, or the rows' weights)."""
    weights = batch.get("weights")
    return wrapped(batch), float(weights.sum()) if weights is not None else int(batch["targets"].numel())


def _ray_init(workers: int) -> bool:
    """Connect to the job's cluster (RAY_ADDRESS inside a Ray job) or start a local instance; True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return False
    try:  # Ray caches the auth token per process: one read for another cluster must not stand for this new one
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass
    # "local": a new instance even when a `ray start` cluster of someone else runs on this machine
    ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    return True


def train_distributed(spec, progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None):
    """Train with Ray Train on spec.train.workers processes; returns the TrainSummary rank 0 wrote."""
    from .training import TrainSummary, run_fingerprint

    try:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError:
        raise TrainingError("train.workers > 1 needs Ray Train; pip install 'ray[default,train]==2.60.0'.") from None
    out, workers = spec.out_dir, spec.train.workers
    fingerprint = run_fingerprint(spec, out / "labels.jsonl")
    control = out / CONTROL_DIR
    for name in ("stop", "cancelled", "progress.json"):
        (control / name).unlink(missing_ok=True)
    started = _ray_init(workers)
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        use_gpu = gpus >= workers and spec.student.device != "cpu"
        if spec.student.method == "qlora" and not use_gpu:
            raise TrainingError(f"QLoRA on {workers} workers needs {workers} GPUs and the cluster has {gpus:g}; "
                                "use student.method=lora or fewer train.workers.")
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"spec": spec.model_dump(mode="json"), "fingerprint": fingerprint, "use_gpu": use_gpu},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": 1, "GPU": 1 - DRIVER_GPU_SHARE} if use_gpu else None),
            run_config=RunConfig(name=f"train-{fingerprint}", storage_path=str((out / "ray_train").absolute()),
                                 failure_config=FailureConfig(max_failures=3)))
        _fit_watching(trainer, control, progress, should_stop)
    finally:
        if started:
            ray.shutdown()
    if (control / "cancelled").exists():
        step = (control / "cancelled").read_text().strip()
        raise Cancelled(f"training was cancelled at step {step}; run it again to resume from there.")
    data = json.loads((out / "training.json").read_text(encoding="utf-8"))
    names = TrainSummary.__dataclass_fields__
    return TrainSummary(**{k: v for k, v in data.items() if k in names})


def _fit_watching(trainer, control: Path, progress: ProgressFn | None, should_stop: Callable[[], bool] | None) -> None:
    """trainer.fit() in a thread; this thread relays rank 0's progress and writes the stop file on cancel."""
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except Exception as err:  # TrainingFailedError and friends: reported below as one sentence
            box["error"] = err

    thread = threading.Thread(target=fit, daemon=True, name="ray-train-fit")
    thread.start()
    t0, last = time.monotonic(), None
    while True:
        alive = thread.is_alive()
        thread.join(0.5)
        try:
            data = json.loads((control / "progress.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if progress and data and data != last:
            last = data
            elapsed = time.monotonic() - t0
            progress(Progress("training", data["done"], data["total"], unit="steps", info=data["info"],
                              rate=data["done"] / elapsed if elapsed else None))
        if should_stop is not None and should_stop() and not (control / "stop").exists():
            control.mkdir(parents=True, exist_ok=True)
            (control / "stop").write_text("stop", encoding="utf-8")
        if not alive:  # one more look after the end, for rank 0's last progress
            break
    if "error" in box:
        err = box["error"]
        cause = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
        raise TrainingError(f"Ray Train stopped with an error ({cause}); see the run's log, then run it again to resume.")
