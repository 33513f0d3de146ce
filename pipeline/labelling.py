"""Teacher labelling: ask the teacher about every training row, keep the answers, write the student's data.

    spec = load_spec("examples/sst2-openai.yaml")
    print(estimate(spec))                      # rows, requests, tokens and cost; sends nothing
    summary = label(spec, progress=TerminalBar())
    # spec.out/labels.jsonl, rejected.jsonl, labelling.json, teacher_answers.jsonl, spec.yaml

    results = ask_teacher(spec, test_examples, demos)   # the engine alone (the teacher's test score uses it)

How it works (this module orchestrates; pipeline/sending.py sends, pipeline/judging.py judges):
  1. rows: the training split (dataset.train_size rows after the seeded shuffle); k demonstrations with gold
     labels come from the remaining training rows, else out of the labelled set (`choose_rows`);
  2. requests: the teacher prompt of each row (x self_consistency samples), keyed by a hash of provider, model,
     messages, params but max_tokens, options, sample index and the teacher's key_settings; answers already in
     teacher_answers.jsonl are never re-sent (after max_tokens is raised, only cut-off answers are);
  3. sending (sending.py): asyncio with up to teacher.concurrency requests in flight, fewer while the provider
     answers 429 (pacing.py: a 429 is back-pressure, never a spent retry), or batches of teacher.batch_size for
     a local teacher; our own retries with exponential backoff and jitter; every answer is appended to the
     cache the moment it arrives, so a killed run resumes where it stopped;
  4. judging (judging.py): parse, majority vote for self-consistency, then the filters (min_agreement,
     min_confidence, agree_with_gold); labels.jsonl / rejected.jsonl are rewritten from the cache, so
     re-running is idempotent;
  5. below teacher.min_success_ratio, LabellingError with counts by reason (everything written is kept).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .answers import AnswerStore, answer_key
from . import pilot, splits
from .datasets import Example
from .errors import LabellingError, SpecError, UnknownTeacherError
from .judging import FAILED, REASONS, TeacherResult, apply_filters, judge, records, same_label, soft_summary, write_jsonl
from .progress import ProgressFn, Tracker
from .batch import pricing, teacher_cost  # importing pipeline.batch registers the "batch" sender (teacher.batch)
from .redact import endpoint
from .runlock import holds_run_lock
from .sending import SendState, cached_answer, run_loop, send
from .tasks import get_task, resolve_spec, teacher_messages
from .teachers import TeacherRequest, get_teacher
from .teachers.base import estimate_tokens, logprobs_note

__all__ = ["TeacherResult", "LabelSummary", "Estimate", "ask_teacher", "label", "estimate", "choose_rows", "apply_filters", "REASONS"]

log = logging.getLogger(__name__)

ANSWERS_FILE = "teacher_answers.jsonl"
BACKOFF_BASE_S = 0.5  # first retry waits 0.25-0.5 s, doubling each time (tests lower it; handed to the sending engine)


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
    pricing: str = "list price"  # or "batch price (50 % of list)" with teacher.batch
    answer_cue: dict[str, Any] = field(default_factory=dict)  # the cue used and how it was chosen (pipeline/pilot.py)
    soft_labels: dict[str, Any] = field(default_factory=dict)  # rows with soft labels / top-k and their sources (judging.soft_summary)

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
    pricing: str = "list price"  # or "batch price (50 % of list)" with teacher.batch
    notes: list[str] = field(default_factory=list)  # settings that will not work as asked (e.g. teacher.logprobs on a reasoning model)

    def __str__(self) -> str:
        return " ".join([f"{self.rows:,} rows: {self.requests:,} requests to send ({self.cached:,} answers cached), "
                         f"~{self.prompt_tokens:,} prompt tokens, at most {self.completion_tokens:,} completion tokens, "
                         f"about ${self.cost_usd:.2f} at {self.pricing}.", *self.notes])


# rows and demonstrations ---------------------------------------------------------------------------------


def choose_rows(spec) -> tuple[list[Example], list[Example]]:
    """(rows to label, demonstrations): demos have gold labels and are never labelled rows nor test rows."""
    spec = resolve_spec(spec)
    pool = splits.training_pool(spec)  # seeded order, held-out test rows removed (pipeline/splits.py)
    held = pilot.pilot_keys(spec)  # the teacher pilot's gold rows (pipeline/pilot.py) are never labelled nor demos
    pool = [e for e in pool if splits.fields_key(e) not in held] if held else pool
    size = spec.dataset.train_size or len(pool)
    rows, rest = pool[:size], pool[size:]
    k = spec.teacher.few_shot
    if k == 0:
        return rows, []
    test_keys = splits.test_keys(spec)
    order = random.Random(spec.dataset.seed + 1)
    rest, inside = list(rest), list(rows)
    order.shuffle(rest)
    order.shuffle(inside)
    candidates = [e for e in rest + inside if e.gold and splits.fields_key(e) not in test_keys]
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


def _key_settings(t) -> dict[str, Any]:
    """The teacher's settings that shape a request beyond its messages (local: prompt_format, answer_cue)."""
    try:
        factory = get_teacher(t.provider)
    except UnknownTeacherError:
        return {}
    names = getattr(factory, "key_settings", None)
    if names is None:  # a factory such as functools.partial(AzureTeacher, credential=...)
        names = getattr(getattr(factory, "func", None), "key_settings", ())
    return {name: getattr(t, name) for name in names}


def _build_requests(spec, task, labels, examples: list[Example], demos: list[Example]) -> list[list[TeacherRequest]]:
    """For each example, its n sample requests (keys computed once).

    The key covers provider, model, messages (prompt wording, instructions, chain of thought, demonstrations),
    params except max_tokens, options, the sample index and the teacher's key_settings; max_tokens is left out
    so that raising it reuses finished answers (sending.cached_answer checks each answer against it). The
    legacy key (max_tokens in, as caches before this were written) finds older answers of API teachers.
    """
    t = spec.teacher
    cot, n = t.chain_of_thought, t.self_consistency
    params = _params(spec)
    keyed = {k: v for k, v in params.items() if k != "max_tokens"}
    settings = _key_settings(t)
    use_options = task.choice_based and not cot and n == 1
    out = []
    for ex in examples:
        msgs = teacher_messages(task, ex, labels, demos, cot, spec.instructions)
        options = task.options(ex, labels) if use_options else None
        out.append([TeacherRequest(msgs, params, options, answer_key(t.provider, t.model, msgs, keyed, options, s, settings), row=ex.row,
                                   legacy_key=None if settings else answer_key(t.provider, t.model, msgs, params, options, s))
                    for s in range(n)])
    return out


# asking: the sending engine fills the cache; each row is judged once all its samples are in -------------


class _Rows:
    """Which rows wait for which request keys; judges a row the moment its last answer (or failure) is in."""

    def __init__(self, task, labels, examples: list[Example], requests: list[list[TeacherRequest]], store: AnswerStore):
        self.task, self.labels, self.examples, self.requests, self.store = task, labels, examples, requests, store
        self.waiting: dict[str, list[int]] = {}  # key -> rows still waiting for its answer
        self.remaining = [0] * len(examples)
        self.pending: list[TeacherRequest] = []  # requests to send, each key once
        for i, reqs in enumerate(requests):
            for r in reqs:
                if cached_answer(store, r) is None:
                    if r.key not in self.waiting:
                        self.waiting[r.key] = []
                        self.pending.append(r)
                    self.waiting[r.key].append(i)
                    self.remaining[i] += 1
        self.cached = sum(len(reqs) for reqs in requests) - sum(self.remaining)
        self.results: list[TeacherResult | None] = [None] * len(examples)
        self.counts: Counter[str] = Counter()
        self.state = SendState(on_done=self.answered, on_info=self.status, backoff_base_s=BACKOFF_BASE_S)
        self.tracker: Tracker | None = None
        for i in range(len(examples)):
            if self.remaining[i] == 0:
                self._finish(i)

    def _finish(self, i: int) -> None:
        reqs, failures = self.requests[i], self.state.failures
        answers = [cached_answer(self.store, r) for r in reqs]
        res = judge(self.task, self.examples[i], self.labels, reqs[0].messages, answers, [failures.get(r.key) for r in reqs])
        self.results[i] = res
        self.counts["rejected" if res.reason else "accepted"] += 1

    def answered(self, key: str) -> None:
        """on_done of the sending engine: one request is finished (its answer is in the store, or it failed)."""
        for i in self.waiting.pop(key, ()):
            self.remaining[i] -= 1
            if self.remaining[i] == 0:
                self._finish(i)
                self.report()

    def status(self, info: dict) -> None:
        """on_info of the sending engine: e.g. status="waiting for batch (x of y done)" on the progress line."""
        if self.tracker is not None:
            self.tracker.advance(0, force=True, **info)

    def report(self, force: bool = False) -> None:
        self.tracker.advance(0 if force else 1, force=force, accepted=self.counts["accepted"], rejected=self.counts["rejected"])


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
    spec = pilot.resolve_cue(spec, progress, should_stop)[0]  # teacher.answer_cue=auto: settled (pipeline/pilot.py)
    task, labels, t = get_task(spec.task), spec.labels, spec.teacher
    if t.self_consistency > 1 and t.params.temperature == 0:
        log.warning("teacher.self_consistency=%d with temperature 0: samples will mostly agree; set teacher.params.temperature=0.7", t.self_consistency)
    requests = _build_requests(spec, task, labels, examples, demos)
    store = AnswerStore(Path(spec.out) / ANSWERS_FILE)
    try:
        rows = _Rows(task, labels, examples, requests, store)
        rows.tracker = Tracker(stage, len(examples), progress, start=rows.counts.total())
        rows.tracker.info.update(accepted=rows.counts["accepted"], rejected=rows.counts["rejected"])
        run_loop(send(t, rows.pending, store, rows.state, should_stop))
    finally:
        store.close()
    rows.report(force=True)
    stats = _Stats(sent=rows.state.sent, cached=rows.cached, unreachable=rows.state.unreachable)
    return [r for r in rows.results if r is not None], stats


# label and estimate --------------------------------------------------------------------------------------


@holds_run_lock  # one process per run folder (pipeline/runlock.py)
def label(spec, progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None) -> LabelSummary:
    """Label the training rows with the teacher; writes labels.jsonl, rejected.jsonl, labelling.json, spec.yaml."""
    started = time.monotonic()
    # 1. resolve the task and labels, write the spec
    spec = resolve_spec(spec)
    task, t = get_task(spec.task), spec.teacher
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    # 2. the answer cue (answer_cue=auto: tried on the pilot rows, kept in pilot.json), rows and demonstrations
    spec, cue = pilot.resolve_cue(spec, progress, should_stop)
    rows, demos = choose_rows(spec)
    # 3. ask the teacher (cached answers are not sent again)
    results, stats = _ask_teacher(spec, rows, demos, progress, should_stop, "labelling")
    # 4. filters, then the files, rewritten whole from the cache
    golds = [(r.label, r.example.gold) for r in results if r.reason is None and r.example.gold is not None]
    agreement = sum(same_label(task, p, g) for p, g in golds) / len(golds) if golds and (task.choice_based or task.name == "math") else None
    apply_filters(spec, task, results)
    accepted, rejected = records(spec, task, results)
    soft = soft_summary(spec, results, accepted)
    if soft.get("answers_without_logprobs"):
        log.warning("%d cached teacher answers were asked before teacher.logprobs was set and have no logprobs: their rows keep hard "
                    "labels (nothing is paid twice; remove %s to buy them again with logprobs)", soft["answers_without_logprobs"], ANSWERS_FILE)
    write_jsonl(out / "labels.jsonl", accepted)
    write_jsonl(out / "rejected.jsonl", rejected)
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    summary = LabelSummary(
        out=str(out), requested=len(results), accepted=len(accepted), rejected=len(rejected),
        by_reason=dict(Counter(r["reason"] for r in rejected).most_common()),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        cost_usd=round(teacher_cost(t, prompt_tokens, completion_tokens), 6),
        seconds=round(time.monotonic() - started, 3), requests_sent=stats.sent, cached=stats.cached,
        agreement_with_gold=agreement, demos=[d.row for d in demos], pricing=pricing(t), answer_cue=cue, soft_labels=soft,
    )
    (out / "labelling.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str), encoding="utf-8")
    # 5. enough rows?
    ratio = summary.accepted / summary.requested if summary.requested else 0.0
    if ratio < t.min_success_ratio or summary.requested == 0:
        failed = summary.by_reason.get(FAILED, 0)
        if summary.accepted == 0 and failed and stats.unreachable >= failed:
            raise LabellingError(f"the teacher server at {endpoint(t.base_url, 'the default URL')} could not be reached ({failed} rows failed after "
                                 f"{t.max_retries} retries); start it or fix teacher.base_url, then run again.")
        reasons = ", ".join(f"{n} {why}" for why, n in summary.by_reason.items()) or "no rows"
        raise LabellingError(f"only {summary.accepted} of {summary.requested} rows were labelled ({ratio:.0%}, below teacher.min_success_ratio="
                             f"{t.min_success_ratio}): {reasons}; see {out / 'rejected.jsonl'}, fix the cause and run again (answers are kept).")
    return summary


def estimate(spec) -> Estimate:
    """What label(spec) would send and cost, from the prompts (characters / 4); sends nothing."""
    spec = pilot.resolve_cue(spec, run=False)[0]
    task, t = get_task(spec.task), spec.teacher
    rows, demos = choose_rows(spec)
    per_row = _build_requests(spec, task, spec.labels, rows, demos)
    path = Path(spec.out) / ANSWERS_FILE
    store = AnswerStore(path, read_only=True) if path.exists() else None  # a live run may be writing it
    todo: dict[str, tuple[Example, TeacherRequest]] = {}
    total = 0
    for ex, reqs in zip(rows, per_row):
        for r in reqs:
            total += 1
            if store is None or cached_answer(store, r) is None:
                todo[r.key] = (ex, r)
    if store is not None:
        store.close()
    prompt_tokens = sum(estimate_tokens(r.messages) for _, r in todo.values())
    if task.choice_based and not t.chain_of_thought:  # the answer is one option
        completion_tokens = sum(max(len(o) for o in task.options(ex, spec.labels)) // 4 + 1 for ex, _ in todo.values())
    else:  # an upper bound: every answer as long as allowed
        completion_tokens = t.params.max_tokens * len(todo)
    return Estimate(rows=len(rows), requests=len(todo), cached=total - len(todo), prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens, cost_usd=round(teacher_cost(t, prompt_tokens, completion_tokens), 4), pricing=pricing(t),
                    notes=[n for n in (logprobs_note(spec),) if n])
