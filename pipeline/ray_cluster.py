"""The Ray cluster a deployment points at: its address, a Jobs client, and what it has (CPUs, GPUs, GPU types).

    address = ray_address()                 # DISTILLERY_RAY_ADDRESS (http://HEAD:8265, the dashboard), or None
    client = jobs_client(address)           # ray.job_submission.JobSubmissionClient, errors as one sentence
    info = cluster_info(address)            # ClusterInfo(cpus=8, gpus=2, gpu_type="A100", gpu_memory_gb=80.0, ...)

Token authentication (on by default since Ray 2.60) is Ray's own: the box sets RAY_AUTH_MODE=token and either
RAY_AUTH_TOKEN or the token file (~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH); Ray's client sends it. Resources
are read through the dashboard's state API (`ray.util.state.list_nodes`), the same numbers `ray.cluster_resources()`
gives a driver, so the box never joins the cluster as a driver. Nothing here imports ray at module import time.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import ClusterError

__all__ = ["ADDRESS_ENV", "ray_address", "jobs_client", "cluster_info", "ClusterInfo", "gpu_needed", "translate"]

ADDRESS_ENV = "DISTILLERY_RAY_ADDRESS"
# GPU memory by the accelerator type Ray reports (resource "accelerator_type:<T>"); Ray reports no memory itself
GPU_MEMORY_GB = {"H200": 141, "H100": 80, "A100-80G": 80, "A100": 40, "A100-40G": 40, "L40S": 48, "L40": 48, "A10G": 24,
                 "A10": 24, "L4": 24, "V100": 16, "T4": 16, "A6000": 48, "RTX": 24, "MI300X": 192, "MI250X": 128}
_CACHE: dict[str, tuple[float, "ClusterInfo"]] = {}
_CACHE_S = 30.0


def ray_address() -> str | None:
    """The cluster's Jobs address from DISTILLERY_RAY_ADDRESS (a bare host:port gets http://), or None."""
    raw = (os.environ.get(ADDRESS_ENV) or "").strip()
    if not raw:
        return None
    return raw if re.match(r"^[a-z][a-z0-9+.-]*://", raw) else f"http://{raw}"


def translate(err: Exception, address: str) -> ClusterError:
    """One sentence for what Ray's client raised (never the token, never a traceback)."""
    name = type(err).__name__
    text = str(err)
    if name == "AuthenticationError" or "authentication" in text.lower() or "401" in text:
        return ClusterError(f"the Ray cluster at {address} refused this box's token; set RAY_AUTH_MODE=token and "
                            "RAY_AUTH_TOKEN (or the token file ~/.ray/auth_token) to the cluster's token (docs/ray.md).")
    if isinstance(err, (ConnectionError, OSError, TimeoutError)) or "connect" in text.lower():
        return ClusterError(f"cannot reach the Ray cluster at {address}; check {ADDRESS_ENV} and that the head's "
                            "dashboard (port 8265) is running and reachable from this box.")
    first = text.strip().splitlines()[0][:200] if text.strip() else name
    return ClusterError(f"the Ray cluster at {address} answered with an error ({first}); check the head's logs.")


def jobs_client(address: str | None = None):
    """A JobSubmissionClient for the cluster; ClusterError (one sentence) when it cannot be reached or refuses us."""
    address = address or ray_address()
    if not address:
        raise ClusterError(f"no Ray cluster is configured; set {ADDRESS_ENV}=http://HEAD:8265 (docs/ray.md).")
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise ClusterError("the ray package is missing; pip install 'ray[default,train]==2.60.0'.") from None
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # the client checks the cluster when created
        raise translate(err, address) from None


@dataclass
class ClusterInfo:
    """What a cluster offers: totals over live nodes, and the largest GPU node (a run's GPUs must share a node
    only for one-process training; Ray Train spreads workers over nodes)."""

    address: str
    cpus: float = 0.0
    gpus: float = 0.0
    gpu_type: str | None = None  # e.g. "A100" (from Ray's accelerator_type resource), None when not reported
    gpu_memory_gb: float | None = None  # per GPU, from the type; None when the type is unknown
    nodes: int = 0
    max_gpus_per_node: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        gpu = (f"{self.gpus:g} GPU" + ("s" if self.gpus != 1 else "")
               + (f" ({self.gpu_type}" + (f", {self.gpu_memory_gb:g} GB each" if self.gpu_memory_gb else "") + ")"
                  if self.gpu_type else "")) if self.gpus else "no GPU"
        return f"the Ray cluster at {self.address} ({self.nodes} node{'s' if self.nodes != 1 else ''}, {self.cpus:g} CPUs, {gpu})"


def cluster_info(address: str | None = None, fresh: bool = False) -> ClusterInfo:
    """The cluster's resources (cached for 30 s); ClusterError when it cannot be reached."""
    address = address or ray_address()
    if not address:
        raise ClusterError(f"no Ray cluster is configured; set {ADDRESS_ENV}=http://HEAD:8265 (docs/ray.md).")
    cached = _CACHE.get(address)
    if cached and not fresh and time.monotonic() - cached[0] < _CACHE_S:
        return cached[1]
    try:
        from ray.util.state import list_nodes
    except ImportError:
        raise ClusterError("the ray package is missing; pip install 'ray[default,train]==2.60.0'.") from None
    try:
        nodes = list_nodes(address=address, detail=True, timeout=15, raise_on_missing_output=False)
    except Exception as err:
        raise translate(err, address) from None
    info = ClusterInfo(address)
    for node in nodes:
        if str(getattr(node, "state", "")).upper() != "ALIVE":
            continue
        res: dict[str, Any] = dict(getattr(node, "resources_total", None) or {})
        info.nodes += 1
        info.cpus += float(res.get("CPU", 0))
        gpus = float(res.get("GPU", 0))
        info.gpus += gpus
        info.max_gpus_per_node = max(info.max_gpus_per_node, gpus)
        for key, value in res.items():
            info.resources[key] = info.resources.get(key, 0.0) + float(value)
            if key.startswith("accelerator_type:") and gpus:
                info.gpu_type = key.split(":", 1)[1]
    if info.gpu_type:
        info.gpu_memory_gb = GPU_MEMORY_GB.get(info.gpu_type.upper()) or GPU_MEMORY_GB.get(info.gpu_type.split("-")[0].upper())
    _CACHE[address] = (time.monotonic(), info)
    return info


def gpu_needed(spec) -> bool:
    """True when the run cannot work without a GPU (QLoRA, or a device pinned to cuda)."""
    devices = [str(spec.student.device)]
    if spec.teacher.provider == "local":
        devices.append(str(spec.teacher.device))
    return spec.student.method == "qlora" or any(d.startswith("cuda") for d in devices)
