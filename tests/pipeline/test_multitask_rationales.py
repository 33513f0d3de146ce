"""train.rationale=multitask (issue 14 §2, Hsieh et al. 2023): two weighted examples per row, predict prompt at inference.

The loss test computes the weighted per-example loss by hand from the tiny model's full logits and compares it
with the first step's loss that `train()` records; the end-to-end test runs a real OpenAI-compatible stand-in
teacher (tests/fake_llm_server.py) with chain of thought.
"""

from __future__ import annotations

import json

import pytest
from testpaths import DATA
from fake_llm_server import FakeLLMServer
from gold_teacher import gold_responder

from pipeline.datasets import load_examples
from pipeline.errors import TrainingError
from pipeline.runner import run
from pipeline.spec import load_spec
from pipeline.targets import EXPLAIN_HINT, explain_prompt, spec_notes, student_prompt, training_pairs, training_record
from pipeline.tasks import get_task, resolve_spec

RATIONALE = "The hypothesis repeats what the premise says."


def _spec(tmp_path, *extra, tiny=None, url="http://127.0.0.1:9/v1"):
    return resolve_spec(load_spec(None, [
        "task=nli", "labels=null", f"dataset.train={DATA / 'conjnli.jsonl'}", f"dataset.test={DATA / 'conjnli_test.jsonl'}",
        "dataset.train_size=8", "dataset.test_size=4", "teacher.provider=openai", "teacher.model=stand-in", f"teacher.base_url={url}",
        "teacher.chain_of_thought=true", *([f"student.model={tiny}"] if tiny else []), f"out={tmp_path / 'run'}", *extra]))  # extra last: it may set out


def test_two_examples_per_row_with_predict_and_explain_prompts_and_weights(tmp_path):
    spec = _spec(tmp_path, "train.rationale=multitask", "train.rationale_weight=0.3")
    plain = _spec(tmp_path, "train.rationale=none")
    task = get_task(spec.task)
    ex, ex2 = load_examples(spec, "train")[:2]
    with_reason = training_record(spec, task, ex, "entailment", RATIONALE)
    without = training_record(spec, task, ex2, "neutral", None)
    assert with_reason["target"] == "multitask" and "explain" not in without
    pairs = training_pairs(spec, [with_reason, without])
    assert len(pairs) == 3  # two for the row with a rationale, one for the row without
    (p_prompt, p_target, p_w), (e_prompt, e_target, e_w), (n_prompt, n_target, n_w) = pairs
    # predict: exactly the answer-only student prompt (what evaluation and serving use), the label as target
    assert p_prompt == student_prompt(plain, task, ex) and "Reply with the answer only." in p_prompt[0]["content"]
    assert (p_target, p_w) == ("entailment", pytest.approx(0.7))
    # explain: the same row asked for the reasoning, the rationale as target
    assert e_prompt == explain_prompt(spec, task, ex) and EXPLAIN_HINT in e_prompt[0]["content"]
    assert "Reply with the answer only." not in e_prompt[0]["content"] and e_prompt[1:] == p_prompt[1:]
    assert (e_target, e_w) == (RATIONALE, pytest.approx(0.3))
    assert (n_prompt, n_target, n_w) == (student_prompt(plain, task, ex2), "neutral", 1.0)
    # the student is never asked to reason: the prompt it is evaluated with is the predict prompt
    assert student_prompt(spec, task, ex) == student_prompt(plain, task, ex)


def test_labels_for_another_mode_or_soft_targets_are_refused(tmp_path):
    spec = _spec(tmp_path, "train.rationale=multitask")
    plain = _spec(tmp_path, "train.rationale=none")
    task = get_task(spec.task)
    ex = load_examples(spec, "train")[0]
    with pytest.raises(TrainingError, match="distillery label"):
        training_pairs(spec, [training_record(plain, task, ex, "entailment", RATIONALE)])
    with pytest.raises(TrainingError, match="distillery label"):
        training_pairs(plain, [training_record(spec, task, ex, "entailment", RATIONALE)])
    soft = _spec(tmp_path, "train.rationale=multitask", "train.targets=mixed")
    with pytest.raises(TrainingError, match="train.targets=hard"):
        training_pairs(soft, [training_record(soft, task, ex, "entailment", RATIONALE)])
    assert any("multitask" in n for n in spec_notes(soft))
    parallel = _spec(tmp_path, "train.rationale=multitask", "train.workers=2")
    with pytest.raises(TrainingError, match="train.workers=1"):
        training_pairs(parallel, [training_record(parallel, task, ex, "entailment", RATIONALE)])
    assert any("needs teacher.chain_of_thought=true" in n for n in spec_notes(_spec(tmp_path, "train.rationale=multitask",
                                                                                      "teacher.chain_of_thought=false")))


def _hand_loss(model_dir, pairs) -> tuple[float, float]:
    """(sum_i w_i * mean CE_i / sum_i w_i, plain token-level mean CE) from the full logits of the untrained model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import render_chat

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    weighted, weights, token_sum, tokens = 0.0, 0.0, 0.0, 0
    for prompt, target, w in pairs:
        p_ids = tok(render_chat(tok, prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        t_ids = tok(target, add_special_tokens=False)["input_ids"] + [eot]
        ids = torch.tensor([p_ids + t_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        ce = [-float(logp[len(p_ids) + j - 1, t]) for j, t in enumerate(t_ids)]
        weighted += w * sum(ce) / len(ce)
        weights += w
        token_sum, tokens = token_sum + sum(ce), tokens + len(ce)
    return weighted / weights, token_sum / tokens


@pytest.mark.parametrize("weight", [0.2, 0.8])
def test_the_rationale_weight_enters_the_loss_per_example(weight, tiny_model, tmp_path):
    from pipeline.training import train

    spec = _spec(tmp_path, "train.rationale=multitask", f"train.rationale_weight={weight}", "train.max_steps=1", "train.batch_size=16",
                 "train.learning_rate=1e-6", "student.lora.dropout=0", "student.device=cpu", tiny=tiny_model)
    task = get_task(spec.task)
    exs = load_examples(spec, "train")[:3]
    reasons = [RATIONALE + " " + "It follows word for word, so nothing new is claimed." * k for k in (1, 3)] + [None]
    records = [training_record(spec, task, e, "entailment", r) for e, r in zip(exs, reasons)]
    out = spec.out_dir
    out.mkdir(parents=True)
    (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = train(spec)
    pairs = training_pairs(spec, records)
    assert [round(w, 6) for _, _, w in pairs] == [round(1 - weight, 6), weight, round(1 - weight, 6), weight, 1.0]
    expected, token_mean = _hand_loss(tiny_model, pairs)
    assert summary.loss_history[0]["loss"] == pytest.approx(expected, abs=1e-5)
    assert abs(expected - token_mean) > 1e-3  # per-example weighting is not the token-level mean of today's loss


def test_plain_rows_keep_todays_token_level_loss(tiny_model, tmp_path):
    from pipeline.training import train

    spec = _spec(tmp_path, "train.rationale=none", "train.max_steps=1", "train.batch_size=16", "train.learning_rate=1e-6",
                 "student.lora.dropout=0", "student.device=cpu", tiny=tiny_model)
    task = get_task(spec.task)
    records = [training_record(spec, task, e, g, None) for e, g in zip(load_examples(spec, "train")[:3], ["entailment", "neutral", "contradiction"])]
    spec.out_dir.mkdir(parents=True)
    (spec.out_dir / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = train(spec)
    _, token_mean = _hand_loss(tiny_model, training_pairs(spec, records))
    assert summary.loss_history[0]["loss"] == pytest.approx(token_mean, abs=1e-5)


def test_multitask_run_end_to_end_evaluates_with_the_predict_prompt_only(tiny_model, tmp_path):
    base = ["train.epochs=1", "train.batch_size=4", "eval.max_new_tokens=8", "student.device=cpu"]
    probe = _spec(tmp_path, tiny=tiny_model)
    with FakeLLMServer(responder=gold_responder(probe, rationale=RATIONALE)) as server:
        multi = _spec(tmp_path, "train.rationale=multitask", *base, tiny=tiny_model, url=server.openai_base_url)
        report = run(multi)
        out = multi.out_dir
        labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
        assert labels and all(r["target"] == "multitask" and r["explain"][-1]["content"] == RATIONALE for r in labels)
        assert all(r["messages"][-1]["content"] == r["label"] for r in labels)
        assert report["targets"]["rationale"] == "multitask" and report["targets"]["rationale_weight"] == 0.5
        assert "second task" in (out / "report.md").read_text()
        training = json.loads((out / "training.json").read_text())
        assert training["examples"] == 2 * len(labels)  # predict + explain per row
        multi_rows = [json.loads(x) for x in (out / "predictions_student_base.jsonl").read_text().splitlines()]
        # the same base model under rationale=none: identical scores only if the prompts are identical
        plain = _spec(tmp_path, "train.rationale=none", *base, f"out={tmp_path / 'plain'}", tiny=tiny_model, url=server.openai_base_url)
        run(plain)
    plain_rows = [json.loads(x) for x in (tmp_path / "plain" / "predictions_student_base.jsonl").read_text().splitlines()]
    assert [r["option_logprobs"] for r in multi_rows] == [r["option_logprobs"] for r in plain_rows]
    assert all("text" not in r for r in multi_rows)  # scored after the predict prompt, no reasoning generated
