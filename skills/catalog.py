"""The model catalog: students and teachers Distillery knows, what they need to train, and what this machine can do.

    entries = resolve_models("an 8B model")     # [Llama-3.1-8B-Instruct, Qwen3-8B]
    entry = find_model("Qwen/Qwen3-0.6B")
    entry.memory_gb("lora")                     # rough training memory, see MEMORY_RULE
    can_train(entry, "lora", detect_hardware()) # (False, "needs a GPU with ~19 GB ...") on a CPU-only machine

Memory is computed from the parameter count P (not measured): see MEMORY_RULE. Prices are list prices per million
tokens at the time of writing, only for estimates; set teacher.price_per_mtok to your own.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = [
    "ModelEntry",
    "Hardware",
    "CATALOG",
    "MEMORY_RULE",
    "CPU_MAX_PARAMS_B",
    "find_model",
    "resolve_models",
    "detect_hardware",
    "can_train",
    "best_method",
    "local_model_params_b",
]

MEMORY_RULE = (
    "full fine-tuning ~16 bytes/parameter (bf16 weights and gradients, fp32 AdamW states and master weights); "
    "LoRA ~2 bytes/parameter (bf16 frozen weights) plus ~20% for activations and adapters; "
    "QLoRA ~0.6 bytes/parameter (4-bit weights and quantisation constants) plus ~1 GB of overhead"
)
CPU_MAX_PARAMS_B = 1.0  # on CPU only models up to about 1B parameters train in practical time


@dataclass(frozen=True)
class ModelEntry:
    id: str  # hub id, provider model name, or the embedded gemma-3-270m
    family: str
    params_b: float  # billions of parameters
    context: int  # context window in tokens
    licence: str  # a short note; read the model's own licence before use
    role: str  # student | teacher | both
    providers: tuple[str, ...] = ()  # e.g. "local", "openai:gpt-4o", "azure serverless: Meta-Llama-3.1-405B-Instruct"
    aliases: tuple[str, ...] = ()
    price_per_mtok: tuple[float, float] | None = None  # (input, output) USD list prices, API teachers only
    teacher_provider: str = "local"  # the Distillery teacher that serves it: local | openai | azure

    def memory_gb(self, method: str) -> float:
        """Rough training memory in GB for lora | qlora | full (MEMORY_RULE)."""
        p = self.params_b
        if method == "full":
            return round(16 * p, 1)
        if method == "qlora":
            return round(0.6 * p + 1.0, 1)
        return round(2 * p * 1.2, 1)

    @property
    def trainable(self) -> bool:
        return self.role in ("student", "both")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory_gb"] = {m: self.memory_gb(m) for m in ("lora", "qlora", "full")} if self.trainable else None
        return d


def _m(id, family, params_b, context, licence, role, providers=(), aliases=(), price=None, teacher_provider="local"):
    return ModelEntry(id, family, params_b, context, licence, role, tuple(providers), tuple(aliases), price, teacher_provider)


_LLAMA = "Llama community licence (acceptable-use policy; gated on the hub)"
_QWEN = "Apache-2.0"
_GEMMA = "Gemma terms of use"
CATALOG: list[ModelEntry] = [
    _m("gemma-3-270m", "gemma3", 0.27, 32768, _GEMMA + " (embedded: works offline)", "both", ["local"], ["gemma 270m", "gemma-270m", "270m"]),
    _m("google/gemma-3-1b-it", "gemma3", 1.0, 32768, _GEMMA, "both", ["local"], ["gemma 1b", "gemma-3-1b"]),
    _m("Qwen/Qwen3-0.6B", "qwen3", 0.6, 32768, _QWEN, "both", ["local"], ["qwen 0.6b", "qwen3-0.6b"]),
    _m("Qwen/Qwen3-1.7B", "qwen3", 1.7, 32768, _QWEN, "both", ["local"], ["qwen 1.7b", "qwen3-1.7b"]),
    _m("Qwen/Qwen3-4B", "qwen3", 4.0, 32768, _QWEN, "both", ["local"], ["qwen 4b", "qwen3-4b"]),
    _m("meta-llama/Llama-3.2-1B-Instruct", "llama3", 1.24, 131072, _LLAMA, "both", ["local"], ["llama 1b", "llama-3.2-1b"]),
    _m("meta-llama/Llama-3.2-3B-Instruct", "llama3", 3.2, 131072, _LLAMA, "both", ["local"], ["llama 3b", "llama-3.2-3b"]),
    _m("meta-llama/Llama-3.1-8B-Instruct", "llama3", 8.0, 131072, _LLAMA, "both", ["local", "azure serverless: Meta-Llama-3.1-8B-Instruct"], ["llama 8b", "llama-3.1-8b"]),
    _m("Qwen/Qwen3-8B", "qwen3", 8.2, 32768, _QWEN, "both", ["local"], ["qwen 8b", "qwen3-8b"]),
    _m("mistralai/Mistral-7B-Instruct-v0.3", "mistral", 7.25, 32768, "Apache-2.0", "both", ["local"], ["mistral 7b", "mistral"]),
    _m("meta-llama/Llama-3.1-70B-Instruct", "llama3", 70.6, 131072, _LLAMA, "both", ["local (multi-GPU)", "azure serverless: Meta-Llama-3.1-70B-Instruct"], ["llama 70b"], (2.68, 3.54), "azure"),
    _m("Meta-Llama-3.1-405B-Instruct", "llama3", 405.0, 131072, _LLAMA, "teacher", ["azure serverless: Meta-Llama-3.1-405B-Instruct"], ["llama 405b", "405b"], (5.33, 16.0), "azure"),
    _m("gpt-4o", "gpt", 0.0, 128000, "OpenAI terms (outputs may be used to train models that do not compete with OpenAI)", "teacher", ["openai:gpt-4o", "azure_openai"], ["4o"], (2.5, 10.0), "openai"),
    _m("gpt-4o-mini", "gpt", 0.0, 128000, "OpenAI terms", "teacher", ["openai:gpt-4o-mini", "azure_openai"], ["4o mini", "4o-mini"], (0.15, 0.6), "openai"),
    _m("gpt-4.1-mini", "gpt", 0.0, 1047576, "OpenAI terms", "teacher", ["openai:gpt-4.1-mini", "azure_openai"], ["4.1 mini"], (0.4, 1.6), "openai"),
]

_SMALL_WORDS = ("small", "tiny", "smallest", "little", "fast", "cheap", "cpu")
_BIG_TEACHER_WORDS = ("biggest", "largest", "strongest", "best teacher")


def find_model(name: str) -> ModelEntry | None:
    """The catalog entry for an exact id, its last path part, or an alias (case-insensitive)."""
    key = name.strip().lower()
    for e in CATALOG:
        if key in (e.id.lower(), e.id.split("/")[-1].lower()) or key in e.aliases:
            return e
    return None


def resolve_models(phrase: str, role: str | None = None) -> list[ModelEntry]:
    """Catalog entries matching a phrase: an id, "an 8B model", "llama 8b", "something small", "qwen"."""
    text = (phrase or "").strip().lower()
    pool = [e for e in CATALOG if role is None or e.role in (role, "both")]
    if not text or text in ("all", "any", "models"):
        return pool
    exact = find_model(text)
    if exact is not None and exact in pool:
        return [exact]
    if any(w in text for w in _SMALL_WORDS):
        return sorted([e for e in pool if e.trainable and e.params_b <= CPU_MAX_PARAMS_B], key=lambda e: e.params_b)
    families = [f for f in ("llama", "qwen", "gemma", "mistral", "gpt") if f in text]
    size = re.search(r"(\d+(?:\.\d+)?)\s*b\b", text)
    out = pool
    if families:
        out = [e for e in out if any(f in e.family or f in e.id.lower() for f in families)]
    if size:
        want = float(size.group(1))
        out = [e for e in out if e.params_b and abs(e.params_b - want) <= max(0.05 * want, 0.3)]
    if not families and not size:
        out = [e for e in pool if text in e.id.lower() or any(text in a for a in e.aliases)]
    return out


# hardware -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    gpu: bool
    gpu_name: str | None = None
    gpu_memory_gb: float = 0.0
    cpu_count: int = 1
    ram_gb: float = 0.0
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.extra.get("where"):  # a Ray cluster (deployment_hardware)
            return self.extra["where"]
        if self.gpu:
            return f"{self.gpu_name} with {self.gpu_memory_gb:.0f} GB"
        return f"CPU only ({self.cpu_count} cores, {self.ram_gb:.0f} GB RAM, no GPU)"


@lru_cache(maxsize=1)
def detect_hardware() -> Hardware:
    """What this machine offers for training (torch.cuda, GPU memory, cores, RAM); cached per process."""
    ram = 0.0
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        pass
    cpus = os.cpu_count() or 1
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return Hardware(True, props.name, props.total_memory / 1e9, cpus, ram)
    except ImportError:
        pass
    return Hardware(False, None, 0.0, cpus, ram)


ASSUMED_GPU_GB = 24.0  # a cluster whose GPU type Ray does not report: assume the smallest common data-centre GPU


def deployment_hardware() -> Hardware:
    """Where runs execute: the Ray cluster when DISTILLERY_RAY_ADDRESS is set (its GPUs, per GPU memory), else here.

    An unreachable cluster raises ClusterError (one sentence); plans never guess a cluster they cannot see.
    """
    from pipeline.ray_cluster import cluster_info, ray_address

    if not ray_address():
        return detect_hardware()
    info = cluster_info()
    memory = info.gpu_memory_gb or (ASSUMED_GPU_GB if info.gpus else 0.0)
    where = info.describe() + ("" if info.gpu_memory_gb or not info.gpus else f" (GPU memory not reported; {ASSUMED_GPU_GB:g} GB assumed)")
    return Hardware(bool(info.gpus), info.gpu_type or ("GPU" if info.gpus else None), memory, int(info.cpus),
                    info.resources.get("memory", 0.0) / 1e9, {"where": where, "gpus": int(info.gpus), "ray": info.address})


def gpus_to_use(entry: ModelEntry, hw: Hardware) -> int:
    """train.workers for a plan: every GPU of a Ray cluster (data parallel) for a GPU-sized student, else 1."""
    gpus = int(hw.extra.get("gpus", 0))
    return gpus if hw.gpu and gpus > 1 and entry.params_b > CPU_MAX_PARAMS_B else 1


def can_train(entry: ModelEntry, method: str, hw: Hardware) -> tuple[bool, str]:
    """Whether hw can fine-tune entry with method, and one sentence saying why or why not."""
    if not entry.trainable:
        return False, f"{entry.id} is served by an API and cannot be fine-tuned here; use it as the teacher."
    need = entry.memory_gb(method)
    if hw.gpu:
        if need <= hw.gpu_memory_gb * 0.9:
            return True, f"{method} needs ~{need} GB; this machine has {hw.describe()}."
        return False, f"{method} of {entry.id} needs ~{need} GB of GPU memory; this machine has {hw.describe()}."
    if method == "qlora":
        return False, f"QLoRA needs a CUDA GPU (bitsandbytes); this machine is {hw.describe()}."
    if entry.params_b > CPU_MAX_PARAMS_B:
        return False, (
            f"{entry.id} ({entry.params_b:g}B) needs a GPU: ~{entry.memory_gb('lora')} GB for LoRA or "
            f"~{entry.memory_gb('qlora')} GB for QLoRA; this machine is {hw.describe()}."
        )
    if hw.ram_gb and need > hw.ram_gb * 0.8:
        return False, f"{method} of {entry.id} needs ~{need} GB of RAM; this machine has {hw.ram_gb:.0f} GB."
    return True, f"{entry.id} ({entry.params_b:g}B) trains on CPU with {method} (~{need} GB), slowly but practically."


def best_method(entry: ModelEntry, hw: Hardware) -> str:
    """lora where it fits, else qlora on a GPU, else lora (and the plan says it cannot run here)."""
    if can_train(entry, "lora", hw)[0]:
        return "lora"
    if hw.gpu and can_train(entry, "qlora", hw)[0]:
        return "qlora"
    return "lora"


def local_model_params_b(path: str | Path) -> float | None:
    """Approximate parameters (billions) of a local checkpoint folder from its weight files and dtype."""
    p = Path(path)
    if not p.is_dir():
        return None
    files = list(p.glob("*.safetensors")) or list(p.glob("*.bin"))
    if not files:
        return None
    width = 4
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
        if str(cfg.get("torch_dtype") or cfg.get("dtype")) in ("bfloat16", "float16"):
            width = 2
    except (OSError, ValueError):
        pass
    return sum(f.stat().st_size for f in files) / width / 1e9
