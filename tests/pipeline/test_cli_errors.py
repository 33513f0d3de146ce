"""Bad input through the real `distillery` command: one sentence, non-zero exit, no traceback."""

import os
import subprocess
import sys

import pytest

from testpaths import DATA


def distillery(*args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=120, env=full_env, cwd=cwd)


def assert_one_sentence(result, fragment):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    # progress lines ("[labelling] 1/3 ...") may come first; the error is one line of its own
    lines = [line for line in result.stderr.strip().splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]


@pytest.fixture
def empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    return path


@pytest.mark.parametrize("make_args,fragment", [
    (lambda tmp: ["label", f"dataset.train={tmp}/nope.jsonl"], "does not exist"),
    (lambda tmp: ["label", f"dataset.train={tmp}/empty.jsonl"], "has no rows"),
    (lambda tmp: ["label", f"dataset.train={DATA}/sst2.jsonl", "dataset.fields.text=review"], "dataset.fields.text=COLUMN"),
    (lambda tmp: ["label", f"{tmp}/bad.yaml"], "not valid YAML"),
    (lambda tmp: ["label", f"dataset.train={DATA}/sst2.jsonl", "teacher.provider=nope", f"out={tmp}/o"], "unknown teacher 'nope'; known: azure, azure-inference, local, openai"),
    (lambda tmp: ["label", f"dataset.train={DATA}/sst2.jsonl", "teacher.provider=openai", "teacher.model=m",
                  "teacher.base_url=http://127.0.0.1:9/v1", "teacher.api_key_env=DISTILLERY_TEST_NO_SUCH_KEY", f"out={tmp}/o"],
     "DISTILLERY_TEST_NO_SUCH_KEY"),
    (lambda tmp: ["train", f"out={tmp}/nothing"], "labels.jsonl"),
    (lambda tmp: ["train", "student.method=qlora", f"out={tmp}/nothing"], "CUDA"),
    (lambda tmp: ["run", "student.method=qlora", f"out={tmp}/o2"], "CUDA"),
    (lambda tmp: ["eval", f"dataset.test={tmp}/empty.jsonl"], "has no rows"),
    (lambda tmp: ["spec", "teacher.concurrency=0"], "'teacher.concurrency'"),
])
def test_bad_input_is_one_sentence(tmp_path, empty_file, make_args, fragment):
    (tmp_path / "bad.yaml").write_text("task: [\n")
    assert_one_sentence(distillery(*make_args(tmp_path)), fragment)


def test_unreachable_server_is_one_sentence(tmp_path):
    result = distillery("label", f"dataset.train={DATA}/sst2.jsonl", "dataset.train_size=3", "teacher.provider=openai", "teacher.model=m",
                        "teacher.base_url=http://127.0.0.1:9/v1", "teacher.max_retries=0", "teacher.timeout_s=2", f"out={tmp_path}/o")
    assert_one_sentence(result, "127.0.0.1:9")
