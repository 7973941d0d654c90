"""Reading the input corpus (``--input``) as a stream of documents, and ``--shard i/n``.

An input is one of:

- ``builtin:<name>``: an embedded corpus (``headless_megatron.data.builtin``), no download;
- local files and/or directories (searched recursively, hidden entries skipped) of one format:
  ``.jsonl``/``.json`` and ``.parquet`` (the ``--text-key`` field of each record is a document),
  ``.csv`` (the ``--text-key`` column), ``.txt`` (one document per line, per paragraph or per file:
  ``--txt-document``); each may be compressed (``.gz``, ``.bz2``, ``.xz``, ``.zst``);
- a Hugging Face Hub dataset name, with ``--dataset-config`` and ``--split``.

``.jsonl`` and ``.txt`` files are read line by line by ``data/file_reader.py``, which gives the
records ``datasets`` gives without importing it (two seconds of start-up) or copying the corpus into
its cache; without ``--streaming`` the files are counted first (their records, unparsed), for the
ETA and ``--shard``. Other files and Hub datasets are read by Hugging Face ``datasets``: by default
through its Arrow cache (memory-mapped, so the corpus is never held in RAM, and its size is known
for the ETA), or, with ``--streaming``, record by record without any cache (for corpora too large to
copy).

``--shard i/n`` keeps the ``i``-th of ``n`` contiguous parts, so that the shards' outputs merged in
order are the single-run dataset, document for document. Parts are ranges of documents when the
number of documents is known (built-in corpora, files read without ``--streaming``: the same split
as ``Dataset.shard(contiguous=True)``), and ranges of input files under ``--streaming``
(``IterableDataset.shard``), where ``n`` can be at most the number of files.
"""

from __future__ import annotations

import codecs
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from headless_megatron.data import builtin, file_reader
from headless_megatron.data.errors import DataError
from headless_megatron.errors import first_line

# File name endings -> the ``datasets`` builder that reads them.
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
READ_DIRECTLY = (".jsonl", ".txt")  # by data/file_reader.py, not datasets
_READ_BATCH = 1024  # documents per Arrow batch read from ``datasets``


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` (``--shard index/count``, counted from 0)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise DataError(f"--shard {text}: expected i/n, e.g. 0/4 for the first of 4 parts") from None
        if not 0 <= index < count:
            raise DataError(f"--shard {text}: expected 0 <= i < n")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        """Appended to ``--output-prefix`` so that each shard writes its own dataset."""
        return f"-{self.index:05d}-of-{self.count:05d}"

    def bounds(self, total: int) -> tuple[int, int]:
        """Document range ``[start, end)`` of this part of ``total`` (as ``Dataset.shard`` splits)."""
        size, remainder = divmod(total, self.count)
        start = size * self.index + min(self.index, remainder)
        return start, start + size + (1 if self.index < remainder else 0)


@dataclass
class Corpus:
    """The documents of an input, read lazily; iterate ``documents()`` once per pass.

    ``read`` returns a fresh iterator over the raw values: usually ``str``, but ``None`` or
    non-text values are possible in structured files, and the pipeline decides what to skip and
    what to reject. ``files`` are the local files behind it, searched when one is not UTF-8.
    """

    description: str
    inputs: list[str]
    text_key: str
    num_documents: int | None
    read: Callable[[], Iterator[object]] = field(repr=False)
    files: list[Path] = field(default_factory=list, repr=False)

    def documents(self) -> Iterator[object]:
        try:
            yield from self.read()
        except DataError:
            raise
        except Exception as exc:
            if not _is_reading_error(exc):
                raise
            raise _reading_error(exc, self.description, self.files) from exc


def open_corpus(
    inputs: Sequence[str],
    *,
    text_key: str = "text",
    dataset_config: str | None = None,
    split: str = "train",
    streaming: bool = False,
    txt_document: str = "line",
    cache_dir: str | None = None,
    shard: Shard | None = None,
) -> Corpus:
    """The corpus named by ``--input`` (see the module docstring), restricted to ``shard``."""
    inputs = [str(spec) for spec in inputs]
    if not inputs:
        raise DataError("--input: expected at least one input")
    if any(builtin.is_builtin(spec) for spec in inputs):
        if len(inputs) > 1:
            raise DataError(f"--input {' '.join(inputs)}: a built-in corpus cannot be combined with other inputs")
        return _builtin_corpus(inputs[0], text_key, shard)
    if len(inputs) == 1 and not Path(inputs[0]).expanduser().exists() and not looks_like_a_local_path(inputs[0]):
        return _hub_corpus(inputs[0], text_key, dataset_config, split, streaming, cache_dir, shard)
    files = _local_files(inputs)
    return _files_corpus(inputs, files, text_key, streaming, txt_document, cache_dir, shard)


def looks_like_a_local_path(spec: str) -> bool:
    """Hub names are ``name`` or ``owner/name``; anything else is meant as a local path."""
    known_endings = tuple(FORMATS) + COMPRESSIONS + (".model",)
    return spec.startswith(("/", ".", "~")) or spec.endswith(known_endings) or spec.count("/") > 1


def _builtin_corpus(spec: str, text_key: str, shard: Shard | None) -> Corpus:
    total = builtin.builtin_document_count(spec)  # also rejects unknown names
    start, end = shard.bounds(total) if shard else (0, total)

    def iterate() -> Iterator[str]:
        for number, document in enumerate(builtin.builtin_documents(spec)):
            if start <= number < end:
                yield document

    return Corpus(spec, [spec], text_key, end - start, iterate)


def _local_files(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for spec in inputs:
        path = Path(spec).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(
                (
                    found
                    for found in path.rglob("*")
                    if found.is_file()
                    and _format_of(found) is not None
                    and not any(part.startswith(".") for part in found.relative_to(path).parts)
                ),
                key=lambda found: found.relative_to(path).as_posix(),
            )
            if not found:
                raise DataError(f"--input {spec}: the directory has no {'/'.join(FORMATS)} files")
            files.extend(found)
        else:
            raise DataError(f"--input {spec}: no such file or directory")
    unknown = [str(path) for path in files if _format_of(path) is None]
    if unknown:
        raise DataError(
            f"--input {unknown[0]}: unsupported file type; "
            f"expected {', '.join(FORMATS)} (optionally {', '.join(COMPRESSIONS)})"
        )
    formats = sorted({_format_of(path) for path in files})
    if len(formats) > 1:
        raise DataError(f"--input: the files mix formats ({', '.join(formats)}); preprocess each format separately")
    return files


def _format_of(path: Path) -> str | None:
    ending = _ending_of(path)
    return FORMATS[ending] if ending else None


def _ending_of(path: Path) -> str | None:
    """The format's ending of ``path``'s name (``.jsonl`` for ``a.jsonl.gz``), if it has one."""
    name = path.name.lower()
    for compression in COMPRESSIONS:
        name = name.removesuffix(compression)
    return next((ending for ending in FORMATS if name.endswith(ending)), None)


def _direct_corpus(inputs: list[str], files: list[Path], description: str, text_key: str, streaming: bool,
                   txt_document: str, shard: Shard | None) -> Corpus:
    """``.jsonl`` or ``.txt`` files read by ``file_reader`` (see the module docstring)."""
    if txt_document not in file_reader.TXT_UNITS:
        raise DataError(f"--txt-document {txt_document}: expected one of {', '.join(file_reader.TXT_UNITS)}")
    jsonl = _ending_of(files[0]) == ".jsonl"
    if streaming:
        if shard is not None and shard.count > len(files):
            raise DataError(
                f"--shard {shard}: with --streaming, shards are ranges of input files, and {description} "
                f"has {len(files)}; use at most {len(files)} shards or drop --streaming"
            )
        first, last = shard.bounds(len(files)) if shard else (0, len(files))
        part, skip, num_documents = files[first:last], 0, None
    else:
        try:
            total = sum(file_reader.count_jsonl_records(path) if jsonl
                        else file_reader.count_txt_documents(path, txt_document) for path in files)
        except (OSError, ValueError) as exc:  # a corrupt archive, invalid UTF-8 in a .txt
            raise _reading_error(exc, description, files) from exc
        skip, end = shard.bounds(total) if shard else (0, total)
        part, num_documents = files, end - skip

    def iterate() -> Iterator[object]:
        values = (file_reader.jsonl_values(part, text_key, description, skip) if jsonl
                  else file_reader.txt_documents(part, txt_document, skip))
        yield from itertools.islice(values, num_documents)

    return Corpus(description, inputs, text_key, num_documents, iterate, files)


def _files_corpus(
    inputs: list[str],
    files: list[Path],
    text_key: str,
    streaming: bool,
    txt_document: str,
    cache_dir: str | None,
    shard: Shard | None,
) -> Corpus:
    builder = _format_of(files[0])
    if builder == "text" and text_key != "text":
        raise DataError(f"--text-key {text_key}: .txt inputs have a single field, 'text'")
    if len(files) == 1 and len(inputs) == 1:
        description = inputs[0]
    else:
        description = f"{len(files)} {builder} files ({', '.join(inputs)})"
    if all(path.stat().st_size == 0 for path in files):  # datasets cannot even infer a schema from them
        raise DataError(f"--input {description}: no documents to write (the input is empty)")
    if all(_ending_of(path) in READ_DIRECTLY for path in files):
        return _direct_corpus(inputs, files, description, text_key, streaming, txt_document, shard)
    dataset = _load(description, builder, data_files=[str(path) for path in files], split="train",
                    streaming=streaming, cache_dir=cache_dir, files=files)
    return _dataset_corpus(dataset, description, inputs, text_key, shard, streaming, files)


def _hub_corpus(
    name: str,
    text_key: str,
    dataset_config: str | None,
    split: str,
    streaming: bool,
    cache_dir: str | None,
    shard: Shard | None,
) -> Corpus:
    description = name + (f" ({dataset_config})" if dataset_config else "") + f", split {split}"
    dataset = _load(description, name, dataset_config, split=split, streaming=streaming, cache_dir=cache_dir,
                    not_found=f"--input {name}: not a local path, and loading it from the Hugging Face Hub failed")
    return _dataset_corpus(dataset, description, [name], text_key, shard, streaming, [])


def _load(description: str, *args, files: Sequence[Path] = (), not_found: str | None = None, **kwargs):
    """``datasets.load_dataset``, whose failures here all mean bad input (it reports them through
    a dozen exception types); without ``--streaming`` it reads every record, so this is also
    where a non-UTF-8 file or a malformed record shows."""
    import datasets

    _unlog_builder_errors()
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:
        if not_found is not None:
            raise DataError(f"{not_found}: {_reason(exc)}") from exc
        raise _reading_error(exc, description, files) from exc


def _unlog_builder_errors() -> None:
    """The ``datasets`` builders of our formats log each error with its file just before raising it;
    the exception becomes our one-line ``DataError``, which the log line would precede as a second
    report, in another form. The filter stays: a stream raises its errors later, in ``Corpus.documents``."""
    for builder in set(FORMATS.values()):
        logging.getLogger(f"datasets.packaged_modules.{builder}.{builder}").addFilter(_below_error)


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


def _dataset_corpus(dataset, description: str, inputs: list[str], text_key: str, shard: Shard | None,
                    streaming: bool, files: list[Path]) -> Corpus:
    import datasets

    columns = dataset.column_names
    if columns is not None and text_key not in columns:
        raise DataError(f"--text-key {text_key}: no such field in {description} (fields: {', '.join(columns)})")
    if columns is not None:
        dataset = dataset.select_columns([text_key])
    if shard is not None and isinstance(dataset, datasets.IterableDataset):
        if shard.count > dataset.n_shards:
            raise DataError(
                f"--shard {shard}: with --streaming, shards are ranges of input files, and {description} "
                f"has {dataset.n_shards}; use at most {dataset.n_shards} shards or drop --streaming"
            )
        dataset = dataset.shard(num_shards=shard.count, index=shard.index, contiguous=True)
    elif shard is not None:
        dataset = dataset.shard(num_shards=shard.count, index=shard.index, contiguous=True)
    num_documents = _known_length(dataset, shard)

    def iterate() -> Iterator[object]:
        for batch in dataset.iter(batch_size=_READ_BATCH):
            if text_key not in batch:  # a stream whose fields were unknown until the first record
                raise DataError(f"--text-key {text_key}: no such field in {description} (fields: {', '.join(batch)})")
            yield from batch[text_key]

    return Corpus(description, inputs, text_key, num_documents, iterate, files)


def _known_length(dataset, shard: Shard | None) -> int | None:
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return len(dataset)
    splits = dataset.info.splits
    if shard is None and splits and dataset.split in splits:
        return splits[dataset.split].num_examples or None
    return None


def _reading_error(exc: BaseException, description: str, files: Sequence[Path]) -> DataError:
    """A one-line error for a failure to read the input; invalid UTF-8 is located in its file."""
    if isinstance(exc, UnicodeDecodeError) or isinstance(exc.__cause__, UnicodeDecodeError):
        located = _first_invalid_utf8(files)
        if located is not None:
            return DataError(f"--input {located[0]}: invalid UTF-8 at byte {located[1]}; convert the file to UTF-8")
        return DataError(f"--input {description}: invalid UTF-8 ({_reason(exc)}); convert the input to UTF-8")
    return DataError(f"--input {description}: reading failed: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    """The library's own words: ``datasets`` wraps the parser's error in a generic one."""
    generic = type(exc).__name__ == "DatasetGenerationError" and exc.__cause__ is not None
    return first_line(exc.__cause__ if generic else exc)


def _is_reading_error(exc: Exception) -> bool:
    """Errors of ``datasets`` and pyarrow while reading records: bad input, not a bug of ours."""
    module = type(exc).__module__ or ""
    return module.startswith(("datasets", "pyarrow", "json", "pandas")) or isinstance(exc, (OSError, ValueError))


def _first_invalid_utf8(files: Sequence[Path]) -> tuple[Path, int] | None:
    """The first uncompressed file with invalid UTF-8, and the byte offset; only read on error."""
    for path in files:
        if path.name.lower().endswith(COMPRESSIONS) or _format_of(path) == "parquet":
            continue
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0  # of the next chunk in the file
        with open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                pending = len(decoder.getstate()[0])  # bytes of a character cut by the last chunk
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    return path, offset - pending + exc.start
                offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return path, offset - len(decoder.getstate()[0])
    return None

