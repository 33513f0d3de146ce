"""Teacher labelling: ask the teacher about every training row, keep the answers, write the student's data.

    spec = load_spec("examples/sst2-openai.yaml")
    print(estimate(spec))                      # rows, requests, tokens and cost; sends nothing
    summary = label(spec, progress=TerminalBar())
    # spec.out/labels.jsonl, rejected.jsonl, labelling.json, teacher_answers.jsonl, spec.yaml

    results = ask_teacher(spec, test_examples, demos)   # the engine alone (the teacher's test score uses it)

How it works:
  1. rows: the training split (dataset.train_size rows after the seeded shuffle); k demonstrations with gold
     labels come from the remaining training rows, else out of the labelled set (`choose_rows`);
  2. requests: the teacher prompt of each row (x self_consistency samples), keyed by a hash of provider, model,
     messages, params, options and sample index; answers already in teacher_answers.jsonl are never re-sent;
  3. sending: asyncio with teacher.concurrency requests in flight (or batches of teacher.batch_size for a
     local teacher), our own retries with exponential backoff and jitter, Retry-After honoured; every answer
     is appended to the cache the moment it arrives, so a killed run resumes where it stopped;
  4. judging: parse, majority vote for self-consistency, then the filters (min_agreement, min_confidence,
     agree_with_gold); labels.jsonl / rejected.jsonl are rewritten from the cache, so re-running is idempotent;
  5. below teacher.min_success_ratio, LabellingError with counts by reason (everything written is kept).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .answers import AnswerStore, answer_key
from .datasets import Example, load_examples
from .errors import Cancelled, LabellingError, SpecError, TeacherError
from .progress import ProgressFn, Tracker
from .tasks import format_target, get_task, resolve_spec, student_messages, teacher_messages
from .teachers import TeacherAnswer, TeacherRequest, TransientError, get_teacher

__all__ = ["TeacherResult", "LabelSummary", "Estimate", "ask_teacher", "label", "estimate", "choose_rows", "REASONS"]

log = logging.getLogger(__name__)

ANSWERS_FILE = "teacher_answers.jsonl"
BACKOFF_BASE_S = 0.5  # first retry waits 0.25-0.5 s, doubling each time (tests lower it)
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 300.0  # a server asking for more than this is waited on for this long
FAILED, CUT_OFF, UNPARSEABLE, AMBIGUOUS = "request failed after retries", "cut off by max_tokens", "unparseable", "ambiguous"
REASONS = (FAILED, CUT_OFF, UNPARSEABLE, AMBIGUOUS, "filtered: ...")


@dataclass
class TeacherResult:
    row: Any
    messages: list[dict[str, str]]  # the teacher prompt
    text: str | None = None  # the teacher's answer (the winning sample with self-consistency)
    label: str | None = None  # parsed final answer; None when rejected before filters
    rationale: str | None = None
    confidence: float | None = None  # option probability (scored options) or vote share (self-consistency)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reason: str | None = None  # why the row is rejected, None when accepted
    detail: str | None = None
    example: Example | None = field(default=None, repr=False)


@dataclass
class LabelSummary:
    out: str
    requested: int
    accepted: int
    rejected: int
    by_reason: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    seconds: float
    requests_sent: int  # this run; answers from the cache are not sent again
    cached: int
    agreement_with_gold: float | None = None
    demos: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Estimate:
    rows: int
    requests: int  # requests still to send (cached answers excluded)
    cached: int
    prompt_tokens: int  # characters / 4 of the prompts still to send
    completion_tokens: int  # upper bound: longest option for closed answers, else params.max_tokens
    cost_usd: float

    def __str__(self) -> str:
        return (f"{self.rows:,} rows: {self.requests:,} requests to send ({self.cached:,} answers cached), "
                f"~{self.prompt_tokens:,} prompt tokens, at most {self.completion_tokens:,} completion tokens, "
                f"about ${self.cost_usd:.2f}.")


# rows and demonstrations ---------------------------------------------------------------------------------


def _run_loop(coro):
    """asyncio.run, on uvloop when it is installed (about half the event-loop CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _fields_key(ex: Example) -> str:
    return json.dumps(ex.fields, sort_keys=True, ensure_ascii=False, default=str)


def choose_rows(spec) -> tuple[list[Example], list[Example]]:
    """(rows to label, demonstrations): demos have gold labels and are never labelled rows nor test rows."""
    spec = resolve_spec(spec)
    everything = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"train_size": None})})
    pool = load_examples(everything, "train")  # the same seeded order load_examples(spec, "train") slices
    size = spec.dataset.train_size or len(pool)
    rows, rest = pool[:size], pool[size:]
    k = spec.teacher.few_shot
    if k == 0:
        return rows, []
    test_keys: set[str] = set()
    if spec.dataset.test:
        test_keys = {_fields_key(e) for e in load_examples(spec, "test")}
    order = random.Random(spec.dataset.seed + 1)
    rest, inside = list(rest), list(rows)
    order.shuffle(rest)
    order.shuffle(inside)
    candidates = [e for e in rest + inside if e.gold and _fields_key(e) not in test_keys]
    demos = _balanced(candidates, k) if get_task(spec.task).choice_based and spec.task != "multiple_choice" else candidates[:k]
    if not demos:
        raise SpecError(f"teacher.few_shot={k} needs training rows with gold labels and this dataset has none; set teacher.few_shot=0.")
    if len(demos) < k:
        log.warning("only %d demonstrations with gold labels are available (teacher.few_shot=%d)", len(demos), k)
    taken = {id(d) for d in demos}
    return [e for e in rows if id(e) not in taken], demos


def _balanced(candidates: list[Example], k: int) -> list[Example]:
    """k demonstrations taking the classes in turn (a lopsided set of demonstrations biases the teacher)."""
    by_class: dict[str, list[Example]] = {}
    for e in candidates:
        by_class.setdefault(str(e.gold), []).append(e)
    queues = [by_class[c] for c in sorted(by_class)]
    demos: list[Example] = []
    while len(demos) < k and any(queues):
        for q in queues:
            if q and len(demos) < k:
                demos.append(q.pop(0))
    return demos


# requests ------------------------------------------------------------------------------------------------


def _params(spec) -> dict[str, Any]:
    p = spec.teacher.params.model_dump()
    return {k: v for k, v in p.items() if v is not None}


def _build_requests(spec, task, labels, examples: list[Example], demos: list[Example]) -> list[list[TeacherRequest]]:
    """For each example, its n sample requests (keys computed once)."""
    t = spec.teacher
    cot, n = t.chain_of_thought, t.self_consistency
    params = _params(spec)
    use_options = task.choice_based and not cot and n == 1
    out = []
    for ex in examples:
        msgs = teacher_messages(task, ex, labels, demos, cot, spec.instructions)
        options = task.options(ex, labels) if use_options else None
        out.append([TeacherRequest(msgs, params, options, answer_key(t.provider, t.model, msgs, params, options, s)) for s in range(n)])
    return out


# sending -------------------------------------------------------------------------------------------------


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_MAX_S)
    cap = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** attempt)
    return cap / 2 + random.random() * cap / 2  # "equal jitter": never zero, never in lockstep


async def _with_retries(call: Callable, arg: Any, max_retries: int):
    attempt = 0
    while True:
        try:
            return await call(arg)
        except TransientError as err:
            if attempt >= max_retries:
                raise
            await asyncio.sleep(_backoff(attempt, err.retry_after))
            attempt += 1


def _throttled(should_stop: Callable[[], bool] | None, every_s: float = 0.2) -> Callable[[], bool] | None:
    """should_stop asked at most every `every_s` (it may read a database); once True, always True."""
    if should_stop is None:
        return None
    state = {"at": 0.0, "stop": False}

    def check() -> bool:
        now = time.monotonic()
        if not state["stop"] and now - state["at"] >= every_s:
            state["at"], state["stop"] = now, bool(should_stop())
        return state["stop"]

    return check


class _Failure:
    def __init__(self, detail: str, unreachable: bool = False):
        self.detail, self.unreachable = detail, unreachable


async def _send(teacher, pending: list[TeacherRequest], store: AnswerStore, t, failures: dict[str, _Failure], on_done, should_stop) -> None:
    """Send pending requests; failures go into `failures`, then on_done(key) runs for each request."""
    queue = deque(pending)
    fatal: list[BaseException] = []
    stopped = False
    should_stop = _throttled(should_stop)

    def fail(req: TeacherRequest, err: Exception) -> None:
        if getattr(err, "fatal", False):
            fatal.append(err)
        retried = f" after {t.max_retries} retries" if isinstance(err, TransientError) else ""
        failures[req.key] = _Failure(f"{err}{retried}", bool(getattr(err, "unreachable", False)))

    async def worker() -> None:
        nonlocal stopped
        while queue and not fatal:
            if should_stop is not None and should_stop():
                stopped = True
                return
            req = queue.popleft()
            try:
                store.put(req.key, await _with_retries(teacher.answer, req, t.max_retries))
            except (TransientError, TeacherError) as err:
                fail(req, err)
            on_done(req.key)

    async def batches() -> None:  # local teachers: one batch at a time (answer_batch keeps the loop free)
        nonlocal stopped
        size = max(1, teacher.batch_size)
        while queue and not fatal:
            if should_stop is not None and should_stop():
                stopped = True
                return
            batch = [queue.popleft() for _ in range(min(size, len(queue)))]
            try:
                answers = await _with_retries(teacher.answer_batch, batch, t.max_retries)
                for req, ans in zip(batch, answers):
                    store.put(req.key, ans)
            except (TransientError, TeacherError) as err:
                for req in batch:
                    fail(req, err)
            for req in batch:
                on_done(req.key)

    if getattr(teacher, "batch_size", 1) > 1:
        await batches()
    else:
        await asyncio.gather(*(worker() for _ in range(min(t.concurrency, len(pending)) or 1)))
    if fatal:
        raise fatal[0]
    if stopped:
        raise Cancelled("labelling was cancelled; the answers received so far are kept and a new run resumes from them.")


# judging -------------------------------------------------------------------------------------------------


def _judge_one(task, ex: Example, labels, ans: TeacherAnswer) -> tuple[str | None, str | None, float | None, str | None, str | None]:
    """(label, rationale, confidence, reason, detail) of one answer."""
    if ans.option_probs:
        best = max(ans.option_probs, key=ans.option_probs.get)
        label = best if not ans.text else (task.parse(ans.text, ex, labels).label or best)
        return label, None, float(ans.option_probs.get(label, 0.0)), None, None
    if ans.finish_reason == "length":
        return None, None, None, CUT_OFF, f"{ans.completion_tokens} completion tokens; raise teacher.params.max_tokens"
    parsed = task.parse(ans.text, ex, labels)
    if parsed.label is None:
        reason = AMBIGUOUS if parsed.error == "ambiguous" else UNPARSEABLE
        return None, parsed.rationale, None, reason, "empty answer" if parsed.error == "empty" else (ans.text or "")[:200]
    return parsed.label, parsed.rationale, None, None, None


def _judge(task, ex: Example, labels, msgs, answers: list[TeacherAnswer | None], failures: list[_Failure | None]) -> TeacherResult:
    res = TeacherResult(row=ex.row, messages=msgs, example=ex)
    res.prompt_tokens = sum(a.prompt_tokens for a in answers if a)
    res.completion_tokens = sum(a.completion_tokens for a in answers if a)
    judged = []
    for ans, fail in zip(answers, failures):
        if ans is None:
            judged.append((None, None, None, FAILED, fail.detail if fail else "no answer"))
        else:
            judged.append(_judge_one(task, ex, labels, ans))
    if len(answers) == 1:
        res.label, res.rationale, res.confidence, res.reason, res.detail = judged[0]
        res.text = answers[0].text if answers[0] else None
        return res
    votes = Counter(j[0] for j in judged if j[0] is not None)
    if not votes:
        reasons = Counter(j[3] for j in judged)
        res.reason = reasons.most_common(1)[0][0]
        res.detail = next(j[4] for j in judged if j[3] == res.reason)
        res.text = next((a.text for a in answers if a), None)
        return res
    (top, count), *others = votes.most_common()
    if others and others[0][1] == count:
        res.reason, res.detail = AMBIGUOUS, f"self-consistency tie between {top} and {others[0][0]} ({count} votes each)"
        return res
    winner = next(i for i, j in enumerate(judged) if j[0] == top)
    res.label, res.rationale = top, judged[winner][1]
    res.text = answers[winner].text
    res.confidence = count / len(answers)
    return res


# the engine ----------------------------------------------------------------------------------------------


@dataclass
class _Stats:
    sent: int = 0
    cached: int = 0
    unreachable: int = 0


def ask_teacher(spec, examples: list[Example], demos: list[Example], progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None, stage: str = "labelling") -> list[TeacherResult]:
    """Ask spec.teacher about every example (answers cached in spec.out/teacher_answers.jsonl); no filters.

    Results come in the order of `examples`. Raises Cancelled when should_stop() turns true (answers kept),
    TeacherError when the teacher cannot be built or refuses every request (bad key, unknown model).
    """
    return _ask_teacher(spec, examples, demos, progress, should_stop, stage)[0]


def _ask_teacher(spec, examples, demos, progress, should_stop, stage) -> tuple[list[TeacherResult], _Stats]:
    spec = resolve_spec(spec)
    task, labels, t = get_task(spec.task), spec.labels, spec.teacher
    if t.self_consistency > 1 and t.params.temperature == 0:
        log.warning("teacher.self_consistency=%d with temperature 0: samples will mostly agree; set teacher.params.temperature=0.7", t.self_consistency)
    requests = _build_requests(spec, task, labels, examples, demos)
    store = AnswerStore(Path(spec.out) / ANSWERS_FILE)
    try:
        return _run_loop(_ask(spec, task, labels, examples, requests, store, progress, should_stop, stage))
    finally:
        store.close()


async def _ask(spec, task, labels, examples, requests, store, progress, should_stop, stage) -> tuple[list[TeacherResult], _Stats]:
    t = spec.teacher
    waiting: dict[str, list[int]] = {}  # key -> examples still waiting for its answer
    remaining = [0] * len(examples)
    pending: list[TeacherRequest] = []
    for i, reqs in enumerate(requests):
        for r in reqs:
            if r.key not in store:
                if r.key not in waiting:
                    waiting[r.key] = []
                    pending.append(r)
                waiting[r.key].append(i)
                remaining[i] += 1
    results: list[TeacherResult | None] = [None] * len(examples)
    failures: dict[str, _Failure] = {}
    counts: Counter[str] = Counter()
    stats = _Stats(cached=sum(len(reqs) for reqs in requests) - sum(remaining))

    def finish(i: int) -> None:
        reqs = requests[i]
        res = _judge(task, examples[i], labels, reqs[0].messages, [store.get(r.key) for r in reqs], [failures.get(r.key) for r in reqs])
        results[i] = res
        counts["rejected" if res.reason else "accepted"] += 1

    for i in range(len(examples)):
        if remaining[i] == 0:
            finish(i)
    tracker = Tracker(stage, len(examples), progress, start=counts.total())
    tracker.info.update(accepted=counts["accepted"], rejected=counts["rejected"])

    def on_done(key: str) -> None:
        stats.sent += 1
        for i in waiting.pop(key, ()):
            remaining[i] -= 1
            if remaining[i] == 0:
                finish(i)
                tracker.advance(1, accepted=counts["accepted"], rejected=counts["rejected"])

    if pending:
        teacher = get_teacher(t.provider)(t)
        try:
            await _send(teacher, pending, store, t, failures, on_done, should_stop)
        finally:
            await teacher.aclose()
    tracker.advance(0, force=True, accepted=counts["accepted"], rejected=counts["rejected"])
    stats.unreachable = sum(f.unreachable for f in failures.values())
    return [r for r in results if r is not None], stats


# label and estimate --------------------------------------------------------------------------------------


def _same(task, label: str | None, gold: str | None) -> bool:
    if label is None or gold is None:
        return False
    if task.name == "math":
        from .metrics import normalize_number

        return normalize_number(label) == normalize_number(gold)
    return label == gold


def apply_filters(spec, task, results: list[TeacherResult]) -> None:
    """Reject accepted rows that fail min_agreement, min_confidence or agree_with_gold (in place)."""
    t = spec.teacher
    comparable = task.choice_based or task.name == "math"
    if t.min_confidence is not None and any(r.reason is None and r.confidence is None for r in results):
        log.warning("teacher.min_confidence applies only to rows with a confidence (scored options or self-consistency)")
    for r in results:
        if r.reason is not None:
            continue
        if t.self_consistency > 1 and r.confidence is not None and r.confidence < t.min_agreement:
            r.reason, r.detail = "filtered: min_agreement", f"{r.confidence:.2f} of samples agree, below teacher.min_agreement={t.min_agreement}"
        elif t.min_confidence is not None and r.confidence is not None and r.confidence < t.min_confidence:
            r.reason, r.detail = "filtered: min_confidence", f"confidence {r.confidence:.2f} below teacher.min_confidence={t.min_confidence}"
        elif t.agree_with_gold and comparable and r.example is not None and r.example.gold is not None and not _same(task, r.label, r.example.gold):
            r.reason, r.detail = "filtered: agree_with_gold", f"teacher said {r.label!r}, gold is {r.example.gold!r}"


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)


def _records(spec, task, results: list[TeacherResult]) -> tuple[list[dict], list[dict]]:
    cot = spec.teacher.chain_of_thought
    accepted, rejected = [], []
    for r in results:
        ex = r.example
        if r.reason is None:
            msgs = student_messages(task, ex, spec.labels, cot, spec.instructions)
            msgs.append({"role": "assistant", "content": format_target(r.label, r.rationale, with_rationale=cot)})
            rec = {"row": r.row, "messages": msgs, "label": r.label, "rationale": r.rationale, "confidence": r.confidence}
            if ex.gold is not None:
                rec["gold"] = ex.gold
            rec["usage"] = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
            accepted.append(rec)
        else:
            rec = {"row": r.row, "reason": r.reason, "detail": r.detail, "text": r.text}
            if ex.gold is not None:
                rec["gold"] = ex.gold
            rejected.append(rec)
    return accepted, rejected


def label(spec, progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None) -> LabelSummary:
    """Label the training rows with the teacher; writes labels.jsonl, rejected.jsonl, labelling.json, spec.yaml."""
    started = time.monotonic()
    # 1. resolve the task and labels, write the spec
    spec = resolve_spec(spec)
    task, t = get_task(spec.task), spec.teacher
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    # 2. rows and demonstrations
    rows, demos = choose_rows(spec)
    # 3. ask the teacher (cached answers are not sent again)
    results, stats = _ask_teacher(spec, rows, demos, progress, should_stop, "labelling")
    # 4. filters, then the files, rewritten whole from the cache
    golds = [(r.label, r.example.gold) for r in results if r.reason is None and r.example.gold is not None]
    agreement = sum(_same(task, p, g) for p, g in golds) / len(golds) if golds and (task.choice_based or task.name == "math") else None
    apply_filters(spec, task, results)
    accepted, rejected = _records(spec, task, results)
    _write_jsonl(out / "labels.jsonl", accepted)
    _write_jsonl(out / "rejected.jsonl", rejected)
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    summary = LabelSummary(
        out=str(out), requested=len(results), accepted=len(accepted), rejected=len(rejected),
        by_reason=dict(Counter(r["reason"] for r in rejected).most_common()),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        cost_usd=round(prompt_tokens / 1e6 * t.price_per_mtok.input + completion_tokens / 1e6 * t.price_per_mtok.output, 6),
        seconds=round(time.monotonic() - started, 3), requests_sent=stats.sent, cached=stats.cached,
        agreement_with_gold=agreement, demos=[d.row for d in demos],
    )
    (out / "labelling.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str), encoding="utf-8")
    # 5. enough rows?
    ratio = summary.accepted / summary.requested if summary.requested else 0.0
    if ratio < t.min_success_ratio or summary.requested == 0:
        failed = summary.by_reason.get(FAILED, 0)
        if summary.accepted == 0 and failed and stats.unreachable >= failed:
            raise LabellingError(f"the teacher server at {t.base_url or 'the default URL'} could not be reached ({failed} rows failed after "
                                 f"{t.max_retries} retries); start it or fix teacher.base_url, then run again.")
        reasons = ", ".join(f"{n} {why}" for why, n in summary.by_reason.items()) or "no rows"
        raise LabellingError(f"only {summary.accepted} of {summary.requested} rows were labelled ({ratio:.0%}, below teacher.min_success_ratio="
                             f"{t.min_success_ratio}): {reasons}; see {out / 'rejected.jsonl'}, fix the cause and run again (answers are kept).")
    return summary


def estimate(spec) -> Estimate:
    """What label(spec) would send and cost, from the prompts (characters / 4); sends nothing."""
    spec = resolve_spec(spec)
    task, t = get_task(spec.task), spec.teacher
    rows, demos = choose_rows(spec)
    per_row = _build_requests(spec, task, spec.labels, rows, demos)
    path = Path(spec.out) / ANSWERS_FILE
    store = AnswerStore(path) if path.exists() else None
    todo: dict[str, tuple[Example, TeacherRequest]] = {}
    total = 0
    for ex, reqs in zip(rows, per_row):
        for r in reqs:
            total += 1
            if store is None or r.key not in store:
                todo[r.key] = (ex, r)
    if store is not None:
        store.close()
    prompt_tokens = sum(sum(len(m["content"]) for m in r.messages) // 4 + 4 * len(r.messages) for _, r in todo.values())
    if task.choice_based and not t.chain_of_thought:  # the answer is one option
        completion_tokens = sum(max(len(o) for o in task.options(ex, spec.labels)) // 4 + 1 for ex, _ in todo.values())
    else:  # an upper bound: every answer as long as allowed
        completion_tokens = t.params.max_tokens * len(todo)
    cost = prompt_tokens / 1e6 * t.price_per_mtok.input + completion_tokens / 1e6 * t.price_per_mtok.output
    return Estimate(rows=len(rows), requests=len(todo), cached=total - len(todo),
                    prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=round(cost, 4))
