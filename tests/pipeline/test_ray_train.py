"""train.workers > 1: Ray Train with gloo CPU workers on the tiny model (a local Ray instance started by training).

Run under `flock /tmp/heavy.lock`: each test starts a local Ray instance and two training processes.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pipeline.distributed import step_micro_batches
from pipeline.batching import epoch_batches
from test_training import adapter_weights, make_spec, records


@pytest.fixture
def local_ray_home(tmp_path, monkeypatch):
    """Ray writes its token to ~/.ray: give it a HOME of its own; no cluster address, so training starts Ray here."""
    for var in ("RAY_ADDRESS", "DISTILLERY_RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("n_rows,batch_size,grad_accum,workers", [(16, 2, 1, 2), (13, 3, 2, 2), (20, 2, 1, 4)])
def test_each_row_is_seen_once_per_epoch_across_ranks(n_rows, batch_size, grad_accum, workers):
    lengths = [5 + (i * 7) % 11 for i in range(n_rows)]
    per_epoch = len(epoch_batches(lengths, batch_size, 0, 0))
    pos, batches = {"epoch": 0, "cursor": 0}, epoch_batches(lengths, batch_size, 0, 0)
    sequence: list[list[int]] = []  # the micro-batches the ranks trained on, rank after rank within each step
    for _ in range(3 * per_epoch):
        micro, pos, batches = step_micro_batches(pos, batches, lengths, batch_size, 0, grad_accum * workers)
        shards = [micro[r * grad_accum:(r + 1) * grad_accum] for r in range(workers)]
        assert [mb for shard in shards for mb in shard] == micro  # the ranks split the step, nothing else
        sequence += micro
    # the global order is one process's order: every whole epoch holds each row exactly once
    for e in range(len(sequence) // per_epoch):
        rows = sorted(i for mb in sequence[e * per_epoch:(e + 1) * per_epoch] for i in mb)
        assert rows == list(range(n_rows)), e
        assert sequence[e * per_epoch:(e + 1) * per_epoch] == epoch_batches(lengths, batch_size, 0, e)


def test_two_gloo_workers_match_one_process_on_the_same_global_batches(tmp_path, tiny_model, local_ray_home):
    from pipeline.training import train

    rows = records(16)
    common = {"max_steps": 4, "batch_size": 2, "checkpoint_every": 2, "learning_rate": 1e-2, "warmup_ratio": 0.0}
    no_dropout = {"lora": {"dropout": 0.0}}  # dropout masks depend on each process's RNG stream, not on the batches
    dist_spec = make_spec(tmp_path / "ray", tiny_model, rows, student=no_dropout, workers=2, grad_accum=1, **common)
    one_spec = make_spec(tmp_path / "one", tiny_model, rows, student=no_dropout, workers=1, grad_accum=2, **common)
    seen = []
    summary = train(dist_spec, progress=seen.append)
    single = train(one_spec)
    data = json.loads((tmp_path / "ray" / "training.json").read_text())
    assert data["workers"] == 2 and summary.workers == 2 and summary.steps == 4
    assert len(set(data["rank_weight_digests"])) == 1  # both ranks ended with bit-identical adapter weights
    assert data["rows_seen_per_rank"] == [8, 8]  # 4 steps x 2 rows per rank: two epochs of 8 rows, each row once per epoch
    assert seen and seen[-1].done == 4 and seen[-1].stage == "training"
    a, b = adapter_weights(tmp_path / "ray" / "student"), adapter_weights(tmp_path / "one" / "student")
    assert a.keys() == b.keys()
    # same global batches, same loss normalisation: only float32 summation order differs (gloo all-reduce of two
    # partial gradients vs one accumulated backward), ~1e-7 relative per step; 4 Adam steps of lr 1e-2 move weights
    # by ~4e-2, so 1e-4 is far above rounding and far below any real difference (a wrong shard or loss scale
    # changes weights by ~1e-2)
    moved = max(float(b[k].abs().max()) for k in b if "lora_B" in k)  # LoRA B starts at zero: how far training moved it
    assert moved > 1e-3
    for k in a:
        assert float((a[k] - b[k]).abs().max()) < 1e-4, k
    losses_ray = [h["loss"] for h in summary.loss_history]
    losses_one = [h["loss"] for h in single.loss_history]
    assert losses_ray == pytest.approx(losses_one, rel=1e-4)


def ray_train_workers() -> list[int]:
    """pids of Ray Train worker processes descending from this test process."""
    me = os.getpid()
    table = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                table[int(proc.name)] = (ppid, (proc / "cmdline").read_bytes())
            except (OSError, ValueError, IndexError):
                pass

    def ours(pid):
        while pid > 1:
            if pid == me:
                return True
            pid = table.get(pid, (0, b""))[0]
        return False

    return [pid for pid, (_, cmd) in table.items() if b"RayTrainWorker" in cmd and ours(pid)]


def test_a_killed_worker_resumes_from_the_checkpoint(tmp_path, tiny_model, local_ray_home):
    from pipeline.training import train

    spec = make_spec(tmp_path / "run", tiny_model, records(16), workers=2, max_steps=60, batch_size=2,
                     checkpoint_every=2, learning_rate=1e-3)
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("summary", train(spec)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 400
    while not list((tmp_path / "run" / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = ray_train_workers()
    assert workers, "no Ray Train worker found"
    os.kill(workers[-1], signal.SIGKILL)
    thread.join(500)
    summary = box["summary"]
    assert summary.steps == 60 and summary.resumed_from > 0 and summary.workers == 2
