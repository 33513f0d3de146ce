"""A tiny model taught to answer a few chat prompts with fixed replies, so generation tests have real stops.

    path = build_parrot_model(tmp / "parrot", tiny_model_path)   # ~2 s: 60 Adam steps on four sequences
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPLIES = {"hi": "hello world", "what is two plus two": "four"}


def build_parrot_model(path: str | Path, tiny_path: str | Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    shutil.copytree(tiny_path, path, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    seqs = []
    for question, reply in REPLIES.items():
        text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
        seqs.append(tok(text + reply + "<end_of_turn>", add_special_tokens=False)["input_ids"])
    torch.manual_seed(0)
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        for ids in seqs:
            x = torch.tensor([ids])
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            optim.step()
            optim.zero_grad()
    model.eval()
    model.save_pretrained(path)
    return path
