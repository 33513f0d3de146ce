"""Progress: one callback type for every long stage, and a terminal bar with rate and ETA.

    def on_progress(p: Progress) -> None: ...
    label(spec, progress=on_progress)
    label(spec, progress=TerminalBar())      # rich bar on stderr
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Progress", "ProgressFn", "Tracker", "TerminalBar", "combine"]


@dataclass
class Progress:
    stage: str  # labelling | training | evaluating | ...
    done: int
    total: int
    rate: float | None = None  # units per second
    eta_s: float | None = None
    unit: str = "rows"
    info: dict[str, Any] = field(default_factory=dict)  # e.g. loss, tokens_per_second, rejected

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressFn = Callable[[Progress], None]


class Tracker:
    """Counts done units and reports Progress with rate and ETA, at most every `every_s` seconds."""

    def __init__(self, stage: str, total: int, callback: ProgressFn | None, unit: str = "rows", every_s: float = 0.5, start: int = 0):
        self.stage, self.total, self.callback, self.unit, self.every_s = stage, total, callback, unit, every_s
        self.done = start
        self._start_done = start
        self._t0 = time.monotonic()
        self._last = 0.0
        self.info: dict[str, Any] = {}

    def advance(self, n: int = 1, force: bool = False, **info: Any) -> None:
        self.done += n
        self.info.update(info)
        now = time.monotonic()
        if self.callback and (force or self.done >= self.total or now - self._last >= self.every_s):
            self._last = now
            self.callback(self.snapshot())

    def snapshot(self) -> Progress:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = (self.done - self._start_done) / elapsed if self.done > self._start_done else None
        eta = (self.total - self.done) / rate if rate else None
        return Progress(self.stage, self.done, self.total, rate, eta, self.unit, dict(self.info))


class TerminalBar:
    """A progress callback drawing a rich bar per stage on stderr (plain lines when not a terminal)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self._bars: dict[str, Any] = {}
        self._progress = None
        self._last_plain = 0.0

    def __call__(self, p: Progress) -> None:
        if not getattr(self.stream, "isatty", lambda: False)():
            now = time.monotonic()
            if p.done >= p.total or now - self._last_plain > 5:
                self._last_plain = now
                self.stream.write(_plain(p) + "\n")
                self.stream.flush()
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

        if self._progress is None:
            self._progress = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream), transient=False,
            )
            self._progress.start()
        if p.stage not in self._bars:
            self._bars[p.stage] = self._progress.add_task(p.stage, total=p.total, rate="", info="")
        self._progress.update(self._bars[p.stage], completed=p.done, total=p.total,
                              rate=f"{p.rate:.1f} {p.unit}/s" if p.rate else "", info=_info(p.info))
        if p.done >= p.total:
            self._progress.refresh()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._bars.clear()


def _info(info: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())


def _plain(p: Progress) -> str:
    rate = f" {p.rate:.1f} {p.unit}/s" if p.rate else ""
    eta = f" ETA {p.eta_s:.0f}s" if p.eta_s is not None else ""
    extra = f" {_info(p.info)}" if p.info else ""
    return f"[{p.stage}] {p.done}/{p.total}{rate}{eta}{extra}"


def combine(*fns: ProgressFn | None) -> ProgressFn:
    live = [f for f in fns if f]

    def call(p: Progress) -> None:
        for f in live:
            f(p)

    return call
