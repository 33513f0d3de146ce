"""One optimizer step's gradients and the validation bookkeeping, shared by one-process and Ray Train training.

    pieces = token_pieces(micro, cfg.batch_tokens)          # the step's micro-batches cut to a padded-token budget
    value, tokens = accumulate(pieces, forward)             # backward of each piece: the unsplit step's gradients
    checks = Validation(cfg.eval_every, cfg.early_stopping_patience)
    if checks.due(step, total_steps):
        stopped = checks.record(step, val_loss(...), lambda: trainable_weights)

Memory of a training forward/backward grows with the padded tokens it holds (activations are kept for the
backward pass): `train.batch_tokens` bounds them. A step's rows (batch_size x grad_accum) are cut into pieces of
at most that many padded tokens (rows x widest row; a longer row alone is one piece); every piece's loss is
its summed token losses divided by the target tokens of the WHOLE step, so the accumulated gradients are the
unsplit step's (up to float rounding) and the optimizer update is the same, whatever the budget.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["DEFAULT_TRAIN_BATCH_TOKENS", "token_pieces", "step_forward", "accumulate", "val_loss", "Validation"]

# Measured (benchmarks/tasks.py --tasks dialogsum --cot on --train-memory 0 1024 512 --set train.max_steps=1, Gemma 3
# 270M LoRA fp32 on CPU, the first batch of 8 dialogues): peak RSS of the training stage 7.2-7.3 GB unsplit, 4.55 GB
# at 1024, 3.12 GB at 512 (the 4 GB target), the same loss to 1e-7 and no slower (83 s vs 101 s). A batch
# of 8 short classification rows (~90 tokens each) takes two pieces. On a GPU raise it (or set 0: no splitting).
DEFAULT_TRAIN_BATCH_TOKENS = 512


def _shape(row) -> tuple[int, int]:
    """(widest sequence, sequences) of a row: one for a plain row, one per option for a soft-label row whose
    options are not single tokens (pipeline/kd.py scores single-token options in one sequence)."""
    options = getattr(row, "options", None)
    if options is not None and row.option_tokens() is None:
        return max(e.length for e in options), len(options)
    return row.length, 1


def token_pieces(micro: list[list[Any]], budget: int | None) -> list[list[Any]]:
    """The step's micro-batches, each cut into pieces of at most `budget` padded tokens (None or 0: uncut).

    Within a micro-batch the rows are taken widest first, so every piece pads little; a row wider than the
    budget on its own is a piece of one.
    """
    if not budget:
        return [mb for mb in micro if mb]
    pieces: list[list[Any]] = []
    for mb in micro:
        cur: list[Any] = []
        width = count = 0
        for row in sorted(mb, key=lambda r: _shape(r)[0], reverse=True):
            w, n = _shape(row)
            if cur and max(width, w) * (count + n) > budget:
                pieces.append(cur)
                cur, width, count = [], 0, 0
            cur.append(row)
            width, count = max(width, w), count + n
        if cur:
            pieces.append(cur)
    return pieces


def step_forward(loss_sum: Callable[[dict[str, Any]], Any], pad_id: int, device: Any, n_target: float,
                 scale: float = 1.0) -> Callable[[list[Any]], tuple[Any, float, int]]:
    """forward(piece) for `accumulate`: the piece's summed target-token loss x scale / the WHOLE step's n_target.

    loss_sum(batch) -> summed loss of a collated batch (batching.supervised_loss's first value, or DDP's wrapped
    module); scale: Ray Train's world size (DDP averages gradients over ranks; n_target counts all of them).
    """
    from .batching import collate

    def forward(piece: list[Any]) -> tuple[Any, float, int]:
        batch = collate(piece, pad_id, device)
        total = loss_sum(batch)
        return total * (scale / n_target), float(total.detach()) / n_target, batch["n_tokens"]

    return forward


def accumulate(pieces: list[list[Any]], forward: Callable[[list[Any]], tuple[Any, float, int]],
               no_sync: Callable[[], Any] | None = None) -> tuple[float, int]:
    """Backward every piece; (the step's loss, padded tokens through the model).

    forward(rows) -> (loss tensor already divided by the whole step's normaliser, its float value, padded tokens).
    no_sync: DDP's context that skips the gradient all-reduce; used on every piece but the last.
    """
    value, tokens = 0.0, 0
    for j, piece in enumerate(pieces):
        with no_sync() if no_sync is not None and j < len(pieces) - 1 else nullcontext():
            loss, v, n = forward(piece)
            loss.backward()
        value, tokens = value + v, tokens + n
    return value, tokens


def val_loss(loss_sum: Callable[[list[Any]], tuple[Any, int]], rows: list[Any], batch_size: int, budget: int | None) -> float:
    """Mean target-token loss over the validation rows (no gradients), in batch_size rows cut to the token budget."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        for piece in token_pieces(batches, budget):
            s, n = loss_sum(piece)
            total, count = total + float(s), count + n
    return total / max(count, 1)


@dataclass
class Validation:
    """Validation loss every `every` steps (and at the last), the best weights, and early stopping's patience."""

    every: int
    patience: int | None
    history: list[dict[str, float]] = field(default_factory=list)  # [{step, loss}]
    best_loss: float = math.inf
    best_weights: dict[str, Any] | None = None
    bad_checks: int = 0

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.every == 0 or step == total_steps

    def record(self, step: int, loss: float, weights: Callable[[], dict[str, Any]]) -> bool:
        """Note one validation loss; True when patience is spent (stop early)."""
        self.history.append({"step": step, "loss": loss})
        if loss < self.best_loss:
            self.best_loss, self.bad_checks = loss, 0
            self.best_weights = {k: v.detach().clone() for k, v in weights().items()}
            return False
        self.bad_checks += 1
        return bool(self.patience and self.bad_checks >= self.patience)

    def meta(self) -> dict[str, Any]:
        """The checkpoint fields (names as in checkpoints written before this helper)."""
        return {"val_losses": self.history, "best_loss": self.best_loss, "bad_checks": self.bad_checks}

    def restore(self, meta: dict[str, Any], best_weights: dict[str, Any] | None) -> None:
        self.history, self.best_loss, self.bad_checks = meta["val_losses"], meta["best_loss"], meta["bad_checks"]
        self.best_weights = best_weights
