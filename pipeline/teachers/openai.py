"""The `openai` teacher: OpenAI, Azure OpenAI's v1 endpoint, and any OpenAI-compatible server (vLLM, Ollama...).

    teacher:
      provider: openai
      model: gpt-4o-mini
      base_url: https://api.openai.com/v1     # or http://localhost:8000/v1 for vLLM, :11434/v1 for Ollama
      api_key_env: OPENAI_API_KEY              # the NAME of the variable; None: a server that needs no key

Built on `openai.AsyncOpenAI` with its own retries off (max_retries=0): the labelling engine owns retries and
concurrency, so they don't multiply. Two choices keep the client cheap at hundreds of requests per second
(measured with benchmarks/labelling.py, 64 in flight):
  - requests go through `client.post("/chat/completions", cast_to=httpx2.Response)`, the client's documented
    raw path, and we read the JSON ourselves: the typed `chat.completions.create` spends ~1 ms of CPU per
    call transforming arguments and building response models;
  - the HTTP transport is aiohttp (`AiohttpTransport` below): httpcore2's pool scans every connection on each
    request. Together: about 0.8 ms of CPU per request instead of 2.8 ms.
Errors: 429, 408, 409, 5xx, timeouts, dropped connections and malformed bodies -> TransientError (retried,
Retry-After honoured); 401/403/404 -> TeacherError marked fatal (labelling stops: every row would fail the same
way); other 4xx -> TeacherError for that row.

Log-probabilities (teacher.logprobs: K > 0): the body asks for `logprobs=True, top_logprobs=K` and each answer
keeps, per answer token, [token, logprob, [[alternative, logprob], ...]] (TeacherAnswer.logprobs; strings as the
API sends them, leading spaces included). Reasoning models (o1, o3, o4, gpt-5...) refuse them: they are not
asked (pipeline.teachers.base.logprobs_note says so once at plan/--estimate time); a 400 that names logprobs at
run time stops labelling with one sentence.

Shared with the azure teachers: `api_key_from_env`, `retry_after_seconds`, `status_error`; the azure teacher is
this class with another base URL and authentication (`_base_url`, `_auth_options`).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import re
import time
from typing import Any

from ..errors import TeacherError
from ..redact import endpoint
from .base import Teacher, TeacherAnswer, TeacherRequest, TransientError, content_text, estimate_tokens

__all__ = ["OpenAITeacher", "AiohttpTransport", "api_key_from_env", "retry_after_seconds", "rate_limit_headers", "status_error",
           "unreachable", "parse_completion", "read_logprobs", "REASONING_MODEL"]

REASONING_MODEL = re.compile(r"(?:^|[/:])(?:o1|o3|o4|gpt-5)(?:$|[-.:_ ])", re.I)  # refuse logprobs (HTTP 400)
NO_KEY = "no-key-needed"  # sent when api_key_env is None: local servers (vLLM, Ollama) accept any key
TRANSIENT_STATUS = {408, 409, 425, 429}


def api_key_from_env(env: str | None, required: bool) -> str | None:
    """The key held in environment variable `env`; TeacherError naming the variable (never the key) when unset."""
    if env is None:
        if required:
            raise TeacherError("this teacher needs an API key; set teacher.api_key_env to the NAME of the environment variable holding it.")
        return None
    key = os.environ.get(env)
    if not key:
        raise TeacherError(f"environment variable {env} is not set; export it with your key (export {env}=...).")
    return key


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a server asked us to wait (retry-after-ms, Retry-After as seconds or an HTTP date), or None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_s(value: Any) -> float | None:
    """"1s", "6m0s", "20ms", "0.5" (seconds) -> seconds; None when unreadable."""
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _count(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def rate_limit_headers(headers: Any) -> dict[str, Any] | None:
    """The x-ratelimit-* headers (OpenAI, Azure) as {remaining_requests, remaining_tokens, reset_requests_s,
    reset_tokens_s, limit_requests, limit_tokens} (only those present), or None when there are none."""
    if headers is None:
        return None
    out: dict[str, Any] = {}
    for kind in ("requests", "tokens"):
        for field, parse, name in (("remaining", _count, f"remaining_{kind}"), ("limit", _count, f"limit_{kind}"),
                                   ("reset", _duration_s, f"reset_{kind}_s")):
            raw = headers.get(f"x-ratelimit-{field}-{kind}")
            value = parse(raw) if raw is not None else None
            if value is not None:
                out[name] = value
    return out or None


def unreachable(message: str) -> TransientError:
    """A TransientError marked as 'the server could not be reached' (labelling says so if every row fails)."""
    err = TransientError(message)
    err.unreachable = True  # type: ignore[attr-defined]
    return err


def status_error(status: int, headers: Any, message: str, url: str, key_env: str | None, model: str, credential: str | None = None) -> Exception:
    """Map an HTTP error status to TransientError or a one-sentence TeacherError (fatal for auth and not-found).

    credential: what was sent instead of a key, for the 401/403 sentence (e.g. "the Microsoft Entra ID token").
    """
    detail = " ".join(str(message).split())[:200]
    if status == 429 and any(m in str(message) for m in ("insufficient_quota", "exceeded your current quota")):  # billing, not a rate limit
        err = TeacherError(f"the account behind the teacher at {url} has no quota left (HTTP 429 insufficient_quota); check its plan and billing.")
        err.fatal = True  # type: ignore[attr-defined]
        return err
    if status in TRANSIENT_STATUS or status >= 500:
        return TransientError(f"the teacher at {url} answered HTTP {status}", retry_after=retry_after_seconds(headers), status=status,
                              limits=rate_limit_headers(headers))
    if status in (401, 403):
        where = credential or (f"the key in {key_env}" if key_env else "the request (no key was sent: set teacher.api_key_env)")
        err = TeacherError(f"the teacher at {url} refused {where} (HTTP {status}); check it and its access to model '{model}'.")
    elif status == 404:
        err = TeacherError(f"the teacher at {url} has no model or route for '{model}' (HTTP 404); check teacher.model and teacher.base_url.")
    else:
        return TeacherError(f"the teacher at {url} rejected the request (HTTP {status}: {detail}).")
    err.fatal = True  # type: ignore[attr-defined]
    return err


class AiohttpTransport:
    """An httpx2 transport over one aiohttp session (created lazily inside the running event loop)."""

    def __init__(self, limit: int = 100):
        self.limit = limit
        self._session = None
        self._proxies: dict[str, str | None] = {}

    def _proxy(self, url) -> str | None:
        """HTTP(S)_PROXY / NO_PROXY, read once per host (aiohttp's trust_env reads them in a thread per request)."""
        host = url.host
        if host not in self._proxies:
            import urllib.request

            bypass = urllib.request.proxy_bypass(host)
            self._proxies[host] = None if bypass else urllib.request.getproxies().get(url.scheme)
        return self._proxies[host]

    async def handle_async_request(self, request):
        import aiohttp
        import httpx2

        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.limit), auto_decompress=True)
        t = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.get("connect"), sock_read=t.get("read"))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw if k.lower() != b"accept-encoding"]
        body = await request.aread()  # JSON bodies are already bytes; multipart uploads (batch files) are streams
        try:
            async with self._session.request(request.method, str(request.url), headers=headers, data=body, timeout=timeout,
                                             proxy=self._proxy(request.url)) as r:
                body = await r.read()
                out_headers = [(k, v) for k, v in r.headers.items() if k.lower() not in ("content-encoding", "transfer-encoding", "content-length")]
                return httpx2.Response(r.status, headers=out_headers, content=body, request=request)
        except asyncio.TimeoutError as err:
            raise httpx2.ReadTimeout("timed out", request=request) from err
        except aiohttp.ClientConnectorError as err:
            raise httpx2.ConnectError(str(err), request=request) from err
        except aiohttp.ClientError as err:
            raise httpx2.RemoteProtocolError(str(err), request=request) from err

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OpenAITeacher(Teacher):
    """Chat completions through the official client; one request per answer (the engine runs many at once)."""

    batch_endpoint = "/v1/chat/completions"  # the Batch API's `endpoint` and each JSONL line's `url` (pipeline/batch.py)
    batch_max_requests = 50_000  # the provider's limits per batch input file
    batch_max_bytes = 200 * 1024 * 1024
    credential: str | None = None  # what a 401/403 sentence names instead of "the key in <api_key_env>"

    @classmethod
    def logprobs_refusal(cls, spec) -> str | None:
        if REASONING_MODEL.search(spec.model or ""):
            return f"model '{spec.model}' is a reasoning model and those return no log-probabilities"
        return None

    def __init__(self, spec) -> None:
        super().__init__(spec)
        import httpx2
        import openai

        base_url = self._base_url(spec)
        if "@" in base_url.split("//", 1)[-1].split("/", 1)[0]:  # user:password@host: it would be sent as Basic auth
            raise TeacherError(f"teacher.base_url for {endpoint(base_url)} has a user name or password in it; remove them and "
                               "put the key in the environment variable that teacher.api_key_env names.")
        self.url = endpoint(base_url)  # what sentences name: never the credentials a base_url may carry
        auth = self._auth_options(spec)  # before any client exists: a missing key raises with nothing to close
        self._transport = AiohttpTransport(limit=max(spec.concurrency, 10))
        http = httpx2.AsyncClient(transport=self._transport, timeout=spec.timeout_s, event_hooks=self._event_hooks())
        self._openai = openai
        self._client = openai.AsyncOpenAI(base_url=base_url, max_retries=0, timeout=spec.timeout_s, http_client=http, **auth)

    def _base_url(self, spec) -> str:
        return spec.base_url or "https://api.openai.com/v1"

    def _event_hooks(self) -> dict[str, list]:
        """httpx event hooks of the client (subclasses: e.g. header rewriting for Azure's key auth)."""
        return {}

    def _auth_options(self, spec) -> dict[str, Any]:
        """AsyncOpenAI keyword arguments that authenticate (subclasses: other headers, token providers)."""
        if spec.auth != "key":
            raise TeacherError(f"teacher.auth={spec.auth} works with provider azure only; the {spec.provider} teacher sends the key named by teacher.api_key_env.")
        return {"api_key": api_key_from_env(spec.api_key_env, required=False) or NO_KEY}

    @property
    def client(self):
        """The openai.AsyncOpenAI client (the Batch API in pipeline/batch.py uses its files and batches)."""
        return self._client

    def request_body(self, request: TeacherRequest) -> dict[str, Any]:
        """The chat.completions body of a request (also each line of a batch input file)."""
        body: dict[str, Any] = {"model": self.spec.model, "messages": request.messages}
        body.update({k: v for k, v in request.params.items() if v is not None})
        k = getattr(self.spec, "logprobs", 0)
        if k and self.logprobs_refusal(self.spec) is None:
            body.update(logprobs=True, top_logprobs=k)
        return body

    def api_error(self, err: Exception) -> Exception:
        """An openai client exception as TransientError or a one-sentence TeacherError (anything else unchanged)."""
        openai = self._openai
        if isinstance(err, openai.APITimeoutError):
            return TransientError(f"the teacher at {self.url} did not answer within {self.spec.timeout_s:g} s")
        if isinstance(err, openai.APIConnectionError):
            return unreachable(f"could not connect to the teacher at {self.url} ({type(err.__cause__ or err).__name__})")
        if isinstance(err, openai.APIStatusError):
            if err.status_code == 400 and getattr(self.spec, "logprobs", 0) and "logprob" in f"{err.message} {err.body}".lower():
                refused = TeacherError(f"the teacher at {self.url} refuses log-probabilities for model '{self.spec.model}' (HTTP 400); "
                                       "set teacher.logprobs=0 to label with hard labels, lower it (Azure OpenAI allows at most 5), "
                                       "or choose a model that returns them.")
                refused.fatal = True  # type: ignore[attr-defined]  # every row would fail the same way
                return refused
            return status_error(err.status_code, err.response.headers, err.message, self.url, self.spec.api_key_env, self.spec.model, self.credential)
        return err

    async def answer(self, request: TeacherRequest) -> TeacherAnswer:
        import httpx2

        try:
            resp = await self._client.post("/chat/completions", cast_to=httpx2.Response, body=self.request_body(request))
        except self._openai.OpenAIError as err:
            raise self.api_error(err) from None
        return parse_completion(resp.content, self.url, request, resp.headers)

    async def aclose(self) -> None:
        await self._client.close()
        await self._transport.aclose()


def _usage(usage: Any, name: str) -> int | None:
    """A usage count, or None when missing or not a number ("n/a" from some gateways)."""
    value = usage.get(name) if isinstance(usage, dict) else None
    if isinstance(value, bool):
        return None
    try:
        return max(0, int(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def parse_completion(content: bytes, url: str, request: TeacherRequest | None = None, headers: Any = None) -> TeacherAnswer:
    """A TeacherAnswer from a chat.completion JSON body; a malformed body is transient (proxies, overload).

    message.content may be a list of content parts (their text is joined); usage missing or not numeric is
    estimated from the characters of the request and the answer, so a gateway's odd usage never stops labelling.
    """
    try:
        data = json.loads(content)
        choice = data["choices"][0]
        text = content_text((choice.get("message") or {}).get("content"))
        usage = data.get("usage") or {}
        finish = choice.get("finish_reason")
        logprobs = read_logprobs(choice.get("logprobs"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise TransientError(f"the teacher at {url} sent a malformed response") from None
    prompt, completion = _usage(usage, "prompt_tokens"), _usage(usage, "completion_tokens")
    if prompt is None:
        prompt = estimate_tokens(request.messages) if request is not None else 0
    if completion is None:
        completion = len(text) // 4 + (1 if text else 0)
    return TeacherAnswer(text=text, finish_reason=finish if isinstance(finish, str) else None, prompt_tokens=prompt,
                         completion_tokens=completion, limits=rate_limit_headers(headers), logprobs=logprobs)


def read_logprobs(block: Any) -> list[list] | None:
    """choice.logprobs.content as [[token, logprob, [[alternative, logprob], ...]], ...]; None when absent or unreadable
    (an answer without logprobs is still an answer: its row gets a hard label)."""
    content = block.get("content") if isinstance(block, dict) else None
    if not isinstance(content, list) or not content:
        return None
    out = []
    try:
        for item in content:
            top = [[str(a["token"]), float(a["logprob"])] for a in (item.get("top_logprobs") or [])]
            out.append([str(item["token"]), float(item["logprob"]), top])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return out
