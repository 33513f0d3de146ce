"""Soft-label distillation on closed answer sets: the teacher's option distribution becomes a KL term in the loss.

    kd = KDLoss.from_spec(spec.train)            # None for hard targets (today's loss, computed by today's code)
    rows = encode_kd(records, pairs, tokenizer, render_chat, max_seq_len)   # one KDRow per labelled row
    loss, value = kd.micro_loss(model, rows, pad_id, device, n_target, n_rows)   # backward() the loss
    kl_sum = option_kl(student_scores, teacher_probs, temperature)             # pure: the KD term
    kd = distillation_loss(spec, records)        # what training uses: None, KDLoss, or kd_text.TopKLoss (free text)

Labels: labels.jsonl rows carry `soft: {option: prob}` (pipeline/judging.py: scored option probabilities of a local
teacher, or self-consistency vote shares), over every option of the row.

The student's distribution over a row's options: the SUMMED log-probability of each option's answer tokens after
the student prompt (the end-of-turn token excluded), softmaxed over the options. These are exactly the numbers
evaluation ranks the options by (pipeline/scoring.score_options), so KD shapes the decision the student is scored
on; the sum is exact for labels of several tokens and equals the first token's log-probability when every option
is one token (the usual case). Each option is one sequence (K options: K rows through the model per labelled row),
except when every option is one token after the same prompt: then the hard label's sequence alone gives all K
scores (one pass; KDLoss.terms). The LM head runs only at supervised positions (batching.target_logits).

Loss of one optimizer step (grad_accum micro-batches together):
    (1 - w) * CE + w * KL,   CE = today's cross-entropy summed over the hard label's target tokens (end-of-turn
    included) / target tokens in the step;  KL = sum over rows of T^2 * KL(p_teacher^(T) || q_student^(T)) / rows
    in the step;  w = train.kd_weight (mixed) or 1 (soft);  T = train.kd_temperature, p^(T) = p^(1/T) renormalised.
With w = 0 (or train.targets=hard) training does not come here at all: the loss is today's, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .batching import Encoded, collate, encode_pairs, target_logits
from .errors import TrainingError
from .tasks import format_target

__all__ = ["KDRow", "KDLoss", "encode_kd", "require_soft", "option_kl", "option_scores", "distillation_loss", "FREE_TEXT"]

FREE_TEXT = ("math", "summarization", "chat")  # tasks whose soft targets are the teacher's per-token top-k (pipeline/kd_text.py)


class HardRow:
    """A distillation row's length and target tokens: those of its hard-label sequence (`hard`; validation uses it)."""

    hard: Encoded

    @property
    def length(self) -> int:
        return self.hard.length

    @property
    def n_target(self) -> int:
        return self.hard.n_target


@dataclass
class KDRow(HardRow):
    """One labelled row for soft-label training: every option encoded after the same prompt."""

    options: list[Encoded]  # one sequence per option (prompt + option + end-of-turn)
    label_index: int  # the teacher's hard label among them
    probs: list[float]  # the teacher's distribution over the options (sums to 1)

    @property
    def hard(self) -> Encoded:  # type: ignore[override]
        return self.options[self.label_index]

    def option_tokens(self) -> list[int] | None:
        """Each option's one answer token when every option is a single token (then end-of-turn) after the same
        prompt, all different: one sequence then gives every option's score (KDLoss.terms' one-pass case)."""
        first = self.options[0]
        start = first.target_start
        if any(e.n_target != 2 or e.target_start != start for e in self.options):
            return None
        prompt, end = first.input_ids[:start], first.input_ids[start + 1]
        if any(e.input_ids[:start] != prompt or e.input_ids[start + 1] != end for e in self.options[1:]):
            return None
        tokens = [e.input_ids[start] for e in self.options]
        return tokens if len(set(tokens)) == len(tokens) else None


def encode_kd(records: list[dict[str, Any]], pairs: list[tuple[list[dict[str, str]], str, float]], tokenizer,
              render: Callable[..., str], max_seq_len: int) -> list[KDRow]:
    """KDRows from labels.jsonl records and their training pairs; TrainingError when rows have no `soft` label."""
    require_soft(records)
    rows = []
    for rec, (prompt, target, weight) in zip(records, pairs):
        soft = {str(k): float(v) for k, v in rec["soft"].items()}
        label = str(rec.get("label"))
        if label not in soft or target != format_target(label, None, False):
            raise TrainingError(f"labelled row {rec.get('row')} has a target other than one of its options; soft targets need "
                                "answer-only targets (train.rationale=none) from `distillery label`.")
        options = list(soft)
        total = sum(max(v, 0.0) for v in soft.values()) or 1.0
        enc = encode_pairs([(prompt, target if o == label else format_target(o, None, False), weight) for o in options],
                           tokenizer, render, max_seq_len)
        rows.append(KDRow(enc, options.index(label), [max(soft[o], 0.0) / total for o in options]))
    return rows


def require_soft(records: list[dict[str, Any]]) -> None:
    """TrainingError unless every labelled row carries a soft label."""
    missing = sum(1 for rec in records if not rec.get("soft"))
    if missing:
        raise TrainingError(f"{missing} of {len(records)} labelled rows have no soft label (`soft`); soft targets need a closed "
                            "answer set labelled by the local teacher or with teacher.self_consistency > 1; use train.targets=hard.")


def option_scores(token_logp, seq_ids, answer_mask, n_seq: int):
    """Summed log-probability per sequence over its answer tokens (flat per-token tensors, collate order)."""
    import torch

    sums = torch.zeros(n_seq, dtype=token_logp.dtype, device=token_logp.device)
    return sums.index_add(0, seq_ids[answer_mask], token_logp[answer_mask])


def option_kl(student_scores, teacher_probs, temperature: float = 1.0, mask=None):
    """Sum over rows of T^2 * KL(teacher^(T) || softmax(student_scores / T)), options outside `mask` ignored.

    student_scores: [rows, K] log-likelihoods (any scale); teacher_probs: [rows, K] probabilities (0 allowed).
    """
    import torch

    if mask is None:
        mask = torch.ones_like(teacher_probs, dtype=torch.bool)
    t = float(temperature)
    scores = (student_scores / t).masked_fill(~mask, -1e9)
    q_log = torch.log_softmax(scores, dim=-1)
    p = teacher_probs.clamp_min(0).masked_fill(~mask, 0.0) ** (1.0 / t)
    p = p / p.sum(dim=-1, keepdim=True)
    kl = torch.xlogy(p, p) - p * q_log.masked_fill(~mask, 0.0)
    return kl.sum() * (t * t)


@dataclass
class KDLoss:
    """The mixed loss of train.targets=soft|mixed (see the module docstring)."""

    weight: float  # the KL share w
    temperature: float

    encode = staticmethod(encode_kd)

    @staticmethod
    def tokens(rows: list[KDRow]) -> int:
        """Non-padding tokens through the model for these rows (every option is a sequence, unless one pass does)."""
        if all(r.option_tokens() is not None for r in rows):
            return sum(r.hard.length for r in rows)
        return sum(e.length for r in rows for e in r.options)

    @staticmethod
    def positions(rows: list[KDRow]) -> None:
        return None  # closed sets: every row is distilled whole

    @classmethod
    def from_spec(cls, train) -> "KDLoss | None":
        """None when the loss is plain cross-entropy (targets hard, or mixed with kd_weight 0)."""
        targets = getattr(train, "targets", "hard")
        if targets == "hard" or (targets == "mixed" and train.kd_weight == 0):
            return None
        return cls(1.0 if targets == "soft" else float(train.kd_weight), float(train.kd_temperature))

    def terms(self, model, rows: list[KDRow], pad_id: int, device: Any = "cpu"):
        """(CE summed over the hard labels' target tokens, KL summed over rows) of one micro-batch.

        When every row's options are single tokens after a shared prompt (SST-2's negative/positive, A/B/C/D), only
        the hard label's sequence goes through the model: the logits at the answer position hold every option's
        log-probability, the same numbers the K-sequence pass sums (one sequence instead of K; tested equal)."""
        tokens = [r.option_tokens() for r in rows]
        if all(t is not None for t in tokens):
            return self._terms_one_pass(model, rows, tokens, pad_id, device)
        return self._terms_per_option(model, rows, pad_id, device)

    def _terms_one_pass(self, model, rows: list[KDRow], tokens: list[list[int]], pad_id: int, device: Any):
        import torch
        import torch.nn.functional as F

        batch = collate([r.hard for r in rows], pad_id, device)
        logits = target_logits(model, batch)  # two rows per sequence: the answer token, then end-of-turn
        ce_sum = F.cross_entropy(logits, batch["targets"], reduction="sum")
        logp = torch.log_softmax(logits[0::2], dim=-1)
        width = max(len(t) for t in tokens)
        index = torch.zeros((len(rows), width), dtype=torch.long, device=logp.device)
        probs = torch.zeros((len(rows), width), dtype=torch.float32, device=logp.device)
        mask = torch.zeros((len(rows), width), dtype=torch.bool, device=logp.device)
        for b, (r, t) in enumerate(zip(rows, tokens)):
            index[b, : len(t)] = torch.tensor(t)
            probs[b, : len(t)] = torch.tensor(r.probs)
            mask[b, : len(t)] = True
        scores = logp.gather(1, index)
        return ce_sum, option_kl(scores, probs, self.temperature, mask)

    def _terms_per_option(self, model, rows: list[KDRow], pad_id: int, device: Any):
        import torch
        import torch.nn.functional as F

        seqs = [e for r in rows for e in r.options]
        batch = collate(seqs, pad_id, device)
        token_logp = -F.cross_entropy(target_logits(model, batch), batch["targets"], reduction="none")
        answer, hard = [], []
        for r in rows:
            for k, e in enumerate(r.options):
                answer += [True] * (e.n_target - 1) + [False]  # the option's tokens, not its end-of-turn
                hard += [k == r.label_index] * e.n_target
        answer_mask = torch.tensor(answer, device=token_logp.device)
        hard_mask = torch.tensor(hard, device=token_logp.device)
        per_seq = option_scores(token_logp, batch["rows"], answer_mask, len(seqs))
        width = max(len(r.options) for r in rows)
        scores = torch.zeros((len(rows), width), dtype=per_seq.dtype, device=per_seq.device)
        probs = torch.zeros((len(rows), width), dtype=torch.float32, device=per_seq.device)
        mask = torch.zeros((len(rows), width), dtype=torch.bool, device=per_seq.device)
        i = 0
        for b, r in enumerate(rows):
            k = len(r.options)
            scores[b, :k] = per_seq[i:i + k]
            probs[b, :k] = torch.tensor(r.probs)
            mask[b, :k] = True
            i += k
        ce_sum = -token_logp[hard_mask].sum()
        return ce_sum, option_kl(scores, probs, self.temperature, mask)

    def micro_loss(self, model, rows: list[KDRow], pad_id: int, device: Any, n_target: int, n_rows: int):
        """(this micro-batch's share of the step loss, to backward; its value as a float)."""
        ce_sum, kl_sum = self.terms(model, rows, pad_id, device)
        loss = (1.0 - self.weight) * ce_sum / n_target + self.weight * kl_sum / n_rows
        return loss, float(loss.detach())


def distillation_loss(spec, records: list[dict[str, Any]]):
    """The loss training uses for spec.train.targets: None (hard, or mixed with kd_weight 0: today's loss), KDLoss on
    closed answer sets (every row needs `soft`), or kd_text.TopKLoss on free text (rows with `topk`)."""
    kd = KDLoss.from_spec(spec.train)
    if kd is None:
        return None
    free = spec.task in FREE_TEXT if spec.task else any(r.get("topk") for r in records) and not any(r.get("soft") for r in records)
    if not free:
        require_soft(records)
        return kd
    from .kd_text import TopKLoss, require_topk

    require_topk(records)
    return TopKLoss(kd.weight)
