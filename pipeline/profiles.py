"""Teacher profiles: the teachers an operator declares once, by name, so chat can pick one without choosing endpoints.

    profiles = load_profiles()                 # DISTILLERY_TEACHERS, else DISTILLERY_HOME/teachers.yaml; `local` always
    profile = profiles.get("mini")             # TeacherProfile; SpecError naming the known profiles
    profile.section                            # the spec's teacher section (validated through TeacherSpec)
    profile.endpoint_host()                    # "api.openai.com" / "127.0.0.1:8000" (never credentials)
    profiles.default                           # the operator's default profile (`local` when none is declared)

The file (YAML):

    default: mini                              # the profile a plan uses when no teacher is named
    teachers:
      mini:                                    # any teacher.* key of the run spec
        provider: openai
        model: gpt-4o-mini
        api_key_env: OPENAI_API_KEY            # the NAME of the variable, never the key
        price_per_mtok: {input: 0.15, output: 0.6}
        params_b: 8                            # optional: the teacher's size in billions (for the "smaller than
                                               # the student" note); catalog models know their own size
        description: OpenAI gpt-4o-mini        # optional: shown in `models`
    students:                                  # optional: students chat may name besides the catalog
      - /srv/models/my-7b                      # (hub ids or local folders; chat never names a path itself)

Each profile is validated by building a TeacherSpec, so every teacher key (also ones added later) works here.
The run spec can name a profile too: `teacher.profile=mini` (profile keys first, the spec's other teacher keys
on top). The embedded local teacher is always available as `local`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import SpecError
from .home import distillery_home

__all__ = ["TeacherProfile", "Profiles", "load_profiles", "profiles_path", "apply_profile", "LOCAL_PROFILE",
           "PROFILE_EXTRA_KEYS", "PROFILES_FILE", "endpoint_host",
           "apply_profile_overrides"]

PROFILES_FILE = "teachers.yaml"
PROFILE_EXTRA_KEYS = ("params_b", "description")  # profile keys that are not TeacherSpec fields
LOCAL_SECTION = {"provider": "local", "model": "gemma-3-270m", "few_shot": 8}
LOCAL_PARAMS_B = 0.27


@dataclass(frozen=True)
class TeacherProfile:
    name: str
    section: dict[str, Any]  # teacher.* keys (validated)
    params_b: float | None = None  # the teacher's size in billions, when known
    description: str = ""
    builtin: bool = False

    @property
    def provider(self) -> str:
        return str(self.section.get("provider") or "local")

    @property
    def model(self) -> str:
        return str(self.section.get("model") or LOCAL_SECTION["model"])

    @property
    def key_env(self) -> str | None:
        return self.section.get("api_key_env")

    def endpoint_host(self) -> str:
        """Where requests go, as host[:port] without user, password, path or query; words for the defaults."""
        return endpoint_host(self.section)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "provider": self.provider, "model": self.model, "endpoint": self.endpoint_host(),
                "api_key_env": self.key_env, "params_b": self.params_b, "description": self.description,
                "builtin": self.builtin}


def endpoint_host(section: dict[str, Any]) -> str:
    """host[:port] of a teacher section's base_url (credentials, path and query left out), or what the default is."""
    provider = str(section.get("provider") or "local")
    base_url = section.get("base_url")
    if not base_url:
        if provider == "local":
            return "this machine (offline)"
        if provider == "openai":
            return "api.openai.com"
        return "not set"
    parts = urlsplit(str(base_url))
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


LOCAL_PROFILE = TeacherProfile("local", dict(LOCAL_SECTION), LOCAL_PARAMS_B,
                               "the embedded Gemma 3 270M (free, offline, small)", builtin=True)


@dataclass
class Profiles:
    profiles: dict[str, TeacherProfile]
    default_name: str = "local"
    path: Path | None = None  # the file they came from (None: only the built-in local teacher)
    students: tuple[str, ...] = ()  # extra students chat may name (hub ids or local folders), beyond the catalog

    @property
    def default(self) -> TeacherProfile:
        return self.profiles[self.default_name]

    def names(self) -> list[str]:
        return list(self.profiles)

    def find(self, name: str | None) -> TeacherProfile | None:
        """The profile with this name (case-insensitive), else None."""
        key = (name or "").strip().lower()
        return next((p for n, p in self.profiles.items() if n.lower() == key), None)

    def get(self, name: str | None) -> TeacherProfile:
        profile = self.find(name)
        if profile is None:
            raise SpecError(f"there is no teacher profile '{str(name)[:60]}'; the configured ones are "
                            f"{', '.join(self.names())} (operators declare them in {PROFILES_FILE}).")
        return profile


def profiles_path() -> Path:
    """DISTILLERY_TEACHERS when set, else DISTILLERY_HOME/teachers.yaml (which may not exist)."""
    override = os.environ.get("DISTILLERY_TEACHERS", "").strip()
    return Path(override).expanduser() if override else distillery_home() / PROFILES_FILE


def _params_b(name: str, raw: Any, model: str, where: str) -> float | None:
    if raw is not None:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise SpecError(f"teacher profile '{name}' in {where}: params_b must be a number of billions "
                            "(e.g. 8); fix the file.") from None
        return value if value > 0 else None
    return LOCAL_PARAMS_B if model == LOCAL_SECTION["model"] else None  # skills/ fills in catalog sizes


def _profile(name: Any, raw: Any, where: str) -> TeacherProfile:
    from .spec import TeacherSpec  # spec imports this module lazily too

    if not isinstance(name, str) or not name.strip() or not all(c.isalnum() or c in "-_." for c in name):
        raise SpecError(f"teacher profile name {str(name)[:40]!r} in {where} must be letters, digits, '-', '_' or '.'; "
                        "rename it.")
    if not isinstance(raw, dict):
        raise SpecError(f"teacher profile '{name}' in {where} must be a mapping of teacher keys (provider, model, "
                        "base_url, api_key_env, ...); fix the file.")
    section = {k: v for k, v in raw.items() if k not in PROFILE_EXTRA_KEYS}
    try:
        TeacherSpec.model_validate(section)
    except Exception as err:  # pydantic ValidationError: name the field, never echo values (they may be URLs)
        first = err.errors()[0] if hasattr(err, "errors") else {}
        loc = ".".join(str(p) for p in first.get("loc", ())) or "?"
        kind = "is not a teacher key" if first.get("type") == "extra_forbidden" else "has an invalid value"
        raise SpecError(f"teacher profile '{name}' in {where}: teacher.{loc} {kind}; fix the file "
                        "(`distillery spec` lists the teacher keys).") from None
    model = str(section.get("model") or LOCAL_SECTION["model"])
    return TeacherProfile(name, section, _params_b(name, raw.get("params_b"), model, where),
                          str(raw.get("description") or ""))


def load_profiles(path: Path | str | None = None) -> Profiles:
    """The built-in `local` teacher plus the operator's profiles; SpecError (one sentence) for a broken file."""
    p = Path(path) if path else profiles_path()
    profiles: dict[str, TeacherProfile] = {"local": LOCAL_PROFILE}
    if not p.is_file():
        if os.environ.get("DISTILLERY_TEACHERS", "").strip() and path is None:
            raise SpecError(f"DISTILLERY_TEACHERS points at '{p}', which is not a file; fix the path or unset it.")
        return Profiles(profiles, "local", None)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise SpecError(f"the teacher profiles file '{p}' is not valid UTF-8 YAML; fix its syntax.") from None
    except OSError as err:
        raise SpecError(f"cannot read the teacher profiles file '{p}' ({err.strerror or 'error'}); check its permissions.") from None
    if not isinstance(data, dict) or not isinstance(data.get("teachers", {}), dict):
        raise SpecError(f"the teacher profiles file '{p}' must be a mapping with `teachers:` (name -> teacher keys) "
                        "and optionally `default:`; see docs/slack.md.")
    unknown = sorted(str(k) for k in data if k not in ("teachers", "default", "students"))
    if unknown:
        raise SpecError(f"the teacher profiles file '{p}' has unknown top-level key '{unknown[0][:40]}'; use only "
                        "`teachers:`, `default:` and `students:`.")
    students = data.get("students") or []
    if not isinstance(students, list) or not all(isinstance(s, str) and s.strip() for s in students):
        raise SpecError(f"`students:` in '{p}' must be a list of hub ids or local model folders; fix the file.")
    for name, raw in (data.get("teachers") or {}).items():
        profile = _profile(name, raw, str(p))
        profiles[profile.name] = profile
    default = data.get("default") or "local"
    found = Profiles(profiles, "local", p).find(str(default))
    if found is None:
        raise SpecError(f"the default teacher '{str(default)[:40]}' in '{p}' is not one of its profiles "
                        f"({', '.join(profiles)}); fix `default:`.")
    return Profiles(profiles, found.name, p, tuple(s.strip() for s in students))


def apply_profile_overrides(data: dict[str, Any], overrides: list[str], apply: Any) -> dict[str, Any]:
    """A spec dict with its file's `teacher.profile` expanded, then the overrides in order; the override
    `teacher.profile=NAME` replaces the whole teacher section with the profile, later teacher.* overrides go on top.
    `apply(data, [item])` applies one ordinary override (spec.apply_overrides)."""
    data = apply_profile(data)
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "teacher.profile":
            data = {**data, "teacher": copy.deepcopy(load_profiles().get(value.strip()).section)}
        else:
            data = apply(data, [item])
    return data


def apply_profile(data: dict[str, Any]) -> dict[str, Any]:
    """Expand `teacher.profile: NAME` in a spec dict: the profile's keys, then the spec's other teacher keys on top."""
    teacher = data.get("teacher")
    if not isinstance(teacher, dict) or "profile" not in teacher:
        return data
    rest = {k: v for k, v in teacher.items() if k != "profile"}
    profile = load_profiles().get(teacher["profile"])
    return {**data, "teacher": {**copy.deepcopy(profile.section), **rest}}

