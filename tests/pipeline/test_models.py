"""pipeline.models: resolution, the embedded Gemma conversion, loading and caching, prompt rendering."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from pipeline import models
from pipeline.errors import ModelError
from pipeline.models import (
    EMBEDDED,
    clear_model_cache,
    had_chat_template,
    load_model,
    pick_device,
    render_chat,
    render_plain,
    resolve_model,
    stop_token_ids,
)

MESSAGES = [
    {"role": "system", "content": "Classify the text as negative or positive."},
    {"role": "user", "content": "Text: great"},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "Text: awful"},
]


def test_render_plain_is_few_shot_text_ending_at_answer():
    assert render_plain(MESSAGES) == (
        "Classify the text as negative or positive.\n\n"
        "Text: great\nAnswer: positive\n\n"
        "Text: awful\nAnswer:"
    )
    assert render_plain(MESSAGES[1:2]) == "Text: great\nAnswer:"


def test_render_chat_uses_the_gemma_turn_format(tiny_model):
    _, tok = load_model(str(tiny_model), "cpu")
    assert render_chat(tok, MESSAGES) == (
        "<bos><start_of_turn>user\nClassify the text as negative or positive.\n\nText: great<end_of_turn>\n"
        "<start_of_turn>model\npositive<end_of_turn>\n"
        "<start_of_turn>user\nText: awful<end_of_turn>\n<start_of_turn>model\n"
    )
    assert not render_chat(tok, MESSAGES, add_generation_prompt=False).endswith("<start_of_turn>model\n")


def test_stop_tokens_are_eos_and_end_of_turn(tiny_model):
    _, tok = load_model(str(tiny_model), "cpu")
    assert stop_token_ids(tok) == [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]


def test_models_are_cached_per_process(tiny_model):
    first = load_model(str(tiny_model), "cpu")
    assert load_model(str(tiny_model), "cpu") is first
    assert load_model(str(tiny_model), "cpu", for_training=True)[0] is not first[0]
    clear_model_cache()
    again = load_model(str(tiny_model), "cpu")
    assert again[0] is not first[0]
    assert not again[0].training and had_chat_template(again[1])


def test_a_tokenizer_without_template_or_pad_gets_them(tiny_model, tmp_path):
    folder = tmp_path / "bare"
    shutil.copytree(tiny_model, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    _, tok = load_model(str(folder), "cpu")
    assert not had_chat_template(tok)
    assert tok.chat_template == models.GEMMA_CHAT_TEMPLATE
    assert tok.pad_token is not None
    assert render_chat(tok, MESSAGES[1:2]).endswith("<start_of_turn>model\n")


def test_adapter_is_applied(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    model, _ = load_model(str(tiny_model), "cpu", adapter=str(tmp_path / "adapter"))
    assert type(model).__name__.startswith("Peft")
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_model(str(tiny_model), "cpu", adapter=str(tmp_path))


def test_unknown_models_raise_one_sentence():
    for name in ("no-such-org/no-such-model-xyz", "./missing/folder"):
        with pytest.raises(ModelError) as err:
            resolve_model(name)
        assert str(err.value) == (
            f"model '{name}' was not found locally and could not be downloaded; "
            "give a local folder, a hub id you can reach, or gemma-3-270m."
        )


def test_local_folder_resolves_to_itself(tiny_model):
    assert resolve_model(str(tiny_model)) == str(tiny_model)


def test_pick_device():
    import torch

    assert pick_device("cpu") == "cpu"
    assert pick_device() == ("cuda" if torch.cuda.is_available() else pick_device())
    assert pick_device() in ("cuda", "mps", "cpu")


def test_embedded_conversion_runs_once_when_processes_race(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILLERY_MODELS", str(tmp_path / "models"))
    calls = []

    def fake_convert(work: Path, out: Path) -> None:
        calls.append(out)
        threading.Event().wait(0.3)  # long enough for the other caller to reach the lock
        out.mkdir(parents=True)
        (out / models.MARKER).write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model(EMBEDDED))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [str(tmp_path / "models" / EMBEDDED)] * 2
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == [EMBEDDED]
    assert "converting the embedded gemma-3-270m" in capsys.readouterr().err


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_MODELS", str(tmp_path / "models"))

    def broken(work: Path, out: Path) -> None:
        out.mkdir(parents=True)
        raise OSError("disk full")

    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(ModelError, match="converting gemma-3-270m failed"):
        resolve_model(EMBEDDED)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.gemma
def test_embedded_gemma_converts_to_a_loadable_checkpoint(gemma_path):
    assert (gemma_path / "model.safetensors").is_file()
    assert json.loads((gemma_path / "generation_config.json").read_text())["eos_token_id"] == [1, 106]
    model, tok = load_model(EMBEDDED, "cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.dtype.is_floating_point
    assert not had_chat_template(tok)  # the template is ours: a base model, so prompts default to plain text
    assert render_chat(tok, MESSAGES[1:2]) == "<bos><start_of_turn>user\nText: great<end_of_turn>\n<start_of_turn>model\n"
    assert stop_token_ids(tok) == [1, 106]
