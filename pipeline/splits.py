"""Which rows are for training and which for testing: dataset.test when given, else a seeded held-out split.

    test = test_rows(spec)          # dataset.test's rows, or the rows held out of dataset.train
    pool = training_pool(spec)      # dataset.train's rows in seeded order, minus every held-out row
    info = split_info(spec)         # {"source": "held_out", "rows": 24, "file": "movie_reviews.csv", ...}

dataset.test always wins. Without it, a share of the training file (dataset.test_share, default 10 %) is held out
before anything else happens: it is never labelled for training, never a few-shot demonstration, and the report's
teacher/base/distilled scores are computed on it. The rule for its size (`held_out_size`):

- N = rows that can be scored (rows with a gold answer when the task has a metric, else all rows);
- size = test_share x N, at least 50 and at most 500 rows (dataset.test_size, when set, replaces this);
- but never more than a quarter of N (N // 4) so that at least three quarters stay for training; and never more
  than half of N even when dataset.test_size asks for more;
- with fewer than 4 scorable rows nothing is held out, and evaluation says to give dataset.test.

For closed-answer tasks (classification, nli) the held-out rows are stratified by label (each label keeps its
share, by largest remainder, at least one row for a label that has two or more). A row whose fields equal a
held-out row's fields is removed from training too, so a duplicated line cannot leak the test into training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .datasets import Example, load_examples
from .errors import DatasetError

__all__ = ["held_out_size", "hold_out", "test_rows", "training_pool", "test_keys", "split_info", "fields_key",
           "MIN_HELD_OUT", "MAX_HELD_OUT", "DEFAULT_TEST_SHARE"]

DEFAULT_TEST_SHARE = 0.10
MIN_HELD_OUT = 50
MAX_HELD_OUT = 500
STRATIFIED_TASKS = ("classification", "nli")


def fields_key(ex: Example) -> str:
    """What makes two rows the same question (their canonical fields)."""
    return json.dumps(ex.fields, sort_keys=True, ensure_ascii=False, default=str)


def held_out_size(rows: int, share: float = DEFAULT_TEST_SHARE, requested: int | None = None) -> int:
    """How many of `rows` scorable rows to hold out for testing (see the module docstring for the rule)."""
    if rows < 4:
        return 0
    if requested:
        return max(1, min(int(requested), rows // 2))
    size = min(max(int(round(share * rows)), MIN_HELD_OUT), MAX_HELD_OUT)
    return max(1, min(size, rows // 4))


def _share(spec) -> float:
    share = getattr(spec.dataset, "test_share", None)
    return DEFAULT_TEST_SHARE if share is None else float(share)


def _all_train(spec) -> list[Example]:
    """Every training row in the seeded order load_examples uses (train_size not applied)."""
    everything = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"train_size": None})})
    return load_examples(everything, "train")


def _scorable(spec, examples: list[Example]) -> list[Example]:
    from .tasks import get_task

    if spec.task and get_task(spec.task).metric_name is None:
        return list(examples)
    return [e for e in examples if e.gold not in (None, "")]


def hold_out(spec, examples: list[Example]) -> list[Example]:
    """The held-out test rows among `examples` (seeded; stratified by label for closed tasks)."""
    candidates = _scorable(spec, examples)
    size = held_out_size(len(candidates), _share(spec), spec.dataset.test_size)
    if size == 0:
        return []
    rng = random.Random(f"distillery-test-split-{spec.dataset.seed}")
    if spec.task not in STRATIFIED_TASKS:
        order = list(candidates)
        rng.shuffle(order)
        return order[:size]
    by_label: dict[str, list[Example]] = {}
    for e in candidates:
        by_label.setdefault(str(e.gold), []).append(e)
    labels = sorted(by_label)
    for label in labels:
        rng.shuffle(by_label[label])
    total = len(candidates)
    exact = {lab: size * len(by_label[lab]) / total for lab in labels}
    take = {lab: int(exact[lab]) for lab in labels}
    for lab in labels:  # a label with two or more rows is represented in the test
        if take[lab] == 0 and len(by_label[lab]) >= 2 and sum(take.values()) < size:
            take[lab] = 1
    rest = sorted(labels, key=lambda lab: (-(exact[lab] - int(exact[lab])), lab))
    while sum(take.values()) < size:
        grew = False
        for lab in rest:
            if sum(take.values()) < size and take[lab] < len(by_label[lab]) - 1:
                take[lab] += 1
                grew = True
        if not grew:
            break
    chosen = [e for lab in labels for e in by_label[lab][: take[lab]]]
    rng.shuffle(chosen)
    return chosen


def _split(spec) -> tuple[list[Example], list[Example]]:
    """(training pool, held-out rows) for a spec without dataset.test."""
    pool = _all_train(spec)
    held = hold_out(spec, pool)
    keys = {fields_key(e) for e in held}
    return [e for e in pool if fields_key(e) not in keys], held


def test_rows(spec) -> list[Example]:
    """The rows the report's scores are computed on: dataset.test, else the held-out rows; DatasetError when none."""
    if spec.dataset.test:
        return load_examples(spec, "test")
    _, held = _split(spec)
    if not held:
        name = Path(str(spec.dataset.train)).name
        raise DatasetError(f"dataset '{name}' has too few labelled rows to hold out a test split; "
                           "give a test file with dataset.test=PATH.")
    return held


def training_pool(spec) -> list[Example]:
    """Training rows in seeded order (the caller slices dataset.train_size), never including a test row."""
    if spec.dataset.test:
        return _all_train(spec)
    return _split(spec)[0]


def test_keys(spec) -> set[str]:
    """fields_key of every test row (demonstrations and labelled rows must avoid them)."""
    if spec.dataset.test:
        return {fields_key(e) for e in load_examples(spec, "test")}
    return {fields_key(e) for e in _split(spec)[1]}


def split_info(spec) -> dict[str, Any]:
    """Where the test rows come from, for plans and reports: source file/held_out/none, rows, file name, sentence."""
    if spec.dataset.test:
        rows = len(load_examples(spec, "test"))
        name = Path(str(spec.dataset.test)).name
        return {"source": "file", "rows": rows, "file": name, "text": f"testing on {rows} rows of {name}"}
    name = Path(str(spec.dataset.train)).name
    try:
        rows = len(_split(spec)[1])
    except DatasetError:
        rows = 0
    if not rows:
        return {"source": "none", "rows": 0, "file": name,
                "text": f"no test rows: {name} is too small to hold some out; give dataset.test=PATH for scores"}
    return {"source": "held_out", "rows": rows, "file": name, "share": _share(spec),
            "text": f"testing on {rows} rows held out from {name}"}
