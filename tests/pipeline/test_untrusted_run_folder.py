"""A run folder someone else prepared (design item of issue 9): nothing in it is unpickled, and no delete or write
follows a symbolic link out of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.errors import DistilleryError, RunError
from pipeline.spec import RunSpec


def labelled(out: Path, n: int = 8) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        rows.append({"messages": [{"role": "user", "content": f"Text: film {i}"}, {"role": "assistant", "content": label}], "label": label})
    (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def spec_for(out: Path, model: Path, **train) -> RunSpec:
    settings = {"max_steps": 2, "batch_size": 4, "checkpoint_every": 1, **train}
    return RunSpec.model_validate({"student": {"model": str(model), "device": "cpu"}, "teacher": {"provider": "openai", "model": "m"},
                                   "train": settings, "out": str(out)})


class Payload:
    """Unpickling this runs a shell command: what a planted state.pt would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_a_checkpoint_is_never_executed(tmp_path, tiny_model):
    import torch

    from pipeline.checkpoints import latest_checkpoint, load_checkpoint
    from pipeline.training import run_fingerprint, train

    out = tmp_path / "run"
    labelled(out)
    spec = spec_for(out, tiny_model, max_steps=3)
    fingerprint = run_fingerprint(spec, out / "labels.jsonl")
    ckpt = out / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(ckpt / "trainable.safetensors"))
    (ckpt / "meta.json").write_text(json.dumps({"fingerprint": fingerprint, "step": 1}))
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Payload(marker)}, ckpt / "state.pt")  # torch's own format, a pickle inside
    assert latest_checkpoint(out / "checkpoints", fingerprint) == ckpt
    with pytest.raises(DistilleryError) as err:
        load_checkpoint(ckpt)
    assert "checkpoint" in str(err.value) and str(ckpt) in str(err.value)
    with pytest.raises(DistilleryError):
        train(spec)
    assert not marker.exists()


def test_checkpoint_state_round_trips_without_pickle(tmp_path):
    import random

    import torch

    from pipeline.checkpoints import load_checkpoint, rng_state, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    random.random()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state()}
    path = save_checkpoint(tmp_path / "checkpoints", 1, dict(model.named_parameters()), state, {"fingerprint": "f", "step": 1})
    _, loaded, meta, _ = load_checkpoint(path)
    assert meta["step"] == 1 and loaded["rng"]["python"] == random.getstate()
    assert torch.equal(loaded["rng"]["torch"], torch.get_rng_state())
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt2.load_state_dict(loaded["optimizer"])  # what a resume does


@pytest.mark.parametrize("link", ["checkpoints", ".student-tmp", "student"])
def test_training_never_deletes_or_writes_through_a_planted_link(tmp_path, tiny_model, link):
    from pipeline.training import train

    out = tmp_path / "run"
    labelled(out)
    outside = tmp_path / "outside"
    (outside / "step-000001").mkdir(parents=True)
    (outside / "step-000001" / "meta.json").write_text('{"fingerprint": "someone else"}')
    (outside / "precious.txt").write_text("keep me")
    before = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    (out / link).symlink_to(outside, target_is_directory=True)
    with pytest.raises(RunError) as err:
        train(spec_for(out, tiny_model))
    assert link in str(err.value) and "link" in str(err.value)
    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == before
    assert (outside / "precious.txt").read_text() == "keep me"


def test_report_files_that_are_links_are_replaced_never_written_through(tmp_path):
    from pipeline.report import build_report, write_report
    from pipeline.spec import load_spec

    out = tmp_path / "run"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("report.md", "report.json", "report.png", "report.json.tmp"):
        (outside / name).write_text("keep me")
        (out / name).symlink_to(outside / name)
    spec = load_spec(None, [f"out={out}"])
    evaluation = {"results": {n: {"metric": "accuracy", "score": 0.5, "scores": {"accuracy": 0.5}, "examples": 2}
                              for n in ("teacher", "student_base", "student_distilled")}}
    write_report(spec, build_report(spec, {}, {}, evaluation), [])
    assert all((outside / name).read_text() == "keep me" for name in ("report.md", "report.json", "report.png", "report.json.tmp"))
    assert not (out / "report.md").is_symlink() and "Distillation report" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["scores"]["teacher"] == 0.5


def test_the_report_command_never_prints_a_linked_file(tmp_path):
    import subprocess
    import sys

    from pipeline.registry import Registry
    from pipeline.spec import load_spec

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    reg = Registry()
    rec = reg.submit(load_spec(None, [f"out={tmp_path / 'run'}"]))
    Path(rec.out).mkdir(parents=True, exist_ok=True)
    (Path(rec.out) / "report.md").symlink_to(secret)
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "bot.cli", "report", rec.id], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert "TOP-SECRET-CONTENT" not in result.stdout + result.stderr
    assert result.returncode == 1 and "link" in result.stderr and "Traceback" not in result.stderr
