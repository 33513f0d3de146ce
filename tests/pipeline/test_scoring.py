"""pipeline.scoring: option scoring (prefix cache == no cache == naive full forwards) and batched generation."""

from __future__ import annotations

import pytest

from pipeline import scoring
from pipeline.models import load_model, render_chat, render_plain
from pipeline.scoring import encode_prompt, generate, score_options

DEMOS = "Classify the text as negative or positive.\n\n" + "".join(
    f"Text: {t}\nAnswer: {a}\n\n" for t, a in [("good acting", "positive"), ("a dull film", "negative"), ("great", "positive")]
)
ROWS = ["the movie was good", "bad", "a dull boring film with bad acting and a great premise", "hello how are you"]


def naive(model, tok, prompt: str, option: str) -> float:
    """One full forward over prompt + option, summing the option's token log-probs (the reference)."""
    import torch

    ids, full = encode_prompt(tok, prompt), encode_prompt(tok, prompt + option)
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([full])).logits[0].float().log_softmax(-1)
    return sum(logp[i - 1, full[i]].item() for i in range(len(ids), len(full)))


def assert_close(a, b, rel=1e-4):
    for ra, rb in zip(a, b, strict=True):
        assert ra == pytest.approx(rb, rel=rel, abs=1e-5)


@pytest.mark.parametrize("options", [
    [" positive", " negative"],                                   # one token each here
    [" positive", " very negative indeed", " neutral"],           # several tokens, different lengths
])
def test_cache_nocache_and_naive_agree(tiny_model, options):
    model, tok = load_model(str(tiny_model), "cpu")
    prompts = [DEMOS + f"Text: {r}\nAnswer:" for r in ROWS]
    opts = [options] * len(prompts)
    cached = score_options(model, tok, prompts, opts, batch_size=3)
    plain = score_options(model, tok, prompts, opts, batch_size=3, prefix_cache=False)
    given = score_options(model, tok, prompts, opts, batch_size=2, shared_prefix=DEMOS)
    reference = [[naive(model, tok, p, o) for o in options] for p in prompts]
    for scores in (cached, plain, given):
        assert_close(scores, reference)
    assert all(s < 0 for row in cached for s in row)


def test_chat_prompts_and_per_row_options(tiny_model):
    model, tok = load_model(str(tiny_model), "cpu")
    system = {"role": "system", "content": "Answer with one of the options."}
    prompts = [render_chat(tok, [system, {"role": "user", "content": r}]) for r in ROWS[:3]]
    opts = [["A", "B"], ["yes", "no", "maybe so"], ["positive"]]
    reference = [[naive(model, tok, p, o) for o in row] for p, row in zip(prompts, opts)]
    assert_close(score_options(model, tok, prompts, opts), reference)
    assert_close(score_options(model, tok, prompts[:1], opts[:1]), reference[:1])  # a single row: prefix = all but one token


def test_prefix_memo_is_reused_across_batches(tiny_model):
    model, tok = load_model(str(tiny_model), "cpu")
    first = [DEMOS + f"Text: {r}\nAnswer:" for r in ROWS[:2]]
    second = [DEMOS + f"Text: {r}\nAnswer:" for r in ROWS[2:]]
    score_options(model, tok, first, [[" positive"]] * 2)
    memo = scoring._PREFIX_MEMO[model]
    again = score_options(model, tok, second, [[" positive", " negative"]] * 2)
    assert scoring._PREFIX_MEMO[model] is memo
    assert_close(again, [[naive(model, tok, p, o) for o in (" positive", " negative")] for p in second])


def test_fallback_without_separate_head_gives_the_same_numbers(tiny_model, monkeypatch):
    model, tok = load_model(str(tiny_model), "cpu")
    prompts = [DEMOS + f"Text: {r}\nAnswer:" for r in ROWS]
    opts = [[" positive", " very negative"]] * len(prompts)
    expected = score_options(model, tok, prompts, opts)
    monkeypatch.setattr(scoring, "_parts", lambda m: None)
    monkeypatch.setattr(scoring, "_PREFIX_MEMO", type(scoring._PREFIX_MEMO)())
    assert_close(score_options(model, tok, prompts, opts), expected)
    monkeypatch.setattr(scoring, "_prefix_cache", lambda *a: None)  # a model whose cache cannot be reused
    assert_close(score_options(model, tok, prompts, opts), expected)


@pytest.fixture(scope="module")
def parrot(tiny_model, tmp_path_factory):
    from parrot_model import build_parrot_model

    return build_parrot_model(tmp_path_factory.mktemp("parrot") / "model", tiny_model)


def test_generate_stops_at_end_of_turn_with_left_padding(parrot):
    model, tok = load_model(str(parrot), "cpu")
    prompts = [render_chat(tok, [{"role": "user", "content": q}]) for q in ("what is two plus two", "hi")]
    gens = generate(model, tok, prompts, max_new_tokens=20, batch_size=2)
    assert [g.text for g in gens] == ["four", "hello world"]
    assert [g.finish_reason for g in gens] == ["stop", "stop"]
    assert gens[1].completion_tokens == len(tok("hello world", add_special_tokens=False)["input_ids"]) + 1
    assert gens[0].prompt_tokens == len(encode_prompt(tok, prompts[0]))
    assert [g.text for g in generate(model, tok, prompts, batch_size=1)] == ["four", "hello world"]


def test_generate_length_and_stop_strings(parrot):
    model, tok = load_model(str(parrot), "cpu")
    prompt = render_chat(tok, [{"role": "user", "content": "hi"}])
    cut = generate(model, tok, [prompt], max_new_tokens=1)[0]
    assert cut.finish_reason == "length" and cut.completion_tokens == 1 and "hello world".startswith(cut.text)
    stopped = generate(model, tok, [prompt], max_new_tokens=20, stop=[" wor"])[0]
    assert (stopped.text, stopped.finish_reason) == ("hello", "stop")


def test_generate_samples_with_temperature(parrot):
    model, tok = load_model(str(parrot), "cpu")
    prompt = render_plain([{"role": "user", "content": "the movie"}])
    gens = generate(model, tok, [prompt] * 3, max_new_tokens=5, temperature=1.0, top_p=0.9)
    assert len(gens) == 3 and all(0 < g.completion_tokens <= 5 for g in gens)


@pytest.mark.gemma
def test_gemma_prefix_cache_is_exact(gemma_path):
    from pipeline.datasets import read_records, to_examples
    from pipeline.tasks import get_task, teacher_messages

    model, tok = load_model("gemma-3-270m", "cpu")
    labels = ["negative", "positive"]
    rows = to_examples(read_records("sst2/test.jsonl"), "classification", labels, None, "t")[:2]
    demos = to_examples(read_records("sst2/train.jsonl"), "classification", labels, None, "t")[:8]
    prompts = [render_plain(teacher_messages(get_task("classification"), ex, labels, demos)) for ex in rows]
    opts = [[" negative", " positive", " quite mixed"]] * 2
    reference = [[naive(model, tok, p, o) for o in row] for p, row in zip(prompts, opts)]
    assert_close(score_options(model, tok, prompts, opts), reference)
    assert_close(score_options(model, tok, prompts, opts, prefix_cache=False), reference)
