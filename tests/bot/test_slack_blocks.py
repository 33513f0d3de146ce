"""Block Kit rendering and the pure text helpers of the Slack bot."""

from bot import blocks
from bot.slack_flow import is_start_request, redact, rewrite_followup, strip_mentions

SUMMARY = {"dataset": "sst2", "task": "classification", "teacher": "gpt-4o-mini (openai)", "student": "Llama-3.1-8B-Instruct",
           "method": "qlora", "rows": 1200, "estimate": {"rows": 1200, "prompt_tokens": 900_000, "completion_tokens": 24_000,
                                                          "cost_usd": 0.15}, "hardware_needed": "~6 GB for qlora",
           "hardware_here": "CPU, 2 cores", "runnable": False, "why": "needs a GPU with ~6 GB",
           "alternatives": ["a smaller student such as gemma-3-270m"], "expected_minutes": 42.5, "notes": ["labels 1200 of 6920 rows"]}


def _texts(msg):
    out = [msg["text"]]
    for b in msg["blocks"]:
        out += [b.get("text", {}).get("text", "")] + [f["text"] for f in b.get("fields", [])]
        out += [e.get("text", "") if isinstance(e.get("text"), str) else e.get("text", {}).get("text", "") for e in b.get("elements", [])]
    return "\n".join(out)


def test_plan_card_shows_the_plan_and_carries_the_plan_id_on_both_buttons():
    card = blocks.plan_card("plan-abc123", SUMMARY)
    text = _texts(card)
    for expected in ("sst2", "classification", "gpt-4o-mini", "Llama-3.1-8B-Instruct", "qlora", "1.2k", "924.0k", "$0.15",
                     "~6 GB for qlora", "CPU, 2 cores", "Not runnable here", "~42.5 min", "labels 1200 of 6920 rows",
                     "gemma-3-270m"):
        assert expected in text, expected
    actions = [b for b in card["blocks"] if b["type"] == "actions"][0]["elements"]
    assert [(a["action_id"], a["value"]) for a in actions] == [("distill_start", "plan-abc123"), ("distill_cancel", "plan-abc123")]
    assert "style" not in actions[0]  # not runnable here: Start is not highlighted
    for block in card["blocks"]:
        assert len(block.get("fields", [])) <= 10


def test_decided_plan_has_no_buttons_and_says_what_happened():
    msg = blocks.plan_decided("plan-abc123", SUMMARY, "Started by <@U1> as run `ab12`.")
    assert all(b["type"] != "actions" for b in msg["blocks"])
    assert "Started by <@U1> as run `ab12`." in msg["text"]


def test_status_message_shows_stage_progress_and_eta():
    run = {"id": "ab12cd34", "status": "training", "stage": "training",
           "progress": {"done": 10, "total": 40, "rate": 2.0, "eta_s": 15, "unit": "steps"}}
    msg = blocks.status_message(run)
    assert msg["text"] == "Run `ab12cd34`: training 10/40 steps, 2.0 steps/s, ETA 15 s."
    text = _texts(msg)
    assert "25 %" in text and "✅ labelling" in text and "⏳ training" in text and "▫️ evaluating" in text
    assert blocks.status_message({"id": "x", "status": "queued"})["text"].startswith("Run `x` is queued")
    assert "✅ evaluating" in _texts(blocks.status_message({"id": "x", "status": "done"}))


def test_report_message_has_the_three_scores_gap_labelling_training_and_adapter():
    report = {"task": "classification", "metric": "accuracy",
              "scores": {"teacher": 0.9, "student_base": 0.5, "student_distilled": 0.8}, "gap_closed": 0.75,
              "labelling": {"requested": 64, "accepted": 60, "rejected": 4, "prompt_tokens": 12000, "completion_tokens": 300, "cost_usd": 0.0},
              "training": {"examples": 60, "steps": 8, "seconds": 75.0, "tokens_per_second": 110.0, "final_loss": 0.4321},
              "evaluation": {"examples": 32}, "paths": {"adapter": "/runs/ab12/student"},
              "teacher": {"provider": "local", "model": "gemma-3-270m"}}
    msg = blocks.report_message("ab12", report)
    text = _texts(msg)
    table = msg["blocks"][1]["text"]["text"]
    assert table.startswith("```") and "teacher" in table and "90.0" in table and "50.0" in table and "80.0" in table
    for expected in ("75 %", "60 of 64 rows accepted, 4 rejected", "12.0k prompt", "free (local)", "8 steps in 1 min 15 s",
                     "final loss 0.4321", "/runs/ab12/student", "32 test rows"):
        assert expected in text, expected
    assert "gap closed 75 %" in msg["text"]


def test_failure_and_cancel_texts_are_one_sentence_with_the_run_id():
    assert blocks.failure_text("ab12", "the teacher refused every row.", "/runs/ab12") == \
        "Run `ab12` failed: the teacher refused every row. What it produced is kept in `/runs/ab12`."
    assert blocks.cancelled_text("ab12", "/r") == "Run `ab12` was cancelled; what it produced is kept in `/r`."


def test_formatters():
    assert blocks.format_duration(5) == "5 s" and blocks.format_duration(125) == "2 min 05 s"
    assert blocks.format_duration(7300) == "2 h 01 min" and blocks.format_duration(None) == "unknown"
    assert blocks.format_count(999) == "999" and blocks.format_count(3_400_000) == "3.4M"


def test_followups_in_a_run_thread_become_commands_for_that_run():
    assert rewrite_followup("how is it going?", "ab12") == "status ab12"
    assert rewrite_followup("cancel it please", "ab12") == "cancel ab12"
    assert rewrite_followup("Please stop it.", "ab12") == "cancel ab12"
    assert rewrite_followup("please don't cancel it", "ab12") == "please don't cancel it"  # a sentence, not the command
    assert rewrite_followup("show the report", "ab12") == "report ab12"
    assert rewrite_followup("what are the results", "ab12") == "report ab12"
    assert rewrite_followup("models", "ab12") == "models"
    assert rewrite_followup("status ab12", "ab12") == "status ab12"


def test_mentions_are_stripped_start_words_detected_and_secrets_redacted():
    assert strip_mentions("<@UBOT> distill sst2 into <@U2|bob> x") == "distill sst2 into   x"
    assert strip_mentions("<@UBOT> with teacher.base_url=<http://127.0.0.1:8/v1|127.0.0.1:8/v1> a &amp; b &lt;c&gt;") == \
        "with teacher.base_url=http://127.0.0.1:8/v1 a & b <c>"
    assert is_start_request("yes") and is_start_request("Go ahead!") and not is_start_request("yes, but with 50 rows")
    leaked = "token xoxb-1234-abcd and xapp-1-A1-xyz and sk-abcdefghijkl and mysecret"
    clean = redact(leaked, ("mysecret",))
    assert "xoxb" not in clean and "xapp" not in clean and "sk-abc" not in clean and "mysecret" not in clean
    assert clean.count("[redacted]") == 4


def test_a_zero_cost_is_free_only_for_the_local_teacher():
    """An API teacher without a configured price costs $0 on paper, not "free (local)": the card tells the truth."""
    base = {"dataset": "d", "task": "classification", "student": "s", "rows": 8, "estimate": {"cost_usd": 0.0}}
    api = _texts(blocks.plan_card("plan-1", {**base, "teacher": "fake", "teacher_provider": "openai"}))
    local = _texts(blocks.plan_card("plan-1", {**base, "teacher": "local", "teacher_provider": "local"}))
    assert "free (local)" not in api and "no price set for this teacher" in api
    assert "free (local)" in local


def test_report_message_shows_the_judged_rates_and_the_targets():
    judged = {"judge": {"provider": "openai", "model": "big-judge", "opponent": "reference", "requests": 16, "sent": 16,
                        "prompt_tokens": 16000, "completion_tokens": 64, "cost_usd": 0.0321},
              "parts": {"student_distilled": {"n": 8, "wins": 6, "ties": 1, "losses": 1, "win_rate": 0.75, "tie_rate": 0.125,
                                              "loss_rate": 0.125, "score": 0.8125, "ci95": {"win": [0.4093, 0.9285], "tie": [0.0224, 0.4709],
                                                                                            "loss": [0.0224, 0.4709]},
                                              "unparseable": 1, "failed": 0, "no_answer": 0}}}
    report = {"task": "chat", "metric": "rouge_l", "scores": {"teacher": 0.9, "student_base": 0.2, "student_distilled": 0.4},
              "evaluation": {"examples": 8}, "paths": {}, "judged": judged,
              "targets": {"rationale": "multitask", "rationale_text": "as a second task (rationale weight 0.5)", "labels": "hard"}}
    text = _texts(blocks.report_message("ab12", report))
    for expected in ("Judged by openai/big-judge against the reference answers", "student_distilled: win 75 % [41-93], tie 12 % [2-47], "
                     "loss 12 % [2-47]; score 81 % on 8 rows (1 unparseable left out)", "$0.0321", "rationales: as a second task"):
        assert expected in text, expected
