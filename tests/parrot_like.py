"""Teach a copy of the tiny model one reply to one prompt, so evaluation tests see real, known outputs.

    path = teach_reply(tiny_model, tmp / "student", messages, "$10 in total")   # ~2 s of Adam steps
"""

from __future__ import annotations

import shutil
from pathlib import Path


def teach_reply(tiny_path, path, messages: list[dict[str, str]], reply: str, steps: int = 80) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    shutil.copytree(tiny_path, path, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text + reply + "<end_of_turn>", add_special_tokens=False)["input_ids"]])
    torch.manual_seed(0)
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval()
    model.save_pretrained(path)
    return path
