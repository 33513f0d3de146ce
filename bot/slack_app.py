"""The Distillery Slack app: "distill this dataset into an 8B model" in a channel or a DM, the report in the thread.

    distillery slack                      # Socket Mode (SLACK_BOT_TOKEN + SLACK_APP_TOKEN)
    distillery slack --http --port 3000   # HTTP mode, events at /slack/events (SLACK_BOT_TOKEN + SLACK_SIGNING_SECRET)
    distillery slack --no-worker          # runs execute in a separate `distillery worker` (default: here)

    app = create_app()                    # an AsyncApp; nothing connects until a request arrives
    web_app = build_web_app(app)          # aiohttp app serving POST /slack/events (and re-attaching to runs)

Surfaces: @mentions in channels, direct messages, the /distill slash command and the plan card's buttons. Every
listener acks at once and does the work in a lazy listener (see slack_flow). Slack retries of an event
(same event_id) are dropped by a middleware backed by SQLite, so a retry never starts a second run.

Configuration (environment): SLACK_BOT_TOKEN, SLACK_APP_TOKEN (Socket Mode), SLACK_SIGNING_SECRET (HTTP mode),
DISTILLERY_SLACK_API_URL (Web API base URL override), DISTILLERY_SLACK_ADMINS / DISTILLERY_SLACK_USERS
(comma-separated user ids allowed to start runs / to ask), DISTILLERY_SLACK_CHANNELS (channel ids; empty: all).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from pipeline.errors import DistilleryError
from pipeline.redact import redact, redact_logs
from skills.uploads import UploadStore

from . import commands
from .app_home import publish_home
from .blocks import CANCEL_ACTION, START_ACTION
from .slack_files import COLUMNS_ACTION, FileRequests, SlackFiles
from .slack_flow import SlackFlow
from .slack_out import SafeWebClient, mention
from .slack_store import SlackStore

__all__ = ["SlackConfig", "SlackConfigError", "create_app", "build_web_app", "serve_socket_mode", "flow_of",
           "start_serving", "stop_serving",
           "slack_command", "DISTILL_COMMAND"]

log = logging.getLogger("distillery.slack")
DISTILL_COMMAND = "/distill"


class SlackConfigError(DistilleryError):
    """The Slack app is missing a token or a setting."""


def _ids(value: str | None) -> frozenset[str]:
    return frozenset(v.strip() for v in (value or "").split(",") if v.strip())


@dataclass(frozen=True)
class SlackConfig:
    bot_token: str | None = field(default=None, repr=False)
    app_token: str | None = field(default=None, repr=False)
    signing_secret: str | None = field(default=None, repr=False)
    api_url: str | None = None  # e.g. http://127.0.0.1:P/api/ (a fake Slack, an enterprise proxy)
    admins: frozenset[str] = frozenset()  # may start runs; empty: everyone allowed to ask may start
    users: frozenset[str] = frozenset()  # may ask; empty: everyone
    channels: frozenset[str] = frozenset()  # channels the bot acts in; empty: all (DMs always)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "SlackConfig":
        env = os.environ if env is None else env
        api_url = env.get("DISTILLERY_SLACK_API_URL") or None
        if api_url and not api_url.endswith("/"):
            api_url += "/"
        return cls(bot_token=env.get("SLACK_BOT_TOKEN") or None, app_token=env.get("SLACK_APP_TOKEN") or None,
                   signing_secret=env.get("SLACK_SIGNING_SECRET") or None, api_url=api_url,
                   admins=_ids(env.get("DISTILLERY_SLACK_ADMINS")), users=_ids(env.get("DISTILLERY_SLACK_USERS")),
                   channels=_ids(env.get("DISTILLERY_SLACK_CHANNELS")))

    def require(self, http: bool) -> None:
        """Raise SlackConfigError naming the first missing variable for this mode."""
        needed = [("SLACK_BOT_TOKEN", self.bot_token, "the Bot User OAuth Token (xoxb-...) from OAuth & Permissions")]
        if http:
            needed.append(("SLACK_SIGNING_SECRET", self.signing_secret, "the Signing Secret from Basic Information"))
        else:
            needed.append(("SLACK_APP_TOKEN", self.app_token, "an App-Level Token (xapp-...) with connections:write"))
        for name, value, what in needed:
            if not value:
                raise SlackConfigError(f"{name} is not set; export it with {what} (see docs/slack.md).")


def create_app(config: SlackConfig | None = None, agent=None, registry=None, plans=None, store: SlackStore | None = None,
               start_plan=None, poll_s: float = 1.0, update_interval_s: float = 2.0, embedded_worker: bool = False,
               worker_poll_s: float = 1.0, uploads=None):
    """Build the Bolt AsyncApp with every listener registered; nothing connects until a request arrives.

    embedded_worker=True: the app also executes the runs it queues (pipeline.worker.EmbeddedWorker, started when
    the app starts serving and stopped, handing running runs back, when it stops); `distillery slack` does this
    unless --no-worker."""
    from slack_bolt.async_app import AsyncApp
    from slack_bolt.response import BoltResponse

    config = config or SlackConfig.from_env()
    if not config.bot_token:
        raise SlackConfigError("SLACK_BOT_TOKEN is not set; export the Bot User OAuth Token (xoxb-...) (see docs/slack.md).")
    if registry is None:
        from pipeline.registry import Registry

        registry = Registry()
    if plans is None:
        from skills.plans import PlanStore

        plans = PlanStore()
    if agent is None:
        from .agent import build_agent

        agent = build_agent(registry=registry, plans=plans)
    if start_plan is None:
        from skills import operations

        start_plan = functools.partial(operations.start_plan, plans=plans, registry=registry)
    store = store or SlackStore()
    client = SafeWebClient(token=config.bot_token, base_url=config.api_url or "https://slack.com/api/",
                           secrets=(config.bot_token, config.app_token or "", config.signing_secret or ""))
    app = AsyncApp(client=client, signing_secret=config.signing_secret or "", process_before_response=False)
    flow = SlackFlow(config, agent, registry, plans, store, client, start_plan, poll_s=poll_s,
                     update_interval_s=update_interval_s)
    app._distillery_flow = flow  # noqa: SLF001 - read back with flow_of(app)
    app._distillery_worker = None  # noqa: SLF001
    file_requests = FileRequests(SlackFiles(client, uploads or UploadStore(), config.bot_token, config.api_url))
    flow.file_requests = file_requests
    if embedded_worker:
        from pipeline.worker import EmbeddedWorker

        app._distillery_worker = EmbeddedWorker(registry, kind="embedded in distillery slack", poll_s=worker_poll_s)  # noqa: SLF001

    # -- retries: the same event_id is handled once, even across restarts ----------------------------------
    @app.middleware
    async def drop_retried_events(body: dict, next):  # noqa: A002 - Bolt's argument name
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        if event_id and store.seen_event(event_id):
            log.info("dropping a repeated delivery of event %s", event_id)
            return BoltResponse(status=200, body="")
        await next()

    @app.middleware
    async def clean_client(context, next):  # noqa: A002 - listeners' `client` and `say` clean what they send too
        context["client"] = client
        await next()

    async def ack_now(ack) -> None:
        await ack()

    # -- @mention in a channel -----------------------------------------------------------------------------
    async def on_mention(event: dict, body: dict) -> None:
        if event.get("bot_id"):
            return
        await flow.on_request(event["channel"], event.get("thread_ts") or event["ts"], event.get("user", ""), event.get("text", ""),
                              files=event.get("files") or [], team=_team(body, event))

    # -- direct messages, and follow-ups without a mention in threads the bot is part of -------------------
    async def on_message(event: dict, body: dict, context) -> None:
        subtype = event.get("subtype")
        if event.get("bot_id") or (subtype and subtype != "file_share") or not event.get("user"):
            return
        channel, text, files, team = event["channel"], event.get("text", ""), event.get("files") or [], _team(body, event)
        if files:  # remembered for a later "this dataset" / "the file above"
            await asyncio.to_thread(file_requests.saw, team, channel, event["user"], event.get("thread_ts") or event["ts"], files)
        if event.get("channel_type") == "im":
            await flow.on_request(channel, event.get("thread_ts") or event["ts"], event["user"], text, files=files, team=team)
            return
        thread_ts = event.get("thread_ts")
        if not thread_ts or f"<@{context.bot_user_id}>" in text or not store.thread(channel, thread_ts):
            return  # not ours, or a mention (handled by app_mention)
        await flow.on_request(channel, thread_ts, event["user"], text, files=files, team=team)

    # -- /distill <dataset> into <student> -----------------------------------------------------------------
    async def on_command(command: dict, respond) -> None:
        text = commands.slash_text(command.get("text") or "")
        channel, user = command["channel_id"], command["user_id"]
        try:
            root = await flow.post(channel, None, f"{mention(user)} asked: `{DISTILL_COMMAND} {command.get('text') or ''}`".strip())
        except Exception as err:  # noqa: BLE001 - most often not_in_channel
            log.info("cannot post in %s: %s", channel, redact(str(err)))
            await respond(text="I can't post in this channel; invite me (`/invite @Distillery`) or send me a direct message.",
                          response_type="ephemeral")
            return
        await flow.on_request(channel, root["ts"], user, text)

    # -- the plan card's buttons ---------------------------------------------------------------------------
    def _where(body: dict) -> tuple[str, str, str]:
        message = body.get("message") or {}
        container = body.get("container") or {}
        channel = (body.get("channel") or {}).get("id") or container.get("channel_id")
        thread_ts = message.get("thread_ts") or container.get("thread_ts") or message.get("ts") or container.get("message_ts")
        return channel, thread_ts, body["user"]["id"]

    async def on_start_click(body: dict) -> None:
        channel, thread_ts, user = _where(body)
        await flow.on_start(body["actions"][0]["value"], user, channel, thread_ts)

    async def on_cancel_click(body: dict) -> None:
        channel, thread_ts, user = _where(body)
        await flow.on_cancel_plan(body["actions"][0]["value"], user, channel, thread_ts)

    # -- the App Home tab: the person's recent runs (bot/app_home.py) ------------------------------------------
    team_urls: dict[str, str] = {}

    async def on_home_opened(event: dict) -> None:
        if event.get("tab", "home") != "home" or not event.get("user"):
            return
        if "url" not in team_urls:
            try:
                team_urls["url"] = (await client.auth_test()).get("url") or ""
            except Exception as err:  # noqa: BLE001 - the tab still works without thread links
                log.info("auth.test failed: %s", redact(str(err)))
        await publish_home(client, registry, event["user"], team_urls.get("url"))

    app.event("app_home_opened")(ack=ack_now, lazy=[on_home_opened])
    app.event("app_mention")(ack=ack_now, lazy=[on_mention])
    app.event("message")(ack=ack_now, lazy=[on_message])
    app.command(DISTILL_COMMAND)(ack=ack_now, lazy=[on_command])
    async def on_columns_click(body: dict) -> None:  # the column question's button: the same as replying its value
        channel, thread_ts, user = _where(body)
        await flow.on_request(channel, thread_ts, user, body["actions"][0]["value"], team=_team(body, {}))

    app.action(COLUMNS_ACTION)(ack=ack_now, lazy=[on_columns_click])
    app.action(START_ACTION)(ack=ack_now, lazy=[on_start_click])
    app.action(CANCEL_ACTION)(ack=ack_now, lazy=[on_cancel_click])

    @app.error
    async def on_error(error: Exception, body: dict) -> None:
        log.error("unhandled error in a Slack listener: %s", redact(repr(error)))

    return app


def _team(body: dict, event: dict) -> str:
    return str(body.get("team_id") or event.get("team") or (body.get("team") or {}).get("id") or "")


def flow_of(app) -> SlackFlow:
    """The SlackFlow behind an app made by create_app (for resume/stop and for tests)."""
    return app._distillery_flow  # noqa: SLF001


def start_serving(app) -> None:
    """Start the embedded worker, if the app has one (called when serving starts)."""
    worker = app._distillery_worker  # noqa: SLF001
    if worker is not None and not worker.thread.is_alive() and not worker.stop_event.is_set():
        worker.start()


async def stop_serving(app) -> None:
    """Stop following runs and stop the embedded worker (its running runs are handed back for the next start)."""
    await flow_of(app).stop()
    worker = app._distillery_worker  # noqa: SLF001
    if worker is not None:
        await asyncio.to_thread(worker.stop)


def build_web_app(app, path: str = "/slack/events"):
    """An aiohttp application serving Slack's HTTP requests at `path`; it re-attaches to followed runs on startup."""
    from aiohttp import web
    from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def on_startup(_web_app: web.Application) -> None:
        start_serving(app)
        await flow_of(app).resume()

    async def on_cleanup(_web_app: web.Application) -> None:
        await stop_serving(app)

    web_app = web.Application()
    web_app.router.add_post(path, events)
    web_app.router.add_get("/healthz", health)
    web_app.on_startup.append(on_startup)
    web_app.on_cleanup.append(on_cleanup)
    return web_app


async def serve_socket_mode(app, app_token: str, stop: asyncio.Event | None = None) -> None:
    """Connect over Socket Mode, re-attach to followed runs, and serve until `stop` is set (or forever)."""
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    handler = AsyncSocketModeHandler(app, app_token)
    start_serving(app)
    await flow_of(app).resume()
    await handler.connect_async()
    try:
        await (stop.wait() if stop else asyncio.Future())
    finally:
        await stop_serving(app)
        await handler.close_async()


@click.command("slack")
@click.option("--http", "http", is_flag=True, help="Serve HTTP (events at /slack/events) instead of Socket Mode.")
@click.option("--port", default=3000, show_default=True, help="Port for --http.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address for --http.")
@click.option("--no-worker", "no_worker", is_flag=True,
              help="Do not execute runs here; a separate `distillery worker` on the same DISTILLERY_HOME does.")
def slack_command(http: bool, port: int, host: str, no_worker: bool) -> None:
    """Run the Slack bot (Socket Mode by default; --http --port N for an HTTP endpoint). Setup: docs/slack.md.

    It also executes the runs it starts (an embedded worker: a child process per run, heartbeats, resume, cancel)
    unless --no-worker is given."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = SlackConfig.from_env()
    redact_logs((config.bot_token or "", config.app_token or "", config.signing_secret or ""))  # tokens never in the log
    try:
        config.require(http=http)
        app = create_app(config, embedded_worker=not no_worker)
    except DistilleryError as err:
        click.echo(str(err), err=True)
        sys.exit(1)
    if http:
        from aiohttp import web

        click.echo(f"Distillery Slack bot: HTTP on {host}:{port}, events at /slack/events", err=True)
        web.run_app(build_web_app(app), host=host, port=port, print=None)
    else:
        click.echo("Distillery Slack bot: connecting over Socket Mode"
                   + (" (runs execute in `distillery worker`)" if no_worker else " (runs execute here)"), err=True)
        asyncio.run(serve_socket_mode(app, config.app_token))


def _main(argv: list[str] | None = None) -> Any:  # python -m bot.slack_app
    return slack_command.main(args=argv)


if __name__ == "__main__":
    _main()
