"""Training batches for the student: chat records -> token ids -> length-grouped batches -> loss.

    rows = encode_records(records, tokenizer, render, keep_rationale=True, max_seq_len=512)
    order = epoch_batches([r.length for r in rows], batch_size=8, seed=0, epoch=0)
    batch = collate([rows[i] for i in order[0]], pad_id, device)
    loss_sum, n_tokens = supervised_loss(model, batch)

Each record is rendered with the student's chat template: the prompt is the conversation up to the assistant
turn with the generation prompt; the target is the assistant text followed by the end-of-turn token. Only the
target tokens carry loss.

No compute on padding, by length grouping: each epoch shuffles the rows with a seeded generator, cuts them into
mega-batches of `MEGA_BATCH` batches, sorts each mega-batch by length, slices it into batches and shuffles the
batch order. Batches are padded (on the right) to their own longest row only, so padding is a few tokens.

Logits are computed only where the loss needs them: the decoder body gives hidden states, the supervised
positions are gathered, and the LM head runs on those rows alone (Gemma's vocabulary is 262k: the head
dominates the compute and memory of a full-logits forward).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .tasks import format_target

__all__ = ["Encoded", "MEGA_BATCH", "target_text", "end_of_turn_id", "encode_records", "encode_pairs", "split_rows", "epoch_batches", "collate",
           "supervised_loss", "target_logits", "decoder_parts"]

MEGA_BATCH = 32  # batches per sorted group: larger groups pad less, smaller ones shuffle more
_EOT_CANDIDATES = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


@dataclass
class Encoded:
    """One training row: token ids and where the supervised target starts."""

    input_ids: list[int]
    target_start: int  # index of the first target token (tokens before it carry no loss)
    weight: float = 1.0  # the row's loss weight from pipeline/targets.training_pairs (1.0: plain supervised rows)

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def n_target(self) -> int:
        return len(self.input_ids) - self.target_start


def target_text(record: dict[str, Any], keep_rationale: bool) -> str:
    """The assistant text to learn: the teacher's answer, or the bare label when rationales are dropped."""
    assistant = str(record["messages"][-1]["content"])
    if not keep_rationale and record.get("rationale") and record.get("label") is not None:
        return format_target(str(record["label"]), None, False)
    return assistant


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn in this tokenizer's chat format (EOS when there is none).

    Fast tokenizers are asked token by token: get_vocab() builds a dict of the whole vocabulary (262k entries for
    Gemma, ~0.1 s), which soft-label encoding used to pay once per labelled row."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "token_to_id"):
        for name in _EOT_CANDIDATES:
            found = backend.token_to_id(name)
            if found is not None:
                return found
        return tokenizer.eos_token_id
    vocab = tokenizer.get_vocab()
    for name in _EOT_CANDIDATES:
        if name in vocab:
            return vocab[name]
    return tokenizer.eos_token_id


def encode_records(records: list[dict[str, Any]], tokenizer, render: Callable[..., str], keep_rationale: bool,
                   max_seq_len: int) -> list[Encoded]:
    """Tokenize chat records (prompt = all turns but the last; target per keep_rationale)."""
    pairs = [(rec["messages"][:-1], target_text(rec, keep_rationale), 1.0) for rec in records]
    return encode_pairs(pairs, tokenizer, render, max_seq_len)


def encode_pairs(pairs: list[tuple[list[dict[str, str]], str, float]], tokenizer, render: Callable[..., str],
                 max_seq_len: int, per_example: bool = False) -> list[Encoded]:
    """Tokenize (prompt messages, target text, weight); prompts too long are cut from the left (BOS kept).

    Encoded.weight is what each of a row's target tokens weighs in the loss: the pair's weight, or with
    per_example the pair's weight spread over its target tokens (weight / tokens), so that every example's loss
    is its own mean and the weights mix examples, not tokens (pipeline/targets.example_mean).
    """
    eot = end_of_turn_id(tokenizer)
    bos = tokenizer.bos_token_id
    rows: list[Encoded] = []
    for messages, target, weight in pairs:
        prompt = render(tokenizer, messages, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [eot]
        target_ids = target_ids[: max_seq_len - 1]
        room = max_seq_len - len(target_ids)
        if len(prompt_ids) > room:
            keep_bos = bos is not None and prompt_ids and prompt_ids[0] == bos
            prompt_ids = ([bos] if keep_bos else []) + prompt_ids[len(prompt_ids) - room + (1 if keep_bos else 0):]
        rows.append(Encoded(prompt_ids + target_ids, len(prompt_ids), weight / len(target_ids) if per_example else weight))
    return rows


def split_rows(rows: list[Encoded], val_share: float, seed: int) -> tuple[list[Encoded], list[Encoded]]:
    """(training rows, validation rows): a seeded share of the rows held out for validation loss."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = int(len(rows) * val_share) if len(rows) > 1 else 0
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches (row indices) of one epoch: seeded shuffle, sorted within mega-batches, batch order shuffled."""
    rng = random.Random(f"{seed}:{epoch}")
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = batch_size * MEGA_BATCH
    batches: list[list[int]] = []
    for start in range(0, len(idx), mega):
        group = sorted(idx[start:start + mega], key=lambda i: lengths[i], reverse=True)
        batches += [group[j:j + batch_size] for j in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(rows: list[Encoded], pad_id: int, device: Any = "cpu") -> dict[str, Any]:
    """Right-padded tensors plus the flat (row, position) pairs whose next token is a target."""
    import torch

    width = max(r.length for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    src_rows, src_pos, targets, weights = [], [], [], []
    for b, r in enumerate(rows):
        ids[b, : r.length] = torch.tensor(r.input_ids)
        mask[b, : r.length] = 1
        for t in range(r.target_start, r.length):  # hidden state at t-1 predicts token t
            src_rows.append(b)
            src_pos.append(t - 1)
            targets.append(r.input_ids[t])
            weights.append(r.weight)
    weighted = any(w != 1.0 for w in weights)  # rows of weight 1 keep the plain sum, bit for bit
    return {
        "weights": torch.tensor(weights, dtype=torch.float32, device=device) if weighted else None,
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "rows": torch.tensor(src_rows, device=device),
        "positions": torch.tensor(src_pos, device=device),
        "targets": torch.tensor(targets, device=device),
        "n_tokens": int(mask.sum()),
    }


def decoder_parts(model):
    """(decoder body, LM head, logit soft-cap or None) of a causal LM, a PEFT wrapper around one, or DDP."""
    base = getattr(model, "module", model)
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    config = getattr(base, "config", None)
    cap = getattr(config, "final_logit_softcapping", None) if config is not None else None
    return base.get_decoder(), base.get_output_embeddings(), cap


def target_logits(model, batch: dict[str, Any]):
    """fp32 logits at the supervised positions only (one row per target token, in collate's order)."""
    import torch

    body, head, cap = decoder_parts(model)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    picked = hidden[batch["rows"], batch["positions"]]
    logits = head(picked).float()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def supervised_loss(model, batch: dict[str, Any]):
    """(sum of target-token cross-entropies, number of target tokens); logits only at the target positions.

    With row weights (collate's "weights"): (sum of weight x cross-entropy, sum of the weights), so the caller's
    sum / total is the weighted mean.
    """
    import torch.nn.functional as F

    weights = batch.get("weights")
    if weights is None:
        loss_sum = F.cross_entropy(target_logits(model, batch), batch["targets"], reduction="sum")
        return loss_sum, int(batch["targets"].numel())
    per_token = F.cross_entropy(target_logits(model, batch), batch["targets"], reduction="none")
    return (per_token * weights).sum(), float(weights.sum())
