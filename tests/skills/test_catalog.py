"""The model catalog: phrase resolution, the memory rule, and what a machine can train."""

from skills.catalog import Hardware, best_method, can_train, find_model, local_model_params_b, resolve_models

CPU = Hardware(False, cpu_count=2, ram_gb=24.0)
H100 = Hardware(True, "H100", 80.0, 16, 128.0)
T4 = Hardware(True, "T4", 16.0, 8, 64.0)


def ids(phrase, role=None):
    return [e.id for e in resolve_models(phrase, role)]


def test_phrases_resolve_to_candidates():
    assert ids("an 8B model") == ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-8B"]
    assert ids("llama 8b") == ["meta-llama/Llama-3.1-8B-Instruct"]
    assert ids("something small")[:2] == ["gemma-3-270m", "Qwen/Qwen3-0.6B"]
    assert all(find_model(i).params_b <= 1.0 for i in ids("tiny"))
    assert ids("Qwen/Qwen3-4B") == ["Qwen/Qwen3-4B"] and ids("qwen3-4b") == ["Qwen/Qwen3-4B"]
    assert "gpt-4o" in ids("", role="teacher") and "gpt-4o" not in ids("", role="student")
    assert ids("no such thing") == []


def test_memory_follows_the_stated_rule():
    llama8 = find_model("meta-llama/Llama-3.1-8B-Instruct")
    assert llama8.memory_gb("full") == 128.0  # 16 bytes/param
    assert llama8.memory_gb("lora") == 19.2  # 2 bytes/param + 20%
    assert llama8.memory_gb("qlora") == 5.8  # 0.6 bytes/param + 1 GB


def test_what_each_machine_can_train():
    llama8, gemma = find_model("llama 8b"), find_model("gemma-3-270m")
    ok, why = can_train(llama8, "lora", CPU)
    assert not ok and "needs a GPU" in why and "19.2 GB" in why
    assert can_train(gemma, "lora", CPU)[0] and not can_train(gemma, "qlora", CPU)[0]
    assert can_train(llama8, "lora", H100)[0] and not can_train(llama8, "full", H100)[0]
    assert best_method(llama8, T4) == "qlora" and best_method(llama8, H100) == "lora"
    assert not can_train(find_model("gpt-4o"), "lora", H100)[0]


def test_local_checkpoint_size_is_estimated(tiny_model):
    params = local_model_params_b(tiny_model)
    assert params is not None and 0 < params < 0.001
