"""The operations core: planning defaults, estimates and overrides; reports; errors as sentences."""

import pytest

from pipeline.errors import DistilleryError, ModelError, RunError, TeacherError
from pipeline.registry import Registry
from skills import operations as ops
from skills.plans import PlanStore
from teacher_profiles import write_profiles


MINI = {"provider": "openai", "model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY",
        "price_per_mtok": {"input": 0.15, "output": 0.6}}


def test_plan_resolves_defaults_and_overrides(isolated_home):
    write_profiles(isolated_home, {"mini": MINI})
    plan = ops.plan_distillation("sst2", "gemma-3-270m", "gpt-4o-mini", rows=40,
                                 overrides="train.epochs=1 teacher.few_shot=2", requested_by="U1")
    assert plan.spec["labels"] == ["negative", "positive"] and plan.spec["task"] == "classification"
    assert plan.spec["dataset"]["train_size"] == 40 and plan.spec["dataset"]["test"].endswith("test.jsonl")
    assert plan.spec["train"]["epochs"] == 1 and plan.spec["teacher"]["few_shot"] == 2
    est = plan.summary["estimate"]
    assert est["rows"] == 40 and est["prompt_tokens"] > 0 and est["cost_usd"] > 0
    assert plan.requested_by == {"user": "U1"}
    text = ops.plan_text(plan)
    assert plan.id in text and "gpt-4o-mini" in text and "40 rows" in text


def test_allowed_local_folder_student_and_local_teacher_cost_nothing(tiny_model, isolated_home):
    with pytest.raises(ModelError, match="no student model matches"):  # a folder chat names is not enough
        ops.plan_distillation("sst2", str(tiny_model), None, rows=8)
    write_profiles(isolated_home, {}, students=[str(tiny_model)])
    plan = ops.plan_distillation("sst2", str(tiny_model), None, rows=8)
    assert plan.spec["student"]["model"] == str(tiny_model) and plan.spec["teacher"]["provider"] == "local"
    assert plan.summary["estimate"]["cost_usd"] == 0 and plan.summary["runnable"]


def test_errors_say_what_to_do():
    with pytest.raises(ModelError, match="cannot be a student"):
        ops.plan_distillation("sst2", "gpt-4o")
    with pytest.raises(DistilleryError, match="unknown task 'poetry'"):
        ops.plan_distillation("sst2", task="poetry")
    with pytest.raises(DistilleryError, match="invalid value for 'train.epochs'"):
        ops.plan_distillation("sst2", overrides="train.epochs=-1")
    plan = ops.plan_distillation("sst2", rows=4)
    record = ops.start_plan(plan.id, "U1")
    with pytest.raises(RunError, match="has no report yet"):
        ops.get_report(record.id)
    assert ops.cancel_run(record.id).status == "cancelled"
    assert [r.id for r in ops.list_runs()] == [record.id]
    with pytest.raises(RunError, match="no run"):
        ops.run_status("zzz999")
    assert PlanStore().get(plan.id).run_id == record.id and Registry().get(record.id).spec["dataset"]["train_size"] == 4


def test_teacher_profiles_name_their_key_variable_and_endpoint(isolated_home):
    with pytest.raises(TeacherError, match="unknown teacher 'gpt-4o'; pick a configured teacher profile \\(local\\)"):
        ops.plan_distillation("sst2", "gemma-3-270m", "gpt-4o", rows=4)
    write_profiles(isolated_home, {"big": {"provider": "azure", "model": "Meta-Llama-3.1-405B-Instruct",
                                           "api_key_env": "AZURE_AI_API_KEY"}, "4o": {**MINI, "model": "gpt-4o"}})
    plan = ops.plan_distillation("sst2", "gemma-3-270m", "big", rows=4)
    assert plan.spec["teacher"]["provider"] == "azure" and plan.spec["teacher"]["api_key_env"] == "AZURE_AI_API_KEY"
    notes = " ".join(plan.summary["notes"])
    assert "AZURE_AI_API_KEY is not set here" in notes and "has no base_url; the operator sets it in teachers.yaml" in notes
    assert plan.summary["teacher_params_b"] == 405.0  # the catalog knows the model's size
    assert ops.plan_distillation("sst2", "gemma-3-270m", "gpt-4o", rows=4).spec["teacher"]["api_key_env"] == "OPENAI_API_KEY"


def test_a_dataset_without_a_test_file_plans_held_out_test_rows(tmp_path, monkeypatch):
    import csv

    data = tmp_path / "data"
    data.mkdir()
    with (data / "movie_reviews.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "sentiment"])
        for i in range(96):
            w.writerow([f"film {i} was {'great' if i % 2 else 'dull'}", "positive" if i % 2 else "negative"])
    monkeypatch.setenv("DISTILLERY_DATA_DIRS", str(data))
    plan = ops.plan_distillation("movie_reviews", "gemma-3-270m", None)
    assert plan.spec["dataset"]["test"] is None and plan.spec["labels"] == ["negative", "positive"]
    assert plan.summary["test"] == "testing on 24 rows held out from movie_reviews.csv"
    # the held-out rows are never labelled, nor the 9 gold pilot rows the answer cue is chosen on (pipeline/pilot.py)
    assert plan.summary["rows"] == 63 and plan.spec["dataset"]["train_size"] == 72 and plan.summary["pilot"]["rows"] == 9
    assert "testing on 24 rows held out from movie_reviews.csv" in ops.plan_text(plan)
    from bot.blocks import plan_card

    assert "testing on 24 rows held out from movie_reviews.csv" in str(plan_card(plan.id, plan.summary)["blocks"])


def test_get_report_never_reads_through_a_link_planted_in_the_run_folder(isolated_home, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("OPERATOR-ONLY CONTENT")
    record = ops.start_plan(ops.plan_distillation("sst2", rows=4).id, "U1")
    reg = Registry()
    out = reg.get(record.id).out
    from pathlib import Path

    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "report.md").symlink_to(secret)
    reg.finish(record.id, {"scores": {}})
    with pytest.raises(RunError, match="symbolic link") as err:
        ops.get_report(record.id)
    assert "OPERATOR-ONLY" not in str(err.value)
    (Path(out) / "report.md").unlink()
    (Path(out) / "report.md").write_text("# the real report")
    assert ops.get_report(record.id) == "# the real report"
