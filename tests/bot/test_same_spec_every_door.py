"""The bundled SST-2 set resolves to the same spec from every front door: the CLI default, `distillery spec`, the
grammar (Slack/terminal command mode), the Semantic Kernel plugin and MCP (issue 10: the chat plan once had
teacher.answer_cue Answer where the CLI had Sentiment, and distillation hurt)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from bot.agent import build_agent
from pipeline.datasets import resolve_path
from pipeline.registry import Registry
from pipeline.spec import load_spec
from skills.plans import PlanStore
from skills.plugin import DistillationPlugin

ROOT = Path(__file__).parent.parent.parent
RUN_SPECIFIC = {"out"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "fields":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _normal(spec: dict) -> dict:
    flat = {k: v for k, v in _flat(spec).items() if k not in RUN_SPECIFIC}
    for key in ("dataset.train", "dataset.test"):  # the CLI names the bundled file by its short name
        flat[key] = str(Path(resolve_path(flat[key])).resolve())
    return flat


def _plan_id(text: str) -> str:
    found = re.search(r"plan-[0-9a-f]{6}", text)
    assert found, text
    return found.group(0)


def _mcp_plan(home: Path) -> str:
    env = {**os.environ, "DISTILLERY_HOME": str(home), "PYTHONPATH": str(ROOT)}
    params = StdioServerParameters(command=sys.executable, args=["-m", "skills.mcp_server"], env=env, cwd=str(ROOT))

    async def session():
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            result = await client.call_tool("plan_distillation", {"dataset": "sst2", "student": "gemma-3-270m"})
            return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")

    return _plan_id(asyncio.run(session()))


def test_sst2_resolves_to_the_same_spec_from_the_cli_grammar_plugin_and_mcp(isolated_home):
    cli_default = load_spec(None).model_dump(mode="json")
    printed = subprocess.run([sys.executable, "-m", "bot.cli", "spec"], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert printed.returncode == 0, printed.stderr
    assert yaml.safe_load(printed.stdout) == cli_default

    plans = PlanStore()
    grammar = asyncio.run(build_agent(Registry()).respond("G1", "U1", "distill sst2 into gemma-3-270m"))
    plugin = DistillationPlugin(Registry()).plan_distillation("sst2", "gemma-3-270m")
    doors = {"grammar": plans.get(_plan_id(grammar.text)).spec, "plugin": plans.get(_plan_id(plugin)).spec,
             "mcp": PlanStore().get(_mcp_plan(isolated_home)).spec}
    expected = _normal(cli_default)
    assert expected["teacher.answer_cue"] == "auto"  # chosen from the data on pilot rows, the same for every door
    for door, spec in doors.items():
        got = _normal(spec)
        assert got == expected, (door, {k: (expected.get(k), got.get(k)) for k in expected.keys() | got.keys() if expected.get(k) != got.get(k)})
