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
