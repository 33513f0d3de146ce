"""Judged evaluation (issue 14 §3): pairwise verdicts in both orders from a real OpenAI-compatible judge server.

The judge is tests/fake_llm_server.py behind the real openai client, answering pipeline/judge.py's rubric prompts
with a scripted judge function; the students' answers are predictions_<part>.jsonl files written as evaluation
writes them, so each test states exactly what the judge saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testpaths import DATA
from fake_llm_server import FakeLLMServer, Reply, judge_call
from teacher_profiles import write_profiles

from pipeline.errors import Cancelled, SpecError
from pipeline.evaluation import test_examples as load_test_rows
from pipeline.judge import JUDGE_FILE, judge_run, judge_spec, outcome, parse_verdict, wilson
from pipeline.report import build_report, judged_lines, render_markdown
from pipeline.spec import load_spec


def _spec(tmp_path, url="http://127.0.0.1:9/v1", *extra, task="summarization", data="dialogsum", test=None):
    return load_spec(None, [f"task={task}", "labels=null", f"dataset.train={DATA / data}.jsonl",
                            f"dataset.test={test or DATA / (data + '_test.jsonl')}", "dataset.test_size=4", "teacher.provider=openai",
                            "teacher.model=judge-model", f"teacher.base_url={url}", f"out={tmp_path / 'run'}", *extra])


def _write(out: Path, part: str, answers: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"predictions_{part}.jsonl").write_text("".join(json.dumps({"row": r, "prediction": a, "gold": None, "text": a or ""}) + "\n"
                                                           for r, a in answers.items()))


def _students(spec, base: str, distilled: str) -> list:
    rows = load_test_rows(spec)
    _write(spec.out_dir, "student_base", {e.row: f"{base} summary of row {e.row}" for e in rows})
    _write(spec.out_dir, "student_distilled", {e.row: f"{distilled} summary of row {e.row}" for e in rows})
    return rows


def _by_words(call) -> str:
    """A consistent judge: "good" beats plain beats "bad", whatever the order."""
    def score(text):
        return ("good" in text.split()) - ("bad" in text.split())
    a, b = score(call.answer_a), score(call.answer_b)
    return "Verdict: A" if a > b else "Verdict: B" if b > a else "Verdict: tie"


def test_parse_verdict_accepts_clear_verdicts_and_never_guesses():
    assert parse_verdict("Verdict: A") == "A"
    assert parse_verdict("Both are fine, but B is shorter.\n**Verdict:** b") == "B"
    assert parse_verdict("Verdict: Answer B") == "B"
    assert parse_verdict("verdict: TIE.") == "tie"
    assert parse_verdict(" B ") == "B"
    for bad in ("I prefer A", "Verdict: A\nOn second thought, Verdict: B", "Verdict: Anything", "", None, "Verdict:"):
        assert parse_verdict(bad) is None, bad


def test_outcome_needs_both_orders_for_a_win_or_a_loss():
    assert outcome("A", "B") == "win"  # student as A won, student as B won
    assert outcome("B", "A") == "loss"
    assert outcome("A", "A") == "tie"  # position bias: the first answer always wins
    assert outcome("B", "B") == "tie"
    assert outcome("A", "tie") == "tie" and outcome("tie", "tie") == "tie"
    assert outcome(None, "B") is None and outcome("A", None) is None


def test_wilson_interval_matches_the_formula():
    assert wilson(8, 10) == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert wilson(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    assert wilson(0, 0) is None


def test_judge_defaults_and_profiles(tmp_path, isolated_home):
    assert judge_spec(_spec(tmp_path)).model == "judge-model"  # auto: the run's API teacher
    assert judge_spec(_spec(tmp_path)).params.temperature == 0.0
    assert judge_spec(_spec(tmp_path, "http://127.0.0.1:9/v1", "teacher.logprobs=5", "teacher.batch=true")).model_dump(
        include={"logprobs", "batch"}) == {"logprobs": 0, "batch": False}  # verdicts ask for neither
    assert judge_spec(_spec(tmp_path, "http://127.0.0.1:9/v1", "eval.judge=off")) is None
    local = load_spec(None, ["task=summarization", f"dataset.train={DATA / 'dialogsum.jsonl'}"])
    assert judge_spec(local) is None  # auto: never the local 270M teacher
    assert judge_spec(local.model_copy(update={"eval": local.eval.model_copy(update={"judge": "teacher"})})).provider == "local"
    assert judge_spec(_spec(tmp_path, "http://127.0.0.1:9/v1", task="nli", data="conjnli")) is None  # closed sets are not judged
    write_profiles(isolated_home, {"big": {"provider": "openai", "model": "big-judge", "base_url": "http://127.0.0.1:9/v1"}})
    assert judge_spec(_spec(tmp_path, "http://127.0.0.1:9/v1", "eval.judge=big")).model == "big-judge"
    with pytest.raises(SpecError, match="eval.judge=nosuch names no teacher profile; .* local, big"):
        judge_spec(_spec(tmp_path, "http://127.0.0.1:9/v1", "eval.judge=nosuch"))
    from pipeline.targets import spec_notes

    assert any("judged pairwise by openai/big-judge" in n and "4 verdict requests per test row" in n
               for n in spec_notes(_spec(tmp_path, "http://127.0.0.1:9/v1", "eval.judge=big")))
    assert any("not judged with the local teacher" in n for n in spec_notes(local))
    assert not any("nosuch" in n for n in spec_notes(_spec(tmp_path, "http://127.0.0.1:9/v1", "eval.judge=nosuch")))  # said once, by the run


def test_each_row_is_judged_in_both_orders_and_position_bias_becomes_ties(tmp_path):
    with FakeLLMServer(judge=lambda call: "Verdict: A") as server:  # always the first answer
        spec = _spec(tmp_path, server.openai_base_url)
        rows = _students(spec, "good", "bad")
        judged = judge_run(spec, rows)
        calls = [judge_call(r) for r in server.requests]
    assert all(c is not None for c in calls) and len(calls) == 2 * 2 * len(rows)
    for part in ("student_base", "student_distilled"):
        p = judged["parts"][part]
        assert (p["wins"], p["ties"], p["losses"], p["n"]) == (0, len(rows), 0, len(rows))
        assert p["opponent"] == "reference" and p["score"] == 0.5
    golds = {e.gold for e in rows}
    for e in rows:  # the student's answer as A against the reference as B, and the other way round
        mine = f"good summary of row {e.row}"
        pairs = {(c.answer_a, c.answer_b) for c in calls}
        assert (mine, e.gold) in pairs and (e.gold, mine) in pairs
    assert all(c.answer_a in golds or c.answer_b in golds for c in calls)
    assert all("Text:" in c.request for c in calls)  # the judge sees the row the student summarised


def test_consistent_judge_gives_wins_and_losses_with_intervals(tmp_path):
    with FakeLLMServer(judge=_by_words) as server:
        spec = _spec(tmp_path, server.openai_base_url)
        rows = _students(spec, "bad", "good")
        judged = judge_run(spec, rows)
    base, distilled = judged["parts"]["student_base"], judged["parts"]["student_distilled"]
    assert (base["losses"], base["loss_rate"], base["score"]) == (len(rows), 1.0, 0.0)
    assert (distilled["wins"], distilled["win_rate"], distilled["score"]) == (len(rows), 1.0, 1.0)
    assert distilled["ci95"]["win"] == wilson(len(rows), len(rows)) and distilled["interval"] == "Wilson score, 95 %"


def test_unparseable_verdicts_are_left_out_and_counted(tmp_path):
    first = {}

    def judge(call):
        if f"row {first['row']}" in call.answer_a + call.answer_b and call.answer_a.startswith("good"):
            return "Both answers have merit."  # no verdict in one of the two orders of one row
        return _by_words(call)

    with FakeLLMServer(judge=judge) as server:
        spec = _spec(tmp_path, server.openai_base_url)
        rows = _students(spec, "good", "good")
        first["row"] = rows[0].row
        judged = judge_run(spec, rows)
    for part in ("student_base", "student_distilled"):
        p = judged["parts"][part]
        assert p["unparseable"] == 1 and p["n"] == len(rows) - 1 and p["wins"] == len(rows) - 1
    assert "1 unparseable left out" in "\n".join(judged_lines({"judged": judged}, markdown=True))


def test_a_student_without_an_answer_loses_without_asking(tmp_path):
    with FakeLLMServer(judge=_by_words) as server:
        spec = _spec(tmp_path, server.openai_base_url)
        rows = _students(spec, "good", "good")
        _write(spec.out_dir, "student_base", {e.row: None for e in rows})
        judged = judge_run(spec, rows)
        asked = len(server.requests)
    assert asked == 2 * len(rows)  # only the distilled student's rows
    assert judged["parts"]["student_base"]["no_answer"] == len(rows) and judged["parts"]["student_base"]["loss_rate"] == 1.0


def test_cost_is_reported_and_verdicts_are_never_paid_twice(tmp_path):
    with FakeLLMServer(judge=lambda call: Reply(text=_by_words(call), prompt_tokens=1000, completion_tokens=4)) as server:
        spec = _spec(tmp_path, server.openai_base_url, "teacher.price_per_mtok.input=2.0", "teacher.price_per_mtok.output=8.0")
        rows = _students(spec, "bad", "good")
        first = judge_run(spec, rows)
        sent_first = len(server.requests)
        again = judge_run(spec, rows)  # a resumed / repeated evaluation
        assert len(server.requests) == sent_first  # every verdict came from judge_answers.jsonl
    n = 2 * 2 * len(rows)
    assert first["judge"]["sent"] == n and again["judge"]["sent"] == 0
    for j in (first["judge"], again["judge"]):
        assert (j["requests"], j["prompt_tokens"], j["completion_tokens"]) == (n, 1000 * n, 4 * n)
        assert j["cost_usd"] == pytest.approx(n * (1000 * 2.0 + 4 * 8.0) / 1e6)
    assert again["parts"] == first["parts"]
    assert len((spec.out_dir / JUDGE_FILE).read_text().splitlines()) == n
    report = build_report(spec, {}, {}, {"results": {}, "judged": first})
    md = render_markdown(report)
    assert f"${first['judge']['cost_usd']:.4f}" in md and "| student_distilled | 100 % [" in md


def test_without_references_the_students_are_compared_with_the_teacher(tmp_path):
    rows = [json.loads(x) for x in (DATA / "chat_test.jsonl").read_text().splitlines()]
    no_refs = tmp_path / "chat_noref.jsonl"
    no_refs.write_text("".join(json.dumps({**r, "messages": r["messages"][:-1]}) + "\n" for r in rows))
    with FakeLLMServer(judge=_by_words) as server:
        spec = _spec(tmp_path, server.openai_base_url, task="chat", data="chat", test=no_refs)
        examples = load_test_rows(spec)
        assert not any(e.gold for e in examples)
        _write(spec.out_dir, "teacher", {e.row: f"teacher reply {e.row}" for e in examples})
        _students(spec, "bad", "good")
        judged = judge_run(spec, examples)
        calls = [judge_call(r) for r in server.requests]
    assert judged["judge"]["opponent"] == "teacher"
    assert all("teacher reply" in c.answer_a + c.answer_b for c in calls)
    assert all("user:" in c.request for c in calls)  # the conversation as the student saw it
    assert judged["parts"]["student_distilled"]["win_rate"] == 1.0 and judged["parts"]["student_base"]["loss_rate"] == 1.0
    assert "against the teacher's answers" in " ".join(judged_lines({"judged": judged}))


def test_a_judge_that_refuses_the_key_leaves_the_scores_and_says_why(tmp_path):
    with FakeLLMServer(judge=lambda call: Reply(status=401)) as server:
        spec = _spec(tmp_path, server.openai_base_url)
        rows = _students(spec, "good", "bad")
        judged = judge_run(spec, rows)
    assert judged["parts"] == {} and "refused the request" in judged["judge"]["error"]
    assert judged_lines({"judged": judged})[0].startswith("Judge openai/judge-model: not run (")


@pytest.mark.parametrize("task,data", [("chat", "chat"), ("summarization", "dialogsum")])
def test_end_to_end_free_text_run_reports_rouge_and_judged_scores(task, data, tiny_model, tmp_path):
    from gold_teacher import gold_responder
    from parrot_like import teach_reply

    from pipeline.runner import run
    from pipeline.targets import student_prompt
    from pipeline.tasks import get_task

    probe = _spec(tmp_path, task=task, data=data)
    rows = load_test_rows(probe)
    # a tiny student that says something (a random one writes only newlines, which lose without a verdict)
    student = teach_reply(tiny_model, tmp_path / "student-model", student_prompt(probe, get_task(task), rows[0]), "the good answer")
    extra = ["dataset.train_size=8", "teacher.few_shot=0", f"student.model={student}", "student.device=cpu", "train.epochs=1",
             "train.batch_size=4", "train.learning_rate=1e-5", "eval.max_new_tokens=8", "teacher.price_per_mtok.input=1.0",
             "teacher.price_per_mtok.output=1.0"]
    references = {e.gold for e in rows}
    # the judge prefers the reference in either position (the stand-in teacher's replies are the references)
    judge = lambda call: "Verdict: B" if call.answer_b in references else "Verdict: A" if call.answer_a in references else "Verdict: tie"
    with FakeLLMServer(responder=gold_responder(probe), judge=judge) as server:
        report = run(_spec(tmp_path, server.openai_base_url, *extra, task=task, data=data))
        judge_requests = sum(judge_call(r) is not None for r in server.requests)
    assert report["metric"] == "rouge_l"
    assert all(v is not None for v in report["scores"].values()), report["scores"]  # all three scores, chat included
    assert report["scores"]["teacher"] == pytest.approx(1.0)  # the stand-in teacher answers with the reference
    judged = report["judged"]
    assert judged["judge"]["model"] == "judge-model" and judged["judge"]["opponent"] == "reference"
    out = tmp_path / "run"
    preds = {part: [json.loads(x) for x in (out / f"predictions_{part}.jsonl").read_text().splitlines()]
             for part in ("student_base", "student_distilled")}
    answered = {part: sum(bool(r["prediction"]) for r in rows_) for part, rows_ in preds.items()}
    assert answered["student_base"] > 0
    # one verdict per order for each distinct (row, answer): the same answer of both students is judged once
    distinct = {(r["row"], r["prediction"]) for rows_ in preds.values() for r in rows_ if r["prediction"]}
    assert judge_requests == judged["judge"]["sent"] == judged["judge"]["requests"] == 2 * len(distinct)
    assert judged["judge"]["cost_usd"] > 0
    for part in ("student_base", "student_distilled"):
        p = judged["parts"][part]
        assert (p["n"], p["wins"], p["losses"], p["no_answer"]) == (len(rows), 0, len(rows), len(rows) - answered[part])
    md = Path(report["paths"]["report_md"]).read_text()
    assert "Judged by openai/judge-model against the reference answers" in md and "| student_base | 0 % [" in md
    assert json.loads((out / "evaluation.json").read_text())["judged"] == judged


def test_judged_results_reach_report_json_md_slack_and_get_report(tmp_path):
    from bot.blocks import report_message
    from pipeline.registry import Registry
    from pipeline.report import write_report
    from skills import operations as ops

    registry = Registry()
    record = registry.submit(load_spec(None), {"user": "U1"}, own_folder=True)
    with FakeLLMServer(judge=lambda call: Reply(text=_by_words(call), prompt_tokens=500, completion_tokens=3)) as server:
        spec = _spec(tmp_path, server.openai_base_url, f"out={record.out}", "teacher.price_per_mtok.input=3.0",
                     "train.rationale=multitask", "teacher.chain_of_thought=true")
        rows = _students(spec, "bad", "good")
        judged = judge_run(spec, rows)
    results = {n: {"metric": "rouge_l", "score": s, "scores": {"rouge_l": s}, "examples": len(rows)}
               for n, s in (("teacher", 0.9), ("student_base", 0.1), ("student_distilled", 0.3))}
    report = build_report(spec, {}, {"targets": "hard"}, {"results": results, "judged": judged})
    write_report(spec, report, [])
    registry.finish(record.id, report)
    cost = f"${judged['judge']['cost_usd']:.4f}"
    saved = json.loads(Path(report["paths"]["report_json"]).read_text())
    assert saved["judged"]["parts"]["student_distilled"]["win_rate"] == 1.0 and saved["targets"]["rationale"] == "multitask"
    text = ops.get_report(record.id)  # what MCP's get_report and the skills plugin return
    for expected in ("Judged by openai/judge-model against the reference answers", "| student_base | 0 % [", cost, "second task"):
        assert expected in text, expected
    msg = json.dumps(report_message(record.id, registry.get(record.id).report))
    assert "student_distilled: win 100 %" in msg and cost in msg and "rationales: as a second task" in msg


def test_a_cancelled_judging_keeps_its_verdicts_and_resumes(tmp_path):
    with FakeLLMServer(judge=lambda call: Reply(text=_by_words(call), delay=0.1)) as server:  # slower than the stop check
        spec = _spec(tmp_path, server.openai_base_url, "teacher.concurrency=1")
        rows = _students(spec, "bad", "good")
        with pytest.raises(Cancelled, match="while judging"):
            judge_run(spec, rows, should_stop=lambda: len(server.requests) >= 3)
        kept = len((spec.out_dir / JUDGE_FILE).read_text().splitlines())
        assert 3 <= kept < 16
        judged = judge_run(spec, rows)
    assert judged["judge"]["sent"] == 16 - kept  # the verdicts already received are not bought again
    assert judged["parts"]["student_distilled"]["win_rate"] == 1.0


def test_an_unknown_judge_profile_is_one_sentence_before_any_teacher_token(tmp_path):
    import os
    import subprocess
    import sys

    with FakeLLMServer(responder=lambda req: "hello") as server:
        args = ["run", "task=chat", f"dataset.train={DATA / 'chat.jsonl'}", f"dataset.test={DATA / 'chat_test.jsonl'}",
                "teacher.provider=openai", "teacher.model=m", f"teacher.base_url={server.openai_base_url}", "teacher.api_key_env=null",
                "eval.judge=nosuch", f"out={tmp_path / 'run'}"]
        result = subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert server.requests == []  # refused before labelling
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [x for x in result.stderr.strip().splitlines() if x.strip() and not x.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: eval.judge=nosuch names no teacher profile"), result.stderr
