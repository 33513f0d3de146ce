"""Secrets out of text before it leaves the process: token-shaped strings, credentials inside URLs, given values.

    redact("xoxb-1-abc at http://u:pw@h:8/v1?key=abc&n=1")  -> "[redacted] at http://[redacted]@h:8/v1?key=[redacted]&n=1"
    redact(text, secrets=(bot_token,))                       # also every occurrence of the given values
    redact_data({"blocks": [...]}, secrets)                  # the same over nested dicts / lists / tuples
    endpoint("http://u:pw@h:8/v1?key=abc")                   -> "http://h:8"  (what error sentences name)
    handler.addFilter(RedactingFilter(secrets))              # log lines and tracebacks redacted too
    redact_logs(secrets)                                     # ... on every handler of the root logger

Used at every edge where text leaves: Slack messages (bot/slack_out.py), run records (registry.fail), the CLI's
error line, and the teachers' error sentences, which name an endpoint by endpoint(base_url) and never by the URL
the operator configured (it may carry user:password@, ?key=, ?sig=, api-key=...).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

__all__ = ["REDACTED", "RedactingFilter", "redact_logs", "redact", "redact_data", "redact_url", "endpoint"]

REDACTED = "[redacted]"
_TOKENS = re.compile("|".join([
    r"\bxox[a-z]-[A-Za-z0-9-]{6,}",  # Slack bot / user / refresh tokens
    r"\bxapp-[A-Za-z0-9-]{6,}",  # Slack app-level tokens
    r"\bsk-[A-Za-z0-9_-]{8,}",  # OpenAI, Anthropic (sk-ant-...), sk-proj-...
    r"\bhf_[A-Za-z0-9]{16,}",  # Hugging Face
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",  # GitHub
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bAIza[0-9A-Za-z_-]{30,}",  # Google API keys
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs (Entra ID access tokens, ...)
]))
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_KEY_VALUE = re.compile(r"(?i)\b(api[-_]?key|x-api-key|ocp-apim-subscription-key|access[-_]?token|client[-_]?secret|password|passwd)"
                        r"(\"?'?\s*[:=]\s*\"?'?)([^\s\"'&,;<>|]{4,})")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s<>|\"'`]+")
_SECRET_PARAM = re.compile(r"(?i)key|sig|token|secret|pass|pwd|auth|credential|session|^code$")


def redact_url(url: str) -> str:
    """The URL without credentials: user:password@ and the values of key/sig/token-like query parameters."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{REDACTED}@{host}" if "@" in parts.netloc else host
        query = "&".join(f"{quote(k, safe='-_.~[]')}={REDACTED if _SECRET_PARAM.search(k) else quote(v, safe='-_.~:/,')}"
                         for k, v in parse_qsl(parts.query, keep_blank_values=True))
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return re.sub(r"//[^/@\s]*@", f"//{REDACTED}@", url).split("?", 1)[0]


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """Replace the given secret values, token-shaped strings and URL credentials with [redacted]."""
    if not isinstance(text, str) or not text:
        return text
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _URL.sub(lambda m: redact_url(m.group(0)) if ("@" in m.group(0) or "?" in m.group(0)) else m.group(0), text)
    text = _TOKENS.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def redact_data(value: Any, secrets: tuple[str, ...] | list[str] = ()) -> Any:
    """redact() applied to every string inside dicts, lists and tuples (keys are left alone)."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: redact_data(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_data(v, secrets) for v in value)
    return value


def endpoint(url: str | None, default: str = "the default endpoint") -> str:
    """scheme://host[:port] of a base URL, for sentences: no credentials, path or query ever."""
    if not url:
        return default
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured endpoint"
    if not parts.scheme or not host:
        return "the configured endpoint"
    return f"{parts.scheme}://{host}{port}"


class RedactingFilter(logging.Filter):
    """A handler filter: the formatted message and the traceback of every record are redacted before output."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage(), self.secrets), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def redact_logs(secrets: tuple[str, ...] = ()) -> None:
    """Put a RedactingFilter on every handler of the root logger (call after logging.basicConfig)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(secrets))
