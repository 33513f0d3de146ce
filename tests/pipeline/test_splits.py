"""A test split when none is given: seeded, stratified, never labelled nor a demonstration; dataset.test wins."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline import splits
from pipeline.pilot import pilot_rows
from pipeline.errors import DatasetError
from pipeline import evaluation
from pipeline.labelling import choose_rows
from pipeline.spec import load_spec
from pipeline.tasks import resolve_spec


def _csv(path: Path, n: int, positive_every: int = 3) -> Path:
    """review,sentiment with string labels: one positive row in `positive_every` (a lopsided set)."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "sentiment"])
        for i in range(n):
            pos = i % positive_every == 0
            w.writerow([f"review {i}: {'a lovely' if pos else 'a dull'} film", "positive" if pos else "negative"])
    return path


def _spec(train: Path, *overrides: str):
    return resolve_spec(load_spec(None, [f"dataset.train={train}", "dataset.test=null", "teacher.few_shot=4",
                                         "dataset.train_size=null", *overrides]))


@pytest.mark.parametrize("rows,requested,expected", [
    (1000, None, 100),     # 10 %
    (300, None, 50),       # at least 50
    (100, None, 25),       # but at most a quarter of the rows
    (20_000, None, 500),   # and at most 500
    (12, None, 3),
    (3, None, 0),          # too few to hold any out
    (100, 30, 30),         # dataset.test_size replaces the share rule
    (100, 80, 50),         # ... but never more than half
])
def test_held_out_size_rule(rows, requested, expected):
    assert splits.held_out_size(rows, 0.10, requested) == expected


def test_held_out_rows_are_stratified_seeded_and_never_labelled_nor_demonstrations(tmp_path):
    spec = _spec(_csv(tmp_path / "reviews.csv", 600))  # 200 positive, 400 negative
    test = splits.test_rows(spec)
    assert len(test) == 60  # 10 % of 600
    assert Counter(e.gold for e in test) == {"negative": 40, "positive": 20}  # the labels keep their shares
    rows, demos = choose_rows(spec)
    test_texts = {e.fields["text"] for e in test}
    pilot = {e.fields["text"] for e in pilot_rows(spec)}  # gold rows the answer cue is chosen on (pipeline/pilot.py)
    assert len(pilot) == 32 and not pilot & test_texts
    assert len(rows) + len(demos) == 540 - 32
    assert not test_texts & {e.fields["text"] for e in rows}
    assert not test_texts & {e.fields["text"] for e in demos}
    assert [e.fields["text"] for e in evaluation.test_examples(spec)] == [e.fields["text"] for e in test]  # evaluation uses it
    assert [e.row for e in splits.test_rows(spec)] == [e.row for e in test]  # seeded: the same rows every time
    other = splits.test_rows(_spec(tmp_path / "reviews.csv", "dataset.seed=7"))
    assert {e.row for e in other} != {e.row for e in test}
    info = splits.split_info(spec)
    assert info["source"] == "held_out" and info["text"] == "testing on 60 rows held out from reviews.csv"


def test_train_size_slices_what_is_left_and_test_share_sets_the_size(tmp_path):
    train = _csv(tmp_path / "reviews.csv", 2000)
    spec = _spec(train, "dataset.test_share=0.2", "dataset.train_size=100", "teacher.few_shot=0")
    test = splits.test_rows(spec)
    assert len(test) == 400
    rows, _ = choose_rows(spec)
    assert len(rows) == 100 and not {e.row for e in rows} & {e.row for e in test}


def test_a_duplicated_row_cannot_leak_the_test_into_training(tmp_path):
    path = tmp_path / "dups.jsonl"
    with path.open("w") as fh:
        for i in range(200):
            text = f"film {i % 50}: {'good' if i % 2 else 'bad'}"  # every text appears four times
            fh.write(json.dumps({"text": text, "label": "positive" if i % 2 else "negative"}) + "\n")
    spec = _spec(path, "teacher.few_shot=0")
    test_texts = {e.fields["text"] for e in splits.test_rows(spec)}
    assert test_texts
    assert not test_texts & {e.fields["text"] for e in splits.training_pool(spec)}


def test_a_test_file_wins(tmp_path):
    train = _csv(tmp_path / "train.csv", 300)
    test_file = _csv(tmp_path / "test.csv", 12)
    spec = _spec(train, f"dataset.test={test_file}")
    assert len(splits.test_rows(spec)) == 12
    assert len(splits.training_pool(spec)) == 300  # nothing held out of the train file
    assert splits.split_info(spec)["text"] == "testing on 12 rows of test.csv"


def test_a_tiny_dataset_says_to_give_a_test_file(tmp_path):
    spec = _spec(_csv(tmp_path / "tiny.csv", 3), "teacher.few_shot=0")
    assert splits.split_info(spec)["source"] == "none"
    with pytest.raises(DatasetError, match=r"too few labelled rows to hold out a test split; give a test file"):
        splits.test_rows(spec)
    assert len(choose_rows(spec)[0]) == 3  # everything stays for training
