"""The Distillery error family: the pipeline raises these, front doors turn them into sentences.

    DistilleryError                 base; str(err) is one sentence saying what was wrong and how to fix it
    ├── SpecError                   the run spec (YAML or key=value) is invalid
    │   └── PolicyError             chat asked to set something only the operator sets (skills/policy.py)
    ├── DatasetError                a dataset is missing, empty, unreadable or its fields are unknown
    ├── ModelError                  a student or teacher model cannot be found or loaded
    ├── TeacherError                a teacher cannot be configured or reached
    │   └── UnknownTeacherError     no teacher is registered under that name
    ├── LabellingError              labelling finished below teacher.min_success_ratio
    ├── TrainingError               training cannot start or continue
    ├── EvaluationError             evaluation cannot run (no gold labels, no model...)
    ├── RunError                    a run record or run folder is missing, corrupt or in the wrong state
    ├── StoreError                  a local SQLite store (plans, conversations, Slack) is corrupt or unreadable
    └── Cancelled                   the run was cancelled; what it produced is kept

Messages never contain secrets: API keys are referred to by their environment variable name only.
"""

__all__ = [
    "DistilleryError",
    "SpecError",
    "PolicyError",
    "DatasetError",
    "ModelError",
    "TeacherError",
    "UnknownTeacherError",
    "LabellingError",
    "TrainingError",
    "EvaluationError",
    "RunError",
    "ClusterError",
    "StoreError",
    "Cancelled",
]


class DistilleryError(Exception):
    """Base of every error Distillery raises on purpose."""


class SpecError(DistilleryError):
    """The run spec is invalid."""


class PolicyError(SpecError):
    """A request from chat, the agent or MCP tries to set a key only the operator sets."""


class DatasetError(DistilleryError):
    """A dataset cannot be used."""


class ModelError(DistilleryError):
    """A model cannot be found or loaded."""


class TeacherError(DistilleryError):
    """A teacher cannot be configured or reached."""


class UnknownTeacherError(TeacherError):
    """No teacher registered under that name."""


class LabellingError(DistilleryError):
    """Labelling ended below the minimum success ratio."""


class TrainingError(DistilleryError):
    """Training cannot start or continue."""


class EvaluationError(DistilleryError):
    """Evaluation cannot run."""


class RunError(DistilleryError):
    """A run record or folder is missing, corrupt or in the wrong state."""


class ClusterError(DistilleryError):
    """The Ray cluster cannot be reached, refuses the token, or lacks what the run needs."""


class StoreError(DistilleryError):
    """A local SQLite store cannot be opened."""


class Cancelled(DistilleryError):
    """The run was cancelled."""
