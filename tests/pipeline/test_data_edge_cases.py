"""Datasets, labels and specs a real user sends: Unicode line separators in JSONL, Excel's BOM'd CSV, huge CSV
fields, ragged CSV rows, corrupt Parquet, non-UTF-8 specs, gold labels outside `labels`, a relative home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.datasets import load_examples, read_records
from pipeline.errors import DatasetError
from pipeline.spec import load_spec
from pipeline.tasks import resolve_spec

ROOT = Path(__file__).resolve().parents[2]
SEPARATORS = "\u2028\u2029\u0085"  # str.splitlines() splits on these; JSON allows them raw inside strings


def distillery(*args, env=None, cwd=None):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=120, env=full_env, cwd=cwd)


def one_sentence(result, fragment: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    return lines[0]


def estimate_args(train: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["label", "--estimate", f"dataset.train={train}", "teacher.provider=openai", "teacher.model=m", "teacher.few_shot=0",
            "teacher.base_url=http://127.0.0.1:9/v1", "teacher.api_key_env=null", f"out={tmp_path / 'run'}", *extra]


# item 5: JSONL with U+2028 / U+2029 / U+0085 inside strings ------------------------------------------------


def test_jsonl_with_unicode_line_separators_in_strings_loads(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"text": f"line one{sep}line two {i}", "label": i % 2} for i, sep in enumerate(SEPARATORS * 2)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert SEPARATORS[0] in path.read_text(encoding="utf-8")  # raw, not escaped
    assert [r["text"] for r in read_records(str(path))] == [r["text"] for r in rows]


def test_a_labels_file_with_unicode_line_separators_trains(tmp_path, tiny_model):
    from pipeline.spec import RunSpec
    from pipeline.training import read_labelled, train

    out = tmp_path / "run"
    out.mkdir()
    rows = []
    for i in range(8):
        label = "positive" if i % 2 == 0 else "negative"
        rows.append({"messages": [{"role": "user", "content": f"Text: a film{SEPARATORS[i % 3]}number {i}"},
                                  {"role": "assistant", "content": label}], "label": label})
    (out / "labels.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert len(read_labelled(out)) == 8
    spec = RunSpec.model_validate({"student": {"model": str(tiny_model), "device": "cpu"}, "teacher": {"provider": "openai", "model": "m"},
                                   "train": {"max_steps": 2, "batch_size": 4, "checkpoint_every": 1}, "out": str(out)})
    assert train(spec).steps == 2 and (out / "student" / "adapter_config.json").is_file()


def test_answer_cache_with_unicode_line_separators_keeps_every_answer(tmp_path):
    from pipeline.answers import AnswerStore
    from pipeline.teachers.base import TeacherAnswer

    path = tmp_path / "teacher_answers.jsonl"
    with AnswerStore(path) as store:
        for i, sep in enumerate(SEPARATORS):
            store.put(f"k{i}", TeacherAnswer(text=f"reason{sep}positive"))
    again = AnswerStore(path)
    assert [again.get(f"k{i}").text for i in range(3)] == [f"reason{sep}positive" for sep in SEPARATORS]
    again.close()


# item 12: one sentence for what breaks a reader, and Excel's BOM'd CSV loads ------------------------------


def test_excel_csv_utf8_with_bom_loads_with_a_clean_header(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,label\r\na good film,positive\r\na bad film,negative\r\n".encode("utf-8"))
    records = read_records(str(path))
    assert list(records[0]) == ["text", "label"] and records[0]["text"] == "a good film"
    spec = resolve_spec(load_spec(None, [f"dataset.train={path}", "task=null", "labels=null"]))
    assert spec.task == "classification" and [e.fields["text"] for e in load_examples(spec, "train")]


def test_csv_field_longer_than_the_csv_module_default_loads(tmp_path):
    path = tmp_path / "long.csv"
    long_text = "word " * 40_000  # 200,000 characters, over csv's default 131,072
    path.write_text(f'text,label\n"{long_text}",positive\nshort,negative\n', encoding="utf-8")
    records = read_records(str(path))
    assert records[0]["text"] == long_text and records[1]["text"] == "short"


def test_csv_field_over_the_raised_limit_is_one_sentence(tmp_path, monkeypatch):
    import pipeline.datasets as datasets

    monkeypatch.setattr(datasets, "CSV_FIELD_LIMIT", 1000)
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{"x" * 2000}",positive\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="longer than"):
        read_records(str(path))


def test_csv_whose_first_row_has_extra_fields_is_one_sentence(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("text,label\na good film,positive,EXTRA\na bad film,negative\n", encoding="utf-8")
    line = one_sentence(distillery(*estimate_args(path, tmp_path)), "row 1 has 3 fields")
    assert "header" in line and "EXTRA" not in line


def test_corrupt_parquet_is_one_sentence(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + os.urandom(200) + b"not really parquet")
    one_sentence(distillery(*estimate_args(path, tmp_path)), "is not a readable Parquet file")


def test_csv_field_over_131072_characters_through_the_cli_loads(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{"word " * 30_000}",positive\nshort,negative\n', encoding="utf-8")
    result = distillery(*estimate_args(path, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "rows: 2" in result.stdout


def test_non_utf8_spec_yaml_is_one_sentence(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes("task: classification\nlabels: [n\xe9gatif, positif]\n".encode("latin-1"))
    one_sentence(distillery("spec", str(path)), "is not UTF-8 text")


def test_non_utf8_csv_is_one_sentence(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nun film tr\xe8s bon,positive\n".encode("latin-1"))
    one_sentence(distillery(*estimate_args(path, tmp_path)), "UTF-8")


# item 13: gold labels outside `labels` --------------------------------------------------------------------


def test_gold_labels_outside_the_labels_are_refused_at_plan_time(tmp_path):
    path = tmp_path / "train.jsonl"
    golds = ["positive", "negative", "Neutral", "positive", "mixed"]
    path.write_text("".join(json.dumps({"text": f"film {i}", "label": g}) + "\n" for i, g in enumerate(golds)), encoding="utf-8")
    spec = load_spec(None, [f"dataset.train={path}", "task=classification", "labels=[negative,positive]"])
    with pytest.raises(DatasetError) as err:
        load_examples(spec, "train")
    message = str(err.value)
    assert "'Neutral'" in message and "'mixed'" in message and "labels=" in message and "'positive' (" not in message
    line = one_sentence(distillery(*estimate_args(path, tmp_path, "task=classification", "labels=[negative,positive]")), "mixed")
    assert "labels=" in line


def test_gold_labels_differing_only_in_case_map_to_the_declared_label(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"film {i}", "label": g}) + "\n" for i, g in enumerate(["Positive", "NEGATIVE"])))
    spec = load_spec(None, [f"dataset.train={path}", "task=classification", "labels=[negative,positive]"])
    assert sorted(e.gold for e in load_examples(spec, "train")) == ["negative", "positive"]


# item 18: a relative DISTILLERY_HOME ------------------------------------------------------------------------


def test_relative_distillery_home_is_made_absolute(tmp_path, monkeypatch):
    from pipeline.home import distillery_home

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILLERY_HOME", "rel-home")
    home = distillery_home()
    assert home.is_absolute() and home == tmp_path / "rel-home" and home.is_dir()
    from pipeline.registry import Registry

    rec = Registry().submit(load_spec(None, ["out=runs/default"]))
    assert Path(rec.out).is_absolute() and Path(rec.out).parent == tmp_path / "rel-home" / "runs"
    assert Registry(home="rel-home").home == tmp_path / "rel-home"
