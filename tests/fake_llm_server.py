"""A scriptable local chat-completions server for tests: OpenAI-compatible and Azure-AI-Inference-compatible.

Real HTTP on 127.0.0.1 (aiohttp in a background thread), so the real `openai` and `azure-ai-inference`
clients talk to it exactly as they talk to a provider.

    from fake_llm_server import FakeLLMServer, Reply

    with FakeLLMServer(responder=lambda req: "positive") as server:
        server.openai_base_url      # http://127.0.0.1:P/v1   -> AsyncOpenAI(base_url=...)
        server.azure_endpoint       # http://127.0.0.1:P      -> ChatCompletionsClient(endpoint=...)
        server.enqueue(Reply(status=429, headers={"Retry-After": "0"}))   # the next request gets a 429
        ...
        server.requests             # every chat request received, in order (FakeRequest)

Routes: POST .../chat/completions (OpenAI at /v1/..., Azure with ?api-version=...), GET .../info (Azure model
info), GET /v1/models. What each chat request gets, in order of precedence:
  1. the next queued Reply (`enqueue`), if any;
  2. `responder(req)`, which returns a str (a normal answer), a Reply, or None (the default answer).
A Reply can set the text, finish_reason, status, headers, a delay (slow responses, timeouts) or a raw
body (malformed JSON). `req.attempt` counts earlier requests with the same messages, so a responder can fail
the first try of every row and succeed on the retry.

Log-probabilities (OpenAI's shape: choices[0].logprobs.content[i] = {token, logprob, bytes, top_logprobs}):
a request with `logprobs: true` gets them. `Reply(logprobs=[(token, logprob, [(alternative, logprob), ...]), ...])`
scripts them exactly (leading spaces, labels split into several tokens, options missing from the top-k); without
it the text is cut into words (each with its leading space) and every word gets logprob -0.01 and made-up
alternatives up to top_logprobs. `FakeLLMServer(refuse_logprobs=True)` answers a request asking for them with
OpenAI's HTTP 400 for reasoning models ("Unsupported parameter: 'logprobs' ...").

Judge mode (pipeline/judge.py's pairwise prompts): `FakeLLMServer(judge=fn)` answers every request whose system
message is the judge's rubric (it starts with JUDGE_SYSTEM_START) with `fn(JudgeCall)`, a str or a Reply; a
JudgeCall has the request text, answer_a, answer_b and the FakeRequest. Other requests go to the responder as usual.

Rate-limit mode (a provider's limit as a token bucket): `FakeLLMServer(rate_limit=10, burst=10)` admits 10
chat requests per second with bursts of up to 10; above it a request gets 429 at once with Retry-After (integer
seconds, rounded up, as HTTP says; `retry_after="exact"` fractional seconds, "ms" adds retry-after-ms, "none"
no hint). `ratelimit_headers=True` adds x-ratelimit-limit/remaining/reset-requests to every answer and 429.
Counters: `server.limited` (429s sent), `server.answered` (200s sent); GET /stats returns them as JSON.

Standalone (for benchmarks, in its own process; prints "PORT <n>" when ready):
    python tests/fake_llm_server.py --latency 0.05 --answer positive
    python tests/fake_llm_server.py --latency 0.3 --rate-limit 10 --burst 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeLLMServer", "FakeRequest", "Reply", "JudgeCall", "last_user", "logprobs_content", "JUDGE_SYSTEM_START"]


@dataclass
class Reply:
    text: str = "positive"
    finish_reason: str = "stop"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (set above the client's timeout to simulate a timeout)
    raw: str | None = None  # send this body verbatim instead of a completion (e.g. malformed JSON)
    prompt_tokens: int | None = None  # default: prompt characters / 4
    completion_tokens: int | None = None  # default: words in text
    logprobs: list[tuple[str, float, list[tuple[str, float]]]] | None = None  # per token: (token, logprob, top-k alternatives)


@dataclass
class FakeRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    attempt: int  # earlier requests with the same messages (0 = first try)
    time: float

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def api(self) -> str:
        return "azure" if "api-version" in self.query else "openai"

    @property
    def prompt_key(self) -> str:
        return json.dumps(self.messages, sort_keys=True)


def last_user(req: FakeRequest) -> str:
    """The content of the last user message (the row, with teacher prompts)."""
    for m in reversed(req.messages):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c)
    return ""


Responder = Callable[[FakeRequest], "str | Reply | None"]

JUDGE_SYSTEM_START = "You are an impartial judge."  # the first words of pipeline.judge.RUBRIC


@dataclass
class JudgeCall:
    """A pairwise judge request as the fake server read it."""

    request: str  # the [Request] section: the conversation or text the answers respond to
    answer_a: str
    answer_b: str
    req: FakeRequest


def judge_call(req: FakeRequest) -> JudgeCall | None:
    """The judge request in `req`, or None when it is not one (its system message is not the judge's rubric)."""
    import re

    system = next((str(m.get("content")) for m in req.messages if m.get("role") == "system"), "")
    if not system.startswith(JUDGE_SYSTEM_START):
        return None
    m = re.fullmatch(r"\[Request\]\n(.*)\n\n\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)", last_user(req), re.S)
    return JudgeCall(m.group(1), m.group(2), m.group(3), req) if m else None


def logprobs_content(reply: Reply, top: int) -> list[dict[str, Any]]:
    """choices[0].logprobs.content for a reply: its scripted tokens, else its words with made-up alternatives."""
    import re

    tokens = reply.logprobs
    if tokens is None:
        tokens = [(w, -0.01, [(f" alt{i}", -5.0 - i) for i in range(max(0, top - 1))]) for w in re.findall(r"\s*\S+", reply.text)]
    return [{"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8")),
             "top_logprobs": [{"token": a, "logprob": alp, "bytes": list(a.encode("utf-8"))} for a, alp in alts][:top]}
            for tok, lp, alts in tokens]


class FakeLLMServer:
    """Start with `with FakeLLMServer(...) as s:` or s.start() / s.stop(). Thread-safe recording."""

    def __init__(self, responder: Responder | None = None, latency: float = 0.0, record: bool = True, port: int = 0,
                 rate_limit: float | None = None, burst: float | None = None, retry_after: str = "ceil", ratelimit_headers: bool = False,
                 refuse_logprobs: bool = False, judge: Callable[[JudgeCall], "str | Reply | None"] | None = None):
        self.responder = responder
        self.judge = judge  # answers judge prompts (see JudgeCall); None: they go to the responder like any request
        self.refuse_logprobs = refuse_logprobs  # 400 for any request asking for logprobs (as reasoning models answer)
        self.latency = latency  # added to every chat request
        self.record = record
        self.rate_limit = rate_limit  # chat requests per second admitted (token bucket); None: no limit
        self.burst = burst if burst is not None else (rate_limit or 0.0)  # bucket size (default: one second's worth)
        self.retry_after = retry_after  # ceil | exact | ms | none
        self.ratelimit_headers = ratelimit_headers
        self.limited = 0  # 429s sent by the rate limit
        self.answered = 0  # 200 answers sent
        self._bucket = self.burst
        self._bucket_at = time.monotonic()
        self.requests: list[FakeRequest] = []
        self.info_calls = 0
        self._queue: list[Reply] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # urls ----------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def azure_endpoint(self) -> str:
        return self.url

    # scripting -----------------------------------------------------------------------------------------
    def enqueue(self, *replies: Reply) -> None:
        """The next len(replies) chat requests get these replies, in order, before the responder is asked."""
        with self._lock:
            self._queue.extend(replies)

    def count_by_prompt(self) -> Counter[str]:
        """How many requests each distinct message list received."""
        with self._lock:
            return Counter(r.prompt_key for r in self.requests)

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> "FakeLLMServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="fake-llm-server")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake LLM server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            fut.result(5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start_app())
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start_app(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._post)
        app.router.add_route("GET", "/{tail:.*}", self._get)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    # handlers ------------------------------------------------------------------------------------------
    async def _get(self, request: web.Request) -> web.Response:
        if request.path == "/stats":
            return web.json_response({"limited": self.limited, "answered": self.answered, "requests": len(self.requests)})
        if request.path.endswith("/info"):
            self.info_calls += 1
            return web.json_response({"model_name": "fake-model", "model_type": "chat-completion", "model_provider_name": "fake"})
        if request.path.endswith("/models"):
            return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]})
        return web.json_response({"error": {"message": "not found"}}, status=404)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        if not request.path.endswith("/chat/completions"):
            return web.json_response({"error": {"message": f"no route {request.path}"}}, status=404)
        try:
            body = json.loads(await request.read())
        except json.JSONDecodeError:
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        key = json.dumps(body.get("messages", []), sort_keys=True)
        if self.rate_limit:
            limited = self._take()
            if limited is not None:
                return limited
        with self._lock:
            attempt = self._seen[key]
            self._seen[key] += 1
            req = FakeRequest(request.path, dict(request.query), dict(request.headers), body, attempt, time.time())
            if self.record:
                self.requests.append(req)
            queued = self._queue.pop(0) if self._queue else None
        reply = queued
        call = judge_call(req) if reply is None and self.judge is not None else None
        if call is not None:
            out = self.judge(call)
            reply = Reply(text=out) if isinstance(out, str) else out
        elif reply is None and self.responder is not None:
            out = self.responder(req)
            reply = Reply(text=out) if isinstance(out, str) else out
        reply = reply or Reply()
        if self.refuse_logprobs and (body.get("logprobs") or body.get("top_logprobs")):
            err = {"error": {"message": "Unsupported parameter: 'logprobs' is not supported with this model.",
                             "type": "invalid_request_error", "param": "logprobs", "code": "unsupported_parameter"}}
            return web.json_response(err, status=400)
        wait = self.latency + reply.delay
        if wait:
            await asyncio.sleep(wait)
        if reply.raw is not None:
            return web.Response(status=reply.status, text=reply.raw, headers=reply.headers, content_type="application/json")
        if reply.status != 200:
            err = {"error": {"message": f"fake error {reply.status}", "type": "fake", "code": str(reply.status)}}
            return web.json_response(err, status=reply.status, headers=reply.headers)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        usage_p = reply.prompt_tokens if reply.prompt_tokens is not None else max(1, prompt_chars // 4)
        usage_c = reply.completion_tokens if reply.completion_tokens is not None else len(reply.text.split())
        data = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": reply.finish_reason}],
            "usage": {"prompt_tokens": usage_p, "completion_tokens": usage_c, "total_tokens": usage_p + usage_c},
        }
        if body.get("logprobs"):
            data["choices"][0]["logprobs"] = {"content": logprobs_content(reply, int(body.get("top_logprobs") or 0)), "refusal": None}
        with self._lock:
            self.answered += 1
            limit_headers = self._limit_headers() if self.ratelimit_headers and self.rate_limit else {}
        return web.json_response(data, headers={**limit_headers, **reply.headers})

    def _take(self) -> web.Response | None:
        """One token from the bucket, or the 429 to send (at once: a limit answers before any work)."""
        with self._lock:
            now = time.monotonic()
            self._bucket = min(self.burst, self._bucket + (now - self._bucket_at) * self.rate_limit)
            self._bucket_at = now
            if self._bucket >= 1:
                self._bucket -= 1
                return None
            self.limited += 1
            wait = (1 - self._bucket) / self.rate_limit
            headers = self._limit_headers() if self.ratelimit_headers else {}
        if self.retry_after in ("ceil", "ms"):
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        if self.retry_after == "exact":
            headers["Retry-After"] = f"{wait:.3f}"
        if self.retry_after == "ms":
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        err = {"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}}
        return web.json_response(err, status=429, headers=headers)

    def _limit_headers(self) -> dict[str, str]:
        """x-ratelimit-* as OpenAI sends them (call with the lock held)."""
        full_in = max(0.0, (self.burst - self._bucket) / self.rate_limit)
        return {"x-ratelimit-limit-requests": str(int(self.burst)), "x-ratelimit-remaining-requests": str(max(0, int(self._bucket))),
                "x-ratelimit-reset-requests": f"{full_in * 1000:.0f}ms"}


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--answer", default="positive")
    ap.add_argument("--rate-limit", type=float, default=None, help="chat requests per second admitted (token bucket)")
    ap.add_argument("--burst", type=float, default=None, help="bucket size (default: one second's worth)")
    ap.add_argument("--retry-after", default="ceil", choices=["ceil", "exact", "ms", "none"])
    ap.add_argument("--ratelimit-headers", action="store_true")
    args = ap.parse_args()
    server = FakeLLMServer(responder=lambda req: args.answer, latency=args.latency, record=False, port=args.port, rate_limit=args.rate_limit,
                           burst=args.burst, retry_after=args.retry_after, ratelimit_headers=args.ratelimit_headers).start()
    print(f"PORT {server.port}", flush=True)
    try:
        sys.stdin.read()  # runs until stdin closes or the process is killed
    except KeyboardInterrupt:
        pass
    server.stop()


if __name__ == "__main__":
    _main()
