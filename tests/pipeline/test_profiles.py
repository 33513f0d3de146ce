"""Teacher profiles: the operator's teachers by name, validated through TeacherSpec, usable from the CLI too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import SpecError
from pipeline.profiles import load_profiles
from pipeline.spec import load_spec
from teacher_profiles import write_profiles

ROOT = Path(__file__).parent.parent.parent


def test_local_is_always_there_and_the_default_without_a_file():
    profiles = load_profiles()
    assert profiles.names() == ["local"] and profiles.default.name == "local" and profiles.path is None
    assert profiles.default.section["provider"] == "local" and profiles.default.params_b == 0.27


def test_profiles_validate_every_teacher_key_and_name_the_broken_one(isolated_home, monkeypatch):
    write_profiles(isolated_home, {"gw": {"provider": "openai", "model": "m", "base_url": "http://u:p@10.0.0.5:8000/v1",
                                          "api_key_env": "GW_KEY", "concurrency": 2, "params_b": 70}}, default="gw")
    profiles = load_profiles()
    assert profiles.default.name == "gw" and profiles.default.params_b == 70
    assert profiles.default.endpoint_host() == "10.0.0.5:8000" and profiles.default.section["concurrency"] == 2
    write_profiles(isolated_home, {"gw": {"provider": "openai", "concurency": 2}})
    with pytest.raises(SpecError, match=r"teacher profile 'gw' in .*teachers.yaml: teacher.concurency is not a teacher key"):
        load_profiles()
    write_profiles(isolated_home, {"gw": {"provider": "openai", "concurrency": -1, "base_url": "http://secret-host/v1"}})
    with pytest.raises(SpecError, match="teacher.concurrency has an invalid value") as err:
        load_profiles()
    assert "secret-host" not in str(err.value)
    write_profiles(isolated_home, {"gw": {"provider": "openai"}}, default="nope")
    with pytest.raises(SpecError, match="the default teacher 'nope'"):
        load_profiles()
    other = isolated_home / "elsewhere.yaml"
    other.write_text("teachers:\n  x: {provider: openai, model: y}\n", encoding="utf-8")
    monkeypatch.setenv("DISTILLERY_TEACHERS", str(other))
    assert load_profiles().names() == ["local", "x"]


def test_the_cli_spec_names_a_profile(isolated_home):
    write_profiles(isolated_home, {"gw": {"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}})
    spec = load_spec(None, ["teacher.profile=gw", "teacher.few_shot=3"])
    assert spec.teacher.provider == "openai" and spec.teacher.base_url == "http://127.0.0.1:9/v1" and spec.teacher.few_shot == 3
    out = subprocess.run([sys.executable, "-m", "bot.cli", "spec", "teacher.profile=nope"], capture_output=True, text=True,
                         cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode != 0 and "there is no teacher profile 'nope'" in out.stderr and "Traceback" not in out.stderr
