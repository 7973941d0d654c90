"""file_reader: .jsonl and .txt read directly give the records ``datasets.load_dataset`` gives, in the
same order and count, on the corner cases of both formats; and errors that name the file and line."""

import bz2
import gzip
import lzma

import datasets
import pytest

from headless_megatron.data import file_reader
from headless_megatron.data.errors import DataError
from headless_megatron.data.sources import Shard, open_corpus

JSONL_CASES = {
    "byte-order mark, CRLF, blank and whitespace-only lines, a missing and a null field, no final newline":
        b'\xef\xbb\xbf{"text": "a"}\r\n\r\n  \n{"id": 2}\r\n{"text": null}\n{"text": "x\\u2028y\\r\\nz"}',
    "the field first appears in the third record": b'{"a": 1}\n{"a": 2}\n{"text": "t", "a": 3}\n',
    "other fields nested and of varying shape": b'{"text": "t", "meta": {"x": [1, 2]}}\n{"text": "u", "meta": {}}\n',
    "unicode escapes and raw non-ASCII":
        '{"text": "\\u00e9\\ud83c\\udf89 caf\u00e9 \u6f22\u5b57 \U0001f389\\t"}\n'.encode(),
}
TXT_CASES = {
    "CRLF, lone CR, runs of blank lines, separators that are not newlines, a byte-order mark":
        "\ufeffone\r\ntwo\rthree\n\n\nfour\u2028five\x0bsix\x0c\x1c\n\n\n\nseven\n\n",
    "no final newline": "a\n\nb\nc",
    "a paragraph cut by the reading chunk": "first paragraph, longer than a chunk\nstill it\n\nsecond\n\n\nthird",
}
COMPRESSORS = {"": lambda data: data, ".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}
DATASETS_TXT_UNITS = {"line": "line", "paragraph": "paragraph", "file": "document"}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Paragraphs and lines straddle the reader's chunks, as they do in a large file."""
    monkeypatch.setattr(file_reader, "_CHUNK_CHARACTERS", 5)


def _reference(builder, path, tmp_path, **options):
    dataset = datasets.load_dataset(builder, data_files=[str(path)], split="train", cache_dir=str(tmp_path / "cache"),
                                    **options)
    return list(dataset["text"])


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("compression", COMPRESSORS)
@pytest.mark.parametrize("case", JSONL_CASES)
def test_jsonl_records_are_those_of_datasets(tmp_path, case, compression, streaming):
    path = tmp_path / f"a.jsonl{compression}"
    path.write_bytes(COMPRESSORS[compression](JSONL_CASES[case]))
    corpus = open_corpus([str(path)], streaming=streaming)
    documents = list(corpus.documents())
    assert documents == _reference("json", path, tmp_path)
    assert corpus.num_documents == (None if streaming else len(documents))


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("unit", DATASETS_TXT_UNITS)
@pytest.mark.parametrize("compression", COMPRESSORS)
@pytest.mark.parametrize("case", TXT_CASES)
def test_txt_documents_are_those_of_datasets(tmp_path, case, compression, unit, streaming):
    path = tmp_path / f"a.txt{compression}"
    path.write_bytes(COMPRESSORS[compression](TXT_CASES[case].encode()))
    corpus = open_corpus([str(path)], txt_document=unit, streaming=streaming)
    documents = list(corpus.documents())
    assert documents == _reference("text", path, tmp_path, sample_by=DATASETS_TXT_UNITS[unit])
    assert corpus.num_documents == (None if streaming else len(documents))


def test_a_lone_surrogate_escape_is_read_and_left_to_the_pipeline(tmp_path):
    """``datasets`` cannot read this file at all; the pipeline skips the record as invalid UTF-8."""
    (tmp_path / "a.jsonl").write_text('{"text": "a \\udc80 b"}\n{"text": "ok"}\n')
    assert list(open_corpus([str(tmp_path / "a.jsonl")]).documents()) == ["a \udc80 b", "ok"]


@pytest.mark.parametrize("unit", DATASETS_TXT_UNITS)
@pytest.mark.parametrize("count", [2, 3, 7])
def test_shards_skip_to_their_first_record_across_files(tmp_path, unit, count):
    for number in range(3):
        (tmp_path / f"{number}.txt").write_text("".join(f"{number}-{line}\n\n" for line in range(5)))
        (tmp_path / f"{number}.jsonl").write_text("".join(f'{{"text": "{number}-{line}"}}\n\n' for line in range(5)))
    for files in (sorted(tmp_path.glob("*.txt")), sorted(tmp_path.glob("*.jsonl"))):
        whole = list(open_corpus([str(path) for path in files], txt_document=unit).documents())
        parts = [open_corpus([str(path) for path in files], txt_document=unit, shard=Shard(index, count))
                 for index in range(count)]
        assert sum((list(part.documents()) for part in parts), []) == whole
        assert [part.num_documents for part in parts] == [
            Shard(index, count).bounds(len(whole))[1] - Shard(index, count).bounds(len(whole))[0]
            for index in range(count)
        ]


def test_a_field_absent_from_the_first_records_is_an_unknown_key(tmp_path, monkeypatch):
    monkeypatch.setattr(file_reader, "FIELD_SEARCH_RECORDS", 3)
    (tmp_path / "a.jsonl").write_text('{"id": 1}\n{"id": 2, "title": "t"}\n{"id": 3}\n{"id": 4, "text": "late"}\n')
    with pytest.raises(DataError, match=r"^--text-key text: no such field in .*a\.jsonl \(fields: id, title\)$"):
        list(open_corpus([str(tmp_path / "a.jsonl")]).documents())
    monkeypatch.setattr(file_reader, "FIELD_SEARCH_RECORDS", 4)
    assert list(open_corpus([str(tmp_path / "a.jsonl")]).documents()) == [None, None, None, "late"]


def test_invalid_utf8_in_a_compressed_file_is_located_in_its_decompressed_text(tmp_path):
    good, bad = b'{"text": "fine"}\n', b'{"text": "f\xffne"}\n'
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(good + bad))
    offset = len(good) + bad.index(b"\xff")
    with pytest.raises(DataError, match=rf"^--input .*a\.jsonl\.gz: invalid UTF-8 at byte {offset} of its decompressed "
                                        r"text; convert the file to UTF-8$"):
        list(open_corpus([str(tmp_path / "a.jsonl.gz")]).documents())


def test_a_txt_file_with_invalid_utf8_is_refused_before_reading_when_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"good\nbad \xc3\x28\n")
    with pytest.raises(DataError, match=r"^--input .*a\.txt: invalid UTF-8 at byte 9; convert the file to UTF-8$"):
        open_corpus([str(tmp_path / "a.txt")])


def test_zst_without_zstandard_names_the_package(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_zstandard(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_zstandard)
    (tmp_path / "a.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(DataError, match=r"a\.jsonl\.zst: reading \.zst files needs the zstandard package"):
        list(open_corpus([str(tmp_path / "a.jsonl.zst")], streaming=True).documents())
