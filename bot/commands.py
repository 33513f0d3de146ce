"""The bot's one command vocabulary: command mode (bot/grammar.py), the /distill slash command and run threads
(bot/slack_app.py, bot/slack_flow.py) all read the command words from here, so they cannot drift apart.

    parse("status ab12cd34")        -> Command("status", "ab12cd34")
    parse("please don't cancel it") -> None                  # a sentence that contains a word is not the command
    is_start("sure") / is_cancel("stop") / needs_start_rights("cancel ab12cd34")
    slash_text("describe sst2")     -> "describe sst2";  slash_text("sst2 into tiny") -> "distill sst2 into tiny"
    thread_followup("cancel", "ab12cd34") -> "cancel ab12cd34"   # in the thread of a followed run
    split_words("Qwen's 8B rows=10") -> ["Qwen's", "8B", "rows=10"]   # shell-like, an apostrophe is a letter

A message is a command only when the WHOLE message is one (case, surrounding spaces, a trailing "." or "!" and a
"please" before or after ignored): "yes", "start plan-3f9a2c", "cancel", "cancel it", "cancel ab12cd34", "stop", "abort", "status", ...
Cancelling therefore needs the command itself (or the Cancel button); "please don't cancel it" never cancels.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

__all__ = ["Command", "DISTILL_WORDS", "START_PHRASES", "START_WORDS", "CANCEL_WORDS", "HELP_WORDS", "COMMAND_WORDS",
           "parse", "is_start", "is_cancel", "needs_start_rights", "slash_text", "thread_followup", "split_words",
           "normalise"]

DISTILL_WORDS = ("distill", "distil", "plan")  # distill <dataset> into <student> ...
START_PHRASES = frozenset({  # the whole message confirms the conversation's last plan
    "yes", "y", "yep", "yeah", "yes please", "sure", "ok", "okay", "go", "go ahead", "do it", "run it",
    "start", "start it", "confirm"})
START_WORDS = ("start", "confirm")  # start <plan id> / confirm <plan id>
CANCEL_WORDS = ("cancel", "stop", "abort")  # cancel [it | the run | <run id>]
CANCEL_OBJECTS = frozenset({"", "it", "this", "run", "the run", "this run", "that run"})
ARG_COMMANDS = ("status", "runs", "report", "models", "describe")  # word [argument]
PLAIN_COMMANDS = ("datasets",)
HELP_WORDS = ("help", "?", "hi", "hello")
COMMAND_WORDS = frozenset(DISTILL_WORDS + START_WORDS + CANCEL_WORDS + ARG_COMMANDS + PLAIN_COMMANDS + HELP_WORDS
                          + tuple(p for p in START_PHRASES if " " not in p))
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")  # a run or plan id as a user types it
# read-only questions about a run, in its thread (harmless when misread, so phrasing may be loose)
_POLITE = re.compile(r"^(?:please|pls|kindly)\s+|[\s,]+(?:please|pls|thanks|thank you)$", re.I)
_APOSTROPHE = re.compile(r"\w'\w")
_REPORT = re.compile(r"\b(report|results?|scores?|how did it (go|do))\b", re.I)
_STATUS = re.compile(r"\b(status|progress|how('s| is) it going|going|eta|done yet|how long|where are we)\b", re.I)


@dataclass(frozen=True)
class Command:
    name: str  # distill | start | cancel | status | runs | report | models | datasets | describe | help
    arg: str = ""  # the rest of the line ("" when none); for distill: "<dataset> into <student> ..."


def normalise(text: str) -> str:
    """One line, single spaces, no trailing '.' or '!', no 'please' before or after ('cancel it please')."""
    line = " ".join((text or "").split()).rstrip(".! ").strip()
    return _POLITE.sub("", line).rstrip(".! ").strip() or line


def parse(text: str) -> Command | None:
    """The command the whole message is, or None for anything else (a sentence, a question)."""
    line = normalise(text)
    low = line.lower()
    if not line:
        return Command("help")
    if low in START_PHRASES:
        return Command("start")
    head, _, arg = line.partition(" ")
    head, arg = head.lower(), arg.strip()
    if head in DISTILL_WORDS and arg:
        return Command("distill", arg)
    if head in START_WORDS and ID.match(arg):
        return Command("start", arg)
    if head in CANCEL_WORDS:
        obj = arg.lower()
        if obj in CANCEL_OBJECTS:
            return Command("cancel")
        return Command("cancel", arg) if ID.match(arg) else None
    if head in ARG_COMMANDS:
        return Command(head, arg)
    if head in PLAIN_COMMANDS and not arg:
        return Command(head)
    if low in HELP_WORDS:
        return Command("help")
    return None


def is_start(text: str) -> bool:
    cmd = parse(text)
    return cmd is not None and cmd.name == "start"


def is_cancel(text: str) -> bool:
    cmd = parse(text)
    return cmd is not None and cmd.name == "cancel"


def needs_start_rights(text: str) -> bool:
    """True for the commands that spend or stop (start, cancel): only people who may start runs may send them."""
    return is_start(text) or is_cancel(text)


def slash_text(text: str) -> str:
    """What the agent gets for `/distill <text>`: a command stays itself, anything else is a distill request."""
    line = " ".join((text or "").split())
    if not line:
        return "help"
    first = line.split(" ", 1)[0].lower().rstrip(".!")
    if parse(line) is not None or first in COMMAND_WORDS:
        return line
    return f"distill {line}"


def thread_followup(text: str, run_id: str) -> str:
    """In the thread of a followed run: 'cancel' / 'stop it' -> 'cancel <run>', 'status' or 'how is it going?' ->
    'status <run>', 'show the report' -> 'report <run>'. Only the read-only questions are read loosely: a sentence
    that merely contains 'cancel' or 'stop' is never turned into a cancel."""
    if run_id in text:
        return text
    cmd = parse(text)
    if cmd is not None and cmd.name in ("cancel", "status", "report") and not cmd.arg:
        return f"{cmd.name} {run_id}"
    if cmd is not None:
        return text  # a command of its own (cancel <id>, runs, ...)
    if _REPORT.search(text):
        return f"report {run_id}"
    if _STATUS.search(text):
        return f"status {run_id}"
    return text


def split_words(text: str) -> list[str]:
    """Shell-like words ('a="b c"' stays one word); an apostrophe inside a word ("Qwen's") is a letter, and
    unbalanced quotes fall back to splitting on spaces instead of failing."""
    if not _APOSTROPHE.search(text):
        try:
            return shlex.split(text)
        except ValueError:
            pass
    lex = shlex.shlex(text, posix=True)
    lex.whitespace_split, lex.quotes, lex.commenters = True, '"', ""
    try:
        return list(lex)
    except ValueError:
        return text.split()
