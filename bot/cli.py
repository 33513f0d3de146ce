"""The `distillery` console script: the pipeline commands plus the front doors (slack, chat, mcp).

The front-door commands are imported only when invoked, so `distillery run` starts fast.
"""

from __future__ import annotations

import importlib
import sys

import click

from pipeline.cli import cli, run_cli

__all__ = ["main"]

FRONT_DOORS = {
    "slack": ("bot.slack_app", "slack_command", "Run the Slack bot (Socket Mode, or --http --port N)."),
    "chat": ("bot.chat", "chat_command", "Chat with the Distillery agent in the terminal."),
    "mcp": ("skills.mcp_server", "mcp_command", "Serve the distillation skills over MCP (stdio, or --sse --port N)."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(FRONT_DOORS))

    def get_command(self, ctx, name):
        if name in FRONT_DOORS and name not in self.commands:
            module, attr, _ = FRONT_DOORS[name]
            try:
                cmd = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise click.ClickException(f"the '{name}' command is not available ({err}); reinstall distillery.") from None
            self.add_command(cmd, name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in FRONT_DOORS and name not in self.commands:
                rows.append((name, FRONT_DOORS[name][2]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=80)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _group() -> click.Group:
    group = _LazyGroup(name="distillery", help=cli.help, commands=dict(cli.commands), context_settings=cli.context_settings)
    return group


def main() -> None:
    sys.exit(run_cli(_group()))


if __name__ == "__main__":
    main()
