"""The Distillery data folder: DISTILLERY_HOME, default ~/.distillery (run registry, converted models)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["distillery_home", "models_dir", "runs_dir"]


def distillery_home() -> Path:
    home = Path(os.environ.get("DISTILLERY_HOME") or Path.home() / ".distillery").expanduser().absolute()  # run folders stored absolute
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    """Converted model checkpoints; DISTILLERY_MODELS overrides (tests share one conversion across homes)."""
    override = os.environ.get("DISTILLERY_MODELS")
    path = Path(override).expanduser().absolute() if override else distillery_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(home: Path | None = None) -> Path:
    """Where runs get their own folder (RUNS/<id>): DISTILLERY_RUNS_DIR (shared storage a Ray cluster also sees), else HOME/runs."""
    override = os.environ.get("DISTILLERY_RUNS_DIR")
    return Path(override).expanduser().absolute() if override else (home or distillery_home()) / "runs"
