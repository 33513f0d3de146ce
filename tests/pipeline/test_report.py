"""report.json (the contract), report.md and report.png from stage summaries."""

import json

import pytest

from pipeline.report import build_report, gap_closed, render_markdown, write_report
from pipeline.spec import load_spec


def test_gap_closed():
    assert gap_closed(0.86, 0.55, 0.86) == pytest.approx(1.0)
    assert gap_closed(0.86, 0.55, 0.705) == pytest.approx(0.5)
    assert gap_closed(0.55, 0.55, 0.7) is None and gap_closed(None, 0.5, 0.6) is None


def test_report_contract_and_files(tmp_path):
    spec = load_spec(None, [f"out={tmp_path}/run"])
    labelling = {"requested": 10, "accepted": 9, "rejected": 1, "prompt_tokens": 1000, "completion_tokens": 20, "cost_usd": 0.01,
                 "by_reason": {"unparseable": 1}}
    training = {"examples": 9, "steps": 4, "seconds": 3.5, "tokens_per_second": 120.0, "final_loss": 0.25}
    evaluation = {"results": {n: {"metric": "accuracy", "score": s, "scores": {"accuracy": s}, "examples": 200}
                              for n, s in (("teacher", 0.8), ("student_base", 0.4), ("student_distilled", 0.8))}}  # 200: the gap is not noise
    report = build_report(spec, labelling, training, evaluation)
    write_report(spec, report, [{"step": 1, "loss": 1.0}, {"step": 4, "loss": 0.25}])
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {"task", "metric", "scores", "gap_closed", "labelling", "training", "evaluation", "paths"} <= set(saved)
    assert saved["scores"] == {"teacher": 0.8, "student_base": 0.4, "student_distilled": 0.8}
    assert saved["gap_closed"] == pytest.approx(1.0)
    assert {"requested", "accepted", "rejected", "prompt_tokens", "completion_tokens", "cost_usd"} <= set(saved["labelling"])
    assert {"examples", "steps", "seconds", "tokens_per_second", "final_loss"} <= set(saved["training"])
    assert saved["evaluation"]["examples"] == 200
    png = (tmp_path / "run" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    md = render_markdown(saved)
    assert "| student_distilled | 80.0 |" in md and "Gap closed: 100 %" in md
