"""What leaves for Slack is clean: every string of every Web API call the bot makes (text, blocks, attachments,
file titles and text files, ephemeral messages, chat.update, views) is redacted of secrets and cannot ping people.

    client = SafeWebClient(token=bot_token, base_url=url, secrets=(bot_token, app_token, signing_secret))
    await client.chat_postMessage(channel=c, text=f"{mention(user)} asked ...")   # cleaned inside api_call
    clean(value, secrets) -> value     # the same cleaning, for one value (str, dict, list)

Untrusted text (what people type, dataset rows, chat-model answers, run errors) reaches messages everywhere, so
the cleaning happens at the one place every call goes through (AsyncWebClient.api_call), not where text is
composed. Broadcasts (<!channel>, <!here>, <!everyone>, <!subteam^...>, and the plain words @channel/@here/
@everyone) and user mentions (<@U...>) are shown as text, never as pings. The bot's own mentions are made with
mention(user): a marker only this process can write, turned into <@user> after the cleaning.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from pipeline.redact import redact

__all__ = ["SafeWebClient", "clean", "mention", "neutralise"]

_NONCE = os.urandom(6).hex()
_MARK = re.compile(r"(?:\u2063|\\u2063)" + _NONCE + r"([A-Z0-9]{2,32})(?:\u2063|\\u2063)")  # raw or inside JSON
_SPECIAL = re.compile(r"<([!@])([^<>]*)>")  # <!channel>, <!subteam^S1|@team>, <@U123>, <@U123|name>
_PLAIN_BROADCAST = re.compile(r"(?<![\w.@])@(channel|here|everyone)\b", re.I)
_KEEP_KEYS = frozenset({"token", "channel", "channel_id", "ts", "thread_ts", "user", "file", "file_id", "upload_url"})
_TEXT_FILES = frozenset({".md", ".txt", ".json", ".jsonl", ".csv", ".yaml", ".yml", ".log"})


def mention(user: str) -> str:
    """The bot's own mention of a user: survives clean() as <@user>; typed by anyone else it is plain text."""
    return f"\u2063{_NONCE}{user}\u2063" if re.fullmatch(r"[A-Z0-9]{2,32}", user or "") else "someone"


def neutralise(text: str) -> str:
    """Slack markup that pings (broadcasts, user and group mentions) shown as text; the bot's marks become mentions."""
    text = _SPECIAL.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}&gt;", text)
    text = _PLAIN_BROADCAST.sub(lambda m: "@\u200b" + m.group(1), text)
    return _MARK.sub(lambda m: f"<@{m.group(1)}>", text)


def clean(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """Secrets redacted and pings neutralised in every string inside value (dicts, lists, JSON strings alike);
    ids and the token argument (_KEEP_KEYS) are passed through untouched."""
    if isinstance(value, str):
        return neutralise(redact(value, secrets))
    if isinstance(value, dict):
        return {k: v if k in _KEEP_KEYS else clean(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clean(v, secrets) for v in value)
    return value


class SafeWebClient(AsyncWebClient):
    """An AsyncWebClient that cleans the arguments of every call (and the text files it uploads) before sending."""

    def __init__(self, *args: Any, secrets: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._secrets = tuple(s for s in secrets if s)

    async def api_call(self, api_method: str, *, http_verb: str = "POST", files: dict | None = None,
                       data: Any = None, params: dict | None = None, json: dict | None = None,
                       headers: dict | None = None, auth: dict | None = None):
        if isinstance(data, dict):
            data = clean(data, self._secrets)
        return await super().api_call(api_method, http_verb=http_verb, files=files, data=data,
                                      params=clean(params, self._secrets) if params else params,
                                      json=clean(json, self._secrets) if json else json, headers=headers, auth=auth)

    async def files_upload_v2(self, **kwargs: Any):
        """Text files (report.md, JSON, CSV...) are uploaded cleaned, as content; images and binaries as they are."""
        path = kwargs.get("file")
        if isinstance(path, (str, Path)) and Path(path).suffix.lower() in _TEXT_FILES and Path(path).is_file():
            kwargs.pop("file")
            kwargs["content"] = Path(path).read_text(encoding="utf-8", errors="replace")
            kwargs.setdefault("filename", Path(path).name)
        if isinstance(kwargs.get("content"), str):
            kwargs["content"] = clean(kwargs["content"], self._secrets)
        return await super().files_upload_v2(**kwargs)
