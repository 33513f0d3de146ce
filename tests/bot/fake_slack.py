"""A fake Slack: the Web API over real HTTP on 127.0.0.1 and a Socket Mode websocket server, recording calls.

    with FakeSlack() as slack:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)   # http://127.0.0.1:P/api/
        ...
        slack.calls("chat.postMessage")        # -> list of argument dicts, oldest first
        slack.uploads                          # -> {file_id: bytes}
        slack.send_envelope("events_api", payload)   # Socket Mode: pushes to the connected app, returns envelope_id
        slack.add_file("F0001", "reviews.csv", b"...", channels=["C1"])   # files.info + GET /files-pri/F0001/reviews.csv
        slack.downloads                        # -> [{"path", "authorization"}] every file download request received

Answers `POST /api/<method>` (form, JSON or query-string arguments) like Slack does for the methods the bot
uses; anything else answers {"ok": true}. `apps.connections.open` returns the ws:// URL of the local websocket
server, which greets with {"type": "hello"} and records the acks the app sends back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlparse

__all__ = ["FakeSlack", "BOT_USER_ID", "BOT_ID", "TEAM_ID"]

BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
TEAM_ID = "T0001"


class FakeSlack:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[tuple[str, dict[str, Any]]] = []
        self.uploads: dict[str, bytes] = {}
        self.acks: list[dict[str, Any]] = []
        self._ts = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._http: ThreadingHTTPServer | None = None
        self._ws_loop: asyncio.AbstractEventLoop | None = None
        self._ws_sockets: list[Any] = []
        self._ws_connected = threading.Event()
        self._ws_stop: asyncio.Event | None = None
        self._ws_thread: threading.Thread | None = None
        self.ws_url = ""
        self.files: dict[str, dict[str, Any]] = {}  # file id -> {"meta": files.info's file, "content", "content_type"}
        self.downloads: list[dict[str, Any]] = []

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> "FakeSlack":
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._http:
            self._http.shutdown()
            self._http.server_close()
        if self._ws_loop and self._ws_stop:
            self._ws_loop.call_soon_threadsafe(self._ws_stop.set)
            self._ws_thread.join(10)

    def __enter__(self) -> "FakeSlack":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return self.base_url + "/api/"

    # -- records -----------------------------------------------------------------------------------------------
    def record(self, method: str, args: dict[str, Any]) -> None:
        with self._lock:
            self._calls.append((method, args))

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(a, _method=m) if method is None else a for m, a in self._calls if method is None or m == method]

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "condition") -> Any:
        """Poll predicate() until it returns something truthy; AssertionError after timeout (no timing asserted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; calls so far: {[c['_method'] for c in self.calls()]}")

    def next_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    # -- Socket Mode -------------------------------------------------------------------------------------------
    def start_socket_mode(self) -> str:
        """Start the local websocket server; apps.connections.open will hand out its URL."""
        ready = threading.Event()
        self._ws_thread = threading.Thread(target=self._run_ws, args=(ready,), daemon=True)
        self._ws_thread.start()
        ready.wait(10)
        return self.ws_url

    def _run_ws(self, ready: threading.Event) -> None:
        from websockets.asyncio.server import serve

        async def handle(ws) -> None:
            await ws.send(json.dumps({"type": "hello", "num_connections": 1,
                                      "connection_info": {"app_id": "A0001"}, "debug_info": {"host": "fake"}}))
            self._ws_sockets.append(ws)
            self._ws_connected.set()
            async for message in ws:
                with self._lock:
                    self.acks.append(json.loads(message))

        async def main() -> None:
            self._ws_stop = asyncio.Event()
            async with serve(handle, "127.0.0.1", 0) as server:
                port = server.sockets[0].getsockname()[1]
                self.ws_url = f"ws://127.0.0.1:{port}/"
                ready.set()
                await self._ws_stop.wait()

        self._ws_loop = asyncio.new_event_loop()
        self._ws_loop.run_until_complete(main())
        self._ws_loop.close()

    def send_envelope(self, kind: str, payload: dict[str, Any], retry_attempt: int = 0) -> str:
        """Push one Socket Mode envelope (events_api, slash_commands, interactive) to the connected app."""
        if not self._ws_connected.wait(30):
            raise AssertionError("the app never connected to the fake Socket Mode server")
        envelope_id = f"env-{next(self._ts)}"
        envelope = {"envelope_id": envelope_id, "type": kind, "payload": payload,
                    "accepts_response_payload": kind != "events_api", "retry_attempt": retry_attempt,
                    "retry_reason": "timeout" if retry_attempt else ""}
        ws = self._ws_sockets[-1]
        asyncio.run_coroutine_threadsafe(ws.send(json.dumps(envelope)), self._ws_loop).result(10)
        return envelope_id

    def acked(self, envelope_id: str) -> bool:
        with self._lock:
            return any(a.get("envelope_id") == envelope_id for a in self.acks)

    # -- files: files.info and the download route (issue 11) -----------------------------------------------------
    def add_file(self, file_id: str, name: str, content: bytes, channels: list[str] = (), user: str = "U1",
                 size: int | None = None, url: str | None = None, content_type: str = "application/octet-stream",
                 filetype: str | None = None, redirect: str | None = None) -> dict[str, Any]:
        """A file Slack knows; `url` overrides url_private_download (another host), `size` the reported size,
        `redirect` makes the download answer 302 to that URL."""
        meta = {"id": file_id, "name": name, "title": name, "user": user, "size": len(content) if size is None else size,
                "filetype": filetype or name.rsplit(".", 1)[-1], "mimetype": content_type,
                "url_private": url or f"{self.base_url}/files-pri/{file_id}/{name}",
                "url_private_download": url or f"{self.base_url}/files-pri/{file_id}/download/{name}",
                "channels": [c for c in channels if c.startswith("C")], "groups": [c for c in channels if c.startswith("G")],
                "ims": [c for c in channels if c.startswith("D")]}
        with self._lock:
            self.files[file_id] = {"meta": meta, "content": content, "content_type": content_type, "redirect": redirect}
        return meta

    def event_file(self, file_id: str) -> dict[str, Any]:
        """The file object as it appears in an event's `files` list."""
        meta = dict(self.files[file_id]["meta"])
        for key in ("channels", "groups", "ims"):
            meta.pop(key)
        return meta

    def download(self, path: str, authorization: str) -> tuple[int, bytes, str]:
        with self._lock:
            self.downloads.append({"path": path, "authorization": authorization})
        parts = path.split("/")
        entry = self.files.get(parts[2]) if len(parts) > 2 else None
        if entry is None:
            return 404, b"not found", "text/plain"
        if entry.get("redirect"):
            return 302, entry["redirect"].encode(), "redirect"
        return 200, entry["content"], entry["content_type"]

    # -- Web API answers ---------------------------------------------------------------------------------------
    def answer(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "distillery",
                    "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID, "is_enterprise_install": False}
        if method == "chat.postMessage":
            ts = self.next_ts()
            return {"ok": True, "channel": args.get("channel"), "ts": ts,
                    "message": {"text": args.get("text"), "ts": ts, "thread_ts": args.get("thread_ts"), "bot_id": BOT_ID}}
        if method == "chat.update":
            return {"ok": True, "channel": args.get("channel"), "ts": args.get("ts"), "text": args.get("text")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": self.next_ts()}
        if method == "files.getUploadURLExternal":
            file_id = f"F{next(self._file_ids):04d}"
            return {"ok": True, "file_id": file_id, "upload_url": f"{self.base_url}/upload/{file_id}"}
        if method == "files.completeUploadExternal":
            files = args.get("files")
            files = json.loads(files) if isinstance(files, str) else files or []
            return {"ok": True, "files": [{"id": f["id"], "title": f.get("title")} for f in files]}
        if method == "files.info":
            entry = self.files.get(args.get("file", ""))
            return {"ok": True, "file": dict(entry["meta"])} if entry else {"ok": False, "error": "file_not_found"}
        if method == "apps.connections.open":
            return {"ok": True, "url": self.ws_url} if self.ws_url else {"ok": False, "error": "socket_mode_not_started"}
        return {"ok": True}


def _handler_for(fake: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            return

        def do_POST(self) -> None:
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if url.path.startswith("/upload/"):
                file_id = url.path.rsplit("/", 1)[-1]
                with fake._lock:
                    fake.uploads[file_id] = body
                return self._send(200, b"OK - %d" % len(body), "text/plain")
            method = url.path.removeprefix("/api/")
            args: dict[str, Any] = dict(parse_qsl(url.query))
            ctype = self.headers.get("Content-Type", "")
            if body and "json" in ctype:
                args.update(json.loads(body))
            elif body:
                args.update(parse_qsl(body.decode()))
            auth = self.headers.get("Authorization", "")
            args["_token"] = auth.removeprefix("Bearer ") or args.pop("token", "")
            fake.record(method, args)
            self._send(200, json.dumps(fake.answer(method, args)).encode(), "application/json")

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path.startswith("/api/"):  # slack_sdk sends some methods (files.info) as GET with a query string
                method, args = url.path.removeprefix("/api/"), dict(parse_qsl(url.query))
                args["_token"] = self.headers.get("Authorization", "").removeprefix("Bearer ") or args.pop("token", "")
                fake.record(method, args)
                return self._send(200, json.dumps(fake.answer(method, args)).encode(), "application/json")
            status, data, ctype = fake.download(url.path, self.headers.get("Authorization", ""))
            if status == 302:
                self.send_response(302)
                self.send_header("Location", data.decode())
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send(status, data, ctype)

        def _send(self, status: int, data: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
