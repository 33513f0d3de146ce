"""Run spec (YAML + overrides, validation messages) and dataset reading with field detection."""

import json

import pytest

from testpaths import DATA
from pipeline.datasets import detect_task, load_examples, read_records
from pipeline.errors import DatasetError, SpecError
from pipeline.spec import load_spec
from pipeline.tasks import resolve_spec


def test_default_spec_is_the_embedded_context_distillation():
    spec = load_spec(None)
    assert spec.task == "classification" and spec.labels == ["negative", "positive"]
    assert spec.teacher.provider == "local" and spec.teacher.few_shot == 8 and spec.teacher.min_success_ratio == 0.7
    assert spec.student.method == "lora"
    assert len(load_examples(spec, "train")) == 600 and len(load_examples(spec, "test")) == 200


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("task: nli\ndataset: {train: x.jsonl}\nteacher: {provider: openai, model: m}\n")
    spec = load_spec(path, ["teacher.few_shot=4", "teacher.params.stop=[END]", "train.keep_rationale=false"])
    assert spec.task == "nli" and spec.teacher.few_shot == 4 and spec.teacher.params.stop == ["END"]
    assert spec.train.keep_rationale is False
    again = load_spec(None, [f"out={tmp_path}/o"])
    assert load_spec(None, ["out=" + again.out]).out == again.out


@pytest.mark.parametrize("override,fragment", [
    ("teacher.modle=x", "unknown key 'teacher.modle'"),
    ("train.epochs=-1", "'train.epochs'"),
    ("student.method=dora", "'student.method'"),
    ("teacher.min_success_ratio=2", "'teacher.min_success_ratio'"),
    ("oops", "not key=value"),
])
def test_bad_overrides_name_the_field(override, fragment):
    with pytest.raises(SpecError, match=fragment):
        load_spec(None, [override])


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: nli\n  dataset: [\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(path)


@pytest.mark.parametrize("name,task,gold", [
    ("sst2", "classification", "1"),
    ("conjnli", "nli", None),
    ("comve", "multiple_choice", None),
    ("hellaswag", "multiple_choice", "D"),
    ("gsm8k", "math", "18"),
    ("dialogsum", "summarization", None),
])
def test_fields_detected_for_shared_datasets(name, task, gold):
    records = read_records(str(DATA / f"{name}.jsonl"))
    assert detect_task(records[0]) == task
    spec = resolve_spec(load_spec(None, ["task=null", "labels=null", f"dataset.train={DATA / name}.jsonl"]))
    examples = load_examples(spec, "train")
    assert spec.task == task and len(examples) == 24 and all(e.gold for e in examples)
    if gold is not None:
        assert any(e.gold == gold for e in examples)


def test_chat_jsonl_in_azure_format(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"hi {i}"},
                          {"role": "assistant", "content": "hello"}]} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spec = resolve_spec(load_spec(None, ["task=null", "labels=null", f"dataset.train={path}"]))
    ex = load_examples(spec, "train")[0]
    assert spec.task == "chat" and ex.fields["messages"][-1]["role"] == "user" and ex.gold == "hello"


def test_csv_and_mapping(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review_body,stars\ngreat,1\nawful,0\n")
    spec = load_spec(None, [f"dataset.train={path}", "dataset.fields={text: review_body, label: stars}"])
    examples = load_examples(spec, "train")
    assert sorted(e.gold for e in examples) == ["negative", "positive"]


def test_seeded_shuffle_takes_first_n():
    a = load_examples(load_spec(None, ["dataset.train_size=10", "dataset.seed=3"]), "train")
    b = load_examples(load_spec(None, ["dataset.train_size=10", "dataset.seed=3"]), "train")
    c = load_examples(load_spec(None, ["dataset.train_size=10", "dataset.seed=4"]), "train")
    assert [e.row for e in a] == [e.row for e in b] != [e.row for e in c]


@pytest.mark.parametrize("content,fragment", [
    (None, "does not exist"),
    ("", "has no rows"),
    ("{not json\n", "line 1 is not valid JSON"),
    ('{"foo": 1}\n', "cannot tell the task"),
])
def test_bad_datasets_are_one_sentence(tmp_path, content, fragment):
    path = tmp_path / "d.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=fragment):
        resolve_spec(load_spec(None, ["task=null", "labels=null", f"dataset.train={path}"]))


def test_unknown_field_names_the_mapping_fix(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"body": "x", "label": 1}\n')
    with pytest.raises(DatasetError, match=r"dataset.fields.text=COLUMN"):
        load_examples(load_spec(None, [f"dataset.train={path}"]), "train")


def test_example_specs_load():
    from pathlib import Path

    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    providers = {load_spec(p).teacher.provider for p in examples}
    assert {"azure", "openai", "local"} <= providers
