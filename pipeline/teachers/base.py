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

__all__ = ["TeacherRequest", "TeacherAnswer", "Teacher", "TransientError", "register_teacher", "get_teacher", "teacher_names",
           "content_text", "estimate_tokens", "logprobs_note", "Position"]

Position = list  # one answer token with logprobs: [token, logprob, [[alternative, logprob], ...]] (strings as the API sends them)


@dataclass
class TeacherRequest:
    messages: list[dict[str, str]]
    params: dict[str, Any]  # max_tokens, temperature, top_p, frequency_penalty, presence_penalty, stop
    options: list[str] | None = None  # closed answer set: a local teacher may score these instead of generating
    key: str = ""  # cache key (hash of model, messages, params but max_tokens, sample index; see labelling._build_requests)
    row: Any = None  # the dataset row id the request was built for (recorded in the answer cache)
    legacy_key: str | None = None  # the key the same request had before max_tokens left the key (older caches)


@dataclass
class TeacherAnswer:
    text: str
    finish_reason: str | None = "stop"  # "length" means cut off by max_tokens
    prompt_tokens: int = 0
    completion_tokens: int = 0
    option_probs: dict[str, float] | None = None  # when options were scored: probability of each
    extra: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None  # the limit it was asked under (a "stop" answer stays valid under a larger one)
    logprobs: list[Position] | None = None  # teacher.logprobs > 0: per answer token [token, logprob, top-k alternatives]
    limits: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # rate-limit headers; not cached


def content_text(content: Any) -> str:
    """A message content as text: a string as is, a list of content parts joined (text parts only), None as ""."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens estimated from characters (4 per token, 4 per message), for budgets and missing usage."""
    return sum(len(content_text(m.get("content"))) for m in messages) // 4 + 4 * len(messages)


class TransientError(Exception):
    """A failure worth retrying (429, 503, 5xx, timeout, dropped connection).

    retry_after: seconds the server asked us to wait, if it said; status 429 means rate limited (back-pressure:
    the engine slows down and does not count it against teacher.max_retries); limits: the x-ratelimit-* headers.
    """

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None, limits: dict[str, Any] | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        self.limits = limits


class Teacher:
    """Base class. Subclasses implement answer() (API) or answer_batch() (local, batch_size > 1).

    answer() raises TransientError for retryable failures and TeacherError (one sentence) for final ones.
    """

    batch_size: int = 1
    supports_options: bool = False  # True: answers option requests by scoring, with option_probs
    key_settings: tuple[str, ...] = ()  # teacher spec settings that shape a request beyond its messages (in the cache key)

    @classmethod
    def logprobs_refusal(cls, spec) -> str | None:
        """Why this teacher cannot return teacher.logprobs for `spec` (a phrase), or None when it can."""
        return f"the {spec.provider} teacher does not return log-probabilities"

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


def logprobs_note(spec) -> str | None:
    """One sentence when teacher.logprobs is set but this teacher or model cannot return them (said at plan and
    --estimate time; the run then labels without asking for them instead of failing), else None."""
    t = spec.teacher
    if not getattr(t, "logprobs", 0):
        return None
    try:
        factory = get_teacher(t.provider)
    except UnknownTeacherError:
        return None
    cls = factory if isinstance(factory, type) else getattr(factory, "func", None)  # functools.partial(AzureTeacher, ...)
    why = cls.logprobs_refusal(t) if cls is not None else None
    if why is None:
        return None
    fallback = "vote shares of teacher.self_consistency" if t.self_consistency > 1 else "hard labels"
    return f"teacher.logprobs={t.logprobs} has no effect: {why}, so rows get {fallback} (set teacher.logprobs=0, or choose a model that returns them)."


def get_teacher(name: str) -> type[Teacher]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTeacherError(f"unknown teacher '{name}'; known: {', '.join(teacher_names())}.") from None
