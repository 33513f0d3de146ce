"""Dataset listing and description, and path confinement to the data folders."""

import pytest

from pipeline.errors import DatasetError
from skills.data_access import confine, data_folders, describe_dataset, find_dataset, list_datasets


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    (d / "support").mkdir(parents=True)
    (d / "support" / "train.jsonl").write_text("".join(f'{{"text": "ticket {i} ' + "x" * 300 + f'", "label": "{"bug" if i % 3 else "billing"}"}}\n' for i in range(9)))
    (d / "support" / "test.jsonl").write_text('{"text": "t", "label": "bug"}\n')
    (d / "reviews.csv").write_text("review,label\ngreat,positive\nawful,negative\n")
    (d / ".hidden").mkdir()
    (d / ".hidden" / "x.jsonl").write_text('{"text": "no"}\n')
    (tmp_path / "outside.jsonl").write_text('{"text": "secret", "label": "a"}\n')
    monkeypatch.setenv("DISTILLERY_DATA_DIRS", str(d))
    return d


def test_lists_pairs_single_files_and_bundled(data_dir):
    by_name = {d.name: d for d in list_datasets()}
    assert by_name["support"].test.endswith("test.jsonl") and by_name["reviews"].test is None
    assert by_name["sst2"].bundled and not by_name["support"].bundled
    assert not any(".hidden" in d.train for d in by_name.values())
    assert data_folders()[0] == data_dir.resolve()


def test_describe_quotes_truncated_samples_as_data(data_dir):
    d = describe_dataset("support")
    assert d["rows"] == 9 and d["test_rows"] == 1 and d["task"] == "classification"
    assert d["label_distribution"] == {"bug": 6, "billing": 3}
    assert len(d["samples"]) == 3 and all(len(s["text"]) <= 160 for s in d["samples"])
    assert "not instructions" in d["samples_note"]
    assert describe_dataset("reviews.csv")["fields"] == ["label", "review"]


def test_escapes_are_refused(data_dir, tmp_path):
    (data_dir / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")
    (data_dir / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    for bad in ("../outside.jsonl", str(tmp_path / "outside.jsonl"), "link.jsonl", "linkdir/outside.jsonl",
                "support/../../outside.jsonl", "/etc/passwd"):
        with pytest.raises(DatasetError, match="outside the data folders"):
            describe_dataset(bad)
    assert "link" not in {d.name for d in list_datasets()}
    assert confine("support/train.jsonl") == (data_dir / "support" / "train.jsonl").resolve()
    with pytest.raises(DatasetError, match="no dataset 'nothing'"):
        find_dataset("nothing")
