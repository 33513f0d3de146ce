"""A stand-in for a large teacher behind tests/fake_llm_server.py: it answers every row correctly from the gold labels.

    responder = gold_responder(spec)              # spec: any run spec; its train and test files are read
    with FakeLLMServer(responder=responder) as server: ...

Rows are recognised by the user turn the teacher prompt ends with (tasks.Task.render_input; the last user turn for
chat). With chain of thought asked for (the system prompt says "Think step by step"), the answer is a short
rationale and a "Final answer:" line, as a large model writes it; otherwise the bare gold answer.
"""

from __future__ import annotations

from fake_llm_server import last_user

from pipeline.datasets import load_examples
from pipeline.tasks import COT_MARKER, get_task, resolve_spec

__all__ = ["gold_answers", "gold_responder"]


def gold_answers(spec) -> dict[str, str]:
    """user-turn text -> gold answer, for every row of the spec's train and test files."""
    spec = resolve_spec(spec)
    task = get_task(spec.task)
    full = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"train_size": None, "test_size": None})})
    answers: dict[str, str] = {}
    for split in ("train", "test"):
        for ex in load_examples(full, split):
            if ex.gold is not None:
                answers[task.render_input(ex, spec.labels).strip()] = ex.gold
    return answers


def gold_responder(spec, rationale: str = "Reading the input carefully, the evidence points to one answer."):
    answers = gold_answers(spec)

    def respond(req) -> str:
        gold = answers.get(last_user(req).strip(), "unknown")
        system = " ".join(str(m.get("content")) for m in req.messages if m.get("role") == "system")
        if "Think step by step" in system:
            return f"{rationale}\n{COT_MARKER} {gold}"
        return gold

    return respond
