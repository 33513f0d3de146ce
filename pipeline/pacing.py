"""Pacing API requests under provider rate limits: a 429 is back-pressure that slows the engine down, not a failure.

    pace = Pace(concurrency=64, rpm=600, tpm=None)
    epoch = await pace.acquire(cost_tokens)        # waits for a free slot, a server pause, the rpm/tpm buckets
    ... send ...
    pace.answered(limits)  or  pace.rate_limited(epoch, retry_after, limits)  or  pace.release()
    pace.status()                                   # "rate limited, 9.8 req/s, 3 in flight"

Three controls, all in one object the sending workers share:
  - adaptive concurrency (AIMD): at most `limit` requests in flight; it starts at SLOW_START and doubles per
    window of answers (+1 per answer) up to teacher.concurrency until the first 429, so a limited endpoint is
    not hit by a storm of requests at once; a 429 halves it (once per congestion event: 429s of requests sent
    before the last cut do not cut again), then it grows by one per window of answers (+1/limit per answer);
  - server pauses: Retry-After / retry-after-ms of a 429, and x-ratelimit-remaining-* reaching 0 with its
    x-ratelimit-reset-*, hold every new request until then (without a hint: exponential backoff with jitter);
  - optional token buckets for teacher.rpm and teacher.tpm (requests and estimated tokens per minute, one
    second's worth of burst), for limits a user knows from the provider's portal.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import Any

__all__ = ["Pace", "TokenBucket", "RETRY_AFTER_MAX_S"]

SLOW_START = 8  # requests in flight at first (fewer when teacher.concurrency is lower)
RETRY_AFTER_MAX_S = 300.0  # a server asking for more than this is waited on for this long
LIMITED_SHOWN_S = 5.0  # the progress line says "rate limited" this long after the last 429
RATE_WINDOW_S = 5.0  # the request rate shown is over this many seconds


class TokenBucket:
    """`per_minute` units per minute, refilled continuously; holds at most one second's worth (or one big cost)."""

    def __init__(self, per_minute: float, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
        self._at = now

    def wait_s(self, cost: float) -> float:
        """Seconds until `cost` can be taken (a cost above the capacity needs a full bucket, then runs it negative)."""
        self._refill()
        need = min(cost, self.capacity)
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate

    def take(self, cost: float) -> None:
        self._refill()
        self.tokens -= cost


class Pace:
    """AIMD concurrency + server pauses + rpm/tpm buckets, shared by the workers of one send()."""

    def __init__(self, concurrency: int, rpm: float | None = None, tpm: float | None = None, backoff_base_s: float = 0.5,
                 clock=time.monotonic):
        self.max = max(1, concurrency)
        self.limit = float(min(self.max, SLOW_START))
        self.slow_start = True  # until the first 429
        self.in_flight = 0
        self.epoch = 0  # bumped at each cut: a 429 from an older epoch does not cut again
        self.resume_at = 0.0  # no new request before this (server said wait)
        self.streak = 0  # 429 events without an answer in between (backoff without Retry-After)
        self.backoff_base_s = backoff_base_s
        self.clock = clock
        self.requests = TokenBucket(rpm, clock) if rpm else None
        self.tokens = TokenBucket(tpm, clock) if tpm else None
        self.limited = 0  # 429s received
        self.answers = 0
        self._limited_at = float("-inf")
        self._t0 = clock()
        self._done: deque[float] = deque()
        self._waiters: list[asyncio.Future] = []

    # sending --------------------------------------------------------------------------------------------
    def _delay(self, cost: float) -> float:
        delay = self.resume_at - self.clock()
        if self.requests is not None:
            delay = max(delay, self.requests.wait_s(1))
        if self.tokens is not None and cost:
            delay = max(delay, self.tokens.wait_s(cost))
        return delay

    async def acquire(self, cost: float = 0.0, abandon=None) -> int | None:
        """Wait for a slot and for every limit; returns the epoch to hand back to rate_limited(), or None (and
        no slot) when abandon() turns true while waiting (cancel, a fatal error)."""
        while True:
            if abandon is not None and abandon():
                return None
            if self.in_flight >= max(1, int(self.limit)):
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                try:
                    await asyncio.wait_for(fut, 0.25)
                except asyncio.TimeoutError:
                    pass
                continue
            delay = self._delay(cost)
            if delay > 0:
                await asyncio.sleep(min(delay, 0.25))
                continue
            self.in_flight += 1
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None and cost:
                self.tokens.take(cost)
            return self.epoch

    def release(self) -> None:
        """A request finished (any outcome): its slot is free."""
        self.in_flight -= 1
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def answered(self, limits: dict[str, Any] | None = None) -> None:
        """An answer arrived: grow the window by 1/limit, follow the server's remaining/reset headers."""
        self.release()
        now = self.clock()
        self.answers += 1
        self.streak = 0
        self.limit = min(float(self.max), self.limit + (1.0 if self.slow_start else 1.0 / self.limit))
        self._done.append(now)
        self._follow(limits, now)

    def rate_limited(self, epoch: int, retry_after: float | None, limits: dict[str, Any] | None = None) -> None:
        """A 429: halve the window (once per congestion event) and pause new requests as the server asked."""
        self.release()
        now = self.clock()
        self.limited += 1
        self._limited_at = now
        self.slow_start = False
        if epoch == self.epoch:
            self.limit = max(1.0, self.limit / 2)
            self.epoch += 1
            self.streak += 1
        if retry_after is not None:
            wait = min(retry_after, RETRY_AFTER_MAX_S)
        else:
            cap = min(30.0, self.backoff_base_s * 2 ** max(0, self.streak - 1))
            wait = cap / 2 + random.random() * cap / 2
        self.resume_at = max(self.resume_at, now + wait)
        self._follow(limits, now)

    def _follow(self, limits: dict[str, Any] | None, now: float) -> None:
        if not limits:
            return
        for kind in ("requests", "tokens"):
            remaining, reset = limits.get(f"remaining_{kind}"), limits.get(f"reset_{kind}_s")
            if remaining is not None and remaining <= 0 and reset is not None:
                self.resume_at = max(self.resume_at, now + min(reset, RETRY_AFTER_MAX_S))

    # reporting ------------------------------------------------------------------------------------------
    def rate(self) -> float:
        """Answers per second over the last few seconds."""
        now = self.clock()
        while self._done and now - self._done[0] > RATE_WINDOW_S:
            self._done.popleft()
        span = min(RATE_WINDOW_S, now - self._t0)
        return len(self._done) / span if self._done and span > 0 else 0.0

    @property
    def is_limited(self) -> bool:
        return self.clock() - self._limited_at < LIMITED_SHOWN_S or self.resume_at > self.clock()

    def status(self) -> str:
        """One phrase for the progress line, e.g. "rate limited, 9.8 req/s, 3 in flight"."""
        text = f"{self.rate():.1f} req/s, {self.in_flight} in flight"
        return f"rate limited, {text}" if self.is_limited else text
