"""Student fine-tuning on the tiny model: loss, targets, resume after SIGKILL, cancel, reload, merge, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import Cancelled, ModelError, TrainingError
from pipeline.spec import RunSpec

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "Classify the text as negative or positive. Reply with the answer only."
GOOD = ["the movie was good", "great acting and a good film", "the acting was great", "a good film"]
BAD = ["a dull boring film", "bad acting", "the movie was dull and bad", "a boring film with bad acting"]


def records(n: int = 32, rationale: bool = False) -> list[dict]:
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        text = (GOOD if positive else BAD)[(i // 2) % 4]
        label = "positive" if positive else "negative"
        why = f"The words say it is {label}." if rationale else None
        answer = f"{why}\nFinal answer: {label}" if why else label
        rows.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Text: {text}"},
                                  {"role": "assistant", "content": answer}], "label": label, "rationale": why})
    return rows


def make_spec(out: Path, model: Path, rows: list[dict] | None = None, student: dict | None = None, **train) -> RunSpec:
    out.mkdir(parents=True, exist_ok=True)
    if rows is not None:
        (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = {"max_steps": 12, "learning_rate": 1e-2, "batch_size": 8, "checkpoint_every": 4, "warmup_ratio": 0.1}
    settings.update(train)
    return RunSpec.model_validate({"student": {"model": str(model), "device": "cpu", **(student or {})},
                                   "teacher": {"provider": "openai", "model": "gpt-test"}, "train": settings, "out": str(out)})


def adapter_weights(student_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(student_dir / "adapter_model.safetensors"))


def test_lora_loss_goes_down_and_writes_the_run_folder(tmp_path, tiny_model):
    from pipeline.training import train

    seen = []
    spec = make_spec(tmp_path / "run", tiny_model, records(), max_steps=24, val_share=0.25, eval_every=8)
    summary = train(spec, progress=seen.append)
    losses = [h["loss"] for h in summary.loss_history]
    assert len(losses) == summary.steps == 24
    assert sum(losses[-5:]) / 5 < sum(losses[:3]) / 3 - 0.5
    assert [v["step"] for v in summary.val_losses] == [8, 16, 24]
    assert summary.val_losses[-1]["loss"] < summary.val_losses[0]["loss"] + 1e-9
    assert summary.examples == 24 and summary.val_examples == 8 and summary.method == "lora" and summary.device == "cpu"
    assert summary.tokens_per_second > 0
    saved = json.loads((tmp_path / "run" / "training.json").read_text())
    assert saved["final_loss"] == pytest.approx(losses[-1]) and saved["loss_history"][0]["step"] == 1
    student = tmp_path / "run" / "student"
    assert (student / "adapter_config.json").is_file() and (student / "tokenizer_config.json").is_file()
    card = (student / "README.md").read_text()
    assert str(tiny_model) in card and "openai/gpt-test" in card and "rank 16" in card
    assert seen[-1].done == 24 and seen[-1].stage == "training" and "loss" in seen[-1].info and "tokens_per_second" in seen[-1].info
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000016", "step-000020"]


def test_answer_only_targets_drop_the_rationale(tiny_model):
    from transformers import AutoTokenizer

    from pipeline.batching import encode_records
    from pipeline.models import render_chat

    tok = AutoTokenizer.from_pretrained(tiny_model)
    with_why, plain = records(2, rationale=True)[0], records(2)[1]
    kept, dropped, untouched = (encode_records([r], tok, render_chat, keep, 512)[0]
                                for r, keep in ((with_why, True), (with_why, False), (plain, False)))
    target = lambda row: tok.decode(row.input_ids[row.target_start:])  # noqa: E731
    assert target(dropped) == "positive<end_of_turn>"
    assert target(kept) == "The words say it is positive.\nFinal answer: positive<end_of_turn>"
    assert target(untouched) == "negative<end_of_turn>"
    assert tok.decode(dropped.input_ids[:dropped.target_start]).endswith("<start_of_turn>model\n")


def test_long_prompts_are_cut_from_the_left_keeping_bos_and_target(tiny_model):
    from transformers import AutoTokenizer

    from pipeline.batching import encode_records
    from pipeline.models import render_chat

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rec = records(1)[0]
    rec["messages"][1]["content"] = "Text: " + "the movie was good " * 40
    row = encode_records([rec], tok, render_chat, True, 32)[0]
    assert row.length == 32 and row.input_ids[0] == tok.bos_token_id
    assert tok.decode(row.input_ids[row.target_start:]) == "positive<end_of_turn>"
    assert tok.decode(row.input_ids[:row.target_start]).endswith("good <end_of_turn>\n<start_of_turn>model\n")


def test_loss_on_supervised_positions_equals_the_full_logits_loss(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.batching import collate, encode_records, supervised_loss
    from pipeline.models import render_chat

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = encode_records(records(3, rationale=True), tok, render_chat, True, 512)
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        loss_sum, n = supervised_loss(model, batch)
    labels = torch.full_like(batch["input_ids"], -100)
    for i, r in enumerate(rows):
        labels[i, r.target_start:r.length] = batch["input_ids"][i, r.target_start:r.length]
    with torch.no_grad():
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert n == sum(r.n_target for r in rows)
    assert float(loss_sum) / n == pytest.approx(float(reference), rel=1e-5)


def test_epoch_batches_cover_every_row_once_grouped_by_length():
    from pipeline.batching import epoch_batches

    lengths = [5, 40, 7, 33, 12, 28, 9, 50, 3, 21, 17, 44]
    batches = epoch_batches(lengths, 4, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(12))
    assert all([lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True) for b in batches)
    assert sum(max(lengths[i] for i in b) * len(b) for b in batches) == sum(sorted(lengths, reverse=True)[j] for j in (0, 4, 8)) * 4
    assert batches == epoch_batches(lengths, 4, seed=1, epoch=0) != epoch_batches(lengths, 4, seed=1, epoch=1)


CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from pipeline.spec import RunSpec
from pipeline.training import train
spec = RunSpec.model_validate_json(open(sys.argv[1]).read())
train(spec, should_stop=lambda: time.sleep(0.15) or False)
"""


def test_sigkilled_run_resumes_and_ends_like_an_uninterrupted_run(tmp_path, tiny_model):
    import torch

    from pipeline.training import train

    rows = records(24)
    settings = {"max_steps": 14, "checkpoint_every": 3, "grad_accum": 2, "batch_size": 4}
    reference = train(make_spec(tmp_path / "straight", tiny_model, rows, **settings))

    spec = make_spec(tmp_path / "killed", tiny_model, rows, **settings)
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO)), str(tmp_path / "spec.json")], cwd=tmp_path)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(ckpts.glob("step-000006")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "student").exists()

    resumed = train(spec)
    assert 6 <= resumed.resumed_from < 14
    assert resumed.steps == reference.steps == 14
    assert [h["step"] for h in resumed.loss_history] == list(range(1, 15))
    assert [h["loss"] for h in resumed.loss_history] == pytest.approx([h["loss"] for h in reference.loss_history], abs=1e-6)
    mine, theirs = adapter_weights(tmp_path / "killed" / "student"), adapter_weights(tmp_path / "straight" / "student")
    assert mine.keys() == theirs.keys() and len(mine) > 0
    assert all(torch.allclose(mine[k], theirs[k], atol=1e-6) for k in mine)
    assert any(float(v.abs().sum()) > 0 for k, v in mine.items() if "lora_B" in k)
    assert len(list(ckpts.glob("step-*"))) == 2


def test_cancel_saves_a_checkpoint_and_the_rerun_resumes_then_skips(tmp_path, tiny_model, monkeypatch):
    from pipeline import models
    from pipeline.training import train

    spec = make_spec(tmp_path / "run", tiny_model, records(16), max_steps=8, checkpoint_every=100)
    calls = []
    with pytest.raises(Cancelled, match="step 3 of 8"):
        train(spec, should_stop=lambda: calls.append(1) or len(calls) >= 3)
    assert (tmp_path / "run" / "checkpoints" / "step-000003" / "trainable.safetensors").is_file()
    summary = train(spec)
    assert summary.resumed_from == 3 and summary.steps == 8

    def no_loading(*args, **kwargs):
        raise AssertionError("a finished student must not be retrained")

    monkeypatch.setattr(models, "load_model", no_loading)
    again = train(spec)
    assert again.loss_history == summary.loss_history and again.fingerprint == summary.fingerprint


def test_saved_adapter_reloads_with_the_same_outputs_and_merged_matches(tmp_path, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.batching import collate, encode_records, split_rows, supervised_loss
    from pipeline.models import clear_model_cache, render_chat
    from pipeline.training import load_student, train

    rows = records(24)
    spec = make_spec(tmp_path / "run", tiny_model, rows, max_steps=10, val_share=0.25, eval_every=10, merge=True)
    summary = train(spec)
    clear_model_cache()
    model, tok = load_student(spec)
    assert not model.training
    _, val = split_rows(encode_records(rows, tok, render_chat, True, 512), 0.25, 0)
    with torch.no_grad():
        loss_sum, n = supervised_loss(model, collate(val, tok.pad_token_id))
    assert float(loss_sum) / n == pytest.approx(summary.val_losses[-1]["loss"], abs=1e-5)

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student" / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    batch = collate(val, tok.pad_token_id)
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        plain = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(plain, want, atol=1e-3)
    assert (tmp_path / "run" / "student" / "merged" / "tokenizer_config.json").is_file()


def test_qlora_without_cuda_fails_before_loading_anything(tmp_path, tiny_model, monkeypatch):
    from pipeline import models
    from pipeline.training import train

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(models, "resolve_model", lambda *a, **k: pytest.fail("resolved a model"))
    spec = make_spec(tmp_path / "run", tiny_model, records(4), student={"method": "qlora"})
    with pytest.raises(TrainingError, match=r"QLoRA needs a CUDA GPU .*use student.method=lora"):
        train(spec)


@pytest.mark.parametrize("content", [None, "", "\n\n"])
def test_missing_or_empty_labels_say_run_label_first_and_keep_the_folder(tmp_path, tiny_model, content):
    from pipeline.training import train

    out = tmp_path / "run"
    spec = make_spec(out, tiny_model)
    (out / "notes.txt").write_text("keep me")
    if content is not None:
        (out / "labels.jsonl").write_text(content)
    with pytest.raises(TrainingError, match=r"^no labelled rows in .*labels.jsonl; run `distillery label` first.$"):
        train(spec)
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt"] + (["labels.jsonl"] if content is not None else []))


def test_seq_len_beyond_the_model_and_unknown_students_are_one_sentence(tmp_path, tiny_model):
    from pipeline.training import train

    spec = make_spec(tmp_path / "run", tiny_model, records(4), max_seq_len=4096)
    with pytest.raises(TrainingError, match=r"max_seq_len=4096 is longer than the student's 1024 positions; set train.max_seq_len=1024"):
        train(spec)
    spec = make_spec(tmp_path / "run2", tmp_path / "no-such-model", records(4))
    with pytest.raises(ModelError, match="was not found"):
        train(spec)


def test_early_stopping_keeps_the_weights_of_the_best_validation_loss(tmp_path, tiny_model):
    import torch

    from pipeline.batching import collate, encode_records, split_rows, supervised_loss
    from pipeline.training import load_student, train

    rows = records(24)
    spec = make_spec(tmp_path / "run", tiny_model, rows, max_steps=12, learning_rate=0.5, val_share=0.25, eval_every=1,
                     early_stopping_patience=1, warmup_ratio=0.0)
    summary = train(spec)
    vals = [v["loss"] for v in summary.val_losses]
    assert summary.stopped_early and summary.steps < 12 and len(vals) == summary.steps
    assert min(vals) < vals[-1]
    model, tok = load_student(spec)
    _, val = split_rows(encode_records(rows, tok, render_chat_for_tests(), True, 512), 0.25, 0)
    with torch.no_grad():
        loss_sum, n = supervised_loss(model, collate(val, tok.pad_token_id))
    assert float(loss_sum) / n == pytest.approx(min(vals), abs=1e-5)


def render_chat_for_tests():
    from pipeline.models import render_chat

    return render_chat


def test_gradient_checkpointing_gives_the_same_training(tmp_path, tiny_model):
    from pipeline.training import train

    rows = records(16)
    plain = train(make_spec(tmp_path / "plain", tiny_model, rows, max_steps=4))
    recomputed = train(make_spec(tmp_path / "gc", tiny_model, rows, max_steps=4, gradient_checkpointing=True))
    assert [h["loss"] for h in recomputed.loss_history] == pytest.approx([h["loss"] for h in plain.loss_history], abs=1e-5)
    assert recomputed.fingerprint != plain.fingerprint


@pytest.mark.gemma
def test_logits_only_loss_and_gradients_match_the_reference_on_gemma(gemma_path):
    """On the real Gemma + LoRA, loss and gradients equal transformers' own loss over the same target tokens."""
    import torch
    from peft import LoraConfig, get_peft_model

    from pipeline.batching import collate, encode_records, supervised_loss
    from pipeline.models import load_model, render_chat

    model, tok = load_model(str(gemma_path), device="cpu", dtype="float32", for_training=True)
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)  # non-zero B so both LoRA factors get gradients
    records = [{"messages": [{"role": "system", "content": "Classify the text as negative or positive."},
                             {"role": "user", "content": f"Text: {text}"}, {"role": "assistant", "content": label}], "label": label}
               for text, label in (("a warm, funny film", "positive"), ("dull and far too long", "negative"))]
    batch = collate(encode_records(records, tok, render_chat, True, 128), tok.pad_token_id)
    loss_sum, n = supervised_loss(peft, batch)
    (loss_sum / n).backward()
    ours = {k: p.grad.clone() for k, p in peft.named_parameters() if p.requires_grad}
    peft.zero_grad()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[batch["rows"], batch["positions"] + 1] = batch["targets"]
    reference = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    reference.loss.backward()
    assert float(loss_sum / n) == pytest.approx(float(reference.loss), rel=1e-5)
    diff = sum(float((ours[k] - p.grad).norm() ** 2) for k, p in peft.named_parameters() if p.requires_grad) ** 0.5
    norm = sum(float(p.grad.norm() ** 2) for _, p in peft.named_parameters() if p.requires_grad) ** 0.5
    assert norm > 0 and diff / norm < 1e-4
