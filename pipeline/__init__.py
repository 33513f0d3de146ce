"""Distillery's engine: teacher labelling, student training, evaluation and reports (no Slack, no agents).

    from pipeline import load_spec, label, train, run
    spec = load_spec(None, ["dataset.train_size=64"])
    report = run(spec)
"""

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .spec import RunSpec, load_spec

__all__ = [*_errors_all, "RunSpec", "load_spec"]
