"""Distillery skills for agents: the model catalog, dataset access, plans, and the operations behind them.

    from skills import operations, PlanStore, resolve_models
    from skills.plugin import DistillationPlugin      # the Semantic Kernel plugin (imports semantic_kernel)
    python -m skills.mcp_server                        # the same skills over MCP (stdio; --sse --port N)

Arrows point one way: bot -> skills -> pipeline. Nothing here imports bot/.
"""

from . import operations
from .catalog import CATALOG, ModelEntry, detect_hardware, find_model, resolve_models
from .data_access import describe_dataset, list_datasets
from .plans import Plan, PlanError, PlanStore

__all__ = [
    "operations",
    "CATALOG",
    "ModelEntry",
    "detect_hardware",
    "find_model",
    "resolve_models",
    "describe_dataset",
    "list_datasets",
    "Plan",
    "PlanError",
    "PlanStore",
    "DistillationPlugin",
]


def __getattr__(name: str):
    if name == "DistillationPlugin":  # lazy: semantic_kernel is a heavy import
        from .plugin import DistillationPlugin

        return DistillationPlugin
    raise AttributeError(name)
