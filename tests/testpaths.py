"""Paths the tests share (a module of its own: a name like conftest is ambiguous once subfolders have one)."""

from pathlib import Path

TESTS = Path(__file__).parent
DATA = TESTS / "data"
