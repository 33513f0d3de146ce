"""What the Slack bot does with a request, a button click and a run it follows (the listeners in slack_app call it).

    flow = SlackFlow(config, agent, registry, plans, store, client, start_plan)
    await flow.on_request(channel, thread_ts, user, text)       # agent reply in the thread; plan card if any
    await flow.on_start(plan_id, user, channel, thread_ts)      # rights, start_plan, one status message
    await flow.resume()                                         # after a restart: follow unfinished runs again

A followed run has ONE status message, updated in place (chat.update, at most every `update_interval_s`) by
reading the run registry, then a report (scores table, chart uploaded to the thread) or one failure sentence.
The bot never executes runs: a worker does, and the bot follows the registry.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from pathlib import Path
from typing import Any

from pipeline.errors import DistilleryError
from pipeline.redact import redact
from pipeline.worker import queue_warning

from . import blocks, commands
from .slack_out import mention

__all__ = ["SlackFlow", "rewrite_followup", "is_start_request", "strip_mentions", "redact"]

log = logging.getLogger("distillery.slack")



# ---- pure text helpers ---------------------------------------------------------------------------------------

def strip_mentions(text: str) -> str:
    """Slack markup to plain text: '<@UBOT> distill <http://h/v1|h/v1> a &amp; b' -> 'distill http://h/v1 a & b'."""
    text = re.sub(r"<@[A-Z0-9]+(\|[^>]*)?>", " ", text or "")
    text = re.sub(r"<((?:https?|mailto):[^|>]+)(\|[^>]*)?>", r"\1", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


is_start_request = commands.is_start
rewrite_followup = commands.thread_followup


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


# ---- the flow ------------------------------------------------------------------------------------------------

class SlackFlow:
    def __init__(self, config, agent, registry, plans, store, client, start_plan,
                 poll_s: float = 1.0, update_interval_s: float = 2.0):
        self.config, self.agent, self.registry, self.plans, self.store = config, agent, registry, plans, store
        self.client, self.start_plan = client, start_plan
        self.poll_s, self.update_interval_s = poll_s, update_interval_s
        self._followers: dict[str, asyncio.Task] = {}
        self.file_requests = None  # bot.slack_files.FileRequests, set by create_app

    # -- rights --------------------------------------------------------------------------------------------
    def may_ask(self, user: str) -> bool:
        c = self.config
        return not c.users or user in c.users or user in c.admins

    def may_start(self, user: str) -> bool:
        return user in self.config.admins if self.config.admins else self.may_ask(user)

    def acts_in(self, channel: str) -> bool:
        return not self.config.channels or channel in self.config.channels or channel.startswith("D")

    def _refuse_start(self, user: str) -> str:
        admins = ", ".join(mention(a) for a in sorted(self.config.admins))
        return f"Sorry {mention(user)}, only Distillery admins can start or cancel runs here; ask {admins or 'an admin'}."

    def _refuse_ask(self, user: str) -> str:
        return (f"Sorry {mention(user)}, I only take requests from the people on Distillery's list here; "
                "an admin can add you to DISTILLERY_SLACK_USERS.")

    # -- Slack output (self.client is a slack_out.SafeWebClient: every call is cleaned of secrets and pings) --
    async def post(self, channel: str, thread_ts: str | None, text: str, blocks_: list | None = None) -> dict:
        kwargs: dict[str, Any] = {"channel": channel, "text": text}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        if blocks_:
            kwargs["blocks"] = blocks_
        resp = await self.client.chat_postMessage(**kwargs)
        return resp.data if hasattr(resp, "data") else resp

    async def ephemeral(self, channel: str, user: str, thread_ts: str | None, text: str) -> None:
        kwargs = {"channel": channel, "user": user, "text": text}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        await self.client.chat_postEphemeral(**kwargs)

    # -- a request: a mention, a DM, /distill, or a follow-up in a thread ----------------------------------
    async def on_request(self, channel: str, thread_ts: str, user: str, text: str,
                         files: list[dict] | None = None, team: str = "") -> None:
        if not self.acts_in(channel):
            await self.post(channel, thread_ts, "I'm not set up to work in this channel; ask me in a channel listed "
                                                 "in DISTILLERY_SLACK_CHANNELS or in a direct message.")
            return
        if not self.may_ask(user):
            await self.post(channel, thread_ts, self._refuse_ask(user))
            return
        text = strip_mentions(text)
        if self.file_requests is not None:  # an attached file, or "this dataset": it becomes the dataset (bot/slack_files.py)
            text, reply = await self.file_requests.prepare(team, channel, thread_ts, user, text, files or [])
            if reply:
                question = None
                if self.file_requests.uploads.pending(f"{channel}:{thread_ts}"):
                    self.store.link_thread(channel, thread_ts)  # the answer may come without a mention
                    question = self.file_requests.question_blocks(f"{channel}:{thread_ts}", reply)
                await self.post(channel, thread_ts, reply, question)
                return
        text = text or "help"
        thread = self.store.thread(channel, thread_ts) or {}
        if thread.get("run_id"):
            text = rewrite_followup(text, thread["run_id"])
        if commands.needs_start_rights(text) and not self.may_start(user):
            await self.post(channel, thread_ts, self._refuse_start(user))
            return
        conversation = f"{channel}:{thread_ts}"
        source = {"source": "slack", "user": user, "channel": channel, "thread_ts": thread_ts,
                  "conversation": conversation, "may_start": self.may_start(user)}
        try:
            reply = await self.agent.respond(conversation, user, text, source)
        except DistilleryError as err:
            await self.post(channel, thread_ts, str(err))
            return
        except Exception:
            log.exception("the agent failed on a request in %s", conversation)
            await self.post(channel, thread_ts, "Sorry, something went wrong while answering; the details are in the bot's log.")
            return
        if reply.text and not reply.plan_id:
            await self.post(channel, thread_ts, reply.text)
        if reply.plan_id:
            await self.post_plan(reply.plan_id, channel, thread_ts, intro=reply.text)
        if reply.run_id:
            await self._attach_if_started_here(reply.run_id, channel, thread_ts)

    async def post_plan(self, plan_id: str, channel: str, thread_ts: str, intro: str = "") -> None:
        plan = await asyncio.to_thread(self.plans.get, plan_id)
        msg = blocks.plan_card(plan_id, plan.summary)
        if intro:
            msg["blocks"].insert(0, {"type": "section", "text": {"type": "mrkdwn", "text": intro[:2900]}})
        resp = await self.post(channel, thread_ts, msg["text"], msg["blocks"])
        self.store.save_plan_message(plan_id, channel, thread_ts, resp["ts"])

    async def _attach_if_started_here(self, run_id: str, channel: str, thread_ts: str) -> None:
        """Follow a run the agent just started from this thread (not one it was merely asked about)."""
        if self.store.followed(run_id):
            return
        try:
            rec = await asyncio.to_thread(self.registry.get, run_id)
        except DistilleryError:
            return
        by = rec.requested_by or {}
        if by.get("channel") != channel or by.get("thread_ts") != thread_ts or rec.finished:
            return
        plan_id = by.get("plan")
        if plan_id and self.store.plan_message(plan_id) and self.store.claim_plan(plan_id, by.get("user") or ""):
            self.store.set_plan_run(plan_id, run_id)  # started by text ("yes"): the card's buttons go away too
            await self._update_plan_card(plan_id, f"Started by {mention(by.get('user') or '')} as run `{run_id}`.")
        await self.attach(run_id, channel, thread_ts)

    # -- buttons -------------------------------------------------------------------------------------------
    async def on_start(self, plan_id: str, user: str, channel: str, thread_ts: str) -> None:
        if not self.may_start(user):
            await self.ephemeral(channel, user, thread_ts, self._refuse_start(user))
            return
        if not self.store.claim_plan(plan_id, user):
            claim = self.store.plan_claim(plan_id) or {}
            run = f" as run `{claim['run_id']}`" if claim.get("run_id") else ""
            await self.ephemeral(channel, user, thread_ts, f"This plan was already started{run} or cancelled.")
            return
        conversation = f"{channel}:{thread_ts}"
        requested_by = {"source": "slack", "user": user, "channel": channel, "thread_ts": thread_ts,
                        "conversation": conversation}
        try:
            rec = await asyncio.to_thread(self.start_plan, plan_id, requested_by)
            rec = await _maybe_await(rec)
        except DistilleryError as err:
            self.store.release_plan(plan_id)
            await self.post(channel, thread_ts, str(err))
            return
        except Exception:
            self.store.release_plan(plan_id)
            log.exception("starting plan %s failed", plan_id)
            await self.post(channel, thread_ts, "Sorry, the run could not be started; the details are in the bot's log.")
            return
        run_id = _get(rec, "id")
        self.store.set_plan_run(plan_id, run_id)
        await self._update_plan_card(plan_id, f"Started by {mention(user)} as run `{run_id}`.")
        await self.attach(run_id, channel, thread_ts)

    async def on_cancel_plan(self, plan_id: str, user: str, channel: str, thread_ts: str) -> None:
        if not self.may_start(user):  # deciding a plan (start or cancel) takes the same rights
            await self.ephemeral(channel, user, thread_ts, self._refuse_start(user))
            return
        if not self.store.claim_plan(plan_id, user):
            await self.ephemeral(channel, user, thread_ts, "This plan was already started or cancelled.")
            return
        try:
            await asyncio.to_thread(self.plans.cancel, plan_id)
        except DistilleryError as err:
            log.info("cancelling plan %s: %s", plan_id, err)
        await self._update_plan_card(plan_id, f"Cancelled by {mention(user)}; nothing was started.")

    async def _update_plan_card(self, plan_id: str, note: str) -> None:
        ref = self.store.plan_message(plan_id)
        if not ref:
            return
        try:
            plan = await asyncio.to_thread(self.plans.get, plan_id)
            summary = plan.summary
        except DistilleryError:
            summary = {}
        msg = blocks.plan_decided(plan_id, summary, note)
        await self.client.chat_update(channel=ref["channel"], ts=ref["message_ts"], text=msg["text"], blocks=msg["blocks"])

    # -- following runs ------------------------------------------------------------------------------------
    async def attach(self, run_id: str, channel: str, thread_ts: str) -> None:
        """Post the run's one status message in the thread and keep it updated until the run ends."""
        if not self.store.followed(run_id):
            rec, msg = await asyncio.to_thread(self._status, run_id)
            resp = await self.post(channel, thread_ts, msg["text"], msg["blocks"])
            self.store.follow_run(run_id, channel, thread_ts, resp["ts"], msg["text"])
        self._spawn(run_id)

    def _status(self, run_id: str) -> tuple[Any, dict]:
        """The run's record and its status message; a queued run nobody will pick up says so and what to start."""
        rec = self.registry.get(run_id)
        msg = blocks.status_message(rec.to_dict())
        warning = queue_warning(self.registry, rec)
        if warning:
            msg["text"] += " " + warning
            msg["blocks"].append({"type": "context", "elements": [{"type": "mrkdwn", "text": f":warning: {warning}"}]})
        return rec, msg

    async def resume(self) -> list[str]:
        """Re-attach to the runs this bot was following when it stopped; returns their ids."""
        ids = [ref["run_id"] for ref in self.store.unfinished_runs()]
        for run_id in ids:
            self._spawn(run_id)
        if ids:
            log.info("following %d unfinished run(s) again: %s", len(ids), ", ".join(ids))
        return ids

    def _spawn(self, run_id: str) -> None:
        task = self._followers.get(run_id)
        if task is None or task.done():
            self._followers[run_id] = asyncio.get_running_loop().create_task(self._follow(run_id), name=f"follow-{run_id}")

    async def stop(self) -> None:
        for task in self._followers.values():
            task.cancel()
        await asyncio.gather(*self._followers.values(), return_exceptions=True)
        self._followers.clear()

    async def _follow(self, run_id: str) -> None:
        ref = self.store.followed(run_id)
        last_text, last_at = ref.get("last_text"), 0.0
        while True:
            try:
                rec, msg = await asyncio.to_thread(self._status, run_id)
                now = time.monotonic()
                if msg["text"] != last_text and (rec.finished or now - last_at >= self.update_interval_s):
                    await self.client.chat_update(channel=ref["channel"], ts=ref["status_ts"],
                                                  text=msg["text"], blocks=msg["blocks"])
                    last_text, last_at = msg["text"], now
                    self.store.set_status_text(run_id, msg["text"])
                if rec.finished:
                    await self._announce_end(rec, ref["channel"], ref["thread_ts"])
                    self.store.finish_run(run_id)
                    return
            except asyncio.CancelledError:
                raise
            except DistilleryError as err:  # the run vanished from the registry: say so once and stop
                await self.post(ref["channel"], ref["thread_ts"], f"I can no longer follow run `{run_id}`: {err}")
                self.store.finish_run(run_id)
                return
            except Exception:
                log.exception("updating the status of run %s failed; retrying", run_id)
            await asyncio.sleep(self.poll_s)

    async def _announce_end(self, rec, channel: str, thread_ts: str) -> None:
        if rec.status == "failed":
            await self.post(channel, thread_ts, blocks.failure_text(rec.id, rec.error, rec.out))
            return
        if rec.status == "cancelled":
            await self.post(channel, thread_ts, blocks.cancelled_text(rec.id, rec.out))
            return
        report = rec.report or {}
        msg = blocks.report_message(rec.id, report)
        await self.post(channel, thread_ts, msg["text"], msg["blocks"])
        chart = (report.get("paths") or {}).get("report_png") or (rec.paths or {}).get("report_png")
        if chart and Path(chart).is_file() and not Path(chart).is_symlink():
            from pipeline.runlock import read_run_file

            await self.client.files_upload_v2(channel=channel, thread_ts=thread_ts, content=read_run_file(chart),
                                              filename="report.png", title=f"Run {rec.id}: scores and training loss")
        await self._upload_adapter(rec, report, channel, thread_ts)

    async def _upload_adapter(self, rec, report: dict, channel: str, thread_ts: str) -> None:
        """The adapter as a .zip in the thread when it is under DISTILLERY_SLACK_MAX_UPLOAD_MB (default 50)."""
        import tempfile

        from .slack_files import max_upload_bytes, zip_adapter

        adapter = (report.get("paths") or {}).get("adapter") or (rec.paths or {}).get("adapter")
        if not adapter or not Path(adapter).is_dir():
            return
        with tempfile.TemporaryDirectory(prefix="distillery-adapter-") as tmp:
            packed = await asyncio.to_thread(zip_adapter, Path(adapter), Path(tmp) / f"adapter-{rec.id}.zip", max_upload_bytes())
            if packed is None:
                return
            await self.client.files_upload_v2(channel=channel, thread_ts=thread_ts, file=str(packed), filename=packed.name,
                                              title=f"Run {rec.id}: the distilled adapter (unzip, then load it as shown above)")
