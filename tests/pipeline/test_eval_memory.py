"""Evaluation memory (issue 15): logits only where needed, batches within a token budget, models freed after a stage.

Peak memory is measured in this process as the peak of live torch CPU allocations (torch.profiler's allocation
events, summed in time order) while one evaluation stage runs, loading the model included.

The model is the tiny test model with its vocabulary widened to 32,000 rows (the tokenizer still uses the first
512), so logits dominate as they do for Gemma (262k vocabulary): one position's logits are 128 kB. The bound:
    weights      32,000 x 64 (tied embedding) + 2 small layers                    ~  8.5 MB (loaded during the stage)
    logits       last position / option positions only: <= 16 rows x 3 x 128 kB   ~  6 MB
    activations  eval.batch_tokens=2048 tokens x 64 hidden x ~20 live tensors     ~ 10 MB
so 48 MB leaves room for allocator slack and still fails at once if logits are computed at every prompt position
(16 rows x ~120 tokens x 128 kB ~ 250 MB) or if the batch ignores the token budget.
"""

from __future__ import annotations

import gc
import json
import shutil

import pytest
from testpaths import DATA

from pipeline.spec import load_spec

BOUND_BYTES = 48 * 1024 * 1024
WIDE_VOCAB = 32_000


@pytest.fixture(scope="module")
def wide_model(tiny_model, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("wide") / "model"
    shutil.copytree(tiny_model, path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(WIDE_VOCAB)
    model.save_pretrained(path)
    return path


def torch_peak_bytes(fn) -> tuple[int, object]:
    """(peak bytes of live torch CPU allocations made while fn runs, fn's result)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak, result


def _spec(task, data, model, *extra):
    return load_spec(None, [f"task={task}", "labels=null" if task != "classification" else "labels=[negative, positive]",
                            f"dataset.train={DATA / data}.jsonl", f"dataset.test={DATA / data}.jsonl", "dataset.test_size=16",
                            f"student.model={model}", "student.device=cpu", "eval.batch_size=16", "eval.batch_tokens=2048", *extra])


@pytest.mark.parametrize("task,data,extra", [
    ("nli", "conjnli", []),  # options scored: the head runs at option positions only
    ("math", "gsm8k", ["eval.max_new_tokens=8"]),  # generated: logits of the last position only
])
def test_evaluation_stage_peak_memory_stays_within_the_bound(task, data, extra, wide_model):
    from pipeline.evaluation import evaluate_model, test_examples

    spec = _spec(task, data, wide_model, *extra)
    examples = test_examples(spec)
    gc.collect()
    peak, result = torch_peak_bytes(lambda: evaluate_model(spec, examples, str(wide_model)))
    assert result.examples == 16
    assert peak < BOUND_BYTES, f"{task}: evaluation peaked at {peak / 2**20:.1f} MiB of torch allocations"


def test_a_small_token_budget_lowers_the_peak(wide_model):
    """The budget, not a fixed row count, sizes the batches: a smaller budget means a smaller peak."""
    from pipeline.evaluation import evaluate_model, test_examples

    peaks = {}
    for budget in (256, 4096):
        spec = _spec("math", "gsm8k", wide_model, "eval.max_new_tokens=8", f"eval.batch_tokens={budget}")
        examples = test_examples(spec)
        gc.collect()
        peaks[budget], _ = torch_peak_bytes(lambda: evaluate_model(spec, examples, str(wide_model)))
    assert peaks[256] < peaks[4096]


def test_models_are_freed_after_each_evaluation_stage(tiny_model, tmp_path):
    """After evaluate_run no model object is left alive (the next stage, or the next run, starts from nothing)."""
    from fake_llm_server import FakeLLMServer
    from gold_teacher import gold_responder
    from transformers import PreTrainedModel

    from pipeline.runner import run

    args = ["labels=[negative, positive]", f"dataset.train={DATA / 'sst2.jsonl'}", f"dataset.test={DATA / 'sst2_test.jsonl'}",
            "dataset.train_size=8", "dataset.test_size=4", "teacher.provider=openai", "teacher.model=stand-in", "teacher.few_shot=0",
            f"student.model={tiny_model}", "train.epochs=1", f"out={tmp_path / 'run'}"]
    with FakeLLMServer(responder=gold_responder(load_spec(None, args))) as server:
        report = run(load_spec(None, args + [f"teacher.base_url={server.openai_base_url}"]))
    assert report["scores"]["student_distilled"] is not None
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel)]
    assert alive == [], f"{len(alive)} models still alive after the run"
    assert json.loads((tmp_path / "run" / "evaluation.json").read_text())["results"]["student_base"]["method"] == "scored options"
