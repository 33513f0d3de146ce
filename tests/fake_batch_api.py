"""A local OpenAI / Azure OpenAI Batch API for tests: files, batches, status transitions, partial failures.

Mounted on the fake chat server's aiohttp app (FakeBatchAPI is a tests/fake_llm_server.FakeLLMServer: real HTTP on
127.0.0.1, the same lifecycle, /chat/completions still answered), so the real `openai` client uploads, submits and
polls exactly as it does against a provider. Routes work under any prefix (/v1 for OpenAI, /openai/v1 for Azure):

    POST {p}/files (multipart: purpose, file)      GET {p}/files/{id}      GET {p}/files/{id}/content
    POST {p}/batches   GET {p}/batches (list)      GET {p}/batches/{id}    POST {p}/batches/{id}/cancel

    with FakeBatchAPI(answer=lambda body: "positive") as api:
        api.openai_base_url / api.azure_base_url / api.url
        api.hold = True          # batches stay in_progress (nothing finishes) until set back to False
        api.creates              # batches.create calls received; api.submitted: Counter of custom_ids submitted
        api.expire(batch_id)     # the next status check ends it "expired" (finished rows kept, the rest errors)
        FakeBatchAPI(invalid="...")      # every batch fails validation with this message
        FakeBatchAPI(expire_after=3)     # a batch expires once 3 of its rows are answered

Lifecycle, advanced by each GET of the batch: validating -> (input checked: JSONL, unique custom_id, method POST,
url == the batch's endpoint, one model) failed | in_progress -> (rows_per_poll rows answered per check; all when
None) finalizing -> completed, writing the output file (status 200 rows) and the error file (rows the answer
function failed: it returns a dict {"status_code": 500, "message": ...} instead of text). cancel: cancelling ->
cancelled with the rows answered so far. `api_key`: every request must carry it (api-key or Bearer) or gets 401.
`create_delay`: seconds the create call waits before answering (to kill a client between create and its answer).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from fake_llm_server import FakeLLMServer, Reply, logprobs_content

__all__ = ["FakeBatchAPI"]

Answer = Callable[[dict[str, Any]], "str | dict | None"]
_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids):06d}"


class FakeBatchAPI(FakeLLMServer):
    """The fake chat server (tests/fake_llm_server.py) plus the Batch API routes; same lifecycle and urls."""

    def __init__(self, answer: Answer | None = None, api_key: str | None = None, rows_per_poll: int | None = None,
                 hold: bool = False, create_delay: float = 0.0, invalid: str | None = None, expire_after: int | None = None):
        super().__init__(responder=self._answer_now)
        self.answer = answer or (lambda body: "positive")
        self.api_key, self.rows_per_poll, self.hold, self.create_delay = api_key, rows_per_poll, hold, create_delay
        self.invalid = invalid  # validation fails with this message (a deployment that is not a batch deployment...)
        self.expire_after = expire_after  # a batch with this many rows answered expires at its next check
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._work: dict[str, dict[str, Any]] = {}  # batch id -> {"lines": [...], "results": {custom_id: line}}
        self.creates = 0
        self.cancels = 0
        self.submitted: Counter[str] = Counter()
        self.unauthorized = 0
        self.key_headers: set[str] = set()  # which of api-key / Authorization the batch calls carried
        self._expire: set[str] = set()
        self._batch_lock = threading.RLock()

    def _answer_now(self, req) -> "str | Reply":
        """Synchronous /chat/completions use the same answer function."""
        out = self.answer(req.body)
        return Reply(status=int(out.get("status_code", 500))) if isinstance(out, dict) else (out or "positive")

    @property
    def azure_base_url(self) -> str:
        return f"{self.url}/openai/v1"

    def expire(self, batch_id: str) -> None:
        with self._batch_lock:
            self._expire.add(batch_id)

    def statuses(self) -> list[str]:
        with self._batch_lock:
            return [b["status"] for b in self.batches.values()]

    async def _get(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request) if _batch_route(request) else await super()._get(request)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request) if _batch_route(request) else await super()._post(request)

    # routing -------------------------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.key_headers.update(h for h in ("api-key", "Authorization") if h in request.headers)
        if self.api_key is not None:
            sent = request.headers.get("api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
            if sent != self.api_key:
                self.unauthorized += 1
                return _error(401, "invalid key")
        parts = request.path.strip("/").split("/")
        if "files" in parts:
            rest = parts[parts.index("files") + 1:]
            if request.method == "POST" and not rest:
                return await self._upload(request)
            if request.method == "GET" and len(rest) == 2 and rest[1] == "content":
                return self._content(rest[0])
            if request.method == "GET" and len(rest) == 1:
                return self._file(rest[0])
        if "batches" in parts:
            rest = parts[parts.index("batches") + 1:]
            if request.method == "POST" and not rest:
                return await self._create(request)
            if request.method == "GET" and not rest:
                return self._list()
            if request.method == "GET" and len(rest) == 1:
                return self._retrieve(rest[0])
            if request.method == "POST" and len(rest) == 2 and rest[1] == "cancel":
                return self._cancel(rest[0])
        return _error(404, f"no route {request.method} {request.path}")

    # files ---------------------------------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or purpose != "batch":
            return _error(400, "a file with purpose=batch is required")
        data = upload.file.read()
        return web.json_response(self._add_file(data, upload.filename or "input.jsonl", "batch"))

    def _add_file(self, data: bytes, name: str, purpose: str) -> dict[str, Any]:
        fid = _new_id("file")
        obj = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()), "filename": name,
               "purpose": purpose, "status": "processed"}
        with self._batch_lock:
            self.files[fid] = {**obj, "data": data}
        return obj

    def _file(self, fid: str) -> web.Response:
        f = self.files.get(fid)
        return web.json_response({k: v for k, v in f.items() if k != "data"}) if f else _error(404, "no such file")

    def _content(self, fid: str) -> web.Response:
        f = self.files.get(fid)
        return web.Response(body=f["data"], content_type="application/octet-stream") if f else _error(404, "no such file")

    # batches -------------------------------------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        fid, endpoint = body.get("input_file_id"), body.get("endpoint")
        if fid not in self.files:
            return _error(400, f"input file {fid} does not exist")
        if body.get("completion_window") != "24h":
            return _error(400, "completion_window must be 24h")
        bid = _new_id("batch")
        now = int(time.time())
        batch = {"id": bid, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": fid,
                 "completion_window": "24h", "status": "validating", "output_file_id": None, "error_file_id": None,
                 "created_at": now, "expires_at": now + 86400, "request_counts": {"total": 0, "completed": 0, "failed": 0},
                 "metadata": body.get("metadata")}
        with self._batch_lock:
            self.creates += 1
            self.batches[bid] = batch
            self._work[bid] = {"lines": [], "results": {}}
        until = time.monotonic() + self.create_delay
        while self.create_delay and time.monotonic() < until:  # setting create_delay to 0 releases a waiting call
            await asyncio.sleep(0.05)
        return web.json_response(batch)

    def _list(self) -> web.Response:
        with self._batch_lock:
            data = list(reversed(self.batches.values()))
        return web.json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None, "has_more": False})

    def _retrieve(self, bid: str) -> web.Response:
        with self._batch_lock:
            batch = self.batches.get(bid)
            if batch is None:
                return _error(404, "no such batch")
            self._advance(batch)
            return web.json_response(batch)

    def _cancel(self, bid: str) -> web.Response:
        with self._batch_lock:
            batch = self.batches.get(bid)
            if batch is None:
                return _error(404, "no such batch")
            self.cancels += 1
            if batch["status"] in ("validating", "in_progress", "finalizing"):
                batch["status"] = "cancelling"
            return web.json_response(batch)

    # the state machine ---------------------------------------------------------------------------------
    def _advance(self, batch: dict[str, Any]) -> None:
        bid, status = batch["id"], batch["status"]
        work = self._work[bid]
        if status == "validating":
            problem = self._validate(batch, work)
            if problem:
                batch["status"] = "failed"
                batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": problem, "line": None, "param": None}]}
            else:
                batch["status"] = "in_progress"
                batch["request_counts"]["total"] = len(work["lines"])
        elif status == "in_progress":
            if bid in self._expire or (self.expire_after is not None and len(work["results"]) >= self.expire_after):
                self._finish(batch, "expired")
                return
            if self.hold:
                return
            todo = [ln for ln in work["lines"] if ln["custom_id"] not in work["results"]]
            for line in todo[: self.rows_per_poll or len(todo)]:
                work["results"][line["custom_id"]] = self._run(line)
            self._count(batch)
            if len(work["results"]) == len(work["lines"]):
                batch["status"] = "finalizing"
        elif status == "finalizing":
            self._finish(batch, "completed")
        elif status == "cancelling":
            self._finish(batch, "cancelled")

    def _validate(self, batch: dict[str, Any], work: dict[str, Any]) -> str | None:
        if self.invalid:
            return self.invalid
        seen, models = set(), set()
        for n, raw in enumerate(self.files[batch["input_file_id"]]["data"].splitlines(), start=1):
            try:
                line = json.loads(raw)
            except ValueError:
                return f"line {n} is not JSON"
            if line.get("method") != "POST" or line.get("url") != batch["endpoint"]:
                return f"line {n}: method must be POST and url {batch['endpoint']}"
            if line.get("custom_id") in seen:
                return f"line {n}: duplicate custom_id"
            seen.add(line.get("custom_id"))
            models.add(line.get("body", {}).get("model"))
            work["lines"].append(line)
        if len(models) > 1:
            return "all requests in a batch must use the same model"
        if not work["lines"]:
            return "the input file is empty"
        self.submitted.update(seen)
        return None

    def _run(self, line: dict[str, Any]) -> dict[str, Any]:
        body = line["body"]
        out = self.answer(body)
        rid = _new_id("req")
        if isinstance(out, dict):  # a failed request
            code = int(out.get("status_code", 500))
            return {"id": _new_id("batch_req"), "custom_id": line["custom_id"], "error": None,
                    "response": {"status_code": code, "request_id": rid,
                                 "body": {"error": {"message": out.get("message", "server error"), "type": "fake", "code": str(code)}}}}
        text = "positive" if out is None else out
        prompt = max(1, sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4)
        completion = {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": prompt, "completion_tokens": len(text.split()), "total_tokens": prompt + len(text.split())}}
        if body.get("logprobs"):  # as the chat route sends them (fake_llm_server.logprobs_content)
            completion["choices"][0]["logprobs"] = {"content": logprobs_content(Reply(text=text), int(body.get("top_logprobs") or 0))}
        return {"id": _new_id("batch_req"), "custom_id": line["custom_id"], "error": None,
                "response": {"status_code": 200, "request_id": rid, "body": completion}}

    def _count(self, batch: dict[str, Any]) -> None:
        results = self._work[batch["id"]]["results"].values()
        ok = sum(r["response"]["status_code"] == 200 for r in results if r.get("response"))
        batch["request_counts"].update(completed=ok, failed=len(results) - ok)

    def _finish(self, batch: dict[str, Any], status: str) -> None:
        work = self._work[batch["id"]]
        results = dict(work["results"])
        if status == "expired":
            for line in work["lines"]:
                results.setdefault(line["custom_id"], {"id": _new_id("batch_req"), "custom_id": line["custom_id"], "response": None,
                                                       "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
        good = [r for r in results.values() if r.get("response") and r["response"]["status_code"] == 200]
        bad = [r for r in results.values() if r not in good]
        self._count(batch)
        if good:
            batch["output_file_id"] = self._add_file(_jsonl(good), "output.jsonl", "batch_output")["id"]
        if bad:
            batch["error_file_id"] = self._add_file(_jsonl(bad), "errors.jsonl", "batch_output")["id"]
        batch["status"] = status
        batch[f"{status}_at"] = int(time.time())


def _batch_route(request: web.Request) -> bool:
    parts = request.path.strip("/").split("/")
    return "files" in parts or "batches" in parts


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "fake", "code": str(status)}}, status=status)
