"""Free-text soft targets (issue 14 §1): the teacher's per-token top-k mapped to the student, the tail-bucket KL
against a hand-written reference on the tiny model, kd_weight 0 = plain cross-entropy, gradients only where
loss is taken, and training end to end with the fallback counted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_soft_labels import hidden_grad, make_spec as soft_spec

from pipeline.errors import TrainingError
from pipeline.spec import RunSpec, TeacherSpec

SYSTEM = "Summarize the text in one to three sentences."
TARGETS = ["the movie was good and the acting was great", "person said hello how are you", "a dull boring film with bad acting"]


def _tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def teacher_topk(tok, text: str, alternatives=(" good", " bad", " film")) -> list:
    """What an API teacher with the student's tokenizer would send: each written token first, then alternatives."""
    out = []
    for n, i in enumerate(tok(text, add_special_tokens=False)["input_ids"]):
        written = tok.decode([i])
        alts = [a for a in alternatives if a != written][: 2 + n % 2]
        probs = [0.6, 0.25, 0.1][: 1 + len(alts)]
        out.append([[t, round(math.log(p), 5)] for t, p in zip([written, *alts], probs)])
    return out


def records(tok, n: int = 6) -> list[dict]:
    rows = []
    for i in range(n):
        target = TARGETS[i % 3]
        rows.append({"row": i, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Text:\nrow {i} {target}"},
                                            {"role": "assistant", "content": target}],
                     "label": target, "rationale": None, "target": "answer", "topk": teacher_topk(tok, target)})
    return rows


def make_spec(out: Path, model: Path, rows: list[dict], **train) -> RunSpec:
    """test_soft_labels' spec, for a summarization run whose API teacher was asked for logprobs."""
    spec = soft_spec(out, model, rows, batch_size=3, **train)
    spec.task, spec.labels = "summarization", None
    spec.teacher = TeacherSpec(provider="openai", model="m", logprobs=3)
    return spec


def _rows(tiny_model, recs):
    from transformers import AutoModelForCausalLM

    from pipeline.kd_text import encode_topk
    from pipeline.models import render_chat

    tok = _tok(tiny_model)
    pairs = [(r["messages"][:-1], r["messages"][-1]["content"], 1.0) for r in recs]
    return AutoModelForCausalLM.from_pretrained(tiny_model), tok, encode_topk(recs, pairs, tok, render_chat, 128)


# --- mapping the teacher's tokens to the student ----------------------------------------------------------------

def test_teacher_tokens_map_only_where_they_retokenize_to_the_same_student_tokens(tiny_model):
    from pipeline.kd_text import TokenMap, align

    tok = _tok(tiny_model)
    target = "the movie was good"
    ids = tok(target, add_special_tokens=False)["input_ids"]
    same = teacher_topk(tok, target)
    got = align(target, same, tok, TokenMap(tok))
    assert [g[0][0] for g in got] == ids and all(len(g[0]) == len(p) for g, p in zip(got, same))  # the written token first
    assert got[0][1] == [p[1] for p in same[0]]

    # an alternative the student cannot write as one token: that position (only) falls back
    odd = json.loads(json.dumps(same))
    odd[1].append(["zqxjv", -4.0])
    got = align(target, odd, tok, TokenMap(tok))
    assert got[1] == ([], []) and all(g[0] for i, g in enumerate(got) if i != 1)

    # another tokenizer: the teacher split the text elsewhere, so nothing maps
    other = [[[target[:5], -0.1]], [[target[5:11], -0.1]], [[target[11:], -0.1]]]
    assert all(g == ([], []) for g in align(target, other, tok, TokenMap(tok)))

    # the target is the end of a longer teacher text (a preamble the parser dropped): still aligned
    pre = teacher_topk(tok, "Summary: ") + same
    assert [g[0][0] for g in align(target, pre, tok, TokenMap(tok))] == ids


# --- the loss ---------------------------------------------------------------------------------------------------

def test_tail_bucket_kl_equals_a_hand_written_reference_on_the_tiny_model(tiny_model):
    import torch

    from pipeline.kd_text import TopKLoss

    recs = records(_tok(tiny_model), 3)
    recs[2]["topk"][1].append(["zqxjv", -4.0])  # one position on plain cross-entropy
    model, tok, rows = _rows(tiny_model, recs)
    w = 0.3
    n_target = sum(r.n_target for r in rows)
    loss, _ = TopKLoss(weight=w).micro_loss(model, rows, tok.pad_token_id, "cpu", n_target, len(rows))

    ref, kl_positions = 0.0, 0
    with torch.no_grad():
        for r in rows:
            e = r.hard
            logp = torch.log_softmax(model(input_ids=torch.tensor([e.input_ids])).logits[0].double(), dim=-1)
            for j, t in enumerate(range(e.target_start, e.length)):
                ce = -float(logp[t - 1, e.input_ids[t]])
                if not r.ids[j]:
                    ref += ce
                    continue
                kl_positions += 1
                p = [math.exp(v) for v in r.logp[j]]
                q = [math.exp(float(logp[t - 1, i])) for i in r.ids[j]]
                p.append(1 - sum(p))
                q.append(1 - sum(q))
                kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
                ref += (1 - w) * ce + w * kl
    assert kl_positions == sum(r.kl_positions for r in rows) and 0 < kl_positions < n_target
    assert float(loss.detach()) == pytest.approx(ref / n_target, abs=1e-5)


def test_kd_weight_zero_is_plain_cross_entropy(tiny_model, tmp_path):
    from pipeline.batching import collate, supervised_loss
    from pipeline.kd_text import TopKLoss
    from pipeline.training import train

    recs = records(_tok(tiny_model), 6)
    model, tok, rows = _rows(tiny_model, recs)
    n_target = sum(r.n_target for r in rows)
    loss, _ = TopKLoss(weight=0.0).micro_loss(model, rows, tok.pad_token_id, "cpu", n_target, len(rows))
    plain, n = supervised_loss(model, collate([r.hard for r in rows], tok.pad_token_id))
    assert n == n_target and float(loss.detach()) == pytest.approx(float(plain.detach()) / n, abs=1e-6)

    hard = train(make_spec(tmp_path / "hard", tiny_model, recs))
    zero = train(make_spec(tmp_path / "zero", tiny_model, recs, targets="mixed", kd_weight=0.0))
    assert [h["loss"] for h in zero.loss_history] == [h["loss"] for h in hard.loss_history]  # today's code path, bit for bit


def test_gradients_only_at_supervised_positions(tiny_model):
    from pipeline.kd_text import TopKLoss

    model, tok, rows = _rows(tiny_model, records(_tok(tiny_model), 3))
    grad = hidden_grad(model, lambda: TopKLoss(weight=1.0).micro_loss(model, rows, tok.pad_token_id, "cpu", 10, 3)[0])
    for b, r in enumerate(rows):
        live = set(range(r.hard.target_start - 1, r.hard.length - 1))  # each predicts a target token
        for t in range(grad.shape[1]):
            assert (float(grad[b, t]) > 0) == (t in live), (b, t)


# --- training ---------------------------------------------------------------------------------------------------

def test_mixed_training_on_free_text_counts_the_positions_it_could_map(tiny_model, tmp_path):
    from pipeline.training import train

    recs = records(_tok(tiny_model), 9)
    for r in recs[6:]:
        del r["topk"]  # rows labelled before teacher.logprobs: plain cross-entropy
    summary = train(make_spec(tmp_path / "mixed", tiny_model, recs, targets="mixed", kd_weight=0.5, max_steps=10))
    losses = [h["loss"] for h in summary.loss_history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    saved = json.loads((tmp_path / "mixed" / "training.json").read_text())
    tok = _tok(tiny_model)
    answer_tokens = sum(len(tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in recs)
    assert saved["targets"] == "mixed" and saved["kd_positions"]["kl"] > 0 and saved["kd_positions"]["ce_only"] > 0
    assert saved["kd_positions"]["kl"] + saved["kd_positions"]["ce_only"] == answer_tokens
    assert saved["kd_positions"]["kl"] == sum(len(tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in recs[:6])


def test_soft_targets_on_free_text_need_a_top_k(tiny_model, tmp_path):
    from pipeline.training import train

    recs = records(_tok(tiny_model), 3)
    for r in recs:
        del r["topk"]
    with pytest.raises(TrainingError, match="none of the 3 labelled rows has the teacher's per-token top-k"):
        train(make_spec(tmp_path / "run", tiny_model, recs, targets="soft"))


def test_the_local_teacher_gives_free_text_its_per_token_top_k(tiny_model):
    import asyncio

    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.scoring import encode_prompt
    from pipeline.teachers import TeacherRequest, get_teacher

    spec = TeacherSpec(provider="local", model=str(tiny_model), device="cpu", prompt_format="chat", logprobs=4, batch_size=2)
    teacher = get_teacher("local")(spec)
    msgs = [{"role": "user", "content": "Text:\nperson said hello how are you"}]
    ans = asyncio.run(teacher.answer_batch([TeacherRequest(msgs, {"max_tokens": 6, "temperature": 0.0})]))[0]
    tok = _tok(tiny_model)
    written = [p[0] for p in ans.logprobs]
    assert "".join(written) == ans.text and len(written) == len(tok(ans.text, add_special_tokens=False)["input_ids"])
    assert all(len(p[2]) == 4 and p[2][0][0] == p[0] for p in ans.logprobs)  # greedy: the written token is the top one

    from pipeline.models import render_chat  # the reference: a plain forward over prompt + answer

    prompt_ids = encode_prompt(tok, render_chat(tok, msgs))
    answer_ids = tok(ans.text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0].float(), dim=-1)
    for j, (t, pos) in enumerate(zip(answer_ids, ans.logprobs)):
        assert pos[1] == pytest.approx(float(logp[len(prompt_ids) + j - 1, t]), abs=1e-4)
    no_k = TeacherSpec(provider="local", model=str(tiny_model), device="cpu", prompt_format="chat", batch_size=2)
    assert asyncio.run(get_teacher("local")(no_k).answer_batch([TeacherRequest(msgs, {"max_tokens": 6})]))[0].logprobs is None


@pytest.mark.gemma
def test_gemma_token_strings_map_back_to_gemma_tokens(gemma_path):
    """A Gemma teacher's top-k (token strings as an API sends them: "▁" as a space) maps onto a Gemma student whole,
    accents and symbols included; only the tokenizer is loaded."""
    from transformers import AutoTokenizer

    from pipeline.kd_text import TokenMap, align

    tok = AutoTokenizer.from_pretrained(gemma_path)
    target = "#Person1# asks #Person2# about breathing trouble; it happens when they work out. Café naïve — 42%!"
    ids = tok(target, add_special_tokens=False)["input_ids"]
    topk = [[[tok.decode([i], clean_up_tokenization_spaces=False), -0.1], [" the", -2.0], ["The", -3.0]] for i in ids]
    got = align(target, topk, tok, TokenMap(tok))
    assert [g[0][0] for g in got] == ids and all(len(g[0]) == 3 for g in got)


def test_a_damaged_top_k_falls_back_to_cross_entropy_and_is_counted(tiny_model):
    recs = records(_tok(tiny_model), 3)
    recs[0]["topk"] = [["not a position"], 7]  # hand-edited labels.jsonl
    recs[1]["topk"][0] = recs[1]["topk"][0] + [recs[1]["topk"][0][0]]  # a duplicated pair counts once
    _, _, rows = _rows(tiny_model, recs)
    assert rows[0].kl_positions == 0 and rows[0].answer_positions > 0
    assert len(rows[1].ids[0]) == len(recs[1]["topk"][0]) - 1
