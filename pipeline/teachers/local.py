"""The local teacher: a transformers model on this machine that scores closed answer sets or generates.

    teacher = LocalTeacher(spec.teacher)               # provider: local, model: gemma-3-270m (or a folder / hub id)
    answers = await teacher.answer_batch(requests)     # one batch of forward passes in a worker thread

Requests with options are answered by log-likelihood scoring (the best option, with a probability per option);
the others by generation; with teacher.logprobs=K a generated answer also gets its per-token top-K (one extra
teacher-forced forward pass over prompt + answer, the LM head only at the answer's positions), in the shape API
teachers send (TeacherAnswer.logprobs), for free-text soft targets. Prompts are plain few-shot text for base models (no chat template of their own) and
the chat template otherwise; teacher.prompt_format forces one or the other.
"""

from __future__ import annotations

import asyncio
import math
import threading

from ..errors import TeacherError
from .base import Teacher, TeacherAnswer, TeacherRequest

__all__ = ["LocalTeacher"]


class LocalTeacher(Teacher):
    supports_options = True
    key_settings = ("prompt_format", "answer_cue")  # they change the rendered prompt, so they are in the cache key

    @classmethod
    def logprobs_refusal(cls, spec) -> str | None:
        return None  # closed sets: every option is scored anyway; free text: top-k by one teacher-forced pass

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.batch_size = spec.batch_size
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # one batch at a time: concurrent batches only fight over the same cores

    def _load(self):
        with self._lock:
            if self._model is None:
                from ..models import load_model

                self._model, self._tokenizer = load_model(self.spec.model, self.spec.device)
        return self._model, self._tokenizer

    def prompt_format(self, tokenizer) -> str:
        """"plain" or "chat": the spec's choice, or plain when the tokenizer had no chat template of its own."""
        from ..models import had_chat_template

        fmt = getattr(self.spec, "prompt_format", "auto")
        if fmt == "auto":
            return "chat" if had_chat_template(tokenizer) else "plain"
        return fmt

    def _render(self, tokenizer, messages: list[dict[str, str]], fmt: str) -> str:
        from ..models import render_chat, render_plain

        cue = self.spec.answer_cue if self.spec.answer_cue != "auto" else "Answer"  # labelling settles auto first (pipeline/pilot.py)
        return render_plain(messages, cue) if fmt == "plain" else render_chat(tokenizer, messages)

    async def answer(self, request: TeacherRequest) -> TeacherAnswer:
        return (await self.answer_batch([request]))[0]

    async def answer_batch(self, requests: list[TeacherRequest]) -> list[TeacherAnswer]:
        return await asyncio.to_thread(self._answer_sync, list(requests))

    def _answer_sync(self, requests: list[TeacherRequest]) -> list[TeacherAnswer]:
        model, tokenizer = self._load()
        with self._busy:
            try:
                return self._answer_loaded(model, tokenizer, requests)
            except RuntimeError as err:  # out of memory and the like
                raise TeacherError(f"the local teacher failed ({type(err).__name__}: {str(err)[:200]}); "
                                   "lower teacher.batch_size or teacher.params.max_tokens.") from err

    def _answer_loaded(self, model, tokenizer, requests: list[TeacherRequest]) -> list[TeacherAnswer]:
        from ..scoring import encode_prompt, generate, score_options

        fmt = self.prompt_format(tokenizer)
        prompts = [self._render(tokenizer, r.messages, fmt) for r in requests]
        answers: list[TeacherAnswer | None] = [None] * len(requests)

        # 1. closed answer sets: score every option, answer the likeliest
        scored = [i for i, r in enumerate(requests) if r.options]
        if scored:
            lead = " " if fmt == "plain" else ""
            all_scores = score_options(model, tokenizer, [prompts[i] for i in scored],
                                       [[lead + o for o in requests[i].options] for i in scored], batch_size=self.batch_size)
            for i, scores in zip(scored, all_scores):
                opts = requests[i].options
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                best = max(range(len(opts)), key=lambda k: scores[k])
                n_best = len(tokenizer(lead + opts[best], add_special_tokens=False)["input_ids"])
                answers[i] = TeacherAnswer(
                    text=opts[best], finish_reason="stop", prompt_tokens=len(encode_prompt(tokenizer, prompts[i])),
                    completion_tokens=n_best, option_probs={o: w / total for o, w in zip(opts, weights)},
                    extra={"logprobs": dict(zip(opts, scores))},
                )

        # 2. free-form requests: generate, grouped by identical parameters
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if not r.options:
                p = r.params or {}
                key = (int(p.get("max_tokens") or 256), float(p.get("temperature") or 0.0), float(p.get("top_p") or 1.0),
                       tuple(p.get("stop") or ()))
                groups.setdefault(key, []).append(i)
        for (max_tokens, temperature, top_p, stop), idx in groups.items():
            gens = generate(model, tokenizer, [prompts[i] for i in idx], max_new_tokens=max_tokens, temperature=temperature,
                            top_p=top_p, stop=list(stop) or None, batch_size=self.batch_size)
            k = getattr(self.spec, "logprobs", 0)
            for i, g in zip(idx, gens):
                answers[i] = TeacherAnswer(text=g.text, finish_reason=g.finish_reason, prompt_tokens=g.prompt_tokens,
                                           completion_tokens=g.completion_tokens,
                                           logprobs=answer_topk(model, tokenizer, prompts[i], g.text, k) if k else None)
        return answers  # type: ignore[return-value]


def answer_topk(model, tokenizer, prompt: str, text: str, k: int) -> list | None:
    """Per token of `text` after `prompt`: [token, logprob, [[alternative, logprob], ...] (top k)], as API teachers send them."""
    import torch

    from ..batching import decoder_parts
    from ..scoring import encode_prompt

    prompt_ids = encode_prompt(tokenizer, prompt)
    answer_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        return None
    body, head, cap = decoder_parts(model)
    ids = torch.tensor([prompt_ids + answer_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state[0, len(prompt_ids) - 1:-1]
        logits = head(hidden).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        logp = torch.log_softmax(logits, dim=-1)
        top = logp.topk(min(k, logp.shape[-1]), dim=-1)

    def piece(i: int) -> str:
        return tokenizer.decode([i], clean_up_tokenization_spaces=False)

    written = logp.gather(1, torch.tensor(answer_ids, device=logp.device)[:, None])[:, 0].tolist()
    return [[piece(t), round(lp, 5), [[piece(i), round(v, 5)] for v, i in zip(vals, idx)]]
            for t, lp, vals, idx in zip(answer_ids, written, top.values.tolist(), top.indices.tolist())]
