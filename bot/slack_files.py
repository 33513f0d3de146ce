"""Files people attach in Slack become datasets: check, download with the bot token, unpack, store, register.

    files = SlackFiles(client, UploadStore(), bot_token, api_url)
    upload = await files.fetch(team, channel, user, thread_ts, file_obj)   # Upload, or FileRefused (one sentence)
    phrase_refers_to_a_file("distill this dataset into gemma")              # True ("this dataset", "the file above")

Uploaded files are untrusted input. The file's metadata comes from the event and `files.info`; the file must be
shared in the channel (or DM) the request came from. It is downloaded from `url_private_download` with the bot
token in `Authorization: Bearer`, and the token goes ONLY to Slack's file host (files.slack.com) or the host of
DISTILLERY_SLACK_API_URL: any other address is refused before anything is sent, redirects included. The size
limit (DISTILLERY_SLACK_MAX_FILE_MB, default 200) is checked on the metadata before downloading and again while
bytes arrive (and while unpacking a .zip/.gz). An HTML page instead of the file (Slack's login page when the bot
lacks files:read) is "could not download". The file is stored as DISTILLERY_HOME/uploads/<team>/<file id>/<safe
name> (never a path or name from the event as given) and registered as a dataset for that channel only.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from pipeline.datasets import read_records
from pipeline.errors import DatasetError, DistilleryError
from skills.uploads import Upload, UploadStore, safe_name

from . import commands

__all__ = ["SlackFiles", "FileRequests", "COLUMNS_ACTION", "FileRefused", "phrase_refers_to_a_file", "replace_file_phrase", "SLACK_FILE_HOST", "DATA_SUFFIXES",
           "max_file_bytes", "max_upload_bytes", "zip_adapter"]

log = logging.getLogger("distillery.slack")

SLACK_FILE_HOST = "files.slack.com"
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
ARCHIVE_SUFFIXES = (".zip", ".gz")
SPREADSHEETS = (".xlsx", ".xls", ".xlsm", ".ods", ".numbers", ".gsheet")
CHUNK = 1 << 16
MAX_REDIRECTS = 3
_PHRASE = re.compile(r"\b(this|that|the|my|attached|uploaded)\s+(attached\s+|uploaded\s+)?(data\s*set|dataset|file|csv|data)"
                     r"(\s+(above|here|i\s+(just\s+)?(shared|attached|uploaded)))?\b", re.I)


class FileRefused(DistilleryError):
    """An attached file cannot be used as a dataset (type, size, host, login page, another channel)."""


def _megabytes(name: str, default: float, env: dict[str, str] | None = None) -> int:
    """Bytes from an environment variable in MB (the default when unset or not a number)."""
    env = os.environ if env is None else env
    try:
        mb = float(env.get(name) or default)
    except ValueError:
        mb = default
    return int(mb * 1024 * 1024)


def max_file_bytes(env: dict[str, str] | None = None) -> int:
    return _megabytes("DISTILLERY_SLACK_MAX_FILE_MB", 200, env)


def phrase_refers_to_a_file(text: str) -> bool:
    """'this dataset', 'the file above', 'my csv', 'the attached file', ... (a reference to a shared file)."""
    return bool(_PHRASE.search(text or ""))


def replace_file_phrase(text: str, name: str) -> str:
    """'distill this dataset into X' -> 'distill reviews into X'; 'distill into X' -> 'distill reviews into X'."""
    if _PHRASE.search(text):
        return _PHRASE.sub(name, text, count=1)
    m = re.match(r"^\s*(distill|distil|plan)\s+(into|to)\b", text, re.I)
    if m:
        return f"{m.group(1)} {name} {text[m.end(1):].lstrip()}"
    return text


def _host_ok(url: str, api_url: str | None) -> bool:
    """True when `url` is on Slack's file host (https) or on the configured Slack API host (its scheme)."""
    u = urlparse(url)
    if u.scheme == "https" and u.hostname == SLACK_FILE_HOST and not u.username and not u.password:
        return True
    if api_url:
        a = urlparse(api_url)
        return (u.scheme, u.hostname, u.port) == (a.scheme, a.hostname, a.port) and not u.username and not u.password
    return False


class SlackFiles:
    def __init__(self, client, uploads: UploadStore, bot_token: str, api_url: str | None = None,
                 max_bytes: int | None = None):
        self.client, self.uploads, self._token, self.api_url = client, uploads, bot_token, api_url
        self.max_bytes = max_file_bytes() if max_bytes is None else max_bytes

    # -- metadata --------------------------------------------------------------------------------------------
    async def info(self, file_id: str) -> dict[str, Any]:
        try:
            resp = await self.client.files_info(file=file_id)
        except Exception as err:  # noqa: BLE001 - SlackApiError and network errors: one sentence
            data = getattr(getattr(err, "response", None), "data", None)
            code = data.get("error", "error") if isinstance(data, dict) else type(err).__name__
            log.info("files.info failed: %s", type(err).__name__)
            raise FileRefused(f"I could not read that file's details from Slack ({code}); "
                              "check that the app has the files:read scope and is in this channel.") from None
        data = resp.data if hasattr(resp, "data") else resp
        return data.get("file") or {}

    @staticmethod
    def _shared_in(meta: dict[str, Any]) -> set[str]:
        places = set(meta.get("channels") or []) | set(meta.get("groups") or []) | set(meta.get("ims") or [])
        for kind in ("public", "private"):
            places |= set(((meta.get("shares") or {}).get(kind) or {}).keys())
        return places

    def check(self, meta: dict[str, Any], channel: str) -> tuple[str, str]:
        """(file name, download URL) after every check that needs no download; FileRefused otherwise."""
        name = str(meta.get("name") or meta.get("title") or "file")
        shown = safe_name(name, "the file")
        if channel not in self._shared_in(meta):
            raise FileRefused(f"{shown} was not shared in this conversation, so I can't use it here; attach it here.")
        low = name.lower()
        if low.endswith(SPREADSHEETS) or meta.get("filetype") in ("xlsx", "xls", "gsheet", "numbers", "ods"):
            raise FileRefused(f"I can't read spreadsheets like {shown}; export it as CSV (File > Save as / Download > CSV) and attach the .csv.")
        if not (low.endswith(DATA_SUFFIXES) or low.endswith(ARCHIVE_SUFFIXES)):
            raise FileRefused(f"{shown} is not a dataset file I can read; attach a CSV, TSV, JSONL, JSON or Parquet file (or a .zip/.gz holding one).")
        size = meta.get("size")
        if isinstance(size, (int, float)) and size > self.max_bytes:
            raise FileRefused(f"{shown} is {size / 1048576:,.0f} MB, over this bot's limit of {self.max_bytes / 1048576:,.0f} MB "
                              "(DISTILLERY_SLACK_MAX_FILE_MB); attach a smaller sample.")
        url = str(meta.get("url_private_download") or meta.get("url_private") or "")
        if not url or not _host_ok(url, self.api_url):
            raise FileRefused(f"could not download {shown}: its address is not on Slack's file host, so I did not send my token there.")
        return name, url

    # -- the whole thing ---------------------------------------------------------------------------------------
    async def fetch(self, team: str, channel: str, user: str, thread_ts: str | None, file_obj: dict[str, Any]) -> Upload:
        file_id = str(file_obj.get("id") or "")
        existing = self.uploads.get(team, file_id) if file_id else None
        meta = {**file_obj, **(await self.info(file_id))} if file_id else dict(file_obj)
        name, url = self.check(meta, channel)
        if existing and existing.channel == channel and Path(existing.path).is_file():
            return existing  # the same file again in the same conversation: no second download
        folder = self.uploads.folder(team, file_id)
        raw = folder / ".download.part"
        try:
            await self._download(url, raw, safe_name(name, "the file"))
            path = self._unpack(raw, name, folder)
        finally:
            raw.unlink(missing_ok=True)
        try:
            read_records(str(path))
        except DatasetError as err:
            path.unlink(missing_ok=True)
            raise FileRefused(str(err).replace(str(path), path.name)) from None
        return self.uploads.register(team, file_id, path, path.name, channel, user, thread_ts)

    async def _download(self, url: str, dest: Path, shown: str) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=600, sock_read=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(MAX_REDIRECTS + 1):
                if not _host_ok(url, self.api_url):  # every hop is checked before the token is sent
                    raise FileRefused(f"could not download {shown}: Slack sent me to another address, so I did not send my token there.")
                try:
                    async with session.get(url, headers={"Authorization": f"Bearer {self._token}"}, allow_redirects=False) as resp:
                        if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                            url = urljoin(url, resp.headers["Location"])
                            continue
                        if resp.status != 200:
                            raise FileRefused(f"could not download {shown} (HTTP {resp.status}); check the app has files:read and try again.")
                        if "text/html" in resp.headers.get("Content-Type", "").lower():
                            raise FileRefused(f"could not download {shown}: Slack answered with a web page (a sign-in page?) instead of the file; "
                                              "check the app has the files:read scope.")
                        await self._save(resp, dest, shown)
                        return
                except aiohttp.ClientError as err:
                    raise FileRefused(f"could not download {shown} ({type(err).__name__}); try again.") from None
        raise FileRefused(f"could not download {shown}: too many redirects.")

    async def _save(self, resp, dest: Path, shown: str) -> None:
        got = 0
        first = b""
        with dest.open("wb") as fh:
            async for chunk in resp.content.iter_chunked(CHUNK):
                if not first:
                    first = chunk[:512]
                    head = first.lstrip().lower()
                    if head.startswith((b"<!doctype html", b"<html")):
                        raise FileRefused(f"could not download {shown}: Slack answered with a web page (a sign-in page?) instead of "
                                          "the file; check the app has the files:read scope.")
                got += len(chunk)
                if got > self.max_bytes:
                    raise FileRefused(f"{shown} is larger than this bot's limit of {self.max_bytes / 1048576:,.0f} MB "
                                      "(DISTILLERY_SLACK_MAX_FILE_MB); attach a smaller sample.")
                fh.write(chunk)

    def _unpack(self, raw: Path, name: str, folder: Path) -> Path:
        """The data file: the download itself, or the one data file inside a .zip / .gz (size-capped)."""
        low = name.lower()
        if low.endswith(DATA_SUFFIXES):
            dest = folder / safe_name(name)
            raw.replace(dest)
            return dest
        if low.endswith(".gz"):
            inner = safe_name(name[:-3])
            if not inner.lower().endswith(DATA_SUFFIXES):
                raise FileRefused(f"{safe_name(name)} does not hold a CSV, TSV, JSONL, JSON or Parquet file (name it like data.csv.gz).")
            try:
                with gzip.open(raw, "rb") as src:
                    return self._copy_capped(src, folder / inner, safe_name(name))
            except (OSError, EOFError):
                raise FileRefused(f"{safe_name(name)} is not a valid .gz file; compress it again or attach the file itself.") from None
        try:
            with zipfile.ZipFile(raw) as zf:
                members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")
                           and not Path(m.filename).name.startswith(".") and m.filename.lower().endswith(DATA_SUFFIXES)]
                if len(members) != 1:
                    raise FileRefused(f"{safe_name(name)} holds {len(members)} data files; put exactly one CSV, TSV, JSONL, JSON or Parquet file in the .zip.")
                with zf.open(members[0]) as src:
                    return self._copy_capped(src, folder / safe_name(Path(members[0].filename).name), safe_name(name))
        except (zipfile.BadZipFile, OSError, RuntimeError):  # RuntimeError: an encrypted member
            raise FileRefused(f"{safe_name(name)} is not a .zip I can open; zip it again without a password or attach the file itself.") from None

    def _copy_capped(self, src, dest: Path, shown: str) -> Path:
        got = 0
        with dest.open("wb") as out:
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                got += len(chunk)
                if got > self.max_bytes:
                    out.close()
                    dest.unlink(missing_ok=True)
                    raise FileRefused(f"{shown} unpacks to more than this bot's limit of {self.max_bytes / 1048576:,.0f} MB "
                                      "(DISTILLERY_SLACK_MAX_FILE_MB); attach a smaller sample.")
                out.write(chunk)
        return dest


# ---- a request that brings or names a file --------------------------------------------------------------------

_COLUMN_ANSWER = re.compile(r"\btext\s*(?:=|:|is)\s*`?([^\s`,;]+)`?.*?\blabel\s*(?:=|:|is)\s*`?([^\s`,;]+)`?", re.I | re.S)
_VERB = "|".join(commands.DISTILL_WORDS)  # the one vocabulary (bot/commands.py)
COLUMNS_ACTION = "distill_columns"  # the button under the column question
_DISTILL_START = re.compile(rf"^\s*({_VERB})\b", re.I)


class FileRequests:
    """Turns a Slack request with a file (attached, or "this dataset") into a request about a registered dataset."""

    def __init__(self, files: SlackFiles):
        self.files, self.uploads = files, files.uploads
        self.guesses: dict[str, str] = {}  # conversation -> "text=COL label=COL" offered as a button

    def question_blocks(self, conversation: str, question: str) -> list[dict[str, Any]] | None:
        """The column question with a button for the guess (its value is the reply it stands for)."""
        guess = self.guesses.get(conversation)
        if not guess:
            return None
        return [{"type": "section", "text": {"type": "mrkdwn", "text": question[:2900]}},
                {"type": "actions", "elements": [{"type": "button", "action_id": COLUMNS_ACTION, "value": guess,
                                                  "text": {"type": "plain_text", "text": f"Use {guess}"[:75]}}]}]

    def saw(self, team: str, channel: str, user: str | None, thread_ts: str | None, files: list[dict[str, Any]]) -> None:
        """Remember files shared in a conversation (for a later "this dataset" / "the file above")."""
        for f in files or []:
            if f.get("id"):
                self.uploads.saw_file(team, str(f["id"]), channel, user, thread_ts, str(f.get("name") or ""))

    async def prepare(self, team: str, channel: str, thread_ts: str, user: str, text: str,
                      files: list[dict[str, Any]]) -> tuple[str, str | None]:
        """(the text for the agent, a reply to post instead of asking the agent, or None)."""
        import asyncio

        conversation = f"{channel}:{thread_ts}"
        pending = self.uploads.pending(conversation)
        if pending and not files:
            answer = _COLUMN_ANSWER.search(text or "")
            if answer:
                return await asyncio.to_thread(self._answer, pending, conversation, answer.group(1), answer.group(2), channel, user)
        self.saw(team, channel, user, thread_ts, files)
        wanted = files[0] if files else None
        if wanted is None and phrase_refers_to_a_file(text):
            seen = self.uploads.latest_seen(channel, thread_ts, user)
            if seen is None:
                return text, ("I don't see a file in this thread, or one you shared in this channel today; "
                              "attach the file (CSV, TSV, JSONL, JSON or Parquet) to your message.")
            wanted = {"id": seen["file_id"], "name": seen["name"]}
        if wanted is None:
            return text, None
        try:
            upload = await self.files.fetch(team, channel, user, thread_ts, wanted)
            guess = await asyncio.to_thread(_guess, upload)
        except DistilleryError as err:
            return text, str(err)
        if not guess["decided"] and not upload.fields:
            self.uploads.ask(conversation, upload.team, upload.file_id, text)
            if guess.get("text") and guess.get("label"):
                self.guesses[conversation] = f"text={guess['text']} label={guess['label']}"
            return text, _question(upload, guess)
        return _about(text, upload.name), None

    def _answer(self, pending: dict[str, Any], conversation: str, text_col: str, label_col: str, channel: str,
                user: str) -> tuple[str, str | None]:
        upload = self.uploads.get(pending["team"], pending["file_id"])
        if upload is None or not upload.visible_to({"channel": channel, "user": user}):
            self.uploads.answered(conversation)
            return "help", "That file is no longer available here; attach it again."
        columns = list(read_records(upload.path)[0])
        unknown = [c for c in (text_col, label_col) if c not in columns]
        if unknown or text_col == label_col:
            return "help", (f"`{unknown[0] if unknown else text_col}` is not a separate column of {upload.original_name} "
                            f"(columns: {', '.join(f'`{c}`' for c in columns[:20])}); reply `text=COLUMN label=COLUMN`.")
        self.uploads.set_fields(upload.team, upload.file_id, {"text": text_col, "label": label_col})
        self.uploads.answered(conversation)
        return _about(pending.get("request") or "", upload.name), None


def _guess(upload: Upload) -> dict[str, Any]:
    from pipeline.datasets import guess_columns

    return guess_columns(read_records(upload.path), upload.fields)


def _about(text: str, name: str) -> str:
    """The request rewritten to name the dataset; a bare attachment asks for its description."""
    if phrase_refers_to_a_file(text) or re.match(rf"^\s*({_VERB})\s+(into|to)\b", text or "", re.I):
        return replace_file_phrase(text, name)
    if not (text or "").strip() or not _DISTILL_START.match(text):
        return f"describe {name}" if not (text or "").strip() else f"{text} (dataset: {name})"
    return text


def _question(upload: Upload, guess: dict[str, Any]) -> str:
    cols = ", ".join(f"`{c}`" for c in guess["columns"][:20])
    hint = ""
    if guess.get("text") and guess.get("label"):
        hint = f" My guess: `text={guess['text']} label={guess['label']}`."
    return (f"I can't tell which column of {upload.original_name} is the text and which is the label (columns: {cols}).{hint} "
            "Reply in this thread with `text=COLUMN label=COLUMN` and I'll remember it for this file.")


# ---- files out: the distilled adapter as a .zip in the report's thread ---------------------------------------------

def max_upload_bytes(env: dict[str, str] | None = None) -> int:
    return _megabytes("DISTILLERY_SLACK_MAX_UPLOAD_MB", 50, env)


def zip_adapter(adapter: Path, dest: Path, max_bytes: int) -> Path | None:
    """`adapter` (a run's student/ folder) zipped into `dest`, or None when it is missing or over `max_bytes`.

    Only regular files inside the folder are taken (symlinks are skipped, so nothing outside the run is packed)."""
    adapter = Path(adapter)
    if not adapter.is_dir() or adapter.is_symlink():
        return None
    root = adapter.resolve()
    files = [p for p in sorted(adapter.rglob("*")) if p.is_file() and not p.is_symlink()
             and not any(q.is_symlink() for q in p.relative_to(adapter).parents if str(q) != ".")
             and p.resolve().is_relative_to(root) and "merged" not in p.relative_to(adapter).parts]
    if not files or sum(p.stat().st_size for p in files) > max_bytes:
        return None
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            zf.write(p, str(Path(adapter.name) / p.relative_to(adapter)))
    return dest if dest.stat().st_size <= max_bytes else None
