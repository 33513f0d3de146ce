"""The uploads registry: where Slack files are stored, unique names, and who may see them."""

from __future__ import annotations

import pytest

from pipeline.errors import DatasetError
from skills import operations as ops
from skills.data_access import confine
from skills.uploads import UploadStore, safe_name

CSV = "review,sentiment\n" + "".join(f"film {i} was {'great' if i % 2 else 'dull'},{'positive' if i % 2 else 'negative'}\n" for i in range(40))


def _store_file(store: UploadStore, team: str, file_id: str, name: str):
    path = store.folder(team, file_id) / safe_name(name)
    path.write_text(CSV)
    return path


def test_channel_files_are_visible_in_their_channel_and_dm_files_only_to_their_person(isolated_home):
    store = UploadStore()
    a = store.register("T1", "F1", _store_file(store, "T1", "F1", "reviews.csv"), "reviews.csv", channel="C1", user="U1")
    b = store.register("T1", "F2", _store_file(store, "T1", "F2", "reviews.csv"), "reviews.csv", channel="D1", user="U1")
    assert (a.name, b.name) == ("reviews", "reviews-2")  # made unique across the home
    assert store.find("reviews", {"channel": "C1", "user": "U9"}).file_id == "F1"
    assert store.find("reviews", {"channel": "C2", "user": "U1"}) is None  # another channel
    assert store.find("reviews-2", {"channel": "D1", "user": "U1"}).file_id == "F2"
    assert store.find("reviews-2", {"channel": "D1", "user": "U2"}) is None  # a DM is private to its person
    assert store.find("reviews-2", {"channel": "C1", "user": "U1"}) is None
    # the same through the operations the agent, Slack and MCP use
    assert [d["name"] for d in ops.list_datasets({"channel": "C1", "user": "U1"}) if d.get("uploaded")] == ["reviews"]
    assert not [d for d in ops.list_datasets() if d.get("uploaded")]
    assert ops.describe_dataset("reviews", {"channel": "C1", "user": "U1"})["rows"] == 40
    with pytest.raises(DatasetError):
        ops.describe_dataset("reviews-2", {"channel": "C1", "user": "U1"})


def test_ids_and_names_from_an_event_never_become_paths(isolated_home, monkeypatch):
    store = UploadStore()
    for team, file_id in (("../..", "F1"), ("T1", "F1/../../x"), ("T1", "")):
        with pytest.raises(DatasetError, match="is not a Slack id"):
            store.folder(team, file_id)
    assert safe_name("../../etc/passwd") == "passwd" and safe_name("..\\..\\x y.csv") == "x_y.csv" and safe_name("...") == "dataset"
    with pytest.raises(DatasetError, match="own uploads folder"):
        store.register("T1", "F1", isolated_home / "elsewhere.csv", "x.csv", channel="C1", user="U1")
    # an upload is not reachable as a data-folder path, even when the home lies inside a data folder
    path = _store_file(store, "T1", "F3", "secret.csv")
    monkeypatch.setenv("DISTILLERY_DATA_DIRS", str(isolated_home))
    with pytest.raises(DatasetError, match="refused"):
        confine(str(path))
    assert not [d for d in ops.list_datasets() if "secret" in d["name"]]
