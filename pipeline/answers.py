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

Read-only (`AnswerStore(path, read_only=True)`, what `estimate` uses): the file is read and never written, so a
live run's half-written last line is ignored, not cut. Deleted under a writer: after each write (and on close)
the store checks that `path` is still the file it writes to (device and inode); if the file or the whole run
folder was deleted or replaced, it recreates it and writes every answer this process holds into it again, so a
resume never pays twice for an answer that was already paid for.

A record: {"key", "text", "finish_reason", "prompt_tokens", "completion_tokens", "max_tokens" (the limit it was
asked under, when known), "row" (the dataset row it was asked for, to trace an answer without hashing),
"option_probs"?, "extra"?, "logprobs"? (teacher.logprobs: per answer token [token, logprob, [[alternative, logprob],
...]])}. Older files without max_tokens/row load as they are.

teacher.logprobs is deliberately NOT part of the key: turning it on later reuses the answers already paid for;
those carry no logprobs, so their rows get hard labels (or vote shares), and labelling counts them
(labelling.json `soft_labels.answers_without_logprobs`). To get soft labels for them, the answers must be bought
again: remove teacher_answers.jsonl (or those lines) first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .teachers.base import TeacherAnswer, content_text

__all__ = ["AnswerStore", "answer_key"]

log = logging.getLogger(__name__)


def answer_key(provider: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any], options: list[str] | None, sample: int,
               settings: dict[str, Any] | None = None) -> str:
    """sha256 of everything that determines a teacher's answer (the server URL is deliberately not part of it).

    settings: teacher settings that shape the request beyond its messages (a local teacher's prompt_format and
    answer_cue); left out of the hash when empty, so keys without them stay what they were.
    """
    parts: list[Any] = [provider, model, messages, params, options, sample]
    if settings:
        parts.append(settings)
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


class AnswerStore:
    """Answers by key, loaded from `path` on open; put() appends and flushes one line."""

    def __init__(self, path: str | Path, fsync_every_s: float = 1.0, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self.fsync_every_s = fsync_every_s
        self._answers: dict[str, TeacherAnswer] = {}
        self._lines: dict[str, str] = {}  # key -> its line as written, to write again if the file is deleted
        self._fh = None
        self._load()
        if not read_only:
            self._open()
        self._last_sync = time.monotonic()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        st = os.fstat(self._fh.fileno())
        self._identity = (st.st_dev, st.st_ino)

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        if end < len(data) and not self.read_only:  # torn last line: cut it so the next append starts on a fresh line
            with self.path.open("r+b") as fh:
                fh.truncate(end)
        for raw in data[:end].split(b"\n"):  # "\n" only: U+2028 and friends are valid inside JSON strings
            try:
                line = raw.decode("utf-8").removesuffix("\r")
                rec = json.loads(line)
                self._answers[rec["key"]] = TeacherAnswer(
                    text=content_text(rec.get("text")),  # a list of content parts (older versions cached them) is joined
                    finish_reason=rec.get("finish_reason"),
                    prompt_tokens=_int(rec.get("prompt_tokens")) or 0,
                    completion_tokens=_int(rec.get("completion_tokens")) or 0,
                    option_probs=rec.get("option_probs"),
                    extra=rec.get("extra") or {},
                    max_tokens=_int(rec.get("max_tokens")),
                    logprobs=rec.get("logprobs") if isinstance(rec.get("logprobs"), list) else None,
                )
                self._lines[rec["key"]] = line
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a damaged line is an answer we ask for again, never a crash

    def _still_ours(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _reopen_if_gone(self) -> None:
        """The file was deleted or replaced under us: recreate it with every answer we hold (kept ones first)."""
        if self._still_ours():
            return
        log.warning("%s was deleted or replaced while answers were being written; writing the %d answers held here into it again",
                    self.path, len(self._lines))
        self._fh.close()
        there: set[str] = set()
        try:
            for raw in self.path.read_bytes().split(b"\n"):
                try:
                    there.add(json.loads(raw)["key"])
                except (ValueError, KeyError, TypeError):
                    continue
        except FileNotFoundError:
            pass
        self._open()
        if self._fh.tell() > 0:
            self._fh.write("\n")  # whatever is there may end in a torn line
        self._fh.writelines(line + "\n" for key, line in self._lines.items() if key not in there)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, key: str) -> bool:
        return key in self._answers

    def get(self, key: str) -> TeacherAnswer | None:
        return self._answers.get(key)

    def put(self, key: str, answer: TeacherAnswer, row: Any = None) -> None:
        """Append one answer (row: the dataset row id it was asked for, recorded for tracing)."""
        if not isinstance(answer.text, str):
            answer.text = content_text(answer.text)
        rec = {
            "key": key,
            "text": answer.text,
            "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        }
        if answer.max_tokens is not None:
            rec["max_tokens"] = answer.max_tokens
        if row is not None:
            rec["row"] = row
        if answer.option_probs is not None:
            rec["option_probs"] = answer.option_probs
        if answer.extra:
            rec["extra"] = answer.extra
        if answer.logprobs:
            rec["logprobs"] = answer.logprobs
        if self._fh is None:
            raise RuntimeError(f"{self.path} was opened read-only; open it with read_only=False to add answers.")
        line = json.dumps(rec, ensure_ascii=False, default=str)
        self._fh.write(line + "\n")
        self._fh.flush()
        self._answers[key] = answer
        self._lines[key] = line
        self._reopen_if_gone()
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_every_s:
            os.fsync(self._fh.fileno())
            self._last_sync = now

    def sync(self) -> None:
        """fsync now (before recording elsewhere that these answers are safe, e.g. a batch marked read back)."""
        if self._fh is not None and not self._fh.closed:
            self._fh.flush()
            self._reopen_if_gone()
            os.fsync(self._fh.fileno())
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fh is None or self._fh.closed:
            return
        self._fh.flush()
        self._reopen_if_gone()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def __enter__(self) -> "AnswerStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
