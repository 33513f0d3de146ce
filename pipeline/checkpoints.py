"""Resumable training checkpoints, written atomically: a temp folder renamed into place, the last few kept.

    save_checkpoint(out / "checkpoints", step, trainable, state, meta)   # -> checkpoints/step-000020/
    found = latest_checkpoint(out / "checkpoints", fingerprint)           # Path or None
    trainable, state, meta = load_checkpoint(found)

A checkpoint folder holds `trainable.safetensors` (the weights that train: LoRA matrices, or every weight for
full fine-tuning), optionally `best.safetensors` (weights at the best validation loss), `state.pt` (optimizer,
scheduler and RNG states, loaded with `weights_only=True`: plain tensors and containers, never a pickled object
that could run code, so a planted checkpoint cannot execute anything) and `meta.json` (step, data position, epoch order, loss history, run fingerprint).
A folder named `step-*` is always complete: it only gets that name by `os.replace` after everything in it was
written and flushed. Checkpoints of another spec (different fingerprint) are never resumed from.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from .errors import TrainingError

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "KEEP"]

KEEP = 2  # checkpoints kept per run folder


def rng_state() -> dict[str, Any]:
    """Every random generator training uses (Python, torch CPU, CUDA)."""
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _steps(root: Path) -> list[Path]:
    return sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: p.name)


def save_checkpoint(root: Path, step: int, trainable: dict[str, Any], state: dict[str, Any], meta: dict[str, Any],
                    best: dict[str, Any] | None = None, keep: int = KEEP) -> Path:
    """Write checkpoint `step` under root atomically and delete all but the newest `keep` of this run."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    if best is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in best.items()}, str(tmp / "best.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # a re-run reached the same step again
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in _steps(root):  # checkpoints of a superseded spec can never be resumed
        if _meta(old).get("fingerprint") != meta.get("fingerprint"):
            shutil.rmtree(old, ignore_errors=True)
    for old in _steps(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # left by a killed process
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def latest_checkpoint(root: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint written for this fingerprint, or None."""
    if not root.is_dir():
        return None
    for path in reversed(_steps(root)):
        if _meta(path).get("fingerprint") == fingerprint and (path / "trainable.safetensors").is_file():
            return path
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(trainable weights, optimizer/scheduler/RNG state, meta, best weights or None) of a checkpoint folder."""
    import torch
    from safetensors.torch import load_file

    try:
        trainable = load_file(str(path / "trainable.safetensors"))
        best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").is_file() else None
        # weights_only: tensors, numbers, strings, lists, dicts and tuples only; never code from a pickle
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for anything but plain state, SafetensorError, OSError, ...
        raise TrainingError(f"checkpoint {path} cannot be loaded safely ({type(err).__name__}); delete that folder "
                            "to resume from an older checkpoint or start training over.") from None
    return trainable, state, _meta(path), best
