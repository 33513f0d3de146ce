"""One OS lock per run folder: whatever labels, trains or evaluates in `out` holds OUT/.lock while it works.

    with run_lock(spec.out, "label"):          # RunError naming the holder if another process has it
        ...

    @holds_run_lock                            # the same for a stage function whose first argument is the spec
    def label(spec, ...): ...

The lock is `fcntl.flock` on OUT/.lock, so the operating system releases it when the holder exits, however it
exits (kill -9 included): there is no stale lock to clean up. It is re-entrant within one process (runner.run
holds it and calls label, train and evaluate_run, which take it again), and exclusive between processes: a
second `distillery label` on the same folder stops at once with one sentence naming the holder (pid, host,
command, since when) instead of paying the teacher for the same rows again. While held, the file holds the
holder's details as JSON (pid, host, command, since) for that sentence; the command is recorded without
key=value arguments, so no value given on a command line is ever written there or shown. The holder removes
the file as it lets go (a process that opened the old file re-checks the inode and locks a fresh one), so a
finished run folder has no .lock in it.

Taking the lock also checks the folder for symbolic links among the files and folders a stage reads, writes or
deletes (`check_no_links`): a folder someone else prepared cannot make training delete `checkpoints/` elsewhere
or write the adapter through `.student-tmp`. `read_run_file` reads a run file for display or upload, refusing a
link (O_NOFOLLOW), so a planted `report.md -> ~/.ssh/id_rsa` is never shown or sent anywhere.
"""

from __future__ import annotations

import contextlib
import fnmatch
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

__all__ = ["run_lock", "holds_run_lock", "check_no_links", "read_run_file", "LOCK_FILE"]

LOCK_FILE = ".lock"
RUN_DIRS = {"student", "checkpoints", ".student-tmp", ".student-old"}  # walked whole: training deletes and rewrites them
RUN_FILE_PATTERNS = ("*.json", "*.jsonl", "*.yaml", "*.md", "*.png", "*.tmp", ".tmp*", ".lock")
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
    fd = _acquire(path, folder)
    try:
        check_no_links(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
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
            with contextlib.suppress(OSError):
                os.unlink(path)  # still holding it: whoever waits re-checks the inode and takes a fresh file
            os.close(fd)  # closing the only descriptor releases the flock


def _acquire(path: Path, folder: Path) -> int:
    """An fd of OUT/.lock holding its exclusive flock; RunError naming the holder if another process has it."""
    import fcntl

    while True:
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
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed this file as it finished: lock the new one


def _is_run_entry(name: str) -> bool:
    return name in RUN_DIRS or any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILE_PATTERNS)


def check_no_links(folder: str | Path) -> None:
    """RunError if a file or folder Distillery reads, writes or deletes in this run folder is a symbolic link.

    Only the run folder's own entries are looked at (spec, caches, labels, reports, student/, checkpoints/ and
    their temp names), so `out=.` in a project with links elsewhere is fine. The folder itself may be a link.
    """
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if not _is_run_entry(entry.name):
            continue
        if entry.is_symlink():
            _refuse_link(folder, Path(entry.path))
        if entry.name in RUN_DIRS and entry.is_dir(follow_symlinks=False):
            for root, dirs, files in os.walk(entry.path, followlinks=False):
                for name in dirs + files:
                    if os.path.islink(os.path.join(root, name)):
                        _refuse_link(folder, Path(root) / name)


def _refuse_link(folder: Path, link: Path) -> None:
    raise RunError(f"the run folder {folder} contains a symbolic link ({link.relative_to(folder)}); Distillery never deletes or "
                   "writes through links in a run folder: remove the link, or give the run another out=FOLDER.")


def holds_run_lock(fn: F) -> F:
    """Decorator: run `fn(spec, ...)` holding the lock of `spec.out`."""

    @functools.wraps(fn)
    def wrapper(spec, *args, **kwargs):
        with run_lock(spec.out, fn.__name__):
            return fn(spec, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def read_run_file(path: str | Path, max_bytes: int = 50_000_000) -> bytes:
    """The bytes of a run folder file, never through a symbolic link (RunError saying so); OSError as usual."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if path.is_symlink():
            raise RunError(f"{path} is a symbolic link, not a file the run wrote; it is not read. Remove it and "
                           "re-run the stage that writes it.") from None
        raise err
    with os.fdopen(fd, "rb") as fh:
        return fh.read(max_bytes)
