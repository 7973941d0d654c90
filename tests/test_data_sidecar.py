"""The JSON sidecar of a dataset: written, read back, and clear errors for what is not one."""

import json

import pytest

from headless_megatron.data.errors import DataError
from headless_megatron.data.sidecar import FORMAT, DatasetInfo, read_sidecar, sidecar_path, write_sidecar


def _info():
    return DatasetInfo(documents=3, tokens=42, dtype="uint16", text_key="text",
                       tokenizer={"path": "p_tokenizer", "fingerprint": "sha256:0"},
                       source={"inputs": ["a.jsonl"], "shard": None, "text_bytes": 100, "skipped": {"empty": 1}},
                       command="headless-megatron preprocess --input a.jsonl")


def test_round_trip(tmp_path):
    path = sidecar_path(tmp_path / "p_text_document")
    assert path.name == "p_text_document.json"
    write_sidecar(path, _info())
    assert read_sidecar(path) == _info()
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["version"] == 1 and data["created_by"].startswith("headless-megatron ")


def test_missing_sidecar_says_the_run_did_not_finish(tmp_path):
    with pytest.raises(DataError, match=r"p\.json: no such sidecar; the dataset was not made by headless-megatron "
                                        r"preprocess, or its run did not finish"):
        read_sidecar(tmp_path / "p.json")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a JSON sidecar"),
    ('{"documents": 3}', "not a headless-megatron dataset sidecar"),
    (json.dumps({"format": FORMAT, "version": 99}), "sidecar version 99, this headless-megatron reads version 1"),
    (json.dumps({"format": FORMAT, "version": 1, "documents": 3}), "incomplete sidecar"),
])
def test_malformed_sidecars_are_named(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_sidecar(path)
