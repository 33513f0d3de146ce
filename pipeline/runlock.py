"""One OS lock per run folder: whatever labels, trains or evaluates in `out` holds OUT/.lock while it works.

    with run_lock(spec.out, "label"):          # RunError naming the holder if another process has it
        ...

    @holds_run_lock                            # the same for a stage function whose first argument is the spec
    def label(spec, ...): ...

The lock is `fcntl.flock` on OUT/.lock, so the operating system releases it when the holder exits, however it
exits (kill -9 included): there is no stale lock to clean up. It is re-entrant within one process (runner.run
holds it and calls label, train and evaluate_run, which take it again), and exclusive between processes: a
second `distillery label` on the same folder stops at once with one sentence naming the holder (pid, host,
command, since when) instead of paying the teacher for the same rows again. The file keeps the last holder's
details as JSON (pid, host, command, since) for that sentence; the command is recorded without key=value
arguments, so no value given on a command line is ever written there or shown.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .errors import RunError

__all__ = ["run_lock", "holds_run_lock", "LOCK_FILE"]

LOCK_FILE = ".lock"
_held: dict[str, list[int]] = {}  # resolved folder -> [fd, depth] held by this process
_guard = threading.Lock()
F = TypeVar("F", bound=Callable[..., Any])


def _command() -> str:
    """What this process is, for the holder sentence: `distillery label spec.yaml` without key=value values."""
    argv = [os.path.basename(sys.argv[0] or "python")] + [a for a in sys.argv[1:] if "=" not in a and len(a) < 200]
    if argv[0] in ("cli.py", "__main__.py", "-m", "-c"):
        argv[0] = "distillery"
    return " ".join(argv)[:200]


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info["since"])))
        return f"process {int(info['pid'])} on {str(info.get('host'))[:100]} (`{str(info.get('command'))[:200]}`, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def run_lock(out: str | Path, stage: str = "") -> Iterator[Path]:
    """Hold OUT/.lock for the duration of the block (creating OUT); RunError if another process holds it."""
    import fcntl

    folder = Path(out).expanduser().absolute()
    key = os.path.realpath(folder)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield folder
        finally:
            with _guard:
                _held[key][1] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as err:
        raise RunError(f"cannot create the lock file {path} ({err.strerror}); check that the run folder is writable "
                       "and that .lock is a plain file, not a link.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(f"the run folder {folder} is in use by {_holder(path)}; wait for it to finish (or stop it), "
                       "then run again, or give this run another out=FOLDER.") from None
    except BaseException:
        os.close(fd)
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(), "stage": stage, "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    with _guard:
        _held[key] = [fd, 1]
    try:
        yield folder
    finally:
        with _guard:
            _held[key][1] -= 1
            last = _held[key][1] == 0
            if last:
                del _held[key]
        if last:
            os.close(fd)  # closing the only descriptor releases the flock


def holds_run_lock(fn: F) -> F:
    """Decorator: run `fn(spec, ...)` holding the lock of `spec.out`."""

    @functools.wraps(fn)
    def wrapper(spec, *args, **kwargs):
        with run_lock(spec.out, fn.__name__):
            return fn(spec, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
