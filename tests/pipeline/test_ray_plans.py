"""Plans know the cluster: with DISTILLERY_RAY_ADDRESS, list_models/plan_distillation read the Ray head's resources.

The shared test head (tests/conftest.py `ray_head`) declares 2 logical A100-80G GPUs, so "an 8B model" is runnable
there; without a cluster the honest refusal names the Ray option.
"""

import pytest

from pipeline.errors import ClusterError
from skills import operations as ops
from teacher_profiles import write_profiles

MINI = {"provider": "openai", "model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY"}  # an operator's teacher profile


def test_an_8b_plan_runs_on_the_cluster_with_its_gpus(cluster, isolated_home):
    write_profiles(isolated_home, {"mini": MINI})
    llama = ops.list_models("llama 8b")[0]
    assert llama["trainable_here"] and llama["method_here"] == "lora" and llama["gpus"] == 2
    assert llama["runs_on"].startswith(f"the Ray cluster at {cluster.address} (1 node, 4 CPUs, 2 GPUs (A100-80G, 80 GB each))")
    plan = ops.plan_distillation("sst2", "an 8B model", "mini", rows=8)
    assert plan.summary["runnable"] and plan.spec["student"]["method"] == "lora" and plan.spec["train"]["workers"] == 2
    text = ops.plan_text(plan)
    assert f"Runs on the Ray cluster at {cluster.address}" in text and "lora on 2 GPUs (Ray Train)" in text


def test_without_a_cluster_the_refusal_names_the_ray_option(monkeypatch, isolated_home):
    monkeypatch.delenv("DISTILLERY_RAY_ADDRESS", raising=False)
    write_profiles(isolated_home, {"mini": MINI})
    from skills.catalog import detect_hardware

    if detect_hardware().gpu:  # a GPU box may run it itself; the refusal is for CPU-only deployments
        return
    plan = ops.plan_distillation("sst2", "an 8B model", "mini", rows=8)
    assert not plan.summary["runnable"]
    assert any("Ray cluster" in a and "DISTILLERY_RAY_ADDRESS" in a for a in plan.summary["alternatives"])
    assert "DISTILLERY_RAY_ADDRESS" in ops.plan_text(plan)


def test_an_unreachable_cluster_is_one_sentence(monkeypatch):
    from ray_head import free_ports

    address = f"http://127.0.0.1:{free_ports(1)[0]}"
    monkeypatch.setenv("DISTILLERY_RAY_ADDRESS", address)
    with pytest.raises(ClusterError) as err:
        ops.list_models("llama 8b")
    assert str(err.value).startswith(f"cannot reach the Ray cluster at {address};") and "\n" not in str(err.value)
