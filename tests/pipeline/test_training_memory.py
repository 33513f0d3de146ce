"""Token-budgeted training micro-batches (train.batch_tokens): the same update as the unsplit batch, less memory."""

from __future__ import annotations

import pytest

from pipeline.steps import Validation, token_pieces
from test_training import SYSTEM, adapter_weights, make_spec

LONG = "the movie was good and the acting was great but " * 6


def uneven_records(n: int = 16) -> list[dict]:
    """Rows of very different lengths (1 to 6 repeats of a clause), so a token budget cuts batches unevenly."""
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        text = " ".join([LONG if positive else "a dull boring film with bad acting"] * (1 + i % 6))
        label = "positive" if positive else "negative"
        rows.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Text: {text}"},
                                  {"role": "assistant", "content": label}], "label": label, "rationale": None})
    return rows


class Row:
    def __init__(self, length: int):
        self.length = length


def test_pieces_keep_every_row_once_within_the_budget():
    micro = [[Row(n) for n in (90, 10, 40, 40, 200, 5)], [Row(30), Row(31)]]
    pieces = token_pieces(micro, 100)
    assert sorted(r.length for p in pieces for r in p) == sorted(r.length for mb in micro for r in mb)
    for p in pieces:  # a row wider than the budget alone; otherwise rows x widest <= budget
        assert len(p) == 1 or max(r.length for r in p) * len(p) <= 100
    assert [len(p) for p in pieces] == [1, 1, 2, 2, 2]  # 200 | 90 | 40 40 | 10 5 | 31 30 (micro-batches never mixed)
    assert token_pieces(micro, 0) == micro and token_pieces(micro, None) == micro


def test_split_step_gives_the_unsplit_update(tmp_path, tiny_model):
    """Parameters after one step with pieces of <= 96 padded tokens equal those of whole batches of 8, to 1e-6.

    LoRA dropout is off: its random masks are drawn per forward, so with dropout the two runs are equal in
    distribution only (the same holds for any change of batch shapes).
    """
    from pipeline.training import train

    rows, lora = uneven_records(), {"lora": {"dropout": 0.0}}
    whole = train(make_spec(tmp_path / "whole", tiny_model, rows, lora, max_steps=3, batch_size=8, batch_tokens=0, warmup_ratio=0.0, learning_rate=1e-3))
    split = train(make_spec(tmp_path / "split", tiny_model, rows, lora, max_steps=3, batch_size=8, batch_tokens=96, warmup_ratio=0.0, learning_rate=1e-3))
    assert whole.forwards == 3 and split.forwards >= 9  # the budget really cut every batch of 8 into pieces
    assert split.batch_tokens == 96 and whole.batch_tokens is None
    assert [h["loss"] for h in split.loss_history] == pytest.approx([h["loss"] for h in whole.loss_history], rel=1e-6)
    a, b = adapter_weights(tmp_path / "whole" / "student"), adapter_weights(tmp_path / "split" / "student")
    assert a.keys() == b.keys()
    update = max(float(a[k].abs().max()) for k in a if "lora_B" in k)  # B starts at zero: its values are the update
    assert update > 5e-4  # Adam's first step moves by about the learning rate; a lost piece or a wrong share shows
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert whole.fingerprint == split.fingerprint  # the budget is not part of what the weights depend on: resumable


def test_split_gradients_equal_the_unsplit_batch_gradients(tiny_model):
    """The accumulated gradient of the pieces (train()'s own forward) is the whole batch's: shares of the step's tokens.

    Adam's first steps move by about sign(gradient) x lr, so a wrong share per piece hardly shows in the weights
    of a short run; the gradients themselves show it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.batching import encode_records, supervised_loss
    from pipeline.models import render_chat
    from pipeline.steps import accumulate, step_forward

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32)
    rows = encode_records(uneven_records(8), tok, render_chat, False, 512)
    forward = step_forward(lambda batch: supervised_loss(model, batch)[0], tok.pad_token_id, "cpu", sum(r.n_target for r in rows))

    def grads(budget):
        model.zero_grad(set_to_none=True)
        pieces = token_pieces([rows], budget)
        value, _ = accumulate(pieces, forward)
        return len(pieces), value, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    n1, v1, g1 = grads(None)
    n2, v2, g2 = grads(max(r.length for r in rows))  # as many pieces as the widest row allows: several
    assert n1 == 1 and n2 >= 3 and v2 == pytest.approx(v1, rel=1e-6)
    for name in g1:
        assert torch.allclose(g1[name], g2[name], rtol=1e-5, atol=1e-7), name


def test_validation_keeps_the_best_weights_and_stops_after_patience():
    import torch

    w = {"x": torch.zeros(1)}
    checks = Validation(every=2, patience=2)
    assert [checks.due(s, 5) for s in range(1, 6)] == [False, True, False, True, True]
    w["x"] += 1
    assert checks.record(2, 1.0, lambda: w) is False
    w["x"] += 1
    assert checks.record(4, 1.5, lambda: w) is False and checks.record(5, 1.2, lambda: w) is True
    assert float(checks.best_weights["x"]) == 1.0 and checks.meta() == {"val_losses": checks.history, "best_loss": 1.0, "bad_checks": 2}
