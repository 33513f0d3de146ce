"""The skills over MCP: a real ClientSession talks stdio to `python -m skills.mcp_server` in another process."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from pipeline.registry import Registry
from skills.plans import PlanStore

ROOT = Path(__file__).parent.parent.parent


def _text(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def test_mcp_client_lists_tools_plans_starts_and_reads_status(isolated_home):
    env = {**os.environ, "DISTILLERY_HOME": str(isolated_home), "PYTHONPATH": str(ROOT)}
    params = StdioServerParameters(command=sys.executable, args=["-m", "skills.mcp_server"], env=env, cwd=str(ROOT))

    async def session():
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            tools = {t.name for t in (await client.list_tools()).tools}
            plan = _text(await client.call_tool("plan_distillation", {"dataset": "sst2", "student": "gemma-3-270m", "rows": 10}))
            plan_id = re.search(r"plan-[0-9a-f]{6}", plan).group(0)
            started = _text(await client.call_tool("start_distillation", {"plan_id": plan_id}))
            run_id = re.search(r"as run ([0-9a-f]+)", started).group(1)
            status = _text(await client.call_tool("run_status", {"run_id": run_id}))
            escape = _text(await client.call_tool("describe_dataset", {"dataset": "../../../etc/passwd"}))
            return tools, plan_id, run_id, status, escape

    tools, plan_id, run_id, status, escape = asyncio.run(session())
    assert {"plan_distillation", "start_distillation", "run_status", "list_models", "get_report"} <= tools
    # the server process wrote to the same home: the plan and the queued run are really there
    assert PlanStore().get(plan_id).run_id == run_id
    record = Registry().get(run_id)
    assert record.status == "queued" and record.requested_by["source"] == "mcp"
    assert f"Run {run_id}: queued" in status
    assert "outside the data folders" in escape


# ---- SSE: bearer token, DNS-rebinding protection, rights ------------------------------------------------------

import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

TOKEN = "mcp-test-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_sse(home, *args, token: str | None = TOKEN):
    env = {**os.environ, "DISTILLERY_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("DISTILLERY_MCP_TOKEN", None)
    if token:
        env["DISTILLERY_MCP_TOKEN"] = token
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "skills.mcp_server", "--sse", "--port", str(port), *args], env=env,
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, port


def _wait_listening(proc, port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the SSE server did not start")


def _status(port: int, headers: dict[str, str]) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/sse", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_sse_refuses_to_start_without_a_token(isolated_home):
    proc, _ = _serve_sse(isolated_home, token=None)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "DISTILLERY_MCP_TOKEN is not set" in err and "Traceback" not in err
    proc, _ = _serve_sse(isolated_home, token="short")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "shorter than 16 characters" in err


def test_sse_needs_the_bearer_token_and_a_loopback_host_and_origin(isolated_home):
    from mcp.client.sse import sse_client

    proc, port = _serve_sse(isolated_home)
    try:
        _wait_listening(proc, port)
        assert _status(port, {}) == 401
        assert _status(port, {"Authorization": "Bearer wrong-token-0123456789abcdef"}) == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert _status(port, {**auth, "Host": f"attacker.example:{port}"}) == 421  # DNS rebinding
        assert _status(port, {**auth, "Origin": "http://attacker.example"}) == 403

        async def session():
            async with sse_client(f"http://127.0.0.1:{port}/sse", headers=auth) as (read, write), \
                    ClientSession(read, write) as client:
                await client.initialize()
                plan = _text(await client.call_tool("plan_distillation", {"dataset": "sst2", "rows": 4}))
                plan_id = re.search(r"plan-[0-9a-f]{6}", plan).group(0)
                return _text(await client.call_tool("start_distillation", {"plan_id": plan_id}))

        started = asyncio.run(session())
        assert "as run" in started  # a token holder has the start right by default
    finally:
        proc.terminate()
        proc.wait(30)


def test_sse_without_auth_is_ask_only_by_default(isolated_home):
    from mcp.client.sse import sse_client

    from skills.plugin import NOT_ALLOWED

    proc, port = _serve_sse(isolated_home, "--insecure-no-auth", token=None)
    try:
        _wait_listening(proc, port)

        async def session():
            async with sse_client(f"http://127.0.0.1:{port}/sse") as (read, write), ClientSession(read, write) as client:
                await client.initialize()
                plan = _text(await client.call_tool("plan_distillation", {"dataset": "sst2", "rows": 4}))
                plan_id = re.search(r"plan-[0-9a-f]{6}", plan).group(0)
                return _text(await client.call_tool("start_distillation", {"plan_id": plan_id}))

        assert asyncio.run(session()) == NOT_ALLOWED
        assert Registry().list_runs() == []
    finally:
        proc.terminate()
        proc.wait(30)
