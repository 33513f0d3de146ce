"""Datasets from Slack files, end to end with real parts: a signed mention with an attached CSV -> files.info and
the download from the fake Slack (bot token only to its host) -> the plan card naming the file and the held-out
test rows -> Start -> the app's embedded worker runs it (fake teacher on 127.0.0.1, tiny student) -> the report
and the chart in the thread. Then the refusals: another channel, 2 GB, an HTML login page, a spreadsheet, a file
on another host; "this dataset" two messages later; the ambiguous-columns question and its answer.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from pathlib import Path

from bot.slack_app import create_app
from fake_llm_server import FakeLLMServer
from fake_slack import FakeSlack, TEAM_ID
from slack_harness import BOT_TOKEN, AppServer, mention
from teacher_profiles import write_profiles

THREAD = "1690000002.000100"


def answer(req) -> str:
    text = json.dumps(req.messages).lower()
    return "negative" if any(w in text for w in ("dull", "bad", "boring", "worst")) else "positive"


def reviews_csv(n: int = 80, columns: tuple[str, str] = ("review", "sentiment")) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(columns)
    for i in range(n):
        good = i % 2 == 0
        w.writerow([f"film {i} was {'a lovely, moving story' if good else 'dull and boring'}", "positive" if good else "negative"])
    return out.getvalue().encode()


def posts(slack, contains: str = "") -> list[dict]:
    return [c for c in slack.calls("chat.postMessage") if contains in c.get("text", "") + json.dumps(c.get("blocks") or "")]


def transcript(slack) -> str:
    """What the fake Slack recorded, in order: the bot's messages, updates and uploads (for the closing note)."""
    lines = []
    for c in slack.calls():
        if c["_method"] in ("chat.postMessage", "chat.update"):
            lines.append(f"{c['_method']:16} {c.get('text', '')}")
            fields = [f["text"].replace("\n", ": ") for b in (c.get("blocks") or []) if c["_method"] == "chat.postMessage"
                      for f in b.get("fields") or []]
            if fields:
                lines.append(" " * 17 + " | ".join(fields))
        elif c["_method"] in ("files.info", "files.completeUploadExternal"):
            lines.append(f"{c['_method']:16} {c.get('file') or c.get('files')}")
    return "\n".join(lines)


def test_attached_csv_without_test_file_plan_start_embedded_worker_report(env, tiny_model, isolated_home):
    slack = env.slack
    data = reviews_csv(80)
    slack.add_file("F0REVIEWS", "movie_reviews.csv", data, channels=["C1"], content_type="text/csv")
    with FakeLLMServer(responder=answer) as teacher:
        write_profiles(isolated_home, {"fake": {"provider": "openai", "model": "fake-teacher", "concurrency": 1,
                                                "max_retries": 0, "base_url": teacher.openai_base_url}},
                       students=[str(tiny_model)])
        app = env.make_app(agent=None, embedded_worker=True, worker_poll_s=0.1)
        with AppServer(app) as server:
            request = (f"distill this dataset into {tiny_model} with fake rows=16 teacher.params.max_tokens=8 "
                       "train.max_steps=6 train.batch_size=2 eval.batch_size=8 eval.max_new_tokens=4")
            event = mention(request, "UADMIN", "C1", THREAD)
            event["files"] = [slack.event_file("F0REVIEWS")]
            assert server.post_event(event) == 200
            card = slack.wait_for(lambda: posts(slack, "distill_start"), what="the plan card")[0]
            plan_id = next(e["value"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]
                           if e["action_id"] == "distill_start")
            card_ts = slack.wait_for(lambda: env.store.plan_message(plan_id), what="the stored card")["message_ts"]
            assert server.post_action("distill_start", plan_id, "UADMIN", "C1", card_ts, THREAD) == 200
            run = slack.wait_for(lambda: env.registry.list_runs(), what="the run")[0]
            end = slack.wait_for(lambda: [c for c in posts(slack, f"Run `{run.id}` ")
                                          if "is done" in c["text"] or "failed" in c["text"]],
                                 timeout=400, what="the end of the run (only the app's embedded worker runs it)")[0]
            slack.wait_for(lambda: len(slack.calls("files.completeUploadExternal")) == 2, what="the chart and adapter uploads")
    record = env.registry.get(run.id)
    assert record.status == "done", record.error
    # the file: metadata from files.info, downloaded with the bot token from the fake Slack's host, stored by ids
    assert [c["file"] for c in slack.calls("files.info")][:1] == ["F0REVIEWS"]
    assert slack.downloads and all(d["authorization"] == f"Bearer {BOT_TOKEN}" for d in slack.downloads)
    stored = isolated_home / "uploads" / TEAM_ID / "F0REVIEWS" / "movie_reviews.csv"
    assert stored.read_bytes() == data and record.spec["dataset"]["train"] == str(stored)
    # the card names the file and the held-out test rows; the plan is about the upload
    card_text = json.dumps(card["blocks"])
    assert "movie_reviews" in card_text and "testing on 20 rows held out from movie_reviews.csv" in card_text
    assert record.spec["dataset"]["test"] is None
    # the report: teacher, base and distilled scores on the 20 held-out rows, and the chart
    assert end["thread_ts"] == THREAD and f"Run `{run.id}` is done" in end["text"]
    table = end["blocks"][1]["text"]["text"]
    for model in ("teacher", "student (base)", "student (distilled)"):
        assert model in table
    report = json.loads((Path(record.out) / "report.json").read_text())
    assert report["evaluation"]["examples"] == 20
    labelled = {json.loads(line)["row"] for line in (Path(record.out) / "labels.jsonl").read_text().splitlines()}
    tested = {json.loads(line)["row"] for line in (Path(record.out) / "predictions_student_base.jsonl").read_text().splitlines()}
    assert len(tested) == 20 and not labelled & tested  # held-out rows were never labelled for training
    with open(record.paths["report_png"], "rb") as f:
        assert f.read() in slack.uploads.values()
    # the adapter: its path and the two peft lines in the report, and the adapter itself as a .zip in the thread
    adapter = record.report["paths"]["adapter"]
    assert f'AutoPeftModelForCausalLM.from_pretrained("{adapter}")' in json.dumps(end["blocks"]).replace('\\"', '"')
    zips = [zipfile.ZipFile(io.BytesIO(b)) for b in slack.uploads.values() if b[:2] == b"PK"]
    assert len(zips) == 1 and "student/adapter_config.json" in zips[0].namelist()
    assert zips[0].read("student/adapter_model.safetensors") == (Path(adapter) / "adapter_model.safetensors").read_bytes()
    upload = [c for c in slack.calls("files.completeUploadExternal") if "adapter" in json.dumps(c.get("files"))][0]
    assert upload["thread_ts"] == THREAD
    path = os.environ.get("DISTILLERY_SLACK_TRANSCRIPT")
    if path:  # the lead's closing note quotes it
        Path(path).write_text(transcript(slack), encoding="utf-8")


def test_this_dataset_two_messages_later_and_not_from_another_channel(env):
    slack = env.slack
    slack.add_file("F0THREAD", "movie_reviews.csv", reviews_csv(80), channels=["C1"])
    app = env.make_app(agent=None)
    with AppServer(app) as server:
        thread = "1690000003.000100"
        server.post_event({"type": "message", "subtype": "file_share", "channel": "C1", "user": "UASK", "text": "here it is",
                           "ts": thread, "channel_type": "channel", "files": [slack.event_file("F0THREAD")]})
        server.post_event({"type": "message", "channel": "C1", "user": "UASK", "text": "any thoughts?",
                           "ts": "1690000003.000200", "thread_ts": thread, "channel_type": "channel"})
        server.post_event(mention("describe this dataset", "UASK", "C1", "1690000003.000300", thread_ts=thread))
        reply = slack.wait_for(lambda: posts(slack, "Dataset movie_reviews: 80 rows"), what="the description")[0]
        assert reply["thread_ts"] == thread and "sentiment" in reply["text"]
        # the same name from another channel: not visible there
        server.post_event(mention("describe movie_reviews", "UASK", "C2", "1690000004.000100"))
        other = slack.wait_for(lambda: [c for c in posts(slack) if c["channel"] == "C2"], what="the reply in C2")[0]
        assert "Dataset movie_reviews" not in other["text"] and "no dataset" in other["text"]
        # and the file itself, attached to a request in C2 (it was shared in C1 only): refused, never downloaded
        downloads = len(slack.downloads)
        event = mention("describe this dataset", "UASK", "C2", "1690000004.000200")
        event["files"] = [slack.event_file("F0THREAD")]
        server.post_event(event)
        refused = slack.wait_for(lambda: posts(slack, "was not shared in this conversation"), what="the refusal")[0]
        assert refused["channel"] == "C2" and len(slack.downloads) == downloads
        # "this dataset" where no file was shared: one sentence
        server.post_event(mention("distill this dataset into gemma-3-270m", "UASK", "C3", "1690000005.000100"))
        slack.wait_for(lambda: posts(slack, "I don't see a file in this thread"), what="the no-file sentence")


def _attach(server, slack, file_id: str, channel: str, ts: str, text: str = "describe this dataset") -> None:
    event = mention(text, "UASK", channel, ts)
    event["files"] = [slack.event_file(file_id)]
    assert server.post_event(event) == 200


def test_refused_before_download_too_big_spreadsheet_and_another_host(env):
    slack = env.slack
    with FakeSlack() as elsewhere:
        elsewhere.add_file("F0EVIL", "reviews.csv", reviews_csv(10), channels=["C1"])
        slack.add_file("F0BIG", "huge.csv", b"review,sentiment\n", channels=["C1"], size=2 * 1024 ** 3)
        slack.add_file("F0XLSX", "reviews.xlsx", b"PK\x03\x04 not really", channels=["C1"])
        slack.add_file("F0EVIL", "reviews.csv", reviews_csv(10), channels=["C1"],
                       url=f"{elsewhere.base_url}/files-pri/F0EVIL/download/reviews.csv")
        slack.add_file("F0REDIR", "moved.csv", b"", channels=["C1"],
                       redirect=f"{elsewhere.base_url}/files-pri/F0EVIL/download/reviews.csv")
        app = env.make_app(agent=None)
        with AppServer(app) as server:
            _attach(server, slack, "F0BIG", "C1", "1690000006.000100")
            _attach(server, slack, "F0XLSX", "C1", "1690000006.000200")
            _attach(server, slack, "F0EVIL", "C1", "1690000006.000300")
            _attach(server, slack, "F0REDIR", "C1", "1690000006.000400")
            big = slack.wait_for(lambda: posts(slack, "huge.csv is 2,048 MB"), what="the size refusal")[0]
            assert "limit of 200 MB (DISTILLERY_SLACK_MAX_FILE_MB)" in big["text"]
            slack.wait_for(lambda: posts(slack, "export it as CSV"), what="the spreadsheet sentence")
            slack.wait_for(lambda: posts(slack, "could not download reviews.csv: its address is not on Slack's file host"),
                           what="the other-host refusal")
            slack.wait_for(lambda: posts(slack, "could not download moved.csv: Slack sent me to another address"),
                           what="the redirect refusal")
        assert elsewhere.downloads == [] and elsewhere.calls() == []  # nothing, not even a request, went there
    assert [d["path"] for d in slack.downloads] == ["/files-pri/F0REDIR/download/moved.csv"]  # only the redirecting hop
    assert not (env.store and (Path(os.environ["DISTILLERY_HOME"]) / "uploads" / TEAM_ID / "F0BIG" / "huge.csv").exists())


def test_an_html_login_page_is_could_not_download(env):
    slack = env.slack
    slack.add_file("F0HTML", "reviews.csv", b"<!DOCTYPE html><html><body>Sign in to Slack</body></html>", channels=["C1"],
                   content_type="text/html; charset=utf-8")
    slack.add_file("F0HTML2", "more.csv", b"\n  <html><body>Sign in</body></html>", channels=["C1"])  # no content type
    app = env.make_app(agent=None)
    with AppServer(app) as server:
        _attach(server, slack, "F0HTML", "C1", "1690000007.000100")
        _attach(server, slack, "F0HTML2", "C1", "1690000007.000200")
        slack.wait_for(lambda: len(posts(slack, "Slack answered with a web page")) == 2, what="two refusals")
    assert [c for c in posts(slack, "could not download reviews.csv")] and posts(slack, "could not download more.csv")
    home = Path(os.environ["DISTILLERY_HOME"])
    assert not list((home / "uploads").rglob("*.csv"))  # nothing registered or kept


def test_ambiguous_columns_are_asked_once_and_remembered_for_the_file(env, tiny_model):
    slack = env.slack
    slack.add_file("F0TICKETS", "tickets.csv", reviews_csv(80, columns=("body", "queue")), channels=["C1"])
    app = env.make_app(agent=None)
    with AppServer(app) as server:
        thread = "1690000008.000100"
        _attach(server, slack, "F0TICKETS", "C1", thread, text="distill this dataset into gemma-3-270m")
        question = slack.wait_for(lambda: posts(slack, "which column of tickets.csv is the text"), what="the question")[0]
        assert "`body`" in question["text"] and "`queue`" in question["text"] and "text=COLUMN label=COLUMN" in question["text"]
        assert not posts(slack, "distill_start")
        # the answer, in the thread without a mention
        server.post_event({"type": "message", "channel": "C1", "user": "UASK", "text": "text=body label=queue",
                           "ts": "1690000008.000200", "thread_ts": thread, "channel_type": "channel"})
        card = slack.wait_for(lambda: posts(slack, "distill_start"), what="the plan card")[0]
        plan_id = next(e["value"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]
                       if e["action_id"] == "distill_start")
        spec = env.plans.get(plan_id).spec
        assert spec["dataset"]["fields"] == {"text": "body", "label": "queue"} and spec["labels"] == ["negative", "positive"]
        assert "tickets" in json.dumps(card["blocks"]) and "held out from tickets.csv" in json.dumps(card["blocks"])
        # the same file in a new thread: remembered, no second question
        _attach(server, slack, "F0TICKETS", "C1", "1690000009.000100", text="distill this dataset into gemma-3-270m")
        slack.wait_for(lambda: len(posts(slack, "distill_start")) == 2, what="a second plan card")
    assert len(posts(slack, "which column of tickets.csv is the text")) == 1


def test_the_adapter_zip_respects_the_upload_limit_and_never_follows_links(tmp_path):
    from bot.slack_files import zip_adapter

    adapter = tmp_path / "student"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"w" * 4000)
    secret = tmp_path / "secret.txt"
    secret.write_text("operator's secret")
    (adapter / "notes.txt").symlink_to(secret)  # a link out of the run folder is never packed
    packed = zip_adapter(adapter, tmp_path / "a.zip", max_bytes=10_000)
    assert sorted(zipfile.ZipFile(packed).namelist()) == ["student/adapter_config.json", "student/adapter_model.safetensors"]
    assert zip_adapter(adapter, tmp_path / "b.zip", max_bytes=1_000) is None  # over DISTILLERY_SLACK_MAX_UPLOAD_MB
    assert zip_adapter(tmp_path / "missing", tmp_path / "c.zip", max_bytes=10_000) is None


def test_terminal_chat_distills_a_csv_path_inside_the_data_folders(tmp_path, monkeypatch):
    import asyncio

    from bot.agent import build_agent

    data = tmp_path / "data"
    data.mkdir()
    (data / "reviews.csv").write_bytes(reviews_csv(120))
    (tmp_path / "outside.csv").write_bytes(reviews_csv(120))
    monkeypatch.setenv("DISTILLERY_DATA_DIRS", str(data))
    monkeypatch.chdir(data)
    agent = build_agent()
    reply = asyncio.run(agent.respond("t1", "me", "distill ./reviews.csv into gemma-3-270m", {"source": "terminal"}))
    # 120 rows: 30 held out for test, 11 gold pilot rows set aside (1/8 of the rest), 79 to label
    assert "on reviews.csv, task classification, 79 rows; testing on 30 rows held out from reviews.csv" in reply.text
    refused = asyncio.run(agent.respond("t1", "me", f"distill {tmp_path / 'outside.csv'} into gemma-3-270m", {"source": "terminal"}))
    assert "outside the data folders" in refused.text and refused.plan_id is None


def test_a_file_sent_in_a_dm_is_that_persons_dataset_only(env):
    slack = env.slack
    slack.add_file("F0DM", "private_reviews.csv", reviews_csv(80), channels=["D0ASK"])
    app = env.make_app(agent=None)
    with AppServer(app) as server:
        server.post_event({"type": "message", "subtype": "file_share", "channel": "D0ASK", "channel_type": "im",
                           "user": "UASK", "text": "distill this dataset into gemma-3-270m", "ts": "1690000010.000100",
                           "files": [slack.event_file("F0DM")]})
        card = slack.wait_for(lambda: posts(slack, "distill_start"), what="the plan card in the DM")[0]
        assert card["channel"] == "D0ASK" and "private_reviews" in json.dumps(card["blocks"])
        server.post_event({"type": "message", "channel": "D0ADMIN", "channel_type": "im", "user": "UADMIN",
                           "text": "describe private_reviews", "ts": "1690000011.000100"})
        other = slack.wait_for(lambda: [c for c in posts(slack) if c["channel"] == "D0ADMIN"], what="the other DM's reply")[0]
    assert "Dataset private_reviews" not in other["text"] and "no dataset" in other["text"]


def test_the_status_message_says_when_no_worker_watches_the_queue(env):
    with AppServer(env.make_app()) as server:  # no embedded worker, and no `distillery worker` either
        thread = "1690000012.000100"
        server.post_event(mention("distill sst2 into tiny", "UADMIN", "C1", thread))
        card = env.slack.wait_for(lambda: posts(env.slack, "distill_start"), what="the plan card")[0]
        plan_id = next(e["value"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]
                       if e["action_id"] == "distill_start")
        card_ts = env.slack.wait_for(lambda: env.store.plan_message(plan_id), what="the stored card")["message_ts"]
        server.post_action("distill_start", plan_id, "UADMIN", "C1", card_ts, thread)
        status = env.slack.wait_for(lambda: posts(env.slack, "is queued"), what="the status message")[0]
    assert "No worker is watching this Distillery home" in status["text"] and "distillery worker" in status["text"]
    assert "No worker is watching" in json.dumps(status["blocks"])


def test_distillery_slack_runs_an_embedded_worker_and_no_worker_turns_it_off(slack, tmp_path):
    import socket
    import subprocess
    import sys
    import urllib.request

    from pipeline.registry import Registry
    from slack_harness import SIGNING_SECRET

    reg = Registry()
    for extra, kind in (([], "embedded in distillery slack"), (["--no-worker"], None)):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
               "DISTILLERY_SLACK_API_URL": slack.api_url}
        proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "slack", "--http", "--host", "127.0.0.1", "--port", str(port),
                                 *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            def healthy():
                try:
                    return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read() == b"ok"
                except OSError:
                    assert proc.poll() is None, proc.stdout.read()
                    return False
            slack.wait_for(healthy, what="the bot to listen")
            if kind:
                live = slack.wait_for(lambda: reg.live_workers(), what="the embedded worker's heartbeat")
                assert [(w["kind"], w["pid"]) for w in live] == [(kind, proc.pid)]
            else:
                assert reg.live_workers() == []
        finally:
            proc.terminate()
            output = proc.communicate(timeout=60)[0]
        assert reg.live_workers() == [], output[-2000:]  # stopping the bot stops its worker


def test_the_column_question_has_a_button_for_the_guess(env):
    slack = env.slack
    slack.add_file("F0TAGS", "tags.csv", reviews_csv(80, columns=("body", "tag")), channels=["C1"])
    with AppServer(env.make_app(agent=None)) as server:
        thread = "1690000013.000100"
        _attach(server, slack, "F0TAGS", "C1", thread, text="distill this dataset into gemma-3-270m")
        question = slack.wait_for(lambda: posts(slack, "which column of tags.csv is the text"), what="the question")[0]
        button = next(e for b in question["blocks"] if b["type"] == "actions" for e in b["elements"])
        assert button["action_id"] == "distill_columns" and button["value"] == "text=body label=tag"
        assert server.post_action("distill_columns", button["value"], "UASK", "C1", thread, thread) == 200
        card = slack.wait_for(lambda: posts(slack, "distill_start"), what="the plan card")[0]
    plan_id = next(e["value"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]
                   if e["action_id"] == "distill_start")
    assert env.plans.get(plan_id).spec["dataset"]["fields"] == {"text": "body", "label": "tag"}
    assert card["thread_ts"] == thread
