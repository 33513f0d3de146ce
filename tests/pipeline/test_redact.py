"""pipeline/redact.py: token shapes, URL credentials, nested payloads, endpoints for sentences, log records."""

from __future__ import annotations

import io
import logging

import pytest

from pipeline.redact import RedactingFilter, endpoint, redact, redact_data, redact_logs


@pytest.mark.parametrize("secret", [
    "xoxb-1234-5678-abcdefgh", "xoxp-1111-2222-secret", "xapp-1-A01-123-abcdef", "sk-proj-Abcdefgh12345678",
    "sk-ant-api03-abcdefghijk", "hf_abcdefghijklmnopqrstu", "ghp_abcdefghijklmnopqrstuvwxyz", "AKIAABCDEFGHIJKLMNOP",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyMSJ9.c2lnbmF0dXJlMTIz"])
def test_token_shaped_strings_are_redacted(secret):
    out = redact(f"the value was {secret}, then more")
    assert secret not in out and out == "the value was [redacted], then more"


def test_url_credentials_and_key_like_values_are_redacted_but_hosts_and_plain_urls_stay():
    text = ("at http://ops:hunter2@10.1.2.3:8000/v1?key=abc123&api-version=2024-10-21&sig=s3cr3t, "
            "see https://docs.example.com/a?page=2 Authorization: Bearer abcdefgh12345678 api-key: k3y-v4lue")
    out = redact(text)
    for secret in ("hunter2", "abc123", "s3cr3t", "abcdefgh12345678", "k3y-v4lue", "ops:"):
        assert secret not in out
    assert "http://[redacted]@10.1.2.3:8000/v1?key=[redacted]&api-version=2024-10-21&sig=[redacted]" in out
    assert "https://docs.example.com/a?page=2" in out and "Bearer [redacted]" in out
    assert redact("teacher.api_key_env=OPENAI_API_KEY max_tokens=8") == "teacher.api_key_env=OPENAI_API_KEY max_tokens=8"
    assert redact("the value is s3cr3t-v", secrets=("s3cr3t-v",)) == "the value is [redacted]"


def test_every_string_of_a_payload_is_redacted():
    payload = {"text": "ok", "blocks": [{"type": "section", "fields": [{"text": "sk-proj-Abcdefgh12345678"}]}],
               "attachments": ({"fallback": "http://u:p@h/v1"},), "n": 3}
    out = redact_data(payload)
    assert out == {"text": "ok", "blocks": [{"type": "section", "fields": [{"text": "[redacted]"}]}],
                   "attachments": ({"fallback": "http://[redacted]@h/v1"},), "n": 3}


@pytest.mark.parametrize("url, expected", [
    ("http://user:secret@127.0.0.1:8000/v1?key=abc", "http://127.0.0.1:8000"),
    ("https://res.openai.azure.com/openai/v1/?api-key=abc", "https://res.openai.azure.com"),
    ("http://[::1]:9/v1", "http://[::1]:9"), (None, "the default endpoint"), ("not a url", "the configured endpoint")])
def test_endpoint_is_scheme_host_and_port_only(url, expected):
    assert endpoint(url) == expected


def test_log_records_and_tracebacks_are_redacted():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(("my-signing-secret",)))
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    try:
        try:
            raise RuntimeError("failed at http://u:hunter2@h/v1 with xoxb-1234-5678-abcdefgh")
        except RuntimeError:
            log.exception("request %s failed", "my-signing-secret")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "request [redacted] failed" in out and "RuntimeError" in out
    assert "hunter2" not in out and "xoxb-1234" not in out and "my-signing-secret" not in out


def test_redact_logs_filters_every_root_handler_once():
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        redact_logs(("s3cr3t-value",))
        redact_logs(("s3cr3t-value",))
        logging.getLogger("test.redact.root").warning("value s3cr3t-value at http://u:hunter2@h/v1")
    finally:
        root.removeHandler(handler)
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    assert stream.getvalue().strip() == "value [redacted] at http://[redacted]@h/v1"
