"""Write the operator's teacher profiles file (DISTILLERY_HOME/teachers.yaml) for a test.

    write_profiles(home, {"mini": {"provider": "openai", "model": "gpt-4o-mini", "base_url": url}}, default="mini")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_profiles(home: Path, teachers: dict[str, dict[str, Any]], default: str | None = None,
                   students: list[str] | tuple[str, ...] = ()) -> Path:
    data: dict[str, Any] = {"teachers": teachers}
    if default:
        data["default"] = default
    if students:
        data["students"] = [str(s) for s in students]
    home.mkdir(parents=True, exist_ok=True)
    path = home / "teachers.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
