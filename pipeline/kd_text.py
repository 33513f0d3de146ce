"""Free-text distillation on an API teacher's per-token top-k: KL with a tail bucket, mixed with cross-entropy.

    rows = encode_topk(records, pairs, tokenizer, render_chat, max_seq_len)   # one TopKRow per labelled row
    loss, value = TopKLoss(weight).micro_loss(model, rows, pad_id, device, n_target, n_rows)
    TopKLoss(weight).positions(rows)      # {"kl": answer tokens with the teacher's top-k, "ce_only": without}

Labels: labels.jsonl rows of free-text tasks (summarization, chat, math) carry `topk` (pipeline/judging.py): per
answer token [[token, logprob], ...], the token the teacher wrote first, then its top-k alternatives.

Mapping the teacher's tokens to the student's vocabulary: the teacher's written tokens are laid over the student's
target text (found in the teacher's text, last occurrence; else their common beginning). A student target token
takes the teacher's top-k only where one teacher token covers exactly its characters, is exactly the same string,
and every string of that position's top-k is ONE student token that decodes back to the same string (same
tokenizer family: Llama 3.1 405B -> 8B, or a teacher with the student's tokenizer). Everywhere else (another
tokenizer, text the teacher did not write, rows without `topk`) the position keeps plain cross-entropy, and
`positions` counts both kinds (training.json `kd_positions`). The end-of-turn token is always plain cross-entropy.

Loss per position (TRL's loss_add_tail): the teacher's k probabilities plus a tail bucket 1 - sum, against the
student's probabilities of the same k tokens (softmax over its whole vocabulary) plus its own tail;
KL(p || q) over those k + 1 buckets. One optimizer step:
    [ sum over top-k positions of ((1 - w) * CE + w * KL)  +  sum over other target positions of CE ] / target tokens
w = train.kd_weight (mixed) or 1 (soft). The teacher's probabilities are used as sent (train.kd_temperature applies
to closed answer sets only: a truncated top-k cannot be re-tempered). The LM head runs only at supervised
positions (batching.target_logits), so gradients reach nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .batching import Encoded, collate, encode_pairs, target_logits
from .errors import TrainingError
from .kd import HardRow

__all__ = ["TopKRow", "TopKLoss", "TokenMap", "encode_topk", "align", "require_topk", "tail_kl"]


@dataclass
class TopKRow(HardRow):
    """One labelled free-text row: its training sequence and the teacher's top-k per target position."""

    hard: Encoded
    ids: list[list[int]]  # per target position: student ids of the teacher's top-k ([]: plain cross-entropy)
    logp: list[list[float]]  # their teacher log-probabilities
    answer_positions: int  # target positions of the text (the end-of-turn excluded)

    @property
    def kl_positions(self) -> int:
        return sum(1 for ids in self.ids if ids)


class TokenMap:
    """Teacher token strings -> the one student token id each is, or None (cached per string)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._ids: dict[str, int | None] = {}

    def id(self, text: str) -> int | None:
        if text not in self._ids:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            same = len(ids) == 1 and self.tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text
            self._ids[text] = ids[0] if same else None
        return self._ids[text]


def align(target: str, topk: list | None, tokenizer, tokens: TokenMap) -> list[tuple[list[int], list[float]]]:
    """Per student token of `target`: (student ids, teacher logprobs) of the teacher's top-k there, or ([], [])."""
    try:
        enc = tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):  # a slow tokenizer: no offsets, plain cross-entropy
        enc = {"input_ids": tokenizer(target, add_special_tokens=False)["input_ids"], "offset_mapping": None}
    ids, offsets = enc["input_ids"], enc.get("offset_mapping")
    empty: list[tuple[list[int], list[float]]] = [([], []) for _ in ids]
    if not topk or offsets is None:
        return empty
    written = [str(pos[0][0]) for pos in topk]
    text = "".join(written)
    start = text.rfind(target)
    if start < 0:  # the target is not the teacher's text as written (cleaned up): use their common beginning
        start, reach = 0, next((i for i, (a, b) in enumerate(zip(text, target)) if a != b), min(len(text), len(target)))
    else:
        reach = len(target)
    spans, at = {}, 0
    for i, tok in enumerate(written):
        a, b = at - start, at + len(tok) - start
        if 0 <= a and b <= reach:
            spans[(a, b)] = i
        at += len(tok)
    out = []
    for sid, (a, b) in zip(ids, offsets):
        i = spans.get((a, b))
        if i is None or written[i] != target[a:b] or tokens.id(written[i]) != sid:
            out.append(([], []))
            continue
        ids_lp: dict[int | None, float] = {}
        for t, lp in topk[i]:
            ids_lp.setdefault(tokens.id(str(t)), float(lp))  # each student id once, the written token first
        if None in ids_lp:
            out.append(([], []))  # an alternative the student cannot write as one token
            continue
        out.append((list(ids_lp), list(ids_lp.values())))
    return out


def require_topk(records: list[dict[str, Any]]) -> None:
    """TrainingError when no labelled row carries the teacher's top-k (rows without it train on cross-entropy)."""
    if not any(rec.get("topk") for rec in records):
        raise TrainingError(f"none of the {len(records)} labelled rows has the teacher's per-token top-k (`topk`); soft targets on "
                            "free text need an API teacher asked with teacher.logprobs=K (then `distillery label` again); "
                            "or use train.targets=hard.")


def encode_topk(records: list[dict[str, Any]], pairs: list[tuple[list[dict[str, str]], str, float]], tokenizer,
                render: Callable[..., str], max_seq_len: int) -> list[TopKRow]:
    """TopKRows from labels.jsonl records and their training pairs (the same sequences plain training builds)."""
    encoded = encode_pairs(pairs, tokenizer, render, max_seq_len)
    tokens = TokenMap(tokenizer)
    rows = []
    for rec, (_, target, _), enc in zip(records, pairs, encoded):
        try:
            per_token = align(target, rec.get("topk"), tokenizer, tokens)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError):  # a hand-edited `topk`: plain cross-entropy, counted
            per_token = align(target, None, tokenizer, tokens)
        text_positions = min(len(per_token), enc.n_target)  # what truncation kept; the end-of-turn after them
        per_token = per_token[:text_positions] + [([], [])] * (enc.n_target - text_positions)
        rows.append(TopKRow(enc, [p[0] for p in per_token], [p[1] for p in per_token], text_positions))
    return rows


def tail_kl(teacher_logp, student_logp, mask):
    """Per position KL(teacher || student) over k tokens plus one tail bucket; [P, K] log-probs, mask [P, K]."""
    import torch

    def with_tail(lp):
        lp = lp.masked_fill(~mask, float("-inf"))
        log_s = torch.logsumexp(lp, dim=-1, keepdim=True).clamp(max=-1e-7)
        return torch.cat([lp, torch.log(-torch.expm1(log_s))], dim=-1)

    p_lp, q_lp = with_tail(teacher_logp), with_tail(student_logp)
    live = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    diff = (p_lp - q_lp).masked_fill(~live, 0.0)
    return (p_lp.exp().masked_fill(~live, 0.0) * diff).sum(dim=-1)


@dataclass
class TopKLoss:
    """The mixed loss of train.targets=soft|mixed on free text (see the module docstring)."""

    weight: float  # the KL share w at positions with the teacher's top-k
    temperature: None = None  # not used on free text (kept for training.json)

    encode = staticmethod(encode_topk)

    @staticmethod
    def tokens(rows: list[TopKRow]) -> int:
        return sum(r.length for r in rows)

    @staticmethod
    def positions(rows: list[TopKRow]) -> dict[str, int]:
        kl = sum(r.kl_positions for r in rows)
        return {"kl": kl, "ce_only": sum(r.answer_positions for r in rows) - kl}

    def terms(self, model, rows: list[TopKRow], pad_id: int, device: Any = "cpu"):
        """(per-position cross-entropy [N], per-position KL at the top-k positions [P], their flat indices [P])."""
        import torch

        batch = collate([r.hard for r in rows], pad_id, device)
        logp = torch.log_softmax(target_logits(model, batch), dim=-1)
        ce = -logp.gather(1, batch["targets"][:, None]).squeeze(1)
        where, ids, lps = [], [], []
        flat = 0
        for r in rows:
            for k_ids, k_lp in zip(r.ids, r.logp):
                if k_ids:
                    where.append(flat)
                    ids.append(k_ids)
                    lps.append(k_lp)
                flat += 1
        if not where:
            return ce, ce.new_zeros(0), torch.zeros(0, dtype=torch.long, device=ce.device)
        width = max(len(x) for x in ids)
        id_t = torch.zeros((len(ids), width), dtype=torch.long, device=ce.device)
        lp_t = torch.zeros((len(ids), width), dtype=logp.dtype, device=ce.device)
        mask = torch.zeros((len(ids), width), dtype=torch.bool, device=ce.device)
        for n, (x, y) in enumerate(zip(ids, lps)):
            id_t[n, :len(x)] = torch.tensor(x)
            lp_t[n, :len(y)] = torch.tensor(y, dtype=logp.dtype)
            mask[n, :len(x)] = True
        at = torch.tensor(where, device=ce.device)
        return ce, tail_kl(lp_t, logp[at].gather(1, id_t), mask), at

    def micro_loss(self, model, rows: list[TopKRow], pad_id: int, device: Any, n_target: int, n_rows: int):
        """(this micro-batch's share of the step loss, to backward; its value as a float)."""
        ce, kl, at = self.terms(model, rows, pad_id, device)
        w = self.weight
        per_position = ce.index_add(0, at, w * (kl - ce[at])) if len(at) else ce  # (1 - w) CE + w KL at top-k positions
        loss = per_position.sum() / n_target
        return loss, float(loss.detach())
