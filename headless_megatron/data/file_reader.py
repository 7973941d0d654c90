"""Reading ``.jsonl`` and ``.txt`` files record by record, without ``datasets``.

Importing ``datasets`` costs a preprocessing run two seconds before its first document (it imports
pandas and, when installed, torch), and without ``--streaming`` it copies the corpus into its Arrow
cache first. JSON lines and plain text need neither: this module reads them straight from the file,
one line at a time, and gives the records that ``datasets.load_dataset("json"|"text")`` gives, in
the same order (``tests/test_data_file_reader.py`` compares the two on the corner cases):

- ``.jsonl``: one JSON object per line; blank lines are skipped; a leading byte-order mark is
  dropped; a record without the ``--text-key`` field gives ``None``, as ``datasets`` fills it in.
  The field must occur in one of the first ``FIELD_SEARCH_RECORDS`` records, else it is an unknown
  key (the usual cause: a wrong ``--text-key``). Unlike ``datasets``, a value's JSON type is kept
  as is (the pipeline refuses non-text values) and every error names the file and the line.
- ``.txt``: decoded as UTF-8 with universal newlines (``\\r\\n`` and ``\\r`` read as ``\\n``);
  ``line`` documents are the lines without their newline, ``paragraph`` documents the non-empty
  parts between blank-line separators (``\\n\\n``), a ``document`` the whole file.

Files ending in ``.gz``, ``.bz2``, ``.xz`` or ``.zst`` are decompressed on the fly (``.zst`` needs
the ``zstandard`` package, as in ``datasets``). Nothing holds more than a line (a paragraph, or
with ``document`` a whole file) at once.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from headless_megatron.data.errors import DataError

FIELD_SEARCH_RECORDS = 1024  # as many records as ``datasets`` reads to learn a stream's fields
TXT_UNITS = ("line", "paragraph", "file")
_CHUNK_CHARACTERS = 1 << 20
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_NOT_JSON_LINES = "not JSON lines (one JSON object per line)"


def open_binary(path: Path) -> BinaryIO:
    """``path`` opened for reading, decompressed according to its name's ending."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return io.BufferedReader(gzip.open(path, "rb"))
    if name.endswith(".bz2"):
        return io.BufferedReader(bz2.open(path, "rb"))
    if name.endswith(".xz"):
        return io.BufferedReader(lzma.open(path, "rb"))
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataError(f"--input {path}: reading .zst files needs the zstandard package "
                            "(pip install zstandard)") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def is_compressed(path: Path) -> bool:
    return path.name.lower().endswith((".gz", ".bz2", ".xz", ".zst"))


def jsonl_values(files: Sequence[Path], text_key: str, description: str, skip: int = 0) -> Iterator[object]:
    """The ``text_key`` value of each record of ``files`` in order (``None`` where it is missing),
    after the first ``skip`` records (which are counted, not parsed)."""
    fields: dict[str, None] = {}  # of the records read while the key is not found, in order
    missing = 0  # records read without the key, before it was first found
    found = False
    for record in _jsonl_records(files, skip):
        if found:
            yield record.get(text_key)
            continue
        if text_key in record:
            found = True
            yield from [None] * missing
            yield record[text_key]
            continue
        fields.update(dict.fromkeys(record))
        missing += 1
        if missing >= FIELD_SEARCH_RECORDS:
            break
    if not found and missing:
        raise DataError(f"--text-key {text_key}: no such field in {description} (fields: {', '.join(fields)})")


def count_jsonl_records(path: Path) -> int:
    """The records of a ``.jsonl`` file (its non-blank lines), without parsing them."""
    return sum(1 for _, _, line in _lines(path) if not line.isspace())


def txt_documents(files: Sequence[Path], unit: str, skip: int = 0) -> Iterator[str]:
    """The ``unit`` documents (``TXT_UNITS``) of ``files`` in order, after the first ``skip``."""
    for path in files:
        with _open_text(path) as stream:
            for document in _txt_units(stream, unit):
                if skip:
                    skip -= 1
                    continue
                yield document


def count_txt_documents(path: Path, unit: str) -> int:
    """The ``unit`` documents of one ``.txt`` file."""
    with _open_text(path) as stream:
        return sum(1 for _ in _txt_units(stream, unit))


def _jsonl_records(files: Sequence[Path], skip: int) -> Iterator[dict]:
    for path in files:
        for number, offset, line in _lines(path):
            if skip:
                skip -= not line.isspace()
                continue
            record = _parse_record(line, path, number, offset)
            if record is not None:
                yield record


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """``(number, byte offset, line)`` of each line of a file, a leading byte-order mark dropped."""
    with open_binary(path) as stream:
        offset = 0
        for number, line in enumerate(stream, start=1):
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                offset, line = len(codecs.BOM_UTF8), line[len(codecs.BOM_UTF8):]
            yield number, offset, line
            offset += len(line)


def _parse_record(line: bytes, path: Path, number: int, offset: int) -> dict | None:
    """The JSON object on ``line``, or ``None`` for a blank line."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _invalid_utf8(line, exc, path, number, offset) from None
    except json.JSONDecodeError as exc:
        if line.isspace() or not line:
            return None
        raise DataError(f"--input {path}: {_NOT_JSON_LINES}: line {number}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(record, dict):
        raise DataError(f"--input {path}: {_NOT_JSON_LINES}: line {number} is a JSON "
                        f"{_JSON_TYPES.get(type(record), 'value')}, not an object")
    return record


def _invalid_utf8(line: bytes, exc: UnicodeDecodeError, path: Path, number: int, offset: int) -> DataError:
    """A JSON line with an invalid byte in it is a file to convert; a line that would not be JSON
    even with the byte read as a placeholder is no JSON lines at all (a binary file)."""
    try:
        json.loads(line.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return DataError(f"--input {path}: {_NOT_JSON_LINES}: line {number} is not UTF-8 text")
    where = " of its decompressed text" if is_compressed(path) else ""
    return DataError(f"--input {path}: invalid UTF-8 at byte {offset + exc.start}{where}; convert the file to UTF-8")


def _open_text(path: Path) -> io.TextIOWrapper:
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline=None)


def _txt_units(stream: io.TextIOWrapper, unit: str) -> Iterator[str]:
    if unit == "line":
        for line in stream:
            yield line[:-1] if line.endswith("\n") else line
    elif unit == "paragraph":
        pending = ""  # the last, maybe unfinished, paragraph read so far
        while chunk := stream.read(_CHUNK_CHARACTERS):
            *paragraphs, pending = (pending + chunk).split("\n\n")
            yield from (paragraph for paragraph in paragraphs if paragraph)
        if pending:
            yield pending
    elif unit == "file":
        yield stream.read()
    else:
        raise DataError(f"--txt-document {unit}: expected one of {', '.join(TXT_UNITS)}")
