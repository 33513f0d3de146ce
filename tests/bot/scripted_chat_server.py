"""A scripted chat-completions server on 127.0.0.1 that answers with tool calls or text, for agent tests.

    with ScriptedChatServer([call("distillery-plan_distillation", dataset="sst2"), echo_tool_result()]) as srv:
        srv.base_url        # http://127.0.0.1:P/v1 (OpenAI); srv.endpoint is http://127.0.0.1:P (Azure AI Inference)
        srv.requests        # every request body received (dicts), in order; srv.headers their headers (lower-case names), srv.paths

Each request takes the next step of the script; a step is a function of the request body returning an assistant
message (dict). When the script is used up the server answers "(script finished)".
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ScriptedChatServer", "call", "say", "echo_tool_result", "tool_results", "tools_offered"]

Step = Callable[[dict[str, Any]], dict[str, Any]]


def call(name: str, args: dict[str, Any] | Callable[[dict], dict] | None = None, **kwargs: Any) -> Step:
    """A step answering with one tool call; args may be a function of the request (e.g. to read a plan id)."""

    def step(req: dict[str, Any]) -> dict[str, Any]:
        arguments = args(req) if callable(args) else {**(args or {}), **kwargs}
        n = len(req.get("messages", []))
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}

    return step


def say(text: str) -> Step:
    return lambda req: {"role": "assistant", "content": text}


def tool_results(req: dict[str, Any]) -> list[str]:
    return [str(m.get("content")) for m in req.get("messages", []) if m.get("role") == "tool"]


def tools_offered(req: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in req.get("tools") or []]


def echo_tool_result(prefix: str = "") -> Step:
    """A step that relays the latest tool result as the final answer (what a well-behaved model does)."""
    return lambda req: {"role": "assistant", "content": prefix + (tool_results(req) or ["(no tool result)"])[-1]}


class ScriptedChatServer:
    def __init__(self, script: list[Step]):
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with outer._lock:
                    outer.requests.append(body)
                    outer.paths.append(self.path)
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                    step = outer.script.pop(0) if outer.script else say("(script finished)")
                message = step(body)
                finish = "tool_calls" if message.get("tool_calls") else "stop"
                payload = json.dumps({
                    "id": f"chatcmpl-{len(outer.requests)}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "scripted"),
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
