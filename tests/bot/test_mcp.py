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
