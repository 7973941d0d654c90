"""open_corpus: built-in, local files of every format through datasets, Hub names, --shard, bad input."""

import gzip
import json
import logging
import random

import datasets.config
import huggingface_hub.constants
import pandas
import pytest

from headless_megatron.data.builtin import builtin_document_count, builtin_documents
from headless_megatron.data.errors import DataError
from headless_megatron.data.sources import Shard, looks_like_a_local_path, open_corpus

RECORDS = [
    {"id": 1, "text": "First document.\nTwo lines."},
    {"id": 2, "text": "Second, with é and 🎉."},
    {"id": 3, "text": None},
]


@pytest.fixture
def read(tmp_path):
    """open_corpus with the datasets cache in this test's directory; returns (corpus, documents)."""
    def read(inputs, **options):
        corpus = open_corpus([str(spec) for spec in inputs], cache_dir=str(tmp_path / "hf-cache"), **options)
        return corpus, list(corpus.documents())
    return read


def _write_jsonl(path, records=RECORDS):
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return path


@pytest.mark.parametrize("streaming", [False, True])
def test_jsonl_records(tmp_path, read, streaming):
    corpus, documents = read([_write_jsonl(tmp_path / "a.jsonl")], streaming=streaming)
    assert documents == [record["text"] for record in RECORDS]
    assert corpus.num_documents == (None if streaming else 3) and corpus.description == str(tmp_path / "a.jsonl")


def test_parquet_csv_and_compressed_jsonl(tmp_path, read):
    frame = pandas.DataFrame(RECORDS[:2])
    frame.to_parquet(tmp_path / "a.parquet")
    frame.to_csv(tmp_path / "a.csv", index=False)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as stream:
        stream.write("".join(json.dumps(record) + "\n" for record in RECORDS[:2]))
    for name in ("a.parquet", "a.csv", "a.jsonl.gz"):
        assert read([tmp_path / name])[1] == [RECORDS[0]["text"], RECORDS[1]["text"]], name


@pytest.mark.parametrize("unit, expected", [
    ("line", ["para one", "still para one", "", "para two"]),
    ("paragraph", ["para one\nstill para one", "para two\n"]),
    ("file", ["para one\nstill para one\n\npara two\n"]),
])
def test_txt_units(tmp_path, read, unit, expected):
    (tmp_path / "a.txt").write_text("para one\nstill para one\n\npara two\n")
    assert read([tmp_path / "a.txt"], txt_document=unit)[1] == expected


def test_directories_are_read_recursively_in_path_order_skipping_hidden_entries(tmp_path, read):
    for relative, text in (("b/2.jsonl", "two"), ("a.jsonl", "one"), ("b/10.jsonl", "ten"), (".partial/x.jsonl", "no"),
                           ("b/.hidden.jsonl", "no"), ("notes.md", "no")):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        _write_jsonl(tmp_path / relative, [{"text": text}])
    corpus, documents = read([tmp_path])
    assert documents == ["one", "ten", "two"]
    assert corpus.description == f"3 json files ({tmp_path})"


def test_builtin(read):
    corpus, documents = read(["builtin:python-topics"])
    assert documents == list(builtin_documents("python-topics")) and corpus.num_documents == len(documents)
    with pytest.raises(DataError, match="a built-in corpus cannot be combined with other inputs"):
        read(["builtin:python-topics", "a.jsonl"])


@pytest.mark.parametrize("count", [1, 3, 5])
def test_shards_of_a_known_size_are_contiguous_ranges_covering_everything(tmp_path, read, count):
    _write_jsonl(tmp_path / "a.jsonl", [{"text": str(number)} for number in range(13)])
    parts = [read([tmp_path / "a.jsonl"], shard=Shard(index, count))[1] for index in range(count)]
    assert sum(parts, []) == [str(number) for number in range(13)]
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    builtin_parts = [read(["builtin:python-topics"], shard=Shard(index, count))[1] for index in range(count)]
    assert sum(builtin_parts, []) == list(builtin_documents("python-topics"))
    assert [len(part) for part in builtin_parts] == [
        Shard(index, count).bounds(builtin_document_count("python-topics"))[1]
        - Shard(index, count).bounds(builtin_document_count("python-topics"))[0]
        for index in range(count)
    ]


def test_streamed_shards_are_ranges_of_files(tmp_path, read):
    for number in range(3):
        _write_jsonl(tmp_path / f"{number}.jsonl", [{"text": f"{number}a"}, {"text": f"{number}b"}])
    parts = [read([tmp_path], streaming=True, shard=Shard(index, 2))[1] for index in range(2)]
    assert parts == [["0a", "0b", "1a", "1b"], ["2a", "2b"]]
    with pytest.raises(
        DataError,
        match=r"^--shard 0/4: with --streaming, shards are ranges of input files, and .* has 3; "
        r"use at most 3 shards or drop --streaming$",
    ):
        read([tmp_path], streaming=True, shard=Shard(0, 4))


@pytest.mark.parametrize("text, message", [
    ("2", r"^--shard 2: expected i/n, e\.g\. 0/4 for the first of 4 parts$"),
    ("4/4", r"^--shard 4/4: expected 0 <= i < n$"),
    ("a/b", r"^--shard a/b: expected i/n"),
])
def test_bad_shard_flags(text, message):
    with pytest.raises(DataError, match=message):
        Shard.parse(text)
    assert Shard.parse("3/8").suffix == "-00003-of-00008"


def test_missing_paths_and_unknown_inputs(tmp_path, read):
    with pytest.raises(DataError, match=rf"^--input {tmp_path}/nope\.jsonl: no such file or directory$"):
        read([tmp_path / "nope.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: the directory has no \.jsonl/\.json/\.parquet/\.csv/\.txt files$"):
        read([tmp_path / "empty"])
    (tmp_path / "notes.md").write_text("# notes")
    with pytest.raises(
        DataError, match=r"notes\.md: unsupported file type; expected \.jsonl, \.json, \.parquet, \.csv, \.txt"
    ):
        read([tmp_path / "notes.md"])
    (tmp_path / "a.txt").write_text("x\n")
    _write_jsonl(tmp_path / "b.jsonl")
    with pytest.raises(
        DataError, match=r"^--input: the files mix formats \(json, text\); preprocess each format separately$"
    ):
        read([tmp_path / "a.txt", tmp_path / "b.jsonl"])
    assert looks_like_a_local_path("data/corpus/x") and looks_like_a_local_path("corpus.jsonl")
    assert not looks_like_a_local_path("wikitext") and not looks_like_a_local_path("allenai/c4")


@pytest.mark.parametrize("streaming", [False, True])
def test_unknown_text_key_lists_the_fields(tmp_path, read, streaming):
    with pytest.raises(DataError, match=r"^--text-key content: no such field in .*a\.jsonl \(fields: id, text\)$"):
        read([_write_jsonl(tmp_path / "a.jsonl")], text_key="content", streaming=streaming)


def test_txt_has_only_the_text_field(tmp_path, read):
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(DataError, match=r"^--text-key content: \.txt inputs have a single field, 'text'$"):
        read([tmp_path / "a.txt"], text_key="content")


@pytest.mark.parametrize("name, streaming", [("a.txt", True), ("a.jsonl", True), ("a.jsonl", False)])
def test_invalid_utf8_names_the_file_and_the_byte(tmp_path, read, name, streaming):
    good = b'{"text": "fine"}\n' if name.endswith("jsonl") else b"fine\n"
    (tmp_path / "0-good" ).mkdir()
    (tmp_path / "0-good" / name).write_bytes(good * 3)
    (tmp_path / "1-bad").mkdir()
    (tmp_path / "1-bad" / name).write_bytes(good + good.replace(b"fine", b"f\xffne"))
    offset = len(good) + good.index(b"fine") + 1
    with pytest.raises(
        DataError,
        match=rf"^--input {tmp_path}/1-bad/{name}: invalid UTF-8 at byte {offset}; convert the file to UTF-8$",
    ):
        read([tmp_path], streaming=streaming)


NOT_JSON_LINES = {
    "random bytes": (random.Random(0).randbytes(4096), "line 1 is not UTF-8 text"),
    "a line of text": (b'{"text": "fine"}\nnot json\n', "line 2, column 1: Expecting value"),
    "a number": (b'{"text": "fine"}\n\n12\n', "line 3 is a JSON number, not an object"),
}


@pytest.mark.parametrize("case", NOT_JSON_LINES)
@pytest.mark.parametrize("streaming", [False, True])
def test_a_file_that_is_not_json_lines_is_named_in_one_line_and_nothing_is_logged(tmp_path, read, case, streaming,
                                                                                    caplog):
    content, where = NOT_JSON_LINES[case]
    _write_jsonl(tmp_path / "0-good.jsonl")
    (tmp_path / "1-bad.jsonl").write_bytes(content)
    with pytest.raises(DataError) as raised:
        read([tmp_path], streaming=streaming)
    assert str(raised.value) == f"--input {tmp_path}/1-bad.jsonl: not JSON lines (one JSON object per line): {where}"
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


def test_hub_dataset_that_cannot_be_loaded(read, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, without the network
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        DataError,
        match=r"^--input someone/no-such-dataset: not a local path, and loading it from the Hugging Face Hub failed: ",
    ):
        read(["someone/no-such-dataset"])


def test_hub_dataset_by_name_config_and_split(tmp_path, read, monkeypatch):
    calls = []

    def load_dataset(*args, **kwargs):  # stands in for the Hub: the tests have no network
        calls.append((args, kwargs))
        table = datasets.Dataset.from_dict({"id": [1, 2, 3], "content": ["a", "b", "c"]})
        return table.to_iterable_dataset(num_shards=3) if kwargs["streaming"] else table

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    corpus, documents = read(["someone/corpus"], text_key="content", dataset_config="en", split="validation")
    assert (documents, corpus.num_documents) == (["a", "b", "c"], 3)
    assert corpus.description == "someone/corpus (en), split validation"
    assert calls[0] == (("someone/corpus", "en"),
                        {"split": "validation", "streaming": False, "cache_dir": str(tmp_path / "hf-cache")})
    assert read(["someone/corpus"], text_key="content", streaming=True, shard=Shard(1, 3))[1] == ["b"]
