"""pipeline.pilot: answer_cue=auto is chosen on gold pilot rows that are never labelled, demonstrations or test rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import pilot, splits
from pipeline.labelling import choose_rows, label
from pipeline.spec import load_spec

POS, NEG = ("good", "great", "fine", "nice"), ("bad", "dull", "awful", "poor")
INSTRUCTIONS = "Rate."  # a short prompt: the tiny model learns it in a few steps
NOUNS = ("movie", "film", "show", "play", "story", "plot", "cast", "script", "scene", "ending", "actor", "score")


def _rows() -> list[dict]:
    rows = [{"text": f"a {adj} {noun}", "label": lab} for noun in NOUNS for adjs, lab in ((POS, 1), (NEG, 0)) for adj in adjs]
    return [{"row": i, **r} for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cues")
    rows = _rows()
    train, test = rows[:80], rows[80:]
    for name, part in (("train.jsonl", train), ("test.jsonl", test)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder / "train.jsonl", folder / "test.jsonl"


def _spec(tmp_path, data, *extra):
    train, test = data
    return load_spec(None, [f"dataset.train={train}", f"dataset.test={test}", f"out={tmp_path / 'run'}", "teacher.few_shot=0",
                            "teacher.prompt_format=plain", "teacher.device=cpu", f"instructions={INSTRUCTIONS}", *extra])


def test_the_default_cue_is_auto_and_derived_from_the_labels():
    spec = load_spec(None)
    assert spec.teacher.answer_cue == "auto"
    assert pilot.derived_cue("classification", ["negative", "positive"]) == "Sentiment"
    assert pilot.derived_cue("nli", ["entailment", "neutral", "contradiction"]) == "Relation"
    assert pilot.derived_cue("classification", ["World", "Sports", "Business", "Sci/Tech"]) == "Topic"
    assert pilot.derived_cue("classification", ["spam", "ham"]) == "Label"
    assert pilot.cue_candidates(spec)[:3] == ["Sentiment", "Answer", "Label"]


def test_pilot_rows_are_gold_training_rows_never_labelled_demos_or_test(tmp_path, data):
    spec = _spec(tmp_path, data, "teacher.few_shot=4", "dataset.pilot_size=16")
    rows = pilot.pilot_rows(spec)
    assert len(rows) == 10  # at most an eighth of the 80 gold training rows
    assert sorted(e.gold for e in rows).count("positive") == 5  # classes taken in turn
    keys = {splits.fields_key(e) for e in rows}
    labelled, demos = choose_rows(spec)
    assert not keys & {splits.fields_key(e) for e in labelled + demos}
    assert not keys & splits.test_keys(spec)
    assert len(labelled) + len(demos) == 80 - 10
    assert pilot.pilot_rows(_spec(tmp_path, data, "dataset.pilot_size=0")) == []


def test_an_api_teacher_gets_the_derived_cue_and_no_pilot_rows(tmp_path, data):
    spec = _spec(tmp_path, data, "teacher.provider=openai", "teacher.model=m", "teacher.base_url=http://127.0.0.1:9/v1")
    assert not pilot.selects_cue(spec) and pilot.pilot_rows(spec) == []
    resolved, choice = pilot.resolve_cue(spec)
    assert resolved.teacher.answer_cue == "Sentiment" and choice["source"].startswith("derived")


WORST, BEST = "Verdict" + " negative" * 40, "Verdict" + " positive" * 40  # cues a model copying its context follows


def _share_positive(model, tok, prompts: list[str]) -> float:
    from pipeline.scoring import score_options

    scores = score_options(model, tok, prompts, [[" negative", " positive"]] * len(prompts))
    return sum(s[1] > s[0] for s in scores) / len(prompts)


def test_cue_selection_picks_the_clearly_better_cue_and_a_resume_keeps_it(tmp_path, data, tiny_model):
    """Every gold label is positive and one cue repeats "positive", the other "negative", so one is clearly better.

    How clearly is measured here independently (score_options on the rendered pilot prompts); the worse cue is
    listed first, so a tie or a wrong pick keeps it.
    """
    from pipeline.models import load_model, render_plain
    from pipeline.tasks import get_task, teacher_messages

    folder = tmp_path / "data"
    folder.mkdir()
    rows = [{**r, "label": 1} for r in _rows()]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:80]))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[80:]))
    spec = _spec(tmp_path, (folder / "train.jsonl", folder / "test.jsonl"), f"teacher.model={tiny_model}")
    rows_p = pilot.pilot_rows(spec)
    assert len(rows_p) == 10
    model, tok = load_model(str(tiny_model), "cpu")
    task = get_task("classification")
    msgs = [teacher_messages(task, e, ["negative", "positive"], [], False, INSTRUCTIONS) for e in rows_p]
    share = {w: _share_positive(model, tok, [render_plain(m, w) for m in msgs]) for w in (WORST, BEST)}
    worst, best = WORST, BEST
    assert share[best] - share[worst] >= 0.5, share  # the case is built so that one candidate is clearly better

    spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"answer_cues": [worst, best]})})
    summary = label(spec)
    choice = summary.answer_cue
    assert choice["answer_cue"] == best
    assert choice["scores"] == {worst: share[worst], best: share[best]}
    assert sorted(choice["pilot_rows"]) == sorted(e.row for e in rows_p)
    out = tmp_path / "run"
    assert json.loads((out / "labelling.json").read_text())["answer_cue"]["answer_cue"] == best
    assert json.loads((out / "pilot.json").read_text())["cue"]["scores"] == choice["scores"]
    # the pilot rows were neither labelled nor test rows; every other training row was labelled with the chosen cue
    labelled = {json.loads(line)["row"] for name in ("labels.jsonl", "rejected.jsonl") for line in (out / name).read_text().splitlines()}
    assert not labelled & set(choice["pilot_rows"]) and len(labelled) == 70
    assert not set(choice["pilot_rows"]) & set(range(80, 96))
    # the cache key covers the cue: both candidates' answers on the pilot rows are kept apart, plus the 70 rows
    cache = out / "teacher_answers.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == 2 * 10 + 70 and len({json.loads(x)["key"] for x in lines}) == len(lines)
    # a resume reuses the choice and sends nothing
    again = label(spec)
    assert again.answer_cue == choice and again.requests_sent == 0
    assert cache.read_text().splitlines() == lines


def test_the_teachers_evaluation_fingerprint_follows_the_cue_the_pilot_chose(tmp_path, data):
    """evaluation.json keeps the teacher's part only while the cue it was scored with is still the chosen one."""
    from pipeline.evaluation import fingerprints, test_examples
    from pipeline.tasks import resolve_spec

    spec = resolve_spec(_spec(tmp_path, data))
    examples = test_examples(spec)
    rows, candidates = pilot.pilot_rows(spec), pilot.cue_candidates(spec)
    assert spec.teacher.answer_cue == pilot.AUTO and rows and len(candidates) > 1

    def chosen(cue: str) -> str:
        (tmp_path / "run").mkdir(exist_ok=True)
        choice = {"answer_cue": cue, "fingerprint": pilot._fingerprint(spec, rows, candidates)}
        (tmp_path / "run" / pilot.PILOT_FILE).write_text(json.dumps({"cue": choice}))
        return fingerprints(spec, examples)["teacher"]

    first, second = chosen(candidates[0]), chosen(candidates[1])
    assert first != second  # a part scored with another cue is never reused
    assert chosen(candidates[0]) == first  # and the same choice gives the same fingerprint
