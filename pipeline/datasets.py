"""Datasets: read local JSONL/CSV/Parquet files or hub datasets into task-neutral Examples.

    examples = load_examples(spec, "train")   # seeded shuffle, first dataset.train_size rows
    examples[0].fields, examples[0].gold

Field detection knows the shapes of SST-2, ConjNLI, ComVE, HellaSwag, GSM8K, DialogSum and chat JSONL with
`messages` (Azure's distillation format); `dataset.fields` maps any other columns. Relative paths that do not
exist from the working folder are looked up among the datasets bundled with Distillery (pipeline/data).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DatasetError
from .jsonl import jsonl_lines

__all__ = ["Example", "BUNDLED_DIR", "resolve_path", "read_records", "detect_task", "label_column", "text_column", "guess_columns", "load_examples", "to_examples"]

BUNDLED_DIR = Path(__file__).parent / "data"
LETTERS = "ABCDEFGHIJ"
CSV_FIELD_LIMIT = 64 * 1024 * 1024  # characters per CSV field (csv's default, 131,072, is below one long document)
_EXTRA = "\0extra"  # DictReader's key for fields beyond the header


@dataclass
class Example:
    """One dataset row in canonical form.

    fields by task: classification {text}; nli {premise, hypothesis}; multiple_choice {question, choices};
    math {question}; summarization {text}; chat {messages} (the conversation up to the last user turn).
    gold: label name (classification, nli), letter (multiple_choice), final number (math), reference
    summary (summarization), reference reply (chat), or None when the dataset has none.
    """

    row: Any
    fields: dict[str, Any]
    gold: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_path(source: str) -> Path | None:
    """A local file for this source, or None if it is not a local file (then it may be a hub id)."""
    p = Path(source).expanduser()
    if p.is_file():
        return p
    bundled = BUNDLED_DIR / source
    if not p.is_absolute() and bundled.is_file():
        return bundled
    return None


def _looks_like_file(source: str) -> bool:
    return source.endswith((".jsonl", ".json", ".csv", ".tsv", ".parquet")) or "/" in source and Path(source).suffix != ""


def read_records(source: str, split: str = "train") -> list[dict[str, Any]]:
    """Read raw records from a local file or a Hugging Face hub dataset."""
    path = resolve_path(source)
    if path is None:
        if _looks_like_file(source) or source.startswith((".", "/", "~")):
            raise DatasetError(f"dataset file '{source}' does not exist; check the path (relative to where you run distillery).")
        return _read_hub(source, split)
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            records = _read_json(path)
        elif suffix in (".csv", ".tsv"):
            records = _read_csv(path, "\t" if suffix == ".tsv" else ",")
        elif suffix == ".parquet":
            records = _read_parquet(path)
        else:
            raise DatasetError(f"dataset file '{path}' has an unknown format; use .jsonl, .csv, .tsv or .parquet.")
    except UnicodeDecodeError as err:
        raise DatasetError(f"dataset file '{path}' is not UTF-8 text (byte {err.start}); save it as UTF-8 (Excel: \"CSV UTF-8\").") from None
    except OSError as err:
        raise DatasetError(f"dataset file '{path}' cannot be read ({type(err).__name__}); check it exists and you may read it.") from None
    if not records:
        raise DatasetError(f"dataset file '{path}' has no rows; give a file with at least one record.")
    return records


def _read_csv(path: Path, delimiter: str) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV file; a BOM (Excel's "CSV UTF-8") is dropped; a row longer than the header is an error."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    records = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter, restkey=_EXTRA)
        try:
            for rec in reader:
                if _EXTRA in rec:
                    header = len(reader.fieldnames or [])
                    raise DatasetError(f"dataset file '{path}' row {len(records) + 1} has {header + len(rec[_EXTRA])} fields but the header "
                                       f"has {header}; quote fields that contain '{delimiter}' or fix the header.")
                records.append(rec)
        except csv.Error as err:
            if "field larger than field limit" in str(err):
                raise DatasetError(f"dataset file '{path}' row {len(records) + 1} has a field longer than {CSV_FIELD_LIMIT:,} characters "
                                   "(often an unclosed quote); check the quoting or shorten the field.") from None
            raise DatasetError(f"dataset file '{path}' is not valid CSV near row {len(records) + 1} ({err}); fix or re-export it.") from None
    return records


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, ValueError):
        raise DatasetError(f"dataset file '{path}' is not a readable Parquet file (corrupt or truncated); re-export it.") from None


def _read_json(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetError(f"dataset file '{path}' is not valid JSON (line {err.lineno}); fix or re-export it.") from None
        return [r for r in data if isinstance(r, dict)]
    records = []
    for n, line in jsonl_lines(text):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise DatasetError(f"dataset file '{path}' line {n} is not valid JSON; each line must be one JSON object.") from None
        if not isinstance(rec, dict):
            raise DatasetError(f"dataset file '{path}' line {n} is not a JSON object; each line must be one object.")
        records.append(rec)
    return records


def _read_hub(source: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets as hf_datasets  # optional: real users have the hub
    except ImportError:
        raise DatasetError(f"'{source}' is not a local file and the `datasets` package is not installed; pip install datasets, or give a local file.") from None
    name, _, config = source.partition(":")
    try:
        ds = hf_datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # the hub raises many types; one sentence for all
        raise DatasetError(f"could not load hub dataset '{source}' split '{split}' ({type(err).__name__}); check the id and your network, or give a local file.") from None
    return [dict(r) for r in ds]


# field detection -------------------------------------------------------------------------------------------

_CANDIDATES = {
    "text": ["text", "sentence", "review", "content", "input", "document", "dialogue", "article", "prompt", "question"],
    "premise": ["premise", "sentence1", "context"],
    "hypothesis": ["hypothesis", "sentence2"],
    "question": ["question", "ctx", "query", "problem", "goal"],
    "choices": ["choices", "endings", "options"],
    "label": ["label", "answerKey", "answer_key", "gold", "target", "sentiment", "category", "class", "output", "answer"],
    "final": ["final", "final_answer"],
    "answer": ["answer", "solution"],
    "summary": ["summary", "highlights", "reference"],
    "messages": ["messages", "conversation"],
}


def _field(rec: dict, canonical: str, mapping: dict[str, str]) -> str | None:
    if canonical in mapping:
        return mapping[canonical]
    for name in _CANDIDATES.get(canonical, []):
        if name in rec:
            return name
    return None


def label_column(rec: dict[str, Any], mapping: dict[str, str] | None = None) -> str | None:
    """The column holding the gold answer (label, sentiment, category, class, target, output, answer, ...)."""
    return _field(rec, "label", mapping or {})


def text_column(rec: dict[str, Any], mapping: dict[str, str] | None = None) -> str | None:
    """The column holding the input text (text, sentence, review, content, input, prompt, question, ...)."""
    return _field(rec, "text", mapping or {})


MAX_CLASSES = 50  # a label column has 2..50 distinct values; more looks like free text


def guess_columns(records: list[dict[str, Any]], mapping: dict[str, str] | None = None) -> dict[str, Any]:
    """Which column is the text and which the label: {"decided", "task", "text", "label", "columns", "labels"}.

    Decided when the fields name another task (nli, math, ...) or a text column and a label column with 2-50
    distinct values are found; otherwise "text"/"label" are best guesses (the longest string column, the column
    with fewest distinct values) for a person to confirm."""
    first = records[0]
    columns = [c for c in first if c not in ("row", "id")]
    try:
        task = detect_task(first, mapping)
    except DatasetError:
        task = None
    if task not in (None, "classification"):
        return {"decided": True, "task": task, "text": None, "label": None, "columns": columns, "labels": None}
    distinct = {c: {str(r.get(c)) for r in records[:5000] if r.get(c) not in (None, "")} for c in columns}
    text, label = text_column(first, mapping), label_column(first, mapping)
    if text and label and text != label and 2 <= len(distinct.get(label, ())) <= MAX_CLASSES:
        return {"decided": True, "task": "classification", "text": text, "label": label, "columns": columns,
                "labels": sorted(distinct[label])}

    def length(c: str) -> float:
        values = [r.get(c) for r in records[:200]]
        return sum(len(v) for v in values if isinstance(v, str)) / max(1, len(values))

    guess_text = text or max(columns, key=length, default=None)
    small = [c for c in columns if c != guess_text and 2 <= len(distinct[c]) <= MAX_CLASSES]
    guess_label = label if label in small else min(small, key=lambda c: len(distinct[c]), default=None)
    return {"decided": False, "task": "classification", "text": guess_text, "label": guess_label, "columns": columns,
            "labels": sorted(distinct[guess_label]) if guess_label else None}


def detect_task(rec: dict[str, Any], mapping: dict[str, str] | None = None) -> str:
    """Guess the task from one record's fields."""
    m = mapping or {}
    if _field(rec, "messages", m):
        return "chat"
    if _field(rec, "premise", m) and _field(rec, "hypothesis", m):
        return "nli"
    if _field(rec, "choices", m) and _field(rec, "question", m):
        return "multiple_choice"
    if _field(rec, "summary", m):
        return "summarization"
    if _field(rec, "question", m) and (_field(rec, "final", m) or _field(rec, "answer", m)):
        return "math"
    if _field(rec, "text", m):
        return "classification"
    raise DatasetError(f"cannot tell the task from fields {sorted(rec)}; set task=... and dataset.fields (e.g. dataset.fields.text=COLUMN).")


def _gold_label(value: Any, labels: list[str] | None) -> str | None:
    if value is None or value == "":
        return None
    if labels is not None:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit() and value.strip() not in labels):
            i = int(value)
            if 0 <= i < len(labels):
                return labels[i]
            raise DatasetError(f"gold label {i} is out of range for labels {labels}; set labels=[...] with one name per class.")
        return str(value).strip()
    return str(value).strip()


def _math_final(rec: dict, m: dict[str, str]) -> str | None:
    f = _field(rec, "final", m)
    if f and rec.get(f) not in (None, ""):
        return str(rec[f]).strip()
    a = _field(rec, "answer", m)
    if a and rec.get(a) not in (None, ""):
        text = str(rec[a])
        return text.rsplit("####", 1)[-1].strip() if "####" in text else text.strip()
    return None


def to_examples(records: list[dict[str, Any]], task: str, labels: list[str] | None, mapping: dict[str, str] | None, source: str) -> list[Example]:
    """Convert raw records to Examples for this task; raises DatasetError naming missing fields."""
    m = dict(mapping or {})
    first = records[0]
    need = {
        "classification": ["text"],
        "nli": ["premise", "hypothesis"],
        "multiple_choice": ["question", "choices"],
        "math": ["question"],
        "summarization": ["text"],
        "chat": ["messages"],
    }[task]
    cols = {c: _field(first, c, m) for c in need}
    missing = [c for c, col in cols.items() if col is None or col not in first]
    if missing:
        raise DatasetError(
            f"dataset '{source}' has no field for {', '.join(missing)} (fields: {', '.join(sorted(first))}); "
            f"map it with dataset.fields.{missing[0]}=COLUMN."
        )
    label_col = _field(first, "label", m)
    out: list[Example] = []
    for i, rec in enumerate(records):
        row = rec.get("row", rec.get("id", i))
        fields = {c: rec.get(col) for c, col in cols.items()}
        gold: str | None = None
        if task in ("classification", "nli"):
            gold = _gold_label(rec.get(label_col), labels) if label_col else None
        elif task == "multiple_choice":
            choices = fields["choices"]
            if isinstance(choices, dict) and "text" in choices:  # ARC/OpenBookQA style
                choices = choices["text"]
            fields["choices"] = [str(c) for c in (choices or [])]
            raw = rec.get(label_col) if label_col else None
            if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit()):
                gold = LETTERS[int(raw)]
            elif raw not in (None, ""):
                gold = str(raw).strip().upper()
        elif task == "math":
            gold = _math_final(rec, m)
        elif task == "summarization":
            s = _field(rec, "summary", m)
            gold = str(rec[s]).strip() if s and rec.get(s) else None
        elif task == "chat":
            msgs = [dict(role=x.get("role"), content=x.get("content")) for x in (fields["messages"] or [])]
            if msgs and msgs[-1]["role"] == "assistant":
                gold = msgs[-1]["content"]
                msgs = msgs[:-1]
            fields["messages"] = msgs
        for c, v in fields.items():
            if v is None or v == "" or v == []:
                raise DatasetError(f"dataset '{source}' row {row} has an empty '{cols.get(c, c)}'; remove the row or fix the file.")
        extra = {}
        if task == "multiple_choice":  # the wording depends on the dataset's shape (tasks.MultipleChoice.style)
            extra["question_field"] = cols["question"]
            if rec.get("activity_label"):  # HellaSwag's activity ("Clean and jerk") gives the context
                extra["activity"] = str(rec["activity_label"])
        out.append(Example(row=row, fields=fields, gold=gold, extra=extra))
    if task in ("classification", "nli") and labels:
        _check_golds(out, labels, source)
    return out


def _check_golds(examples: list[Example], labels: list[str], source: str) -> None:
    """Gold labels are the declared names (case aside) or refused: a gold outside `labels` is always scored wrong."""
    by_case = {name.casefold(): name for name in labels}
    unknown: dict[str, int] = {}
    for ex in examples:
        if ex.gold is None or ex.gold in labels:
            continue
        if ex.gold.casefold() in by_case:
            ex.gold = by_case[ex.gold.casefold()]
        else:
            unknown[ex.gold] = unknown.get(ex.gold, 0) + 1
    if unknown:
        shown = ", ".join(f"{name[:40]!r} ({n} rows)" for name, n in list(unknown.items())[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise DatasetError(f"dataset '{source}' has gold labels that are not in labels {labels}: {shown}{more}; add them with "
                           f"labels=[{','.join(labels + list(unknown)[:8])}] or fix those rows in the data.")


def _shuffle_take(examples: list[Example], size: int | None, seed: int) -> list[Example]:
    if size is None or size >= len(examples):
        order = list(examples)
        random.Random(seed).shuffle(order)
        return order
    order = list(examples)
    random.Random(seed).shuffle(order)
    return order[:size]


def load_examples(spec, split: str) -> list[Example]:
    """Examples of the spec's train or test split: seeded shuffle, then the first N rows."""
    source = spec.dataset.train if split == "train" else spec.dataset.test
    if not source:
        raise DatasetError(f"no {split} dataset given; set dataset.{split}=PATH (a JSONL, CSV or Parquet file).")
    hub_split = spec.dataset.train_split if split == "train" else spec.dataset.test_split
    records = read_records(source, hub_split)
    task = spec.task or detect_task(records[0], spec.dataset.fields)
    examples = to_examples(records, task, spec.labels, spec.dataset.fields, source)
    size = spec.dataset.train_size if split == "train" else spec.dataset.test_size
    return _shuffle_take(examples, size, spec.dataset.seed)
