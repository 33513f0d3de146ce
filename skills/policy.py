"""What chat may change: the one allow-list for everything that arrives through Slack, the agent or MCP.

    overrides = chat_overrides("train.epochs=1 teacher.few_shot=4")   # ["train.epochs=1", "teacher.few_shot=4"]
    chat_overrides("teacher.base_url=http://x/v1")                    # PolicyError: one sentence, the operator sets it

Chat, the agent and MCP callers choose a dataset by name (skills.data_access confines it), a student from the
catalog or the operator's allowed list, a teacher by profile name (pipeline.profiles), sizes, and the knobs in
CHAT_KEYS. Endpoints, key variables, providers, models, file paths, prompt text (instructions) and `out` are the
operator's: an attempt to set one gets one sentence naming the key. The CLI (the operator at a terminal) does not
go through this module and keeps full control. Engineers adding a knob that chat may set add its key here.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from pipeline.errors import PolicyError

__all__ = ["CHAT_KEYS", "chat_overrides", "check_key", "PolicyError"]

# every dotted spec key chat may set; anything else is the operator's (teacher profiles, data folders, the CLI)
CHAT_KEYS: frozenset[str] = frozenset({
    "task", "labels",
    "dataset.train_size", "dataset.test_size", "dataset.test_share", "dataset.seed",
    "teacher.few_shot", "teacher.chain_of_thought", "teacher.self_consistency", "teacher.min_agreement",
    "teacher.min_confidence", "teacher.agree_with_gold", "teacher.logprobs",
    "teacher.params.max_tokens", "teacher.params.temperature", "teacher.params.top_p",
    "student.method", "student.lora.rank", "student.lora.alpha", "student.lora.dropout",
    "train.learning_rate", "train.epochs", "train.max_steps", "train.batch_size", "train.grad_accum", "train.batch_tokens",
    "train.max_seq_len", "train.warmup_ratio", "train.weight_decay", "train.seed", "train.val_share",
    "train.eval_every", "train.early_stopping_patience", "train.checkpoint_every", "train.keep_rationale",
    "train.gradient_checkpointing", "train.merge", "train.rationale", "train.rationale_weight",
    "train.targets", "train.kd_weight", "train.kd_temperature",
    "eval.batch_size", "eval.batch_tokens", "eval.max_new_tokens", "eval.teacher",
    "eval.judge",  # auto | teacher | off | an operator's teacher profile name (never an endpoint)
})

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_WHERE = {  # why a key is the operator's, by prefix (first match wins)
    "teacher.": "in the teacher profiles (teachers.yaml); pick a configured teacher by name instead",
    "dataset.": "by putting data in the data folders; name the dataset instead",
    "student.model": "through the student you name (the catalog or the operator's allowed models)",
    "student.": "when the run is configured at the terminal",
    "out": "(runs from chat always go to DISTILLERY_HOME/runs/<run id>)",
    "instructions": "because it is prompt text sent to the teacher",
}


def _operator_sentence(key: str) -> str:
    where = next((w for prefix, w in _WHERE.items() if key == prefix or key.startswith(prefix)),
                 "when the run is configured at the terminal")
    return f"'{key}' cannot be set from chat: the operator sets it {where}."


def check_key(key: str) -> str:
    """The key if chat may set it; PolicyError (one sentence) otherwise."""
    key = (key or "").strip()
    if not _KEY.match(key) or len(key) > 60:
        raise PolicyError("an override key is not a dotted spec key such as train.epochs; "
                          "write overrides as key=value.")
    if key in CHAT_KEYS:
        return key
    from pipeline.spec import RunSpec

    if _is_spec_key(RunSpec, key.split(".")):
        raise PolicyError(_operator_sentence(key))
    raise PolicyError(f"unknown key '{key}'; from chat you may set {', '.join(sorted(CHAT_KEYS))}.")


def _is_spec_key(model: Any, parts: list[str]) -> bool:
    fields = getattr(model, "model_fields", None)
    if not fields or parts[0] not in fields:
        return False
    if len(parts) == 1:
        return True
    annotation = fields[parts[0]].annotation
    return _is_spec_key(annotation, parts[1:])


def chat_overrides(overrides: Any) -> list[str]:
    """key=value strings from chat (a string, a list or a dict), each key checked against CHAT_KEYS."""
    if not overrides:
        return []
    if isinstance(overrides, dict):
        items = [f"{k}={v}" for k, v in overrides.items()]
    elif isinstance(overrides, str):
        try:
            items = shlex.split(overrides)
        except ValueError:  # an unbalanced quote ("Qwen's"): the words as they are
            items = overrides.split()
    else:
        items = [str(o) for o in overrides]
    out = []
    for item in items:
        if "=" not in item:
            raise PolicyError(f"'{item[:40]}' is not key=value; write overrides like train.epochs=1.")
        key, value = item.split("=", 1)
        out.append(f"{check_key(key)}={value}")
    return out
