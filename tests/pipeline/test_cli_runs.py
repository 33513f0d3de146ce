"""`distillery submit / runs / status / cancel / report` through the real click group and its error boundary."""

import json
from pathlib import Path

import pytest

from pipeline.cli import cli, run_cli
from pipeline.registry import Registry
from pipeline.spec import load_spec


def distillery(capsys, *argv):
    code = run_cli(cli, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence_error(code, out, err):
    assert code == 1 and "Traceback" not in err and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def finished_run(reg, tmp_path):
    """A run recorded as done, with a report in its folder (as the runner writes it)."""
    rec = reg.submit(load_spec(None, [f"out={tmp_path / 'r'}"]))
    reg.claim_next("w")
    out = Path(rec.out)
    (out / "report.md").write_text("# Distillation report\n\nGap closed: 80 %\n", encoding="utf-8")
    (out / "report.json").write_text(json.dumps({"scores": {"teacher": 0.9}}), encoding="utf-8")
    (out / "report.png").write_bytes(b"\x89PNG fake")
    reg.finish(rec.id, {"scores": {"teacher": 0.9, "student_distilled": 0.8}})
    return rec


def test_submit_runs_status_cancel(capsys):
    code, out, err = distillery(capsys, "submit", "train.epochs=1", "dataset.train_size=16")
    assert code == 0, err
    run_id = out.strip()
    rec = Registry().get(run_id)
    assert rec.status == "queued" and rec.spec["train"]["epochs"] == 1 and rec.requested_by["source"] == "cli"
    assert "distillery worker" in err

    code, out, _ = distillery(capsys, "runs")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:4] == ["ID", "STATUS", "STAGE", "PROGRESS"]
    assert row.split()[:2] == [run_id, "queued"] and "classification/gemma-3-270m" in row

    code, out, _ = distillery(capsys, "status", run_id, "--json")
    data = json.loads(out)
    assert code == 0 and data["status"] == "queued" and data["id"] == run_id and data["events"][0]["kind"] == "submitted"

    code, out, _ = distillery(capsys, "cancel", run_id)
    assert code == 0 and "cancelled" in out
    assert Registry().get(run_id).status == "cancelled"
    err = one_sentence_error(*distillery(capsys, "cancel", run_id))
    assert "already finished (cancelled)" in err


def test_submit_bad_spec_and_unknown_run_are_sentences(capsys):
    err = one_sentence_error(*distillery(capsys, "submit", "train.epochs=-1"))
    assert "train.epochs" in err
    err = one_sentence_error(*distillery(capsys, "status", "deadbeef"))
    assert "no run 'deadbeef'" in err and "distillery runs" in err
    one_sentence_error(*distillery(capsys, "report", "../etc"))


def test_report_of_queued_run_says_so(capsys):
    rec = Registry().submit(load_spec(None))
    err = one_sentence_error(*distillery(capsys, "report", rec.id))
    assert f"run {rec.id} has no report yet; it is queued; start `distillery worker`" in err


def test_report_prints_markdown_then_paths(capsys, tmp_path):
    rec = finished_run(Registry(), tmp_path)
    code, out, err = distillery(capsys, "report", rec.id)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "# Distillation report" and "Gap closed: 80 %" in out
    assert lines[-2] == f"report.json: {Path(rec.out) / 'report.json'}"
    assert lines[-1] == f"report.png: {Path(rec.out) / 'report.png'}"
    code, out, _ = distillery(capsys, "status", rec.id)
    assert "run " + rec.id + ": done" in out and "teacher 90.0 %" in out


def test_report_with_missing_or_corrupt_folder_is_a_sentence(capsys, tmp_path):
    reg = Registry()
    rec = finished_run(reg, tmp_path)
    (Path(rec.out) / "report.md").write_bytes(b"\xff\xfe\x00garbage\xc3")
    err = one_sentence_error(*distillery(capsys, "report", rec.id))
    assert "report.md" in err and "cannot be read" in err
    (Path(rec.out) / "report.json").write_text("{not json", encoding="utf-8")
    (Path(rec.out) / "report.md").write_text("# ok\n", encoding="utf-8")
    code, out, _ = distillery(capsys, "report", rec.id)
    assert code == 0 and "report.json: " in out and "(missing or unreadable)" in out
    for f in Path(rec.out).iterdir():
        f.unlink()
    Path(rec.out).rmdir()
    err = one_sentence_error(*distillery(capsys, "report", rec.id))
    assert "folder" in err and "is missing" in err and f"distillery status {rec.id}" in err


@pytest.mark.parametrize("flag", ["--json", None])
def test_runs_empty_and_json(capsys, flag):
    code, out, _ = distillery(capsys, "runs", *([flag] if flag else []))
    assert code == 0 and (out == "" if flag else "no runs yet" in out)


def test_report_of_running_and_failed_runs_says_where_they_are(capsys):
    from pipeline.progress import Progress

    reg = Registry()
    running, failed = reg.submit(load_spec(None)), reg.submit(load_spec(None))
    reg.claim_next("w")
    reg.set_status(running.id, "training", stage="training")
    reg.update_progress(running.id, Progress("training", 3, 10, rate=1.0, eta_s=7.0, unit="steps"))
    err = one_sentence_error(*distillery(capsys, "report", running.id))
    assert "has no report yet; it is training (training, 3/10 steps, 1.0/s, ETA 7s)." in err
    reg.fail(failed.id, "dataset file 'x' does not exist; check dataset.train.")
    err = one_sentence_error(*distillery(capsys, "report", failed.id))
    assert "it failed: dataset file 'x' does not exist; check dataset.train." in err
    code, out, _ = distillery(capsys, "runs")
    assert f"{running.id}  training" in out and "3/10 steps" in out
