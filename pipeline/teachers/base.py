"""The teacher interface and registry.

A teacher answers chat requests. API teachers (openai, azure) answer one request at a time and the labelling
engine runs many concurrently; the local teacher answers a batch per forward pass (batch_size > 1).

    register_teacher("openai", OpenAITeacher)        # built-ins register exactly like third-party teachers
    teacher = get_teacher("openai")(spec.teacher)    # unknown names raise UnknownTeacherError
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownTeacherError

__all__ = ["TeacherRequest", "TeacherAnswer", "Teacher", "TransientError", "register_teacher", "get_teacher", "teacher_names"]


@dataclass
class TeacherRequest:
    messages: list[dict[str, str]]
    params: dict[str, Any]  # max_tokens, temperature, top_p, frequency_penalty, presence_penalty, stop
    options: list[str] | None = None  # closed answer set: a local teacher may score these instead of generating
    key: str = ""  # cache key (hash of model, messages, params, sample index)


@dataclass
class TeacherAnswer:
    text: str
    finish_reason: str | None = "stop"  # "length" means cut off by max_tokens
    prompt_tokens: int = 0
    completion_tokens: int = 0
    option_probs: dict[str, float] | None = None  # when options were scored: probability of each
    extra: dict[str, Any] = field(default_factory=dict)


class TransientError(Exception):
    """A failure worth retrying (429, 503, 5xx, timeout, dropped connection).

    retry_after: seconds the server asked us to wait, if it said.
    """

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class Teacher:
    """Base class. Subclasses implement answer() (API) or answer_batch() (local, batch_size > 1).

    answer() raises TransientError for retryable failures and TeacherError (one sentence) for final ones.
    """

    batch_size: int = 1
    supports_options: bool = False  # True: answers option requests by scoring, with option_probs

    def __init__(self, spec) -> None:  # spec: pipeline.spec.TeacherSpec
        self.spec = spec

    async def answer(self, request: TeacherRequest) -> TeacherAnswer:
        raise NotImplementedError

    async def answer_batch(self, requests: list[TeacherRequest]) -> list[TeacherAnswer]:
        return [await self.answer(r) for r in requests]

    async def aclose(self) -> None:
        return None


_REGISTRY: dict[str, type[Teacher]] = {}


def register_teacher(name: str, cls: type[Teacher]) -> None:
    _REGISTRY[name] = cls


def teacher_names() -> list[str]:
    return sorted(_REGISTRY)


def get_teacher(name: str) -> type[Teacher]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTeacherError(f"unknown teacher '{name}'; known: {', '.join(teacher_names())}.") from None
