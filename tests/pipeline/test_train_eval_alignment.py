"""What the student is trained on is exactly what evaluation scores (issue 15): same prompt tokens, same answer tokens.

After a run (tiny model, stand-in teacher with chain of thought), every option log-probability in
predictions_student_distilled.jsonl is recomputed through the TRAINING path (encode_pairs -> collate ->
target_logits, the tokens the loss is taken on, minus the end-of-turn token the target adds). Any difference
between the two paths (chat template, BOS, a leading space, answer case, letter vs option text) changes these
numbers, so a mismatch between what is learnt and what is scored cannot pass unnoticed.
"""

from __future__ import annotations

import json

import pytest
from test_tasks_end_to_end import _run

from pipeline.spec import load_spec


@pytest.mark.parametrize("task", ["nli", "multiple_choice"])
def test_distilled_option_scores_equal_the_training_paths_log_probs(task, tiny_model, tmp_path):
    import torch

    from pipeline.batching import collate, encode_pairs, end_of_turn_id, target_logits
    from pipeline.evaluation import test_examples
    from pipeline.models import render_chat
    from pipeline.targets import student_prompt, training_pairs
    from pipeline.tasks import get_task
    from pipeline.training import load_student, read_labelled

    out = tmp_path / "run"
    _run(task, tiny_model, out, True)
    spec = load_spec(str(out / "spec.yaml"), [])
    t = get_task(spec.task)
    model, tok = load_student(spec)
    eot = end_of_turn_id(tok)

    # the labelled targets are option strings, and their prompts are the ones evaluation builds
    for (prompt, target, _), rec in zip(training_pairs(spec, read_labelled(out)), read_labelled(out)):
        assert target == rec["label"]
    scored = [json.loads(x) for x in (out / "predictions_student_distilled.jsonl").read_text().splitlines()]
    examples = {str(e.row): e for e in test_examples(spec)}
    assert len(scored) == len(examples) >= 4
    for row in scored:
        ex = examples[str(row["row"])]
        options = t.options(ex, spec.labels)
        assert list(row["option_logprobs"]) == options and row["gold"] in options
        for option in options:
            enc = encode_pairs([(student_prompt(spec, t, ex), option, 1.0)], tok, render_chat, spec.train.max_seq_len)[0]
            assert enc.input_ids[-1] == eot
            batch = collate([enc], tok.pad_token_id)
            with torch.no_grad():
                logp = torch.log_softmax(target_logits(model, batch), dim=-1).gather(1, batch["targets"][:, None])[:, 0]
            trained = float(logp[:-1].sum())  # the option's tokens as the loss sees them, without the end of turn
            assert trained == pytest.approx(row["option_logprobs"][option], abs=2e-3), (row["row"], option)


def test_a_student_answering_one_option_everywhere_is_called_out(tiny_model, tmp_path):
    """evaluation.json counts each option's answers; the report says when one option took every test row."""
    from pipeline.report import collapse_warnings

    out = tmp_path / "run"
    report, _ = _run("nli", tiny_model, out, True)
    results = json.loads((out / "evaluation.json").read_text())["results"]
    for name in ("student_base", "student_distilled"):
        rows = [json.loads(x) for x in (out / f"predictions_{name}.jsonl").read_text().splitlines()]
        counts = {}
        for r in rows:
            counts[r["prediction"]] = counts.get(r["prediction"], 0) + 1
        assert results[name]["answers"] == counts and sum(counts.values()) == results[name]["examples"]
        one = len(counts) == 1
        assert any(w.startswith(f"{name} gave the same answer") for w in report["warnings"]) == one
    collapsed = {"student_base": {"answers": {"neutral": 12}, "examples": 12},
                 "student_distilled": {"answers": {"neutral": 5, "entailment": 7}, "examples": 12}}
    (sentence,) = collapse_warnings(collapsed)
    assert sentence.startswith("student_base gave the same answer ('neutral') to all 12 test rows")
    assert collapse_warnings({"student_base": {"answers": {"A": 3}, "examples": 3}}) == []  # too few rows to say
