"""What chat may change (issue 9, findings 1-3): the allow-list, no planning-time reads, truthful plans, run folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.errors import PolicyError
from pipeline.registry import Registry
from skills import operations as ops
from skills.plans import PlanStore
from skills.policy import CHAT_KEYS, chat_overrides
from teacher_profiles import write_profiles

OPERATOR_KEYS = ["teacher.base_url=http://127.0.0.1:9/v1", "teacher.api_key_env=SLACK_BOT_TOKEN",
                 "teacher.provider=openai", "teacher.model=evil", "dataset.train=/etc/hosts", "dataset.test=/etc/hosts",
                 "dataset.fields={text:secret}", "out=/tmp/anywhere", "instructions=ignore-all", "student.model=/tmp/x",
                 "teacher={base_url: 'http://127.0.0.1:9/v1'}", "dataset={train: /etc/hosts}"]


@pytest.mark.parametrize("override", OPERATOR_KEYS)
def test_finding1_operator_keys_are_refused_with_one_sentence_naming_the_key(override):
    key = override.split("=", 1)[0]
    with pytest.raises(PolicyError) as err:
        ops.plan_distillation("sst2", "gemma-3-270m", None, rows=4, overrides=override, requested_by="U1")
    message = str(err.value)
    assert f"'{key}'" in message and message.count(". ") == 0 and message.endswith(".")
    assert "cannot be set from chat" in message or "unknown key" in message
    assert PlanStore().latest(None) is None  # no plan was stored


def test_finding1_the_override_cannot_move_the_teacher_and_the_plan_reads_the_final_spec(isolated_home):
    write_profiles(isolated_home, {"mini": {"provider": "openai", "model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY",
                                            "base_url": "https://user:pw@gateway.example:8443/v1?k=1",
                                            "price_per_mtok": {"input": 0.15, "output": 0.6}}})
    plan = ops.plan_distillation("sst2", "gemma-3-270m", "mini", rows=40,
                                 overrides={"dataset.train_size": 12, "student.method": "full", "train.epochs": 1})
    s = plan.summary
    assert s["rows"] == 12 == plan.spec["dataset"]["train_size"]  # read after the overrides, not before
    assert s["method"] == "full" == plan.spec["student"]["method"]
    assert s["teacher_profile"] == "mini" and s["teacher_model"] == "gpt-4o-mini" and s["teacher_provider"] == "openai"
    assert s["teacher_endpoint"] == "gateway.example:8443" and s["teacher_key_env"] == "OPENAI_API_KEY"
    text = ops.plan_text(plan)
    assert "gateway.example:8443" in text and "OPENAI_API_KEY" in text and "12 rows" in text and "(full)" in text
    assert "pw" not in text.replace("prompt", "") and "user:" not in text and "k=1" not in text
    from bot.blocks import plan_card

    card = str(plan_card(plan.id, s))
    assert "gateway.example:8443" in card and "OPENAI_API_KEY" in card and "user:pw" not in card


def test_finding2_a_dataset_path_override_is_never_opened_and_never_echoed(tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("ssn_column,salary_column\n123-45-6789,100000\n", encoding="utf-8")
    opened: list[str] = []
    watching = [True]

    def hook(event, args):
        if watching[0] and event == "open" and args and str(args[0]).endswith("secret.csv"):
            opened.append(str(args[0]))

    sys.addaudithook(hook)
    try:
        for override in (f"dataset.train={secret}", f"dataset.test={secret}", f"dataset.fields={{text: ssn_column}}"):
            with pytest.raises(PolicyError) as err:
                ops.plan_distillation("sst2", rows=4, overrides=override)
            assert "ssn_column" not in str(err.value) and "123-45" not in str(err.value)
    finally:
        watching[0] = False
    assert opened == []


def test_finding3_runs_from_chat_get_their_own_absolute_folder_under_the_home(isolated_home, tmp_path):
    plan = ops.plan_distillation("sst2", rows=4)
    elsewhere = tmp_path / "elsewhere"
    store = PlanStore()
    import json
    import sqlite3

    tampered = {**plan.spec, "out": str(elsewhere)}  # whatever a plan says, the folder is decided at start
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE plans SET spec = ? WHERE id = ?", (json.dumps(tampered), plan.id))
    record = ops.start_plan(plan.id, "UADMIN")
    expected = (isolated_home / "runs" / record.id).resolve()
    assert Path(record.out) == expected and Path(record.out).is_absolute()
    assert Registry().get(record.id).spec["out"] == str(expected)
    assert (expected / "spec.yaml").is_file() and not elsewhere.exists()


def test_the_allow_list_takes_knobs_and_every_chat_key_is_a_spec_key():
    assert chat_overrides("train.epochs=1 teacher.few_shot=4 student.lora.rank=8") == [
        "train.epochs=1", "teacher.few_shot=4", "student.lora.rank=8"]
    from skills.policy import _is_spec_key
    from pipeline.spec import RunSpec

    missing = [k for k in CHAT_KEYS if not _is_spec_key(RunSpec, k.split("."))]
    assert set(missing) <= {"train.rationale"}  # added by the training-targets work
    with pytest.raises(PolicyError, match="unknown key 'train.epoch'"):
        chat_overrides("train.epoch=1")
    with pytest.raises(PolicyError, match="not key=value"):
        chat_overrides("epochs")


def test_the_default_profile_is_used_and_a_smaller_teacher_is_never_the_silent_default(isolated_home, monkeypatch):
    from skills.catalog import Hardware

    monkeypatch.setattr(ops, "deployment_hardware", lambda: Hardware(True, "H100", 80.0, 16, 200.0))
    plan = ops.plan_distillation("sst2", "an 8B model", rows=4)  # only the built-in local 270M teacher
    s = plan.summary
    assert s["teacher_profile"] == "local" and s["runnable"] is False
    assert "smaller than the student" in s["why"] and "teachers.yaml" in s["why"]
    assert "smaller than the student" in ops.plan_text(plan)
    write_profiles(isolated_home, {"gw": {"provider": "openai", "model": "big-model", "base_url": "http://10.1.2.3:8000/v1",
                                          "params_b": 70}})
    plan = ops.plan_distillation("sst2", "an 8B model", rows=4)  # the default is still local: the bigger one is picked
    assert plan.summary["teacher_profile"] == "gw" and plan.summary["runnable"] is True
    assert any("default teacher local" in n for n in plan.summary["notes"])
    named = ops.plan_distillation("sst2", "an 8B model", "local", rows=4)  # named on purpose: allowed, with a note
    assert named.summary["runnable"] is True and any("smaller than the student" in n for n in named.summary["notes"])
    write_profiles(isolated_home, {"gw": {"provider": "openai", "model": "big-model", "base_url": "http://10.1.2.3:8000/v1"}},
                   default="gw")
    plan = ops.plan_distillation("sst2", "gemma-3-270m", rows=4)
    assert plan.summary["teacher_profile"] == "gw" and plan.spec["teacher"]["base_url"] == "http://10.1.2.3:8000/v1"


def test_models_lists_the_configured_teacher_profiles(isolated_home):
    from skills.plugin import DistillationPlugin

    write_profiles(isolated_home, {"mini": {"provider": "openai", "model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY",
                                            "base_url": "https://u:secret@gw.example/v1"}}, default="mini")
    text = DistillationPlugin(Registry()).list_models("")
    assert "- mini (default): gpt-4o-mini via openai at gw.example, key OPENAI_API_KEY" in text
    assert "- local:" in text and "secret" not in text
    assert "gpt-4o-mini (teacher; profile mini)" in text and "gpt-4o (teacher via" in text
    only = DistillationPlugin(Registry()).list_models("teachers")
    assert only.startswith("Teacher profiles") and "- mini (default)" in only and "No catalog model" not in only
