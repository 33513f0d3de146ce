"""`distillery run` end to end: on the real Gemma 3 270M with small sizes, and resumable on a tiny model."""

import json
import os
import subprocess
import sys

import pytest

REPORT_KEYS = {"task", "metric", "scores", "gap_closed", "labelling", "training", "evaluation", "paths"}


def distillery(*args, timeout=1500):
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def check_report(out, requested, test_rows):
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["task"] == "classification" and report["metric"] == "accuracy"
    assert set(report["scores"]) == {"teacher", "student_base", "student_distilled"}
    for value in report["scores"].values():
        assert 0.0 <= value <= 1.0
    lab = report["labelling"]
    assert lab["requested"] == requested and lab["accepted"] + lab["rejected"] == requested
    assert report["training"]["steps"] > 0 and report["training"]["final_loss"] is not None
    assert report["evaluation"]["examples"] == test_rows
    for name in ("spec.yaml", "labels.jsonl", "rejected.jsonl", "report.md", "report.png", "student/adapter_config.json"):
        assert (out / name).exists(), name
    lines = (out / "labels.jsonl").read_text().splitlines()
    assert len(lines) == lab["accepted"]
    first = json.loads(lines[0])
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["label"] in ("negative", "positive")
    return report


@pytest.mark.gemma
def test_default_run_on_gemma_small(tmp_path, gemma_path):
    out = tmp_path / "run"
    result = distillery("run", "dataset.train_size=64", "dataset.test_size=32", "train.epochs=1", f"out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = check_report(out, requested=64, test_rows=32)
    assert "student_distilled" in result.stdout and "Gap closed" in result.stdout
    # the 8-shot teacher is better than chance on real data
    assert report["scores"]["teacher"] >= 0.6


def _gold_responder(*data_files):
    """Answer like a good teacher: the gold label of the row the prompt ends with."""
    from fake_llm_server import last_user

    gold = {}
    for line in (ln for f in data_files for ln in f.read_text().splitlines()):
        rec = json.loads(line)
        gold[f"Text: {rec['sentence'].strip()}"] = ["negative", "positive"][rec["label"]]
    return lambda req: gold.get(last_user(req).strip(), "positive")


def test_run_resumes_without_paying_twice(tmp_path, tiny_model):
    from testpaths import DATA
    from fake_llm_server import FakeLLMServer
    from pipeline.datasets import BUNDLED_DIR

    out = tmp_path / "run"
    test_file = BUNDLED_DIR / "sst2" / "test.jsonl"
    args = ["run", f"dataset.train={DATA / 'sst2.jsonl'}", f"dataset.test={test_file}", "dataset.test_size=8",
            "teacher.provider=openai", "teacher.model=teacher-x", "teacher.few_shot=2", "teacher.price_per_mtok={input: 1.0, output: 2.0}",
            f"student.model={tiny_model}", "train.epochs=1", "train.batch_size=4", "eval.batch_size=8", f"out={out}"]
    with FakeLLMServer(responder=_gold_responder(DATA / "sst2.jsonl", test_file)) as server:
        args.append(f"teacher.base_url={server.openai_base_url}")
        first = distillery(*args, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        sent = len(server.requests)
        report = json.loads((out / "report.json").read_text())
        # 22 rows labelled (24 minus 2 demonstrations) + 8 test rows for the teacher's own score
        assert sent == 22 + 8
        assert report["labelling"]["requested"] == 22 and report["labelling"]["cost_usd"] > 0
        assert report["scores"]["teacher"] == 1.0  # the scripted teacher answers with the gold labels
        second = distillery(*args, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        assert len(server.requests) == sent  # nothing re-sent: answers, adapter and scores were all kept
    again = json.loads((out / "report.json").read_text())
    assert again["scores"] == report["scores"] and again["training"]["steps"] == report["training"]["steps"]
