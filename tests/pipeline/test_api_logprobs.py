"""Soft labels from API teachers (issue 14 §1): teacher.logprobs through the real openai client against the fake server.

Parsing of OpenAI-shaped logprobs (leading spaces, labels split into several tokens, options missing from the
top-k, chain of thought), soft labels in labels.jsonl, free-text top-k, the cache rule (answers bought without
logprobs are reused and counted), and the one sentence for teachers that refuse logprobs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from fake_llm_server import FakeLLMServer, Reply, last_user
from testpaths import DATA

from pipeline.errors import TeacherError
from pipeline.labelling import estimate, label
from pipeline.logprobs import option_distribution
from pipeline.sending import run_loop
from pipeline.spec import TeacherSpec, load_spec
from pipeline.targets import spec_notes
from pipeline.teachers import TeacherRequest, get_teacher

NLI = ["entailment", "neutral", "contradiction"]


def lp(p: float) -> float:
    return math.log(p)


def ask(spec: TeacherSpec):
    """One answer from the openai teacher `spec` describes, through the real client."""
    teacher = get_teacher("openai")(spec)

    async def one():
        try:
            return await teacher.answer(TeacherRequest([{"role": "user", "content": "Text: fine"}], {"max_tokens": 8}))
        finally:
            await teacher.aclose()

    return run_loop(one())


# --- the openai client and the fake server speak OpenAI's logprobs -----------------------------------------------

def test_the_teacher_asks_for_logprobs_and_reads_them_through_the_real_client():
    tokens = [("Final", lp(0.9), [("Final", lp(0.9))]), (" answer", lp(0.99), []), (":", lp(0.99), []),
              (" Positive", lp(0.6), [(" Positive", lp(0.6)), (" negative", lp(0.25)), (" positive", lp(0.1)), (" The", lp(0.03))])]
    with FakeLLMServer(responder=lambda req: Reply(text="Final answer: Positive", logprobs=tokens)) as server:
        ans = ask(TeacherSpec(provider="openai", model="gpt-4o-mini", base_url=server.openai_base_url, logprobs=5))
        body = server.requests[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert [p[0] for p in ans.logprobs] == ["Final", " answer", ":", " Positive"]
    assert ans.logprobs[3][2][1] == [" negative", pytest.approx(lp(0.25))]
    soft, outside = option_distribution(ans.logprobs, ["negative", "positive"], "positive")
    assert soft == pytest.approx({"negative": 0.25 / 0.95, "positive": 0.70 / 0.95}, abs=1e-6)  # " Positive" + " positive"
    assert outside == pytest.approx(0.05, abs=1e-6)  # " The" and everything outside the top-k


def test_without_teacher_logprobs_nothing_is_asked():
    with FakeLLMServer(responder=lambda req: "positive") as server:
        ans = ask(TeacherSpec(provider="openai", model="m", base_url=server.openai_base_url))
        assert "logprobs" not in server.requests[0].body and ans.logprobs is None


# --- reading the option distribution ---------------------------------------------------------------------------

def test_labels_split_into_several_tokens_match_on_their_first_token():
    # "entailment" written as "ent" + "ail" + "ment"; " neutral" whole; "contradiction" absent from the top-k
    positions = [[" ent", lp(0.5), [[" ent", lp(0.5)], [" neutral", lp(0.3)], [" neu", lp(0.1)], [" E", lp(0.05)]]],
                 ["ail", lp(0.99), []], ["ment", lp(0.99), []]]
    soft, outside = option_distribution(positions, NLI, "entailment")
    # " E" identifies entailment alone; " neu" only neutral
    assert soft == pytest.approx({"entailment": 0.55 / 0.95, "neutral": 0.4 / 0.95, "contradiction": 0.0}, abs=1e-6)
    assert outside == pytest.approx(0.05, abs=1e-6)


def test_a_first_token_shared_by_two_options_counts_for_neither():
    options = ["not entailment", "not sure", "yes"]
    positions = [["not", lp(0.7), [["not", lp(0.7)], ["yes", lp(0.2)]]], [" sure", lp(0.9), []]]
    soft, outside = option_distribution(positions, options, "not sure")
    assert soft == {"not entailment": 0.0, "not sure": 0.0, "yes": 1.0}
    assert outside == pytest.approx(0.8, abs=1e-6)


def test_the_answer_token_after_a_chain_of_thought_is_the_one_read():
    # "positive" also appears in the reasoning; only the token after the last "Final answer:" counts
    positions = [["It", lp(0.9), []], [" sounds", lp(0.9), []], [" positive", lp(0.4), [[" negative", lp(0.5)]]], [".", lp(0.9), []],
                 ["\n", lp(0.9), []], ["Final", lp(0.9), []], [" answer", lp(0.9), []], [":", lp(0.9), []],
                 [" **", lp(0.8), []], ["neg", lp(0.6), [["neg", lp(0.6)], ["Pos", lp(0.3)], ["maybe", lp(0.05)]]], ["ative", lp(0.99), []],
                 ["**", lp(0.9), []]]
    soft, outside = option_distribution(positions, ["negative", "positive"], "negative")
    assert soft == pytest.approx({"negative": 2 / 3, "positive": 1 / 3}, abs=1e-6)
    assert outside == pytest.approx(0.1, abs=1e-6)


def test_no_option_in_the_top_k_gives_no_soft_label():
    assert option_distribution([[" maybe", lp(0.9), [[" perhaps", lp(0.05)]]]], ["negative", "positive"], None) == (None, None)
    assert option_distribution(None, ["negative", "positive"], "positive") == (None, None)


# --- labelling writes soft labels and top-k --------------------------------------------------------------------

def _rows(tmp_path, n=8):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"a {'good' if i % 2 == 0 else 'bad'} film number {i}", "label": int(i % 2 == 0)}) + "\n"
                             for i in range(n)))
    return train


def _spec(server, train, out, *more):
    return load_spec(None, [f"dataset.train={train}", "dataset.train_size=null", "teacher.few_shot=0", "teacher.provider=openai",
                            "teacher.model=fake-model", f"teacher.base_url={server.openai_base_url}", "teacher.api_key_env=null",
                            f"out={out}", *more])


def sentiment(req):
    """' positive' / ' negative' with 0.7 on the right one, the other option at 0.2 and a stray token at 0.1."""
    right = "positive" if "good" in last_user(req) else "negative"
    other = {"positive": "negative", "negative": "positive"}[right]
    tokens = [(right.capitalize(), lp(0.7), [(right.capitalize(), lp(0.7)), (" " + other, lp(0.2)), ("I", lp(0.1))])]
    return Reply(text=right.capitalize(), logprobs=tokens)


def test_labelling_writes_soft_labels_from_logprobs_and_counts_them(tmp_path):
    with FakeLLMServer(responder=sentiment) as server:
        summary = label(_spec(server, _rows(tmp_path), tmp_path / "run", "teacher.logprobs=5"))
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    for r in rows:
        other = "negative" if r["label"] == "positive" else "positive"
        assert r["soft"] == pytest.approx({r["label"]: 0.7 / 0.9, other: 0.2 / 0.9}, abs=1e-5)
        assert r["soft_mass"] == pytest.approx(0.1, abs=1e-5)
    assert summary.soft_labels["rows"] == 8 and summary.soft_labels["sources"] == {"logprobs": 8}
    saved = json.loads((tmp_path / "run" / "labelling.json").read_text())
    assert saved["soft_labels"]["answers_without_logprobs"] == 0
    assert saved["soft_labels"]["mass_outside_options_mean"] == pytest.approx(0.1, abs=1e-5)


def test_answers_cached_without_logprobs_are_reused_not_bought_again(tmp_path):
    train, out = _rows(tmp_path), tmp_path / "run"
    with FakeLLMServer(responder=sentiment) as server:
        label(_spec(server, train, out))  # first without logprobs: 8 answers bought
        assert len(server.requests) == 8
        summary = label(_spec(server, train, out, "teacher.logprobs=5"))  # then with: nothing is sent again
        assert len(server.requests) == 8
    assert summary.requests_sent == 0 and summary.soft_labels["answers_without_logprobs"] == 8 and summary.soft_labels["rows"] == 0
    rows = [json.loads(ln) for ln in (out / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and not any("soft" in r for r in rows)


def test_self_consistency_with_logprobs_averages_the_samples(tmp_path):
    def sampled(req):
        right = "positive" if "good" in last_user(req) else "negative"
        other = {"positive": "negative", "negative": "positive"}[right]
        share = [0.9, 0.5, 0.7][req.attempt % 3]
        return Reply(text=right, logprobs=[(right, lp(share), [(right, lp(share)), (other, lp(1 - share))])])

    with FakeLLMServer(responder=sampled) as server:
        label(_spec(server, _rows(tmp_path, 4), tmp_path / "run", "teacher.logprobs=2", "teacher.self_consistency=3",
                    "teacher.params.temperature=0.7"))
    for r in (json.loads(ln) for ln in (tmp_path / "run" / "labels.jsonl").read_text().splitlines()):
        assert r["soft"][r["label"]] == pytest.approx(0.7, abs=1e-5)  # the mean of 0.9, 0.5, 0.7, not the vote share 1.0


def test_free_text_answers_keep_their_per_token_top_k(tmp_path):
    tokens = [("Two", lp(0.8), [("Two", lp(0.8)), ("The", lp(0.1))]), (" people", lp(0.6), [(" friends", lp(0.3))]),
              (" talk", lp(0.9), []), (".", lp(0.95), [])]
    with FakeLLMServer(responder=lambda req: Reply(text="Two people talk.", logprobs=tokens)) as server:
        label(_spec(server, DATA / "dialogsum.jsonl", tmp_path / "run", "task=summarization", "dataset.train_size=4", "teacher.logprobs=3"))
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "labels.jsonl").read_text().splitlines()]
    assert rows and all(r["messages"][-1]["content"] == "Two people talk." for r in rows)
    topk = rows[0]["topk"]
    assert [pos[0][0] for pos in topk] == ["Two", " people", " talk", "."]  # the written token first, spaces kept
    assert topk[0] == [["Two", pytest.approx(lp(0.8), abs=1e-5)], ["The", pytest.approx(lp(0.1), abs=1e-5)]]
    assert topk[1][1] == [" friends", pytest.approx(lp(0.3), abs=1e-5)]
    assert "soft" not in rows[0]


# --- teachers that refuse logprobs -----------------------------------------------------------------------------

def test_a_reasoning_model_gets_one_sentence_at_plan_time_and_labels_without_logprobs(tmp_path):
    with FakeLLMServer(responder=lambda req: "positive", refuse_logprobs=True) as server:
        spec = _spec(server, _rows(tmp_path), tmp_path / "run", "teacher.model=o3-mini", "teacher.logprobs=5", "task=classification",
                     "labels=[negative, positive]")
        notes = [n for n in spec_notes(spec) if "teacher.logprobs" in n]
        assert notes == ["teacher.logprobs=5 has no effect: model 'o3-mini' is a reasoning model and those return no log-probabilities, "
                         "so rows get hard labels (set teacher.logprobs=0, or choose a model that returns them)."]
        assert estimate(spec).notes == notes
        summary = label(spec)  # not a failed run: logprobs are simply not asked for
        assert summary.accepted == 8 and all("logprobs" not in r.body for r in server.requests)
    notes = spec_notes(load_spec(None, ["dataset.train=x.jsonl", "teacher.provider=azure-inference", "teacher.model=m", "teacher.logprobs=3"]))
    assert any(n.startswith("teacher.logprobs=3 has no effect: the azure-inference teacher does not return log-probabilities") for n in notes)
    assert not any("teacher.logprobs" in n for n in spec_notes(load_spec(None, ["dataset.train=x.jsonl", "teacher.provider=openai",
                                                                                 "teacher.model=gpt-4o", "teacher.logprobs=3"])))


def test_a_400_naming_logprobs_at_run_time_is_one_sentence(tmp_path):
    with FakeLLMServer(responder=lambda req: "positive", refuse_logprobs=True) as server:
        with pytest.raises(TeacherError, match=r"refuses log-probabilities for model 'fake-model' \(HTTP 400\); set teacher.logprobs=0"):
            label(_spec(server, _rows(tmp_path), tmp_path / "run", "teacher.logprobs=5"))
        assert len(server.requests) <= 8  # fatal: labelling stops instead of failing every row
        args = [f"dataset.train={_rows(tmp_path)}", "dataset.train_size=null", "teacher.few_shot=0", "teacher.provider=openai",
                "teacher.model=fake-model", f"teacher.base_url={server.openai_base_url}", "teacher.api_key_env=null",
                "teacher.logprobs=5", "task=classification", "labels=[negative, positive]", f"out={tmp_path / 'cli'}"]
        result = subprocess.run([sys.executable, "-m", "bot.cli", "label", *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "refuses log-probabilities for model 'fake-model' (HTTP 400); set teacher.logprobs=0" in result.stderr


def test_teacher_logprobs_is_validated():
    from pipeline.errors import SpecError

    with pytest.raises(SpecError, match="teacher.logprobs"):
        load_spec(None, ["teacher.logprobs=21"])
    with pytest.raises(SpecError, match="teacher.logprobs"):
        load_spec(None, ["teacher.logprobs=-1"])


# --- end to end -------------------------------------------------------------------------------------------------

def test_distillery_run_with_logprobs_and_mixed_targets(tiny_model, tmp_path):
    from pipeline.datasets import BUNDLED_DIR

    def teacher(req):  # the answer token's top-k, as a provider sends it: " positive" with a leading space, a stray token
        text = last_user(req).lower()
        right = "negative" if any(w in text for w in ("bad", "dull", "boring", "worst", "not")) else "positive"
        other = {"positive": "negative", "negative": "positive"}[right]
        return Reply(text=right, logprobs=[(right, lp(0.8), [(right, lp(0.8)), (" " + other, lp(0.15)), ("The", lp(0.05))])])

    out = tmp_path / "run"
    with FakeLLMServer(responder=teacher) as server:
        args = ["run", f"dataset.train={DATA / 'sst2.jsonl'}", f"dataset.test={BUNDLED_DIR / 'sst2' / 'test.jsonl'}", "dataset.train_size=16",
                "dataset.test_size=8", "teacher.provider=openai", "teacher.model=fake-model", f"teacher.base_url={server.openai_base_url}",
                "teacher.api_key_env=null", "teacher.logprobs=5", f"student.model={tiny_model}", "train.epochs=1", "train.batch_size=4",
                "train.targets=mixed", "train.kd_weight=0.6", "eval.batch_size=8", f"out={out}"]
        result = subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=600, env=dict(os.environ))
        assert result.returncode == 0, result.stderr[-3000:]
        assert all(r.body.get("top_logprobs") == 5 for r in server.requests)
    labelled = [json.loads(ln) for ln in (out / "labels.jsonl").read_text().splitlines()]
    assert len(labelled) == 16
    for r in labelled:
        assert r["soft"][r["label"]] == pytest.approx(0.8 / 0.95, abs=1e-5) and r["soft_mass"] == pytest.approx(0.05, abs=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["labels"] == "mixed" and report["targets"]["kd_weight"] == 0.6
    assert report["targets"]["soft_labels"]["sources"] == {"logprobs": 16}
    assert "mixed labels (train.targets=mixed, KL weight 0.6, temperature 1.0; soft labels: 16 from logprobs)" in (out / "report.md").read_text()
    from bot.blocks import report_message  # the Slack report says the same

    assert "labels: mixed (KL weight 0.6); soft labels: 16 from logprobs" in json.dumps(report_message("r1", report))


def test_plans_from_chat_and_mcp_may_ask_for_logprobs_and_say_when_the_teacher_refuses(isolated_home):
    from skills import operations as ops
    from teacher_profiles import write_profiles

    write_profiles(isolated_home, {"reasoner": {"provider": "openai", "model": "o4-mini", "base_url": "http://127.0.0.1:9/v1",
                                                "api_key_env": "OPENAI_API_KEY"},
                                   "mini": {"provider": "openai", "model": "gpt-4o-mini", "base_url": "http://127.0.0.1:9/v1",
                                            "api_key_env": "OPENAI_API_KEY"}})
    overrides = {"teacher.logprobs": 5, "train.targets": "mixed"}
    plan = ops.plan_distillation("sst2", "gemma-3-270m", "reasoner", rows=12, overrides=overrides, requested_by="U1")
    sentence = ("teacher.logprobs=5 has no effect: model 'o4-mini' is a reasoning model and those return no log-probabilities, "
                "so rows get hard labels (set teacher.logprobs=0, or choose a model that returns them).")
    assert sentence in plan.summary["notes"] and f"Note: {sentence}" in ops.plan_text(plan)
    assert any("hard labels only, so training would stop" in n for n in plan.summary["notes"])  # mixed cannot work either
    plan = ops.plan_distillation("sst2", "gemma-3-270m", "mini", rows=12, overrides=overrides, requested_by="U1")
    assert not any("teacher.logprobs" in n or "train.targets" in n for n in plan.summary["notes"])


def test_distillery_run_on_free_text_trains_on_the_teachers_top_k(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)  # the teacher shares the student's tokenizer (same family)
    summary = "person said hello how are you"
    tokens = [(tok.decode([i]), lp(0.7), [(tok.decode([i]), lp(0.7)), (" good", lp(0.2))]) for i in tok(summary)["input_ids"]]
    out = tmp_path / "run"
    with FakeLLMServer(responder=lambda req: Reply(text=summary, logprobs=tokens)) as server:
        args = ["run", f"dataset.train={DATA / 'dialogsum.jsonl'}", f"dataset.test={DATA / 'dialogsum_test.jsonl'}", "task=summarization",
                "dataset.train_size=8", "dataset.test_size=3", "teacher.provider=openai", "teacher.model=fake-model",
                f"teacher.base_url={server.openai_base_url}", "teacher.api_key_env=null", "teacher.logprobs=5", f"student.model={tiny_model}",
                "train.epochs=1", "train.batch_size=4", "train.targets=mixed", "train.kd_weight=0.5", "eval.max_new_tokens=8", f"out={out}"]
        result = subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    labelled = [json.loads(ln) for ln in (out / "labels.jsonl").read_text().splitlines()]
    assert len(labelled) == 8 and all(len(r["topk"]) == len(tokens) for r in labelled)
    training = json.loads((out / "training.json").read_text())
    assert training["kd_positions"] == {"kl": 8 * len(tokens), "ce_only": 0}  # every answer token mapped
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["labels"] == "mixed" and report["targets"]["kd_positions"]["kl"] == 8 * len(tokens)
    assert (f"mixed labels (train.targets=mixed, KL weight 0.5; top-k KL at {8 * len(tokens)} answer tokens, plain cross-entropy at 0"
            in (out / "report.md").read_text())


def test_batch_labelling_asks_for_logprobs_and_keeps_them(tmp_path):
    from fake_batch_api import FakeBatchAPI

    def answer(body):
        return "positive" if "good" in body["messages"][-1]["content"] else "negative"

    with FakeBatchAPI(answer=answer) as api:
        summary = label(_spec(api, _rows(tmp_path), tmp_path / "run", "teacher.batch=true", "teacher.batch_poll_s=0.05", "teacher.logprobs=3"))
    assert summary.accepted == 8 and summary.soft_labels["sources"] == {"logprobs": 8}
    for r in (json.loads(ln) for ln in (tmp_path / "run" / "labels.jsonl").read_text().splitlines()):
        # the fake gives the written word logprob -0.01 and made-up alternatives: all mass on the label, e^-0.01 inside
        assert r["soft"][r["label"]] == 1.0 and r["soft_mass"] == pytest.approx(1 - math.exp(-0.01), abs=1e-6)


def test_min_confidence_filters_api_answers_by_their_logprob_share(tmp_path):
    def unsure_on_odd_rows(req):  # rows 1, 3, 5, 7 (the bad films) are a coin toss for the teacher
        right = "positive" if "good" in last_user(req) else "negative"
        other = {"positive": "negative", "negative": "positive"}[right]
        share = 0.9 if right == "positive" else 0.55
        return Reply(text=right, logprobs=[(right, lp(share), [(right, lp(share)), (other, lp(1 - share))])])

    with FakeLLMServer(responder=unsure_on_odd_rows) as server:
        summary = label(_spec(server, _rows(tmp_path), tmp_path / "run", "teacher.logprobs=2", "teacher.min_confidence=0.7",
                              "teacher.min_success_ratio=0.3"))
    assert summary.accepted == 4 and summary.by_reason == {"filtered: min_confidence": 4}
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "labels.jsonl").read_text().splitlines()]
    assert {r["label"] for r in rows} == {"positive"} and all(r["confidence"] == pytest.approx(0.9, abs=1e-5) for r in rows)
