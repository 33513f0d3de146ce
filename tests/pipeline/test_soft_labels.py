"""Soft labels (issue 14 part 1): `soft` in labels.jsonl, the KD loss against a hand-written KL, train.targets end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, last_user

from pipeline.errors import TrainingError
from pipeline.judging import judge
from pipeline.spec import RunSpec, load_spec
from pipeline.tasks import get_task
from pipeline.teachers import TeacherAnswer

SYSTEM = "Classify the text as negative or positive. Reply with the answer only."
TEXTS = ["the movie was good", "a dull boring film", "great acting", "bad acting and a dull plot", "a good film", "boring"]


def soft_records(n: int = 16) -> list[dict]:
    rows = []
    for i in range(n):
        p_pos = [0.9, 0.2, 0.7, 0.05, 0.6, 0.35][i % 6]
        label = "positive" if p_pos > 0.5 else "negative"
        rows.append({"row": i, "messages": [{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": f"Text: {TEXTS[i % 6]}"},
                                            {"role": "assistant", "content": label}],
                     "label": label, "rationale": None, "target": "answer", "soft": {"negative": 1 - p_pos, "positive": p_pos}})
    return rows


def make_spec(out: Path, model: Path, rows: list[dict], **train) -> RunSpec:
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = {"max_steps": 6, "learning_rate": 1e-2, "batch_size": 4, "checkpoint_every": 100, "warmup_ratio": 0.0}
    settings.update(train)
    return RunSpec.model_validate({"student": {"model": str(model), "device": "cpu"}, "task": "classification",
                                   "labels": ["negative", "positive"], "teacher": {"provider": "local", "model": str(model)},
                                   "train": settings, "out": str(out)})


def _kd_rows(tiny_model, rows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.kd import encode_kd
    from pipeline.models import render_chat

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    pairs = [(r["messages"][:-1], r["messages"][-1]["content"], 1.0) for r in rows]
    return model, tok, encode_kd(rows, pairs, tok, render_chat, 128)


# --- labels ------------------------------------------------------------------------------------------------------

def test_judge_keeps_scored_option_probabilities_and_vote_shares():
    from pipeline.datasets import Example

    task, labels = get_task("classification"), ["negative", "positive"]
    ex = Example(row=3, fields={"text": "fine"}, gold=None)
    scored = TeacherAnswer(text="positive", finish_reason="stop", option_probs={"negative": 0.25, "positive": 0.75})
    res = judge(task, ex, labels, [], [scored], [None])
    assert res.label == "positive" and res.soft == {"negative": 0.25, "positive": 0.75}
    votes = [TeacherAnswer(text=t, finish_reason="stop") for t in ("positive", "negative", "positive", "garbled ???")]
    res = judge(task, ex, labels, [], votes, [None] * 4)
    assert res.label == "positive" and res.confidence == 0.5  # 2 of 4 samples
    assert res.soft == pytest.approx({"negative": 1 / 3, "positive": 2 / 3}, abs=1e-6)  # shares of the 3 votes cast
    generated = TeacherAnswer(text="positive", finish_reason="stop")  # an API answer without logprobs: hard only
    assert judge(task, ex, labels, [], [generated], [None]).soft is None


def test_self_consistency_votes_are_written_as_soft_labels(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"a {'good' if i % 2 == 0 else 'bad'} film number {i}", "label": int(i % 2 == 0)}) + "\n"
                             for i in range(8)))

    def two_of_three(req):  # samples 0 and 1 follow the text, sample 2 says the opposite
        right = "positive" if "good" in last_user(req) else "negative"
        return right if req.attempt < 2 else {"positive": "negative", "negative": "positive"}[right]

    from pipeline.labelling import label

    with FakeLLMServer(responder=two_of_three) as server:
        spec = load_spec(None, [f"dataset.train={train}", "dataset.train_size=null", "teacher.few_shot=0", "teacher.provider=openai",
                                "teacher.model=fake-model", f"teacher.base_url={server.openai_base_url}", "teacher.api_key_env=null",
                                "teacher.self_consistency=3", "teacher.params.temperature=0.7", f"out={tmp_path / 'run'}"])
        label(spec)
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    for r in rows:
        other = "negative" if r["label"] == "positive" else "positive"
        assert r["soft"] == pytest.approx({r["label"]: 2 / 3, other: 1 / 3}, abs=1e-5)


# --- the loss ----------------------------------------------------------------------------------------------------

def test_kd_loss_equals_a_hand_written_kl_on_the_tiny_model(tiny_model):
    import torch

    from pipeline.batching import end_of_turn_id
    from pipeline.kd import KDLoss

    rows = soft_records(6)
    model, tok, kd_rows = _kd_rows(tiny_model, rows)
    temperature = 2.0
    ce, kl = KDLoss(weight=0.5, temperature=temperature).terms(model, kd_rows, tok.pad_token_id)

    eot = end_of_turn_id(tok)
    ref_kl, ref_ce = 0.0, 0.0
    with torch.no_grad():
        for r in kd_rows:
            scores = []
            for k, e in enumerate(r.options):
                assert e.input_ids[-1] == eot
                logp = torch.log_softmax(model(input_ids=torch.tensor([e.input_ids])).logits[0].double(), dim=-1)
                token_lp = [float(logp[t - 1, e.input_ids[t]]) for t in range(e.target_start, e.length)]
                scores.append(sum(token_lp[:-1]))  # the option's tokens, end-of-turn excluded
                if k == r.label_index:
                    ref_ce -= sum(token_lp)  # the hard label's full target, end-of-turn included
            q = [math.exp(s / temperature) for s in scores]
            q = [v / sum(q) for v in q]
            p = [v ** (1 / temperature) for v in r.probs]
            p = [v / sum(p) for v in p]
            ref_kl += temperature ** 2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
    assert float(kl.detach()) == pytest.approx(ref_kl, abs=1e-5) and ref_kl > 0
    assert float(ce.detach()) == pytest.approx(ref_ce, abs=1e-4, rel=1e-5)


def test_kd_weight_zero_is_todays_loss(tiny_model, tmp_path):
    from pipeline.batching import collate, supervised_loss
    from pipeline.kd import KDLoss
    from pipeline.training import train

    rows = soft_records(8)
    model, tok, kd_rows = _kd_rows(tiny_model, rows)
    n_target = sum(r.n_target for r in kd_rows)
    loss, _ = KDLoss(weight=0.0, temperature=1.0).micro_loss(model, kd_rows, tok.pad_token_id, "cpu", n_target, len(kd_rows))
    today, n = supervised_loss(model, collate([r.hard for r in kd_rows], tok.pad_token_id))
    assert n == n_target and float(loss) == pytest.approx(float(today) / n, abs=1e-6)

    # and in training, kd_weight 0 takes today's code path: the same losses bit for bit
    hard = train(make_spec(tmp_path / "hard", tiny_model, rows))
    zero = train(make_spec(tmp_path / "zero", tiny_model, rows, targets="mixed", kd_weight=0.0))
    assert [h["loss"] for h in zero.loss_history] == [h["loss"] for h in hard.loss_history]
    assert KDLoss.from_spec(make_spec(tmp_path / "x", tiny_model, rows, targets="mixed", kd_weight=0.0).train) is None


def hidden_grad(model, loss_of):
    """|d loss / d hidden state| summed over features, [sequences, positions], for the loss `loss_of()` computes."""
    from pipeline.batching import decoder_parts

    body, _, _ = decoder_parts(model)
    seen = {}

    def keep(_module, _inputs, output):
        output.last_hidden_state.retain_grad()
        seen["hidden"] = output.last_hidden_state

    handle = body.register_forward_hook(keep)
    try:
        loss_of().backward()
    finally:
        handle.remove()
    return seen["hidden"].grad.abs().sum(dim=-1)


def test_gradients_reach_the_head_only_at_supervised_positions(tiny_model):
    from pipeline.kd import KDLoss

    rows = soft_records(4)
    model, tok, kd_rows = _kd_rows(tiny_model, rows)
    grad = hidden_grad(model, lambda: KDLoss(weight=0.5, temperature=1.0).micro_loss(model, kd_rows, tok.pad_token_id, "cpu", 10, 4)[0])
    seqs = [(r, k, e) for r in kd_rows for k, e in enumerate(r.options)]
    assert grad.shape[0] == len(seqs)
    for b, (r, k, e) in enumerate(seqs):
        last = e.length - 1 if k == r.label_index else e.length - 2  # other options: their end-of-turn carries no loss
        live = set(range(e.target_start - 1, last))
        for t in range(grad.shape[1]):
            assert (float(grad[b, t]) > 0) == (t in live), (b, t, live)


def test_soft_targets_need_soft_labels(tiny_model, tmp_path):
    from pipeline.training import train

    rows = soft_records(4)
    for r in rows[:3]:
        del r["soft"]
    with pytest.raises(TrainingError, match="3 of 4 labelled rows have no soft label"):
        train(make_spec(tmp_path / "run", tiny_model, rows, targets="soft"))


def test_mixed_training_learns_and_records_its_targets(tiny_model, tmp_path):
    from pipeline.training import train

    rows = soft_records(16)
    summary = train(make_spec(tmp_path / "mixed", tiny_model, rows, targets="mixed", kd_weight=0.5, kd_temperature=2.0, max_steps=12))
    losses = [h["loss"] for h in summary.loss_history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    saved = json.loads((tmp_path / "mixed" / "training.json").read_text())
    assert (saved["targets"], saved["kd_weight"], saved["kd_temperature"]) == ("mixed", 0.5, 2.0)
    assert "label targets: mixed (KL weight 0.5, temperature 2.0)" in (tmp_path / "mixed" / "student" / "README.md").read_text()
    hard = train(make_spec(tmp_path / "hard", tiny_model, rows, max_steps=12))
    assert hard.targets == "hard" and hard.kd_weight is None and hard.fingerprint != summary.fingerprint


# --- end to end --------------------------------------------------------------------------------------------------

def test_distillery_run_with_mixed_targets_and_a_local_teacher(tiny_model, tmp_path):
    from testpaths import DATA

    from pipeline.datasets import BUNDLED_DIR

    out = tmp_path / "run"
    args = ["run", f"dataset.train={DATA / 'sst2.jsonl'}", f"dataset.test={BUNDLED_DIR / 'sst2' / 'test.jsonl'}", "dataset.train_size=16",
            "dataset.test_size=8", "teacher.provider=local", f"teacher.model={tiny_model}", "teacher.few_shot=2", f"student.model={tiny_model}",
            "train.epochs=1", "train.batch_size=4", "train.targets=mixed", "train.kd_weight=0.7", "eval.batch_size=8", f"out={out}"]
    result = subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    labelled = [json.loads(ln) for ln in (out / "labels.jsonl").read_text().splitlines()]
    assert labelled
    for r in labelled:  # the local teacher's option distribution, the hard label its argmax
        assert set(r["soft"]) == {"negative", "positive"} and sum(r["soft"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == max(r["soft"], key=r["soft"].get) and r["soft"][r["label"]] == pytest.approx(r["confidence"], abs=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["labels"] == "mixed" and report["targets"]["kd_weight"] == 0.7
    assert "mixed labels (train.targets=mixed, KL weight 0.7" in (out / "report.md").read_text()


def test_plan_notes_say_when_soft_targets_cannot_work():
    from pipeline.targets import spec_notes

    def notes(*overrides):
        return " ".join(spec_notes(load_spec(None, ["dataset.train=x.jsonl", *overrides])))

    assert "hard labels only" in notes("task=classification", "teacher.provider=openai", "teacher.model=m", "train.targets=mixed")
    assert "on free text (summarization)" in notes("task=summarization", "train.targets=soft")
    assert "train.targets" not in notes("task=summarization", "train.targets=soft", "teacher.provider=openai", "teacher.model=m", "teacher.logprobs=5")
    assert "train.kd_temperature=2 has no effect on free text" in notes("task=summarization", "train.targets=soft", "teacher.provider=openai",
                                                                        "teacher.model=m", "teacher.logprobs=5", "train.kd_temperature=2")
    assert "train.targets" not in notes("task=classification", "teacher.provider=openai", "teacher.model=m", "train.targets=mixed", "teacher.logprobs=5")
    assert "train.targets" not in notes("task=classification", "teacher.provider=local", "train.targets=mixed")
    assert "train.targets" not in notes("task=classification", "teacher.provider=openai", "teacher.model=m", "train.targets=mixed",
                                        "teacher.self_consistency=3")
    assert "train.targets" not in notes("task=classification", "teacher.provider=openai", "teacher.model=m")


def test_one_pass_over_single_token_options_equals_one_sequence_per_option(tiny_model):
    """SST-2-like labels are one token each: the hard label's sequence alone gives every option's score, and the
    loss and its gradients equal the K-sequence computation (the reference the hand-written KL test checks)."""
    import torch

    from pipeline.kd import KDLoss

    rows = _relabelled(soft_records(6), {"negative": "A", "positive": "B"})  # one token each in the tiny tokenizer
    model, tok, kd_rows = _kd_rows(tiny_model, rows)
    tokens = [r.option_tokens() for r in kd_rows]
    assert all(t is not None and len(t) == 2 for t in tokens)
    kd = KDLoss(weight=0.5, temperature=2.0)

    def loss_and_grads(fn):
        model.zero_grad()
        ce, kl = fn()
        (ce + kl).backward()
        grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        return float(ce.detach()), float(kl.detach()), grads

    ce1, kl1, g1 = loss_and_grads(lambda: kd._terms_one_pass(model, kd_rows, tokens, tok.pad_token_id, "cpu"))
    ce2, kl2, g2 = loss_and_grads(lambda: kd._terms_per_option(model, kd_rows, tok.pad_token_id, "cpu"))
    assert ce1 == pytest.approx(ce2, rel=1e-5) and kl1 == pytest.approx(kl2, abs=1e-6) and kl1 > 0
    assert len(g1) == len(g2) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))
    assert KDLoss.tokens(kd_rows) == sum(r.hard.length for r in kd_rows)  # one sequence per row went through


def _relabelled(rows: list[dict], names: dict[str, str]) -> list[dict]:
    for r in rows:
        r["soft"] = {names[k]: v for k, v in r["soft"].items()}
        r["label"] = r["messages"][-1]["content"] = names[r["label"]]
    return rows


def test_options_of_several_tokens_take_one_sequence_per_option(tiny_model):
    from pipeline.kd import KDLoss

    rows = soft_records(4)  # "negative" and "positive" are two tokens each in the tiny tokenizer
    model, tok, kd_rows = _kd_rows(tiny_model, rows)
    assert all(r.option_tokens() is None for r in kd_rows)
    assert KDLoss.tokens(kd_rows) == sum(e.length for r in kd_rows for e in r.options)
    ce, kl = KDLoss(weight=0.5, temperature=1.0).terms(model, kd_rows, tok.pad_token_id)
    assert float(kl.detach()) > 0 and float(ce.detach()) > 0


def test_end_of_turn_is_found_without_building_the_vocabulary(tiny_model, tmp_path):
    """encode_kd encodes row by row: the end-of-turn lookup must agree with the vocabulary without calling get_vocab."""
    from transformers import AutoTokenizer

    from pipeline.batching import _EOT_CANDIDATES, end_of_turn_id

    tok = AutoTokenizer.from_pretrained(tiny_model)
    vocab = tok.get_vocab()
    assert end_of_turn_id(tok) == vocab["<end_of_turn>"]
    calls = []
    tok.get_vocab = lambda: calls.append(1) or vocab  # the fast path never asks for the whole vocabulary
    assert end_of_turn_id(tok) == vocab["<end_of_turn>"] and not calls
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<eos>": 1}, unk_token="a")),
                                   eos_token="<eos>")
    assert not any(n in bare.get_vocab() for n in _EOT_CANDIDATES) and end_of_turn_id(bare) == bare.eos_token_id == 1
