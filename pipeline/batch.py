"""Batch labelling (`teacher.batch: true`): the provider's Batch API answers within 24 h at about half the price.

The "batch" sender of the sending engine (pipeline/sending.py picks it when teacher.batch is set; openai and azure
teachers). For the requests not yet in the answer cache:
  1. each request becomes one JSONL line {"custom_id": <cache key>, "method": "POST", "url": <endpoint>, "body": ...},
     split into files under the provider's limits (the teacher's batch_max_requests lines and batch_max_bytes);
  2. each file is uploaded (files.create(purpose="batch")) and recorded in OUT/batches.json, then submitted
     (batches.create(endpoint, completion_window="24h")) and its batch id recorded, each write atomic and BEFORE
     any polling: a run killed at any point finds its batches there;
  3. the batches are polled every teacher.batch_poll_s seconds; progress says "waiting for batch (x of y done)";
  4. a finished batch (completed, failed, expired, cancelled) has its output and error files read back: every
     answer goes into the answer cache (marked extra.batch), every error becomes that row's failure; the rows then
     flow through the same judging and filters as synchronous answers.
Resume: a new run first re-attaches to the batches recorded and not yet read back (one whose create call was cut
off by a kill is found again by its input file id) and never submits those rows again; rows that an earlier batch
ended without answering (cancelled, expired, failed) are submitted again (unanswered rows are not billed).
Cancel: should_stop() cancels every batch still running; what the batches answered before the cancel is read back
by the next run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .answers import AnswerStore
from .errors import TeacherError
from .sending import SendState, cached_answer, register_sender, store_answer
from .teachers import Teacher, TeacherRequest, TransientError
from .teachers.openai import parse_completion

__all__ = ["BATCHES_FILE", "BatchRecord", "Ledger", "split_lines", "send_batches", "batch_line", "pricing", "teacher_cost"]

log = logging.getLogger(__name__)

BATCHES_FILE = "batches.json"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class BatchRecord:
    input_file_id: str
    keys: list[str]
    batch_id: str | None = None  # None: the create call was sent but its answer not recorded (found again by file id)
    status: str = "uploaded"
    collected: bool = False  # output and error files read back into the answer cache
    done: int = 0  # requests the provider reports finished (completed + failed)


@dataclass
class Ledger:
    """OUT/batches.json: every batch this run folder submitted; saved atomically (temp file, fsync, rename)."""

    path: Path
    batches: list[BatchRecord] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "Ledger":
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, [BatchRecord(**b) for b in data["batches"]])
        except (ValueError, KeyError, TypeError):
            raise TeacherError(f"{path} is damaged; it records the batches already paid for, so fix or restore it rather than delete it.") from None

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump({"batches": [asdict(b) for b in self.batches]}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    def live(self) -> list[BatchRecord]:
        return [b for b in self.batches if not b.collected]


def pricing(teacher_spec) -> str:
    """How teacher requests are priced: "list price", or "batch price (50 % of list)" with teacher.batch."""
    if not teacher_spec.batch:
        return "list price"
    return f"batch price ({teacher_spec.price_per_mtok.batch_discount * 100:g} % of list)"


def teacher_cost(teacher_spec, prompt_tokens: int, completion_tokens: int) -> float:
    """USD for these tokens at teacher.price_per_mtok, times price_per_mtok.batch_discount with teacher.batch."""
    price = teacher_spec.price_per_mtok
    cost = prompt_tokens / 1e6 * price.input + completion_tokens / 1e6 * price.output
    return cost * price.batch_discount if teacher_spec.batch else cost


def batch_line(teacher, request: TeacherRequest) -> bytes:
    """One request of a batch input file."""
    line = {"custom_id": request.key, "method": "POST", "url": teacher.batch_endpoint, "body": teacher.request_body(request)}
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def split_lines(lines: list[tuple[str, bytes]], max_requests: int, max_bytes: int) -> list[list[tuple[str, bytes]]]:
    """(key, line) pairs cut into files of at most max_requests lines and max_bytes bytes, in order."""
    files: list[list[tuple[str, bytes]]] = []
    size = 0
    for key, line in lines:
        if len(line) > max_bytes:
            raise TeacherError(f"one teacher request is {len(line):,} bytes, over the batch file limit of {max_bytes:,}; shorten the prompt or set teacher.batch=false.")
        if not files or len(files[-1]) >= max_requests or size + len(line) > max_bytes:
            files.append([])
            size = 0
        files[-1].append((key, line))
        size += len(line)
    return files


class _Batches:
    """One labelling run's view of its batches: submit, re-attach, poll, read back, cancel."""

    def __init__(self, teacher, pending: list[TeacherRequest], store: AnswerStore, state: SendState, should_stop):
        self.teacher, self.store, self.state, self.should_stop = teacher, store, state, should_stop
        self.client = teacher.client
        self.spec = teacher.spec
        self.by_key = {r.key: r for r in pending}
        self.ledger = Ledger.load(store.path.parent / BATCHES_FILE)
        self.reported: set[str] = set()  # pending keys already handed to state.done
        self.final = False  # False while re-attaching: rows an old batch left unanswered are submitted again

    # calls to the provider, with the engine's retries for transient errors -------------------------------
    async def _call(self, fn, *args, **kwargs):
        import openai

        attempt = 0
        while True:
            try:
                return await fn(*args, **kwargs)
            except openai.OpenAIError as err:
                mapped = self.teacher.api_error(err)
                if not isinstance(mapped, TransientError) or attempt >= self.spec.max_retries:
                    raise mapped from None
                await asyncio.sleep(self.state.backoff(attempt, mapped.retry_after))
                attempt += 1

    # submitting ------------------------------------------------------------------------------------------
    async def submit(self, lines: list[tuple[str, bytes]], n: int) -> None:
        data = b"".join(line for _, line in lines)
        upload = await self._call(self.client.files.create, file=(f"distillery-batch-{n:05d}.jsonl", data, "application/jsonl"), purpose="batch")
        rec = BatchRecord(input_file_id=upload.id, keys=[k for k, _ in lines])
        self.ledger.batches.append(rec)
        self.ledger.save()  # before create: a kill from here on finds this file's batch again
        await self._create(rec)

    async def _create(self, rec: BatchRecord) -> None:
        try:
            batch = await self._call(self.client.batches.create, input_file_id=rec.input_file_id, endpoint=self.teacher.batch_endpoint,
                                     completion_window="24h", metadata={"created_by": "distillery"})
        except TeacherError:
            self.ledger.batches.remove(rec)  # refused: nothing runs (a rerun uploads again)
            self.ledger.save()
            raise
        rec.batch_id, rec.status = batch.id, batch.status
        self.ledger.save()

    async def _find_created(self, rec: BatchRecord) -> None:
        """A record whose create call was cut off: attach to the batch made from its file, or create it now."""
        async for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == rec.input_file_id:
                rec.batch_id, rec.status = batch.id, batch.status
                self.ledger.save()
                return
        await self._create(rec)

    # polling and reading back ----------------------------------------------------------------------------
    async def refresh(self, rec: BatchRecord) -> None:
        if rec.batch_id is None:
            await self._find_created(rec)
        try:
            batch = await self._call(self.client.batches.retrieve, rec.batch_id)
        except TransientError as err:  # still unreachable after retries: ask again at the next poll
            log.warning("could not check batch %s: %s", rec.batch_id, err)
            return
        counts = batch.request_counts
        rec.done = int((counts.completed or 0) + (counts.failed or 0)) if counts else 0
        if batch.status != rec.status:
            rec.status = batch.status
            self.ledger.save()
        if batch.status in TERMINAL:
            await self.collect(rec, batch)

    async def collect(self, rec: BatchRecord, batch) -> None:
        errors: dict[str, str] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self._call(self.client.files.content, file_id)
                for raw in content.content.splitlines():
                    self._read_line(raw, errors)
        why = f"batch {rec.batch_id} ended {batch.status} without answering it"
        if batch.status == "failed" and batch.errors and batch.errors.data:
            first = batch.errors.data[0]
            why = f"batch {rec.batch_id} failed: {' '.join(str(first.message or first.code).split())[:200]}"
        self.store.sync()  # the answers are on disk before the ledger says this batch was read back
        rec.collected, rec.done = True, len(rec.keys)
        self.ledger.save()
        for key in rec.keys:
            if key in self.by_key and key not in self.reported:
                if cached_answer(self.store, self.by_key[key]) is not None:
                    self._report(key)
                elif self.final:
                    self.state.fail(self.by_key[key], TeacherError(errors.get(key, why)))
                    self._report(key)

    def _read_line(self, raw: bytes, errors: dict[str, str]) -> None:
        try:
            line = json.loads(raw)
            key = line["custom_id"]
        except (ValueError, KeyError, TypeError):
            return  # a damaged line: that row is asked again by a later run
        response = line.get("response") or {}
        body = response.get("body")
        if response.get("status_code") == 200 and isinstance(body, dict):
            try:
                answer = parse_completion(json.dumps(body).encode(), self.teacher.url, self.by_key.get(key))
            except TransientError:
                errors[key] = "the batch answer was malformed"
                return
            answer.extra["batch"] = True
            req = self.by_key.get(key)
            if req is not None and cached_answer(self.store, req) is None:
                store_answer(self.store, req, answer)  # with its row and max_tokens
            elif req is None and key not in self.store:
                self.store.put(key, answer)
            return
        err = line.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
        status = f"HTTP {response['status_code']}: " if response.get("status_code") else ""
        message = (err.get("message") or err.get("code") or "no answer") if isinstance(err, dict) else str(err)
        errors[key] = f"the batch answered {status}{' '.join(str(message).split())[:200]}"

    def _report(self, key: str) -> None:
        self.reported.add(key)
        self.state.done(key)

    async def cancel(self) -> None:
        for rec in self.ledger.live():
            if rec.batch_id and rec.status not in TERMINAL:
                try:
                    batch = await self._call(self.client.batches.cancel, rec.batch_id)
                    rec.status = batch.status
                except (TransientError, TeacherError) as err:
                    log.warning("could not cancel batch %s: %s", rec.batch_id, err)
        self.ledger.save()

    def progress(self) -> None:
        live = self.ledger.live()
        total = sum(len(b.keys) for b in live)
        done = sum(min(b.done, len(b.keys)) for b in live)
        if live:
            self.state.on_info({"status": f"waiting for batch ({done:,} of {total:,} done)"})

    async def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, checking should_stop; True when the run was cancelled."""
        end = time.monotonic() + seconds
        while True:
            if self.should_stop is not None and self.should_stop():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, 0.2))


async def send_batches(teacher: Teacher, pending: list[TeacherRequest], store: AnswerStore, state: SendState, should_stop) -> None:
    """The "batch" sender: answer `pending` into `store` through the provider's Batch API (see the module docstring)."""
    if not (hasattr(teacher, "batch_endpoint") and hasattr(teacher, "client")):
        raise TeacherError(f"teacher.batch works with providers openai and azure, not '{teacher.spec.provider}'; set teacher.batch=false.")
    run = _Batches(teacher, pending, store, state, should_stop)
    # 1. batches recorded by earlier runs: read back the finished ones before deciding what to submit
    for rec in run.ledger.live():
        await run.refresh(rec)
    run.final = True
    in_flight = {k for rec in run.ledger.live() for k in rec.keys}
    # 2. submit the rest, split under the provider's limits
    todo = [r for r in pending if r.key not in in_flight and cached_answer(store, r) is None]
    files = split_lines([(r.key, batch_line(teacher, r)) for r in todo], teacher.batch_max_requests, teacher.batch_max_bytes)
    for n, lines in enumerate(files, start=len(run.ledger.batches) + 1):
        await run.submit(lines, n)
    # 3. poll until every batch is read back
    while run.ledger.live():
        run.progress()
        if await run.wait(teacher.spec.batch_poll_s):
            await run.cancel()
            state.stopped = True
            return
        for rec in run.ledger.live():
            await run.refresh(rec)
    if run.ledger.batches:
        state.on_info({"status": "batches read back"})


register_sender("batch", send_batches)
