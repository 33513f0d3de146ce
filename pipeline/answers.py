"""The teacher answer cache: an append-only JSONL file, one answer per line, keyed by a hash of the request.

    store = AnswerStore(run_dir / "teacher_answers.jsonl")
    key = answer_key("openai", "gpt-4o-mini", messages, params, options, sample=0)
    if store.get(key) is None:
        store.put(key, await teacher.answer(request))
    store.close()

Durability: every put() writes its line and flushes it to the operating system at once, so an answer survives
the process being killed (kill -9) the moment put() returns. fsync (which only matters if the machine itself
loses power) is batched to at most once per `fsync_every_s` and done on close(): an fsync per answer costs
milliseconds on many disks and would dominate fast labelling. A torn last line (a kill in the middle of a
write) is dropped on open. Failures are never stored: only answers a teacher actually returned are.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .teachers.base import TeacherAnswer

__all__ = ["AnswerStore", "answer_key"]


def answer_key(provider: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any], options: list[str] | None, sample: int) -> str:
    """sha256 of everything that determines a teacher's answer (the server URL is deliberately not part of it)."""
    blob = json.dumps([provider, model, messages, params, options, sample], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerStore:
    """Answers by key, loaded from `path` on open; put() appends and flushes one line."""

    def __init__(self, path: str | Path, fsync_every_s: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync_every_s = fsync_every_s
        self._answers: dict[str, TeacherAnswer] = {}
        self._load()
        self._fh = self.path.open("a", encoding="utf-8")
        self._last_sync = time.monotonic()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # torn last line: cut it so the next append starts on a fresh line
            with self.path.open("r+b") as fh:
                fh.truncate(end)
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
                self._answers[rec["key"]] = TeacherAnswer(
                    text=rec.get("text") or "",
                    finish_reason=rec.get("finish_reason"),
                    prompt_tokens=int(rec.get("prompt_tokens") or 0),
                    completion_tokens=int(rec.get("completion_tokens") or 0),
                    option_probs=rec.get("option_probs"),
                    extra=rec.get("extra") or {},
                )
            except (ValueError, KeyError, TypeError):
                continue  # a damaged line is an answer we ask for again, never a crash

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, key: str) -> bool:
        return key in self._answers

    def get(self, key: str) -> TeacherAnswer | None:
        return self._answers.get(key)

    def put(self, key: str, answer: TeacherAnswer) -> None:
        rec = {
            "key": key,
            "text": answer.text,
            "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        }
        if answer.option_probs is not None:
            rec["option_probs"] = answer.option_probs
        if answer.extra:
            rec["extra"] = answer.extra
        self._fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()
        self._answers[key] = answer
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_every_s:
            os.fsync(self._fh.fileno())
            self._last_sync = now

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def __enter__(self) -> "AnswerStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
