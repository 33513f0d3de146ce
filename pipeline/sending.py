"""The sending engine: get answers for pending teacher requests into the answer cache, with retries.

    state = SendState(on_done=lambda key: ...)             # on_done runs once per request, answered or failed
    run_loop(send(teacher_spec, pending, store, state, should_stop))
    state.failures                                          # key -> Failure(detail, unreachable) for the failed ones
    cached_answer(store, request)                           # the cached answer valid for a request, or None

How: a sender is picked for the teacher (`pick_sender`) and answers `pending` into `store`:
  - "concurrent" (API teachers): up to teacher.concurrency requests in flight, paced by pipeline/pacing.py
    (adaptive concurrency, Retry-After and x-ratelimit-* pauses, teacher.rpm/tpm). A 429 is back-pressure: it
    never counts against teacher.max_retries; a request fails on 429s only after teacher.max_wait_s of them.
    Other transient errors (5xx, timeouts) are retried teacher.max_retries times with backoff and jitter;
  - "batches" (local teachers, batch_size > 1): one answer_batch() at a time;
  - "batch" (teacher.batch: true; pipeline/batch.py, registered on import of pipeline.labelling): the
    provider's Batch API;
  - any sender registered with `register_sender(name, fn)` and chosen by name (the seam for other transports):
    `async def fn(teacher, pending, store, state, should_stop)`.
Every answer is put into the store the moment it arrives (so a killed run resumes), with the row it was asked
for and the max_tokens it was asked under (a finished answer is reused after max_tokens is raised; only
answers cut off by the smaller limit are sent again); failures are never stored.
A fatal TeacherError (bad key, unknown model) stops everything; should_stop() turning true raises Cancelled.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .answers import AnswerStore
from .errors import Cancelled, TeacherError
from .pacing import RETRY_AFTER_MAX_S, Pace
from .teachers import Teacher, TeacherAnswer, TeacherRequest, TransientError, get_teacher
from .teachers.base import estimate_tokens

__all__ = ["SendState", "Failure", "Sender", "send", "register_sender", "pick_sender", "run_loop", "backoff", "cached_answer",
           "store_answer"]

BACKOFF_BASE_S = 0.5  # first retry waits 0.25-0.5 s, doubling each time
BACKOFF_MAX_S = 30.0
STATUS_EVERY_S = 0.5  # how often the sending status reaches the progress callback while nothing finishes


@dataclass
class Failure:
    detail: str
    unreachable: bool = False  # the server could not be reached at all


@dataclass
class SendState:
    """What the workers of one send() share (one object instead of closures over mutable locals)."""

    on_done: Callable[[str], None] = lambda key: None  # called once per request key, answered or failed
    on_info: Callable[[dict[str, Any]], None] = lambda info: None  # a sender's status for the progress line (batch waits)
    backoff_base_s: float = BACKOFF_BASE_S
    max_retries: int = 6
    max_wait_s: float = 3600.0  # how long one request keeps waiting through 429s before it fails
    concurrency: int = 8  # requests in flight at most
    failures: dict[str, Failure] = field(default_factory=dict)
    fatal: list[BaseException] = field(default_factory=list)
    stopped: bool = False
    sent: int = 0  # requests finished this run (answered or failed)
    queue: deque = field(default_factory=deque)
    pace: Pace | None = None  # the concurrent sender's pacing (rate, in flight, 429s received)

    @property
    def unreachable(self) -> int:
        return sum(f.unreachable for f in self.failures.values())

    def fail(self, req: TeacherRequest, err: Exception) -> None:
        if getattr(err, "fatal", False):
            self.fatal.append(err)
        retried = f" after {self.max_retries} retries" if isinstance(err, TransientError) else ""
        self.failures[req.key] = Failure(f"{err}{retried}", bool(getattr(err, "unreachable", False)))

    def done(self, key: str) -> None:
        self.sent += 1
        self.on_done(key)

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        return backoff(attempt, retry_after, self.backoff_base_s)


def cached_answer(store: AnswerStore, req: TeacherRequest) -> TeacherAnswer | None:
    """The cached answer valid for `req`: under its key if asked under a compatible max_tokens, else under its
    legacy key (caches written before max_tokens left the key), else None."""
    ans = store.get(req.key)
    if ans is not None and _fits(ans, (req.params or {}).get("max_tokens")):
        return ans
    return store.get(req.legacy_key) if req.legacy_key else None


def _fits(ans: TeacherAnswer, max_tokens: int | None) -> bool:
    if max_tokens is None or ans.max_tokens is None or ans.option_probs:
        return True
    if ans.finish_reason == "length":  # cut off: still cut off under a limit as small or smaller, worth asking again above
        return max_tokens <= ans.max_tokens
    return ans.completion_tokens <= max_tokens  # finished: the same answer fits any limit it did not reach


def store_answer(store: AnswerStore, req: TeacherRequest, ans: TeacherAnswer) -> None:
    """Put an answer into the cache with the max_tokens it was asked under and its row (every sender uses this)."""
    if ans.max_tokens is None:
        ans.max_tokens = (req.params or {}).get("max_tokens")
    store.put(req.key, ans, row=req.row)


Sender = Callable[[Teacher, list[TeacherRequest], AnswerStore, SendState, Callable[[], bool] | None], Awaitable[None]]
_SENDERS: dict[str, Sender] = {}


def register_sender(name: str, fn: Sender) -> None:
    """Make a transport available to pick_sender (e.g. "batch" for a provider's batch API)."""
    _SENDERS[name] = fn


def pick_sender(teacher_spec, teacher: Teacher) -> str:
    """The sender for this teacher: "batch" when teacher.batch is set, "batches" for local teachers, else "concurrent"."""
    if getattr(teacher_spec, "batch", False):
        return "batch"
    return "batches" if getattr(teacher, "batch_size", 1) > 1 else "concurrent"


def run_loop(coro):
    """asyncio.run, on uvloop when it is installed (about half the event-loop CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def backoff(attempt: int, retry_after: float | None, base_s: float = BACKOFF_BASE_S) -> float:
    """Seconds to wait before retry number attempt+1: what the server asked for, else exponential with jitter."""
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_MAX_S)
    cap = min(BACKOFF_MAX_S, base_s * 2 ** attempt)
    return cap / 2 + random.random() * cap / 2  # "equal jitter": never zero, never in lockstep


async def _with_retries(call: Callable, arg: Any, state: SendState):
    attempt = 0
    while True:
        try:
            return await call(arg)
        except TransientError as err:
            if attempt >= state.max_retries:
                raise
            await asyncio.sleep(state.backoff(attempt, err.retry_after))
            attempt += 1


def _throttled(should_stop: Callable[[], bool] | None, every_s: float = 0.2) -> Callable[[], bool] | None:
    """should_stop asked at most every `every_s` (it may read a database); once True, always True."""
    if should_stop is None:
        return None
    last = [0.0, False]

    def check() -> bool:
        now = time.monotonic()
        if not last[1] and now - last[0] >= every_s:
            last[0], last[1] = now, bool(should_stop())
        return bool(last[1])

    return check


def _stop_now(state: SendState, should_stop: Callable[[], bool] | None) -> bool:
    if should_stop is not None and should_stop():
        state.stopped = True
    return state.stopped


class _Abandoned(Exception):
    """A request given up before it was sent (cancelled, or a fatal error elsewhere)."""


async def _ask_paced(teacher: Teacher, req: TeacherRequest, pace: Pace, state: SendState, abandon: Callable[[], bool]) -> TeacherAnswer:
    """One request through the pace: 429s wait (never a retry spent), other transient errors are retried."""
    attempt, limited_since = 0, None
    max_tokens = (req.params or {}).get("max_tokens") or 0
    cost = estimate_tokens(req.messages) + max_tokens if pace.tokens is not None else 0  # how providers count a request
    while True:
        epoch = await pace.acquire(cost, abandon)
        if epoch is None:
            raise _Abandoned
        try:
            ans = await teacher.answer(req)
        except TransientError as err:
            if err.status == 429:
                pace.rate_limited(epoch, err.retry_after, err.limits)
                now = time.monotonic()
                limited_since = limited_since if limited_since is not None else now
                if now - limited_since >= state.max_wait_s:
                    raise TeacherError(f"{err} (rate limited) for {state.max_wait_s:g} s (teacher.max_wait_s); lower teacher.rpm or "
                                       "teacher.concurrency, or raise teacher.max_wait_s.") from None
                continue
            pace.release()
            if attempt >= state.max_retries:
                raise
            await asyncio.sleep(state.backoff(attempt, err.retry_after))
            attempt += 1
            continue
        except BaseException:
            pace.release()
            raise
        pace.answered(ans.limits)  # tokens are not given back for short answers: providers count max_tokens too
        return ans


async def _concurrent(teacher: Teacher, pending: list[TeacherRequest], store: AnswerStore, state: SendState,
                      should_stop: Callable[[], bool] | None) -> None:
    """API teachers: workers take the next request; the pace decides how many are in flight and when they go."""
    state.queue.extend(pending)
    spec = teacher.spec
    pace = state.pace = Pace(state.concurrency, getattr(spec, "rpm", None), getattr(spec, "tpm", None), state.backoff_base_s)

    async def worker() -> None:
        while state.queue and not state.fatal:
            if _stop_now(state, should_stop):
                return
            req = state.queue.popleft()
            try:
                store_answer(store, req, await _ask_paced(teacher, req, pace, state, abandon))
            except (TransientError, TeacherError) as err:
                state.fail(req, err)
            except _Abandoned:
                return
            state.done(req.key)

    def abandon() -> bool:
        return bool(state.fatal) or _stop_now(state, should_stop)

    async def report() -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            state.on_info({"sending": pace.status()})

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(worker() for _ in range(min(state.concurrency, len(pending)) or 1)))
    finally:
        reporter.cancel()
    state.on_info({"sending": pace.status()})


async def _batches(teacher: Teacher, pending: list[TeacherRequest], store: AnswerStore, state: SendState,
                   should_stop: Callable[[], bool] | None) -> None:
    """Local teachers: one batch at a time (answer_batch keeps the loop free)."""
    state.queue.extend(pending)
    size = max(1, teacher.batch_size)
    while state.queue and not state.fatal:
        if _stop_now(state, should_stop):
            return
        batch = [state.queue.popleft() for _ in range(min(size, len(state.queue)))]
        try:
            answers = await _with_retries(teacher.answer_batch, batch, state)
            for req, ans in zip(batch, answers):
                store_answer(store, req, ans)
        except (TransientError, TeacherError) as err:
            for req in batch:
                state.fail(req, err)
        for req in batch:
            state.done(req.key)


register_sender("concurrent", _concurrent)
register_sender("batches", _batches)


async def send(teacher_spec, pending: list[TeacherRequest], store: AnswerStore, state: SendState,
               should_stop: Callable[[], bool] | None = None) -> SendState:
    """Answer `pending` into `store` with the teacher teacher_spec describes; raises the first fatal error or Cancelled."""
    if not pending:
        return state
    state.max_retries, state.concurrency = teacher_spec.max_retries, teacher_spec.concurrency
    state.max_wait_s = getattr(teacher_spec, "max_wait_s", state.max_wait_s)
    teacher = get_teacher(teacher_spec.provider)(teacher_spec)
    try:
        name = pick_sender(teacher_spec, teacher)
        if name not in _SENDERS:
            raise TeacherError(f"no '{name}' sender is available for teacher '{teacher_spec.provider}'; unset teacher.{name} or install its support.")
        await _SENDERS[name](teacher, pending, store, state, _throttled(should_stop))
    finally:
        await teacher.aclose()
    if state.fatal:
        raise state.fatal[0]
    if state.stopped:
        raise Cancelled("labelling was cancelled; the answers received so far are kept and a new run resumes from them.")
    return state
