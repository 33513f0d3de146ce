"""Log-likelihood scoring of closed answer sets, with a shared-prefix KV cache; batched generation.

    scores = score_options(model, tok, prompts, [["negative", "positive"]] * len(prompts))   # summed log-probs
    gens = generate(model, tok, prompts, max_new_tokens=64)                                 # Generation(text, ...)

Scoring is built for few-shot prompts, where every row repeats the same instructions and demonstrations:
1. the longest common token prefix of the prompts is run once and its KV cache is expanded over each batch;
2. only each row's suffix (and the option tokens) is run, right-padded so no real token sees a pad;
3. the LM head is applied only at the positions whose next token is scored (Gemma's vocabulary is 262k);
4. when every option is one token, one forward per row scores all of them at once.
A model whose cache cannot be reused falls back to full forwards with the same numbers.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

from .models import stop_token_ids

__all__ = ["Generation", "score_options", "generate", "encode_prompt", "budget_batches", "DEFAULT_BATCH_TOKENS"]

DEFAULT_BATCH_TOKENS = 8192  # tokens (padded rows x width) in one forward batch: bounds activations and KV cache


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt; BOS is added unless the text (a rendered chat template) already starts with it."""
    bos = tokenizer.bos_token
    special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def budget_batches(order: list[int], widths: dict[int, int] | list[int], max_rows: int, max_tokens: int | None,
                   extra: int = 0) -> list[list[int]]:
    """Cut `order` (sorted by width) into batches of at most max_rows rows and rows x (widest + extra) <= max_tokens.

    A row wider than the budget on its own still gets a batch of one. With widths sorted, padding stays small and
    memory (activations, KV cache, logits kept) stays proportional to the budget, whatever the prompt lengths.
    """
    batches: list[list[int]] = []
    cur: list[int] = []
    widest = 0
    for i in order:
        w = max(widest, widths[i] + extra)
        if cur and (len(cur) >= max_rows or (max_tokens and w * (len(cur) + 1) > max_tokens)):
            batches.append(cur)
            cur, w = [], widths[i] + extra
        cur.append(i)
        widest = w
    if cur:
        batches.append(cur)
    return batches


# pieces of the model ---------------------------------------------------------------------------------------

_HEAD_OK: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PREFIX_MEMO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (prefix ids, cache)


def _parts(model):
    """(decoder, head function) when logits can be computed at chosen positions only, else None."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(lm, "base_model", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if decoder is None or decoder is lm or head is None:
        return None
    cap = getattr(lm.config, "final_logit_softcapping", None)

    def apply_head(hidden):
        logits = head(hidden)
        if cap:
            import torch

            logits = torch.tanh(logits / cap) * cap
        return logits

    if model not in _HEAD_OK:  # one-off check that decoder + head equals the model's own logits
        import torch

        ids = torch.tensor([[min(5 + i, lm.config.vocab_size - 1) for i in range(4)]], device=lm.device)
        with torch.no_grad():
            full = model(input_ids=ids).logits.float()
            mine = apply_head(decoder(input_ids=ids).last_hidden_state).float()
        _HEAD_OK[model] = bool(torch.allclose(full, mine, rtol=1e-4, atol=1e-4))
    return (decoder, apply_head) if _HEAD_OK[model] else None


def _hidden(model, parts, input_ids, cache=None, position_ids=None):
    """Last hidden states (decoder + head available) or logits (fallback) for a right-padded batch."""
    module = parts[0] if parts is not None else model
    kwargs = {"input_ids": input_ids, "use_cache": cache is not None}
    if cache is not None:
        kwargs[_cache_kw(module)] = cache
        kwargs["position_ids"] = position_ids
    return module(**kwargs).last_hidden_state if parts is not None else module(**kwargs).logits


def _cache_kw(module) -> str:
    """transformers 5.x renamed past_key_values to cache; older models keep the old name."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _logprobs_at(parts, states, rows, cols, targets):
    """log p(target) at (row, col) of a batch of hidden states (or logits in the fallback)."""
    import torch

    picked = states[rows, cols]
    logits = parts[1](picked) if parts is not None else picked
    return torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None])[:, 0]


# the shared prefix -----------------------------------------------------------------------------------------


def _common_prefix_len(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def _prefix_cache(model, parts, prefix: list[int]):
    """The KV cache of the prefix (memoised per model for the last prefix), or None if unusable."""
    import torch

    memo = _PREFIX_MEMO.get(model)
    if memo is not None and memo[0] == prefix:
        return memo[1]
    try:
        from transformers import DynamicCache

        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        cache = DynamicCache(config=lm.config)
        ids = torch.tensor([prefix], device=lm.device)
        with torch.no_grad():
            if parts is not None:
                out = parts[0](input_ids=ids, use_cache=True, **{_cache_kw(parts[0]): cache})
            else:
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{_cache_kw(model): cache})
        cache = getattr(out, "cache", None) or cache
        if not isinstance(cache, DynamicCache) or cache.get_seq_length() != len(prefix):
            return None
    except Exception:  # noqa: BLE001 - a model whose cache can't be reused falls back to full forwards
        return None
    _PREFIX_MEMO[model] = (list(prefix), cache)
    return cache


def _expand(cache, batch: int):
    """A cache for `batch` rows that views the prefix's tensors (the model's update concatenates, never writes)."""
    try:
        expanded = copy.copy(cache)
        expanded.layers = []
        for layer in cache.layers:
            view = copy.copy(layer)
            view.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
            view.values = layer.values.expand(batch, *layer.values.shape[1:])
            expanded.layers.append(view)
        return expanded
    except (AttributeError, TypeError):  # another cache layout: copy, then repeat
        expanded = copy.deepcopy(cache)
        expanded.batch_repeat_interleave(batch)
        return expanded


# scoring ---------------------------------------------------------------------------------------------------


def _option_ids(tokenizer, prompt: str, prompt_ids: list[int], option: str) -> list[int]:
    """The option's tokens as a continuation of the prompt (split from the joint tokenisation when it agrees)."""
    whole = encode_prompt(tokenizer, prompt + option)
    if whole[: len(prompt_ids)] == prompt_ids and len(whole) > len(prompt_ids):
        return whole[len(prompt_ids):]
    return tokenizer(option, add_special_tokens=False)["input_ids"]


def score_options(model, tokenizer, prompts: list[str], options: list[list[str]], batch_size: int = 16,
                  shared_prefix: str | None = None, prefix_cache: bool = True, max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS) -> list[list[float]]:
    """Summed log-probability of each option's tokens as a continuation of its prompt.

    shared_prefix: text every prompt starts with (default: their longest common token prefix is found).
    prefix_cache: False runs every row in full (same numbers; for comparisons).
    batch_size, max_batch_tokens: at most this many sequences, and padded tokens (with the shared prefix), per forward.
    """
    import torch

    if not prompts:
        return []
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    opt_ids = [[_option_ids(tokenizer, p, ids, o) for o in opts] for p, ids, opts in zip(prompts, prompt_ids, options)]
    parts = _parts(model)

    # 1. the shared prefix: computed once, each row keeps at least its last token
    n_prefix = _common_prefix_len(prompt_ids) if prefix_cache else 0
    if n_prefix and shared_prefix is not None:
        n_prefix = min(n_prefix, len(encode_prompt(tokenizer, shared_prefix)))
    n_prefix = min(n_prefix, min(len(p) for p in prompt_ids) - 1)
    memo = _PREFIX_MEMO.get(model)
    if prefix_cache and memo is not None and 0 < len(memo[0]) <= n_prefix and prompt_ids[0][: len(memo[0])] == memo[0]:
        n_prefix = len(memo[0])  # the cached prefix of an earlier batch still covers these rows
    cache = _prefix_cache(model, parts, prompt_ids[0][:n_prefix]) if n_prefix > 0 else None
    if cache is None:
        n_prefix = 0

    # 2. sequences to run: one per row when all options are single tokens, else one per (row, option)
    single = all(len(o) == 1 for row in opt_ids for o in row)
    jobs = []  # (row, option index or None, tokens after the prefix, first scored position)
    for r, (ids, row_opts) in enumerate(zip(prompt_ids, opt_ids)):
        suffix = ids[n_prefix:]
        if single:
            jobs.append((r, None, suffix, len(suffix) - 1))
        else:
            jobs += [(r, k, suffix + o[:-1], len(suffix) - 1) for k, o in enumerate(row_opts)]
    order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][2]))
    scores = [[0.0] * len(o) for o in opt_ids]
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # 3. batched forwards over suffixes; the head only where the next token is scored
    for group in budget_batches(order, [len(j[2]) for j in jobs], batch_size, max_batch_tokens, extra=n_prefix):
        chunk = [jobs[j] for j in group]
        if not any(opt_ids[r][kk] for r, k, _, _ in chunk for kk in ([k] if k is not None else range(len(opt_ids[r])))):
            continue  # only empty options here: nothing to score
        width = max(len(seq) for _, _, seq, _ in chunk)
        ids = torch.tensor([seq + [pad] * (width - len(seq)) for _, _, seq, _ in chunk], device=lm.device)
        batch_cache, positions = None, None
        if cache is not None:
            batch_cache = _expand(cache, len(chunk))
            positions = (torch.arange(width, device=lm.device) + n_prefix)[None].expand(len(chunk), -1)
        with torch.no_grad():
            states = _hidden(model, parts, ids, batch_cache, positions)
            rows, cols, targets, owners = [], [], [], []
            for b, (r, k, seq, first) in enumerate(chunk):
                for kk in ([k] if k is not None else range(len(opt_ids[r]))):
                    toks = opt_ids[r][kk]
                    for t, tok in enumerate(toks):
                        rows.append(b)
                        cols.append(first + t)
                        targets.append(tok)
                        owners.append((r, kk))
            lp = _logprobs_at(parts, states, torch.tensor(rows, device=lm.device), torch.tensor(cols, device=lm.device),
                              torch.tensor(targets, device=lm.device))
        for (r, kk), value in zip(owners, lp.tolist()):
            scores[r][kk] += value
    return scores


# generation ------------------------------------------------------------------------------------------------


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             stop: list[str] | None = None, batch_size: int = 8, max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS) -> list[Generation]:
    """Batched generation with left padding; greedy at temperature 0; ends at EOS/<end_of_turn> or a stop string.

    Batches hold at most batch_size rows and rows x (prompt width + max_new_tokens) <= max_batch_tokens, so the KV
    cache and activations stay within a budget; logits are computed for the last position only (generate passes
    logits_to_keep=1 to models that take it).
    """
    import torch

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    eos = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config = copy.deepcopy(lm.generation_config)
    config.max_new_tokens = max_new_tokens
    config.eos_token_id = eos
    config.pad_token_id = pad
    config.do_sample = temperature > 0
    config.temperature = temperature if temperature > 0 else None
    config.top_p = top_p if temperature > 0 else None
    config.top_k = None
    config.max_length = None
    config.stop_strings = list(stop) if stop else None  # in the config: passing it next to a config is deprecated
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[Generation | None] = [None] * len(prompts)
    for idx in budget_batches(order, [len(e) for e in encoded], batch_size, max_batch_tokens, extra=max_new_tokens):
        width = max(len(encoded[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in idx], device=lm.device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=lm.device)
        with torch.no_grad():
            seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, tokenizer=tokenizer if stop else None)
        for b, i in enumerate(idx):
            new = seqs[b, width:].tolist()
            ended = next((t for t, tok in enumerate(new) if tok in eos), None)
            kept = new[:ended] if ended is not None else new
            text = tokenizer.decode(kept, skip_special_tokens=True)
            reason = "stop" if ended is not None else "length"
            cuts = [text.index(s) for s in stop or [] if s and s in text]
            if cuts:
                text, reason = text[: min(cuts)], "stop"
            used = (ended + 1) if ended is not None else len(kept)
            if ended is None and pad not in eos:  # a stop string ended it early: pads follow in the batch
                while used and kept[used - 1] == pad:
                    used -= 1
            out[i] = Generation(text=text, finish_reason=reason, prompt_tokens=len(encoded[i]), completion_tokens=used)
        del seqs, ids, mask
    return out  # type: ignore[return-value]
