"""Tasks: for each task type, the prompts (teacher and student), the answer parser and the metric.

    task = get_task("classification")
    msgs = teacher_messages(task, example, labels, demos, chain_of_thought=True)
    parsed = task.parse("Reasoning... Final answer: **Positive**.", example, labels)   # Parsed(label="positive")
    task.score(preds, golds, labels)   # {"accuracy": ..., "macro_f1": ...}

Everything here is pure. The parser is lenient with what real models write (JSON with reason/answer,
"Answer: X", "Final answer: **X**", case, punctuation, the label's index) and strict about ambiguity: two
different answers is a rejection, not a guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from . import metrics
from .datasets import LETTERS, Example
from .errors import SpecError

__all__ = [
    "Task",
    "Parsed",
    "get_task",
    "TASK_NAMES",
    "teacher_messages",
    "student_messages",
    "format_target",
    "task_instruction",
    "default_labels",
    "COT_MARKER",
]

COT_MARKER = "Final answer:"
DEFAULT_LABELS = {"nli": ["entailment", "neutral", "contradiction"]}


@dataclass
class Parsed:
    label: str | None  # the final answer, normalised; None when rejected
    rationale: str | None = None
    error: str | None = None  # "unparseable" | "ambiguous" | "empty"


# answer extraction -----------------------------------------------------------------------------------------

_JSON_ANSWER_KEYS = ("final_answer", "answer", "label", "final", "prediction", "output", "summary")
_JSON_REASON_KEYS = ("reason", "reasoning", "rationale", "explanation", "thoughts", "thinking")
_MARKERS = [
    re.compile(r"final\s+answer\s*(?:is)?\s*[:：]?\s*", re.I),
    re.compile(r"####\s*"),
    re.compile(r"\b(?:the\s+)?answer\s*(?:is)?\s*[:：]\s*|\bthe\s+answer\s+is\s+", re.I),
    re.compile(r"\b(?:label|sentiment|prediction|classification)\s*[:：]\s*", re.I),
]


def _strip_markup(text: str) -> str:
    t = text.strip()
    t = re.sub(r"^[\s*_`\"'“”‘’(\[]+|[\s*_`\"'“”‘’)\].,;:!]+$", "", t)
    return t.strip()


_EMPHASIS = r"[\s*_#>]*"  # markdown around a marker: "**Final answer:** X", "### Answer: X"


def clean_rationale(text: str) -> str | None:
    """The reasoning before a marker without the markdown that opened the marker (no dangling "**")."""
    t = re.sub(r"[\s*_#>]+$", "", text).strip()
    return t or None


def clean_answer(text: str) -> str:
    """The text after a marker without the markdown that closed the marker ("** X" -> "X")."""
    return re.sub(r"^[\s*_]+", "", text).strip()


def _json_answer(text: str) -> tuple[str | None, str | None] | None:
    m = re.search(r"\{.*\}", text, re.S)
    if not m:
        return None
    try:
        obj = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    lower = {str(k).lower(): v for k, v in obj.items()}
    answer = next((lower[k] for k in _JSON_ANSWER_KEYS if k in lower), None)
    if answer is None:
        return None
    reason = next((lower[k] for k in _JSON_REASON_KEYS if k in lower), None)
    return str(answer), (str(reason) if reason is not None else None)


def split_answer(text: str) -> tuple[str, str | None, bool]:
    """(answer part, rationale or None, whether an explicit marker or JSON was found).

    The last marker with something after it wins: a trailing empty "Final answer:" falls back to an earlier one.
    """
    js = _json_answer(text)
    if js is not None:
        return js[0], js[1], True
    for marker in _MARKERS:
        found = list(marker.finditer(text))
        for i in range(len(found) - 1, -1, -1):
            m, end = found[i], (found[i + 1].start() if i + 1 < len(found) else len(text))
            answer = clean_answer(text[m.end():end]).split("\n\n")[0].strip()
            if _strip_markup(answer):
                return answer, clean_rationale(text[: m.start()]), True
        if found:
            return "", clean_rationale(text[: found[-1].start()]), True
    return text.strip(), None, False


# tasks -----------------------------------------------------------------------------------------------------


class Task:
    name = "task"
    choice_based = False  # answers come from a closed set (scored by log-likelihood locally)
    metric_name: str | None = None
    instruction = ""

    def render_input(self, ex: Example, labels: list[str] | None) -> str:
        raise NotImplementedError

    def instruction_for(self, ex: Example, labels: list[str] | None) -> str:
        """The instruction sentence for this row (a dataset's shape can call for its own wording)."""
        return self.instruction

    def options(self, ex: Example, labels: list[str] | None) -> list[str] | None:
        return None

    def answer_hint(self, ex: Example, labels: list[str] | None) -> str:
        return ""

    def parse(self, text: str, ex: Example, labels: list[str] | None) -> Parsed:
        raise NotImplementedError

    def score(self, preds: list[str | None], golds: list[str], labels: list[str] | None) -> dict[str, float]:
        raise NotImplementedError


class _ChoiceTask(Task):
    choice_based = True
    metric_name = "accuracy"

    def answer_hint(self, ex, labels):
        opts = self.options(ex, labels) or []
        return "Answer with one of: " + ", ".join(opts) + "."

    def _match(self, candidate: str, ex: Example, labels: list[str] | None) -> tuple[str | None, str | None]:
        opts = self.options(ex, labels) or []
        c = _strip_markup(candidate)
        low = c.lower()
        for o in opts:
            if low == o.lower():
                return o, None
        if re.fullmatch(r"\d+", c) and opts and not any(o.isdigit() for o in opts):
            i = int(c)
            return (opts[i], None) if 0 <= i < len(opts) else (None, "unparseable")
        found = {o for o in opts if re.search(r"(?<![\w-])" + re.escape(o.lower()) + r"(?![\w-])", low)}
        if len(found) == 1:
            return found.pop(), None
        if len(found) > 1:
            return None, "ambiguous"
        return None, "unparseable"

    def parse(self, text, ex, labels):
        if not text or not text.strip():
            return Parsed(None, None, "empty")
        answer, rationale, marked = split_answer(text)
        label, err = self._match(answer, ex, labels)
        if label is None and err == "unparseable" and not marked:
            first_line = text.strip().splitlines()[0]
            label, err = self._match(first_line, ex, labels)
        return Parsed(label, rationale, err)

    def score(self, preds, golds, labels):
        out = {"accuracy": metrics.accuracy(preds, golds)}
        opts = labels if self.name != "multiple_choice" else None
        out["macro_f1"] = metrics.macro_f1(preds, golds, opts)
        return out


class Classification(_ChoiceTask):
    name = "classification"
    instruction = "Classify the text."

    def render_input(self, ex, labels):
        return f"Text: {str(ex.fields['text']).strip()}"

    def options(self, ex, labels):
        return list(labels or [])


class NLI(_ChoiceTask):
    name = "nli"
    instruction = "Decide whether the premise entails the hypothesis, contradicts it, or is neutral towards it."

    def render_input(self, ex, labels):
        return f"Premise: {str(ex.fields['premise']).strip()}\nHypothesis: {str(ex.fields['hypothesis']).strip()}"

    def options(self, ex, labels):
        return list(labels or DEFAULT_LABELS["nli"])


class MultipleChoice(_ChoiceTask):
    name = "multiple_choice"
    instruction = "Answer the multiple-choice question with the letter of the best option."
    _WORDING = {  # style -> (instruction, label of the question text)
        "question": (instruction, "Question"),
        "completion": ("Pick the option that most likely continues the text; answer with its letter.", "Text"),
        "statement": ("The statement goes against common sense. Pick the option that gives the reason why; answer with its letter.",
                      "Statement"),
    }

    @staticmethod
    def style(ex: Example) -> str:
        """question | completion (HellaSwag: ctx, endings, activity) | statement (ComVE: a false statement, three reasons).

        Told from the fields: a `ctx` column or an activity label is a completion; a question column holding a
        statement (no "?", no blank) with exactly three sentence-long options is ComVE's shape.
        """
        q = str(ex.fields["question"]).strip()
        if ex.extra.get("question_field") == "ctx" or ex.extra.get("activity"):
            return "completion"
        choices = [str(c).strip() for c in ex.fields["choices"]]
        if not q.endswith("?") and "_" not in q and len(choices) == 3 and all(len(c.split()) >= 3 for c in choices):
            return "statement"
        return "question"

    def instruction_for(self, ex, labels):
        return self._WORDING[self.style(ex)][0]

    def render_input(self, ex, labels):
        label = self._WORDING[self.style(ex)][1]
        lines = [f"Activity: {str(ex.extra['activity']).strip()}"] if ex.extra.get("activity") else []
        lines.append(f"{label}: {str(ex.fields['question']).strip()}")
        lines += [f"{LETTERS[i]}. {str(c).strip()}" for i, c in enumerate(ex.fields["choices"])]
        return "\n".join(lines)

    def options(self, ex, labels):
        return list(LETTERS[: len(ex.fields["choices"])])

    def _match(self, candidate, ex, labels):
        c = _strip_markup(candidate)
        m = re.fullmatch(r"\(?([A-Ja-j])\)?[.):]?(?:\s+.*)?", c, re.S)
        opts = self.options(ex, labels)
        if m and m.group(1).upper() in opts:
            rest = c[m.end(1):].strip(" .):")
            if not rest or rest.lower() == str(ex.fields["choices"][LETTERS.index(m.group(1).upper())]).lower().strip(" ."):
                return m.group(1).upper(), None
        texts = [str(x).strip().lower().rstrip(".") for x in ex.fields["choices"]]
        if c.lower().rstrip(".") in texts:
            return LETTERS[texts.index(c.lower().rstrip("."))], None
        found = {LETTERS[i] for i, t in enumerate(texts) if t and t in c.lower()}
        found |= {x for x in re.findall(r"(?<![\w])\(?([A-J])\)(?![\w])|(?:option|choice)\s+([A-J])\b", c) for x in x if x and x in opts}
        if len(found) == 1:
            return found.pop(), None
        return None, ("ambiguous" if len(found) > 1 else "unparseable")


class Math(Task):
    name = "math"
    metric_name = "exact_match"
    instruction = "Solve the math word problem."

    def render_input(self, ex, labels):
        return f"Problem: {str(ex.fields['question']).strip()}"

    def answer_hint(self, ex, labels):
        return "Give the final answer as a number."

    def parse(self, text, ex, labels):
        if not text or not text.strip():
            return Parsed(None, None, "empty")
        boxed = re.findall(r"\\boxed\{([^}]*)\}", text)
        answer, rationale, marked = split_answer(text)
        if boxed and not marked:
            answer, rationale, marked = boxed[-1], text[: text.rfind("\\boxed")].strip() or None, True
        nums = [metrics.normalize_number(n) for n in re.findall(r"[-+]?\$?\d[\d,]*\.?\d*", answer)]
        nums = [n for n in nums if n is not None]
        if marked:
            distinct = list(dict.fromkeys(nums))
            if len(distinct) == 1:
                return Parsed(distinct[0], rationale, None)
            return Parsed(None, rationale, "ambiguous" if distinct else "unparseable")
        if nums:  # no marker: the last number, the common convention
            return Parsed(nums[-1], text[: text.rfind(answer)].strip() or None, None)
        return Parsed(None, None, "unparseable")

    def score(self, preds, golds, labels):
        return {"exact_match": metrics.exact_match(preds, golds)}


_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course)\b[!,.]?\s*)?"
    r"(?:here(?:'s|’s| is| are)\b[^\n:：]{0,80}|(?:the |a )?(?:brief |short |concise )?summary\b[^\n:：]{0,60})[:：]\s*", re.I)


def clean_summary(text: str) -> str:
    """A summary without a chatty preamble ("Here is a summary of the conversation:") or markdown."""
    t = text.strip()
    t = re.sub(r"^#{1,6}\s+", "", t, flags=re.M)  # headings ("#Person1#" is no heading: no space after #)
    t = re.sub(r"(\*\*|__)", "", t)  # bold
    t = re.sub(r"^\s*[-*•]\s+", "", t, flags=re.M)  # bullets
    for _ in range(2):  # "Sure! Here is a summary:" then "Summary:" on the next line
        t = _PREAMBLE.sub("", t, count=1).strip()
    return t.strip()


class Summarization(Task):
    name = "summarization"
    metric_name = "rouge_l"
    instruction = "Summarize the text in one to three sentences."

    def render_input(self, ex, labels):
        return f"Text:\n{str(ex.fields['text']).strip()}"

    def answer_hint(self, ex, labels):
        return "Reply with the summary only."

    def parse(self, text, ex, labels):
        if not text or not text.strip():
            return Parsed(None, None, "empty")
        js = _json_answer(text)
        if js is not None:
            body = clean_summary(js[0])
            return Parsed(body or None, js[1], None if body else "empty")
        m = list(re.finditer(r"final\s+answer\s*[:：]", text, re.I))
        if m:
            body = clean_summary(clean_answer(text[m[-1].end():]))
            return Parsed(body or None, clean_rationale(text[: m[-1].start()]), None if body else "empty")
        body = clean_summary(text)
        return Parsed(body or None, None, None if body else "empty")

    def score(self, preds, golds, labels):
        return {"rouge_l": metrics.rouge_l(preds, golds)}


class Chat(Task):
    name = "chat"
    metric_name = "rouge_l"  # against the test file's reference replies (the last assistant turn of each row)
    instruction = "You are a helpful assistant."

    def render_input(self, ex, labels):
        msgs = ex.fields["messages"]
        return str(msgs[-1]["content"]) if msgs else ""

    def parse(self, text, ex, labels):
        if not text or not text.strip():
            return Parsed(None, None, "empty")
        return Parsed(text.strip(), None, None)

    def score(self, preds, golds, labels):
        if not golds or any(g is None for g in golds):
            return {}  # no reference replies: nothing to compare with
        return {"rouge_l": metrics.rouge_l(preds, golds)}


_TASKS: dict[str, Task] = {t.name: t for t in (Classification(), NLI(), MultipleChoice(), Math(), Summarization(), Chat())}
TASK_NAMES = tuple(_TASKS)


def get_task(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError:
        raise SpecError(f"unknown task '{name}'; known: {', '.join(sorted(_TASKS))}.") from None


def default_labels(task: str, golds: list[str | None]) -> list[str] | None:
    """Labels when the spec gives none: NLI's three, or the sorted distinct gold strings."""
    if task == "nli":
        seen = {g for g in golds if g}
        return DEFAULT_LABELS["nli"] if seen <= set(DEFAULT_LABELS["nli"]) else sorted(seen)
    if task == "classification":
        seen = sorted({g for g in golds if g})
        return seen or None
    return None


# messages --------------------------------------------------------------------------------------------------


def task_instruction(task: Task, ex: Example, labels: list[str] | None, instructions: str | None = None) -> str:
    """The instruction sentence of a prompt (the spec's `instructions`, else the task's), before any answer hint."""
    base = instructions or task.instruction_for(ex, labels)
    if task.name == "classification" and labels and not instructions:
        base = f"Classify the text as {' or '.join(labels) if len(labels) == 2 else 'one of: ' + ', '.join(labels)}."
    return base


def system_prompt(task: Task, ex: Example, labels: list[str] | None, chain_of_thought: bool, instructions: str | None = None) -> str:
    base = task_instruction(task, ex, labels, instructions)
    if task.name == "chat":
        return base
    hint = task.answer_hint(ex, labels)
    if chain_of_thought:
        return f"{base} Think step by step, then end with a line '{COT_MARKER} <answer>'. {hint}".strip()
    if task.choice_based:
        return f"{base} {hint} Reply with the answer only.".strip()
    return f"{base} {hint}".strip()  # summarization's hint says "Reply with the summary only."


def format_target(label: str, rationale: str | None, with_rationale: bool) -> str:
    """The assistant text a student learns (and a demonstration shows)."""
    if with_rationale and rationale:
        return f"{rationale.strip()}\n{COT_MARKER} {label}"
    return label


def student_messages(task: Task, ex: Example, labels: list[str] | None, chain_of_thought: bool = False, instructions: str | None = None) -> list[dict[str, str]]:
    """The zero-shot prompt the student is trained and evaluated with (no assistant turn)."""
    if task.name == "chat":
        sys = [{"role": "system", "content": instructions}] if instructions else []
        return sys + [dict(m) for m in ex.fields["messages"]]
    return [
        {"role": "system", "content": system_prompt(task, ex, labels, chain_of_thought, instructions)},
        {"role": "user", "content": task.render_input(ex, labels)},
    ]


def teacher_messages(task: Task, ex: Example, labels: list[str] | None, demos: list[Example], chain_of_thought: bool = False, instructions: str | None = None) -> list[dict[str, str]]:
    """The teacher's prompt: instructions, k demonstrations as earlier turns, then the row."""
    msgs = student_messages(task, ex, labels, chain_of_thought, instructions)
    if not demos or task.name == "chat":
        return msgs
    shots: list[dict[str, str]] = []
    for d in demos:
        shots.append({"role": "user", "content": task.render_input(d, labels)})
        shots.append({"role": "assistant", "content": format_target(d.gold or "", d.extra.get("rationale"), chain_of_thought)})
    return msgs[:1] + shots + msgs[1:]


def to_record(messages: list[dict[str, str]], answer: str) -> list[dict[str, str]]:
    return list(messages) + [{"role": "assistant", "content": answer}]


def describe(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def resolve_spec(spec):
    """Fill in task and labels from the training data when the spec leaves them out (returns a new spec)."""
    from .datasets import detect_task, load_examples, read_records

    if spec.task is not None and (spec.labels is not None or spec.task not in ("classification", "nli")):
        return spec
    source = spec.dataset.train or spec.dataset.test
    if not source:
        raise SpecError("no dataset given; set dataset.train=PATH (a JSONL, CSV or Parquet file).")
    split = spec.dataset.train_split if spec.dataset.train else spec.dataset.test_split
    task = spec.task or detect_task(read_records(source, split)[0], spec.dataset.fields)
    data = spec.model_dump()
    data["task"] = task
    if task in ("classification", "nli") and spec.labels is None:
        probe = spec.model_copy(update={"task": task})
        examples = load_examples(probe, "train" if spec.dataset.train else "test")
        data["labels"] = default_labels(task, [e.gold for e in examples])
        if not data["labels"]:
            raise SpecError(f"cannot tell the labels of this {task} dataset; set labels=[name0,name1,...].")
    return type(spec).model_validate(data)
