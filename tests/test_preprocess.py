"""The preprocess pipeline and command: round trip, GPTDataset, shards + merge, every bad input."""

import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import tiny_builtin_dataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset

from headless_megatron.cli import main
from headless_megatron.data import preprocess, tokenizer_training
from headless_megatron.data.builtin import builtin_documents
from headless_megatron.data.indexed import AtomicDatasetWriter, DatasetPaths
from headless_megatron.data.preprocess import build_dataset, prepare_tokenizer
from headless_megatron.data.sidecar import read_sidecar
from headless_megatron.data.sources import Corpus
from headless_megatron.data.tokenizer import tokenizer_for_dataset
from headless_megatron.data.workers import PIECE_CHARACTERS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def topics_tokenizer(tmp_path_factory):
    """A BPE tokenizer directory trained on builtin:python-topics, for runs given --tokenizer."""
    prefix = tmp_path_factory.mktemp("tokenizer") / "topics"
    assert main(["preprocess", "--input", "builtin:python-topics", "--train-tokenizer", "bpe", "--vocab-size", "400",
                 "--output-prefix", str(prefix), "--tokenizer-only", "--quiet"]) == 0
    return str(prefix) + "_tokenizer"


def _preprocess(*args):
    return main(["preprocess", *map(str, args), "--quiet"])


def _dataset_bytes(prefix):
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()


def _outputs(directory):
    """Everything a run may have written into ``directory``, scratch directories included."""
    return sorted(path.name for path in Path(directory).iterdir() if not path.name.endswith((".jsonl", ".txt")))


def test_every_document_decodes_back_to_its_text_and_counts_match_the_sidecar(dataset):
    indexed, info, tokenizer = IndexedDataset(dataset), read_sidecar(f"{dataset}.json"), tokenizer_for_dataset(dataset)
    documents = list(builtin_documents("python-docs"))
    assert len(indexed) == info.documents == len(documents)
    assert indexed.sequence_lengths.sum() == info.tokens
    assert indexed.document_indices.tolist() == list(range(len(documents) + 1))
    assert info.dtype == "uint16" == indexed.index.dtype.__name__ and info.tokenizer["vocab_size"] == 512
    for number, text in enumerate(documents):
        ids = indexed[number]
        assert ids[-1] == tokenizer.eod and tokenizer.eod not in ids[:-1]
        assert tokenizer.detokenize(ids[:-1]) == text
    assert info.source == {"inputs": ["builtin:python-docs"], "shard": None,
                           "text_bytes": sum(len(text.encode()) for text in documents),
                           "skipped": {"empty": 0, "invalid_utf8": 0, "no_text_key": 0}}
    assert info.tokenizer["path"] == "python-docs-bpe512_tokenizer"


def test_gpt_dataset_samples_real_text(dataset, tmp_path):
    tokenizer = tokenizer_for_dataset(dataset)
    config = GPTDatasetConfig(
        random_seed=1234, sequence_length=64, blend=([dataset], None), split="98,2,0", tokenizer=tokenizer,
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, path_to_cache=str(tmp_path),
        mid_level_dataset_surplus=0.005,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [200, 20, None], lambda: True, config).build()
    assert len(train) >= 200 and len(valid) >= 20  # at least the samples asked for: whole epochs
    sample = train[7]
    assert sample["tokens"].shape == (64,) and (sample["labels"][:-1] == sample["tokens"][1:]).all()
    assert int(sample["tokens"].max()) < tokenizer.vocab_size
    words = tokenizer.detokenize(sample["tokens"]).split()
    assert sum(word.lower() in {"the", "a", "of", "to", "is", "and"} for word in words) >= 2


def test_the_fixture_is_deterministic_and_reused(tmp_path):
    first = tiny_builtin_dataset(tmp_path / "a", vocab_size=300, corpus="python-topics")
    second = tiny_builtin_dataset(tmp_path / "b", vocab_size=300, corpus="python-topics")
    assert _dataset_bytes(first) == _dataset_bytes(second)
    stamp = Path(f"{first}.bin").stat().st_mtime_ns
    assert tiny_builtin_dataset(tmp_path / "a", vocab_size=300, corpus="python-topics") == first
    assert Path(f"{first}.bin").stat().st_mtime_ns == stamp


def test_two_workers_write_the_same_dataset_as_one(topics_tokenizer, tmp_path, capsys):
    for workers in (1, 2):
        assert _preprocess("--input", "builtin:python-topics", "--tokenizer", topics_tokenizer,
                           "--output-prefix", tmp_path / f"w{workers}", "--workers", workers) == 0
    assert _dataset_bytes(tmp_path / "w1_text_document") == _dataset_bytes(tmp_path / "w2_text_document")
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"preprocess: wrote {tmp_path}/w2_text_document: 78 documents, ")
    assert out[-1].endswith("tokens/s, " + out[-1].split("tokens/s, ")[1]) and out[-1].endswith("; skipped 0")


@pytest.mark.parametrize("parse", [[], ["--parse-special-tokens"]], ids=["special_strings_as_text", "parsed"])
def test_every_engine_writes_the_bytes_of_the_hf_engine_and_the_sidecar_names_it(parse, topics_tokenizer, tmp_path,
                                                                                 capsys):
    """The corpus holds special-token strings in its text, leading spaces and odd Unicode."""
    documents = [*builtin_documents("python-topics"), "see <|endoftext|> here", " <|endoftext|>", "e\u0301\U0001f600x"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    for engine in ("hf", "auto", "fastokens", "gigatoken"):
        assert _preprocess("--input", corpus, "--tokenizer", topics_tokenizer, "--output-prefix", tmp_path / engine,
                           "--tokenizer-engine", engine, "--workers", 2, *parse) == 0
        assert f"engine {'fastokens' if engine == 'auto' else engine})" in capsys.readouterr().out
    reference = _dataset_bytes(tmp_path / "hf_text_document")
    for engine in ("auto", "fastokens", "gigatoken"):
        assert _dataset_bytes(tmp_path / f"{engine}_text_document") == reference, engine
    recorded = read_sidecar(tmp_path / "auto_text_document.json").tokenizer
    assert (recorded["engine"], recorded["parse_special_tokens"]) == ("fastokens", bool(parse))
    written = IndexedDataset(str(tmp_path / "hf_text_document"))  # kept: its arrays view its memory map
    ids = written[len(documents) - 2].tolist()
    eod = tokenizer_for_dataset(tmp_path / "hf_text_document").eod
    assert (ids.count(eod) == 2) == bool(parse)  # the literal string, then the document's end


def test_a_named_engine_that_cannot_run_is_one_line_and_writes_nothing(topics_tokenizer, tmp_path, capsys,
                                                                       monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "gigatoken" else
                        find_spec(name, *args))
    assert _preprocess("--input", "builtin:python-topics", "--tokenizer", topics_tokenizer, "--output-prefix",
                       tmp_path / "p", "--tokenizer-engine", "gigatoken") == 2
    assert capsys.readouterr().err == ("headless-megatron preprocess: error: --tokenizer-engine gigatoken: gigatoken "
                                       "is not installed (pip install gigatoken); use auto or hf\n")
    assert [name for name in _outputs(tmp_path) if not name.endswith("_tokenizer")] == []
    with pytest.raises(SystemExit) as done:
        _preprocess("--input", "builtin:python-topics", "--tokenizer-engine", "tiktoken", "--output-prefix", tmp_path)
    assert done.value.code == 2
    assert capsys.readouterr().err == ("headless-megatron preprocess: error: argument --tokenizer-engine: invalid "
                                       "choice: 'tiktoken' (choose from 'auto', 'hf', 'fastokens', 'gigatoken')\n")


def test_shards_merged_equal_a_single_run(topics_tokenizer, tmp_path, capsys):
    tokenizer = ["--tokenizer", topics_tokenizer]
    assert _preprocess("--input", "builtin:python-topics", *tokenizer, "--output-prefix", tmp_path / "single") == 0
    for index in range(3):
        assert _preprocess("--input", "builtin:python-topics", *tokenizer, "--output-prefix", tmp_path / "sharded",
                           "--shard", f"{index}/3") == 0
    assert _preprocess("--merge", "--output-prefix", tmp_path / "sharded") == 0
    assert _dataset_bytes(tmp_path / "single_text_document") == _dataset_bytes(tmp_path / "sharded_text_document")
    single = read_sidecar(tmp_path / "single_text_document.json")
    merged = read_sidecar(tmp_path / "sharded_text_document.json")
    assert (merged.documents, merged.tokens) == (single.documents, single.tokens)
    assert merged.tokenizer["fingerprint"] == single.tokenizer["fingerprint"]
    assert merged.source["merged_from"] == [f"sharded-0000{index}-of-00003_text_document" for index in range(3)]
    assert merged.tokenizer["path"] == "sharded_tokenizer"
    assert tokenizer_for_dataset(tmp_path / "sharded_text_document").fingerprint == single.tokenizer["fingerprint"]
    last_line = capsys.readouterr().out.splitlines()[-1]
    assert last_line.startswith(f"preprocess: merged {tmp_path}/sharded_text_document: 78 documents")


def test_streamed_file_shards_merged_equal_a_single_run(topics_tokenizer, tmp_path):
    documents = list(builtin_documents("python-topics"))
    for number in range(4):
        lines = (json.dumps({"text": text}) + "\n" for text in documents[number::4])
        (tmp_path / f"part{number}.jsonl").write_text("".join(lines))
    files = sorted(str(path) for path in tmp_path.glob("*.jsonl"))
    common = ["--tokenizer", topics_tokenizer, "--cache-dir", tmp_path / "cache"]
    assert _preprocess("--input", *files, *common, "--output-prefix", tmp_path / "single") == 0
    for index in range(2):
        assert _preprocess("--input", *files, *common, "--streaming", "--output-prefix", tmp_path / "s",
                           "--shard", f"{index}/2") == 0
    assert _preprocess("--merge", "--output-prefix", tmp_path / "s") == 0
    assert _dataset_bytes(tmp_path / "single_text_document") == _dataset_bytes(tmp_path / "s_text_document")


def test_empty_and_whitespace_documents_are_counted_skips(topics_tokenizer, tmp_path, capsys):
    records = [{"text": "A real document."}, {"text": ""}, {"text": " \n\t "}, {"text": None}, {"text": "Another one."}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    assert _preprocess("--input", tmp_path / "a.jsonl", "--tokenizer", topics_tokenizer,
                       "--output-prefix", tmp_path / "out", "--cache-dir", tmp_path / "cache") == 0
    assert capsys.readouterr().out.rstrip().endswith("; skipped 3 (empty 2, no text (field missing or null) 1)")
    info = read_sidecar(tmp_path / "out_text_document.json")
    assert info.documents == 2 and info.source["skipped"] == {"empty": 2, "invalid_utf8": 0, "no_text_key": 1}
    tokenizer = tokenizer_for_dataset(tmp_path / "out_text_document")
    dataset = IndexedDataset(str(tmp_path / "out_text_document"))
    assert [tokenizer.detokenize(dataset[i][:-1]) for i in range(2)] == ["A real document.", "Another one."]


def test_text_that_is_not_valid_unicode_is_a_counted_skip(topics_tokenizer, tmp_path):
    from headless_megatron.data.tokenizer import load_tokenizer

    texts = ["fine", "lone \udc80 surrogate", "also fine"]
    corpus = Corpus("python strings", ["python strings"], "text", 3, lambda: iter(texts))
    summary = build_dataset(corpus, load_tokenizer(topics_tokenizer), DatasetPaths(tmp_path / "p"), progress=False)
    assert (summary.documents, summary.skipped) == (2, {"empty": 0, "invalid_utf8": 1, "no_text_key": 0})
    assert summary.line().endswith("; skipped 1 (invalid UTF-8 1)")


BAD_INPUTS = {
    "missing path": ([], ["--input", "{dir}/nope.jsonl"], "--input {dir}/nope.jsonl: no such file or directory"),
    "unknown text key": ([("a.jsonl", '{"text": "x"}\n')], ["--input", "{dir}/a.jsonl", "--text-key", "body"],
                         "--text-key body: no such field in {dir}/a.jsonl (fields: text)"),
    "empty file": ([("a.jsonl", "")], ["--input", "{dir}/a.jsonl"],
                   "--input {dir}/a.jsonl: no documents to write (the input is empty)"),
    "only blank documents": ([("a.txt", "\n  \n\t\n")], ["--input", "{dir}/a.txt"],
                             "--input {dir}/a.txt: no documents to write (all 3 records were skipped: empty 3)"),
    "invalid UTF-8": ([("a.txt", b"good line\nbad \xc3\x28 line\n")], ["--input", "{dir}/a.txt"],
                      "--input {dir}/a.txt: invalid UTF-8 at byte 14; convert the file to UTF-8"),
    "not text": ([("a.jsonl", '{"text": "x"}\n{"text": 12}\n')], ["--input", "{dir}/a.jsonl"],
                 "--text-key text: record 1 of {dir}/a.jsonl holds int '12', expected text"),
    "record without the text, --strict": ([("a.jsonl", '{"text": "x"}\n{"body": "y"}\n')],
                                          ["--input", "{dir}/a.jsonl", "--strict"],
                                          "--text-key text: record 1 of {dir}/a.jsonl has no text (the field is "
                                          "missing or null; drop --strict to skip such records)"),
    "dtype too small": ([("a.jsonl", '{"text": "x"}\n')], ["--input", "{dir}/a.jsonl", "--dtype", "uint8"],
                        "--dtype uint8: the tokenizer has 400 ids, more than uint8 holds (256); choose a wider dtype "
                        "or --dtype auto"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_one_line_error_and_leaves_no_output(case, topics_tokenizer, tmp_path, capsys):
    files, args, message = BAD_INPUTS[case]
    for name, content in files:
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    args = [arg.format(dir=tmp_path) for arg in args]
    assert _preprocess(*args, "--tokenizer", topics_tokenizer, "--output-prefix", tmp_path / "out",
                       "--cache-dir", tmp_path / "cache") == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == f"headless-megatron preprocess: error: {message.format(dir=tmp_path)}"
    assert _outputs(tmp_path) == (["cache"] if (tmp_path / "cache").exists() else [])


@pytest.mark.parametrize("streaming", [[], ["--streaming"]])
def test_random_bytes_named_jsonl_are_one_line_on_stderr_and_nothing_else(streaming, topics_tokenizer, tmp_path,
                                                                            capfd, caplog):
    (tmp_path / "random.jsonl").write_bytes(random.Random(0).randbytes(1 << 16))
    assert _preprocess("--input", tmp_path / "random.jsonl", "--tokenizer", topics_tokenizer, *streaming,
                       "--output-prefix", tmp_path / "out", "--cache-dir", tmp_path / "cache") == 2
    assert capfd.readouterr().err == (f"headless-megatron preprocess: error: --input {tmp_path}/random.jsonl: not JSON "
                                      "lines (one JSON object per line): line 1 is not UTF-8 text\n")
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    assert _outputs(tmp_path) == []  # .jsonl is read directly: not even a datasets cache


def _with_normalizer(tokenizer_directory, path):
    """The tokenizer with a normalizer: its ids are not known to survive a cut, so it encodes documents whole."""
    config = json.loads((Path(tokenizer_directory) / "tokenizer.json").read_text())
    path.write_text(json.dumps({**config, "normalizer": {"type": "NFC"}}))
    return path


def test_a_document_longer_than_a_piece_gets_the_ids_of_the_whole_document(topics_tokenizer, tmp_path):
    text = " ".join(builtin_documents("python-topics"))
    assert len(text) > 4 * PIECE_CHARACTERS
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": text}) + "\n")
    assert _preprocess("--input", tmp_path / "a.jsonl", "--tokenizer", topics_tokenizer,
                       "--output-prefix", tmp_path / "out", "--cache-dir", tmp_path / "cache") == 0
    tokenizer = tokenizer_for_dataset(tmp_path / "out_text_document")
    dataset = IndexedDataset(str(tmp_path / "out_text_document"))  # kept: its arrays view its memory map
    assert dataset[0].tolist() == tokenizer.tokenize(text) + [tokenizer.eod]


@pytest.mark.parametrize("normalized", [False, True])
def test_a_document_encoded_at_once_above_the_limit_is_refused(normalized, topics_tokenizer, tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.setattr(preprocess, "MAX_PIECE_CHARACTERS", 2 * PIECE_CHARACTERS)
    long_text = " ".join(builtin_documents("python-topics"))[:200_000]
    stretch = "intro words " + "y" * 150_000 + " outro"
    records = [{"text": "short"}, {"text": long_text}, {"text": stretch}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    tokenizer = _with_normalizer(topics_tokenizer, tmp_path / "t.json") if normalized else topics_tokenizer
    assert _preprocess("--input", tmp_path / "a.jsonl", "--tokenizer", tokenizer,
                       "--output-prefix", tmp_path / "out", "--cache-dir", tmp_path / "cache") == 2
    if normalized:
        message = ("record 1 has 200,000 characters, more than the 131,072 that the --tokenizer encodes at once (only "
                   "byte-level BPE and unigram tokenizers with GPT-2's pre-tokenization, as --train-tokenizer makes, "
                   "are encoded in pieces); split the document")
    else:
        message = ("record 2 has a stretch of 150,001 characters without whitespace to cut at, more than the 131,072 "
                   "that are encoded at once; split the document")
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"headless-megatron preprocess: error: --input {tmp_path}/a.jsonl: {message}")
    assert not list(tmp_path.glob("out*"))


def test_a_tokenizer_trained_on_pieces_is_the_one_trained_on_whole_documents(monkeypatch):
    documents = [" ".join(builtin_documents("python-topics")), "a short one"]
    sizes = []
    train_tokenizer = tokenizer_training.train_tokenizer

    def recording(kind, vocab_size, texts, source=""):
        texts = list(texts)
        sizes.extend(map(len, texts))
        return train_tokenizer(kind, vocab_size, texts, source)

    monkeypatch.setattr(tokenizer_training, "train_tokenizer", recording)
    corpus = Corpus("python strings", ["python strings"], "text", 2, lambda: iter(documents))
    trained = prepare_tokenizer(corpus, train="bpe", vocab_size=400)
    assert max(sizes) <= PIECE_CHARACTERS and sum(sizes) == sum(map(len, documents))
    assert trained.encoder_json() == train_tokenizer("bpe", 400, documents).encoder_json()


def test_an_output_prefix_under_a_file_is_refused_before_the_tokenizer_loads(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _preprocess("--input", "builtin:python-topics", "--tokenizer", tmp_path / "no-such-tokenizer",
                       "--output-prefix", tmp_path / "file" / "sub" / "out") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"headless-megatron preprocess: error: --output-prefix {tmp_path}/file/sub/out: {tmp_path}/file is a file, "
        "not a directory")


def test_preprocess_refuses_to_run_on_several_ranks(tmp_path, capsys):
    assert main(["preprocess", "--nproc-per-node", "2", "--input", "builtin:python-topics",
                 "--output-prefix", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "headless-megatron preprocess: error: --nproc-per-node: preprocess does not run on ranks; use --workers N "
        "to tokenize in parallel")
    assert not list(tmp_path.iterdir())


def test_a_bad_input_with_a_trained_tokenizer_leaves_no_tokenizer_behind(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"text": "some text to learn from"}\n' * 20)
    assert _preprocess("--input", tmp_path / "a.jsonl", "--train-tokenizer", "bpe", "--vocab-size", "300",
                       "--dtype", "uint8", "--output-prefix", tmp_path / "out", "--cache-dir", tmp_path / "cache") == 2
    assert "--dtype uint8: the tokenizer has 275 ids, more than uint8 holds (256)" in capsys.readouterr().err
    assert _outputs(tmp_path) == []


def test_an_interrupted_run_keeps_the_previous_dataset_and_leaves_no_partial_files(topics_tokenizer, tmp_path,
                                                                                   monkeypatch, capsys):
    assert _preprocess("--input", "builtin:python-topics", "--tokenizer", topics_tokenizer,
                       "--output-prefix", tmp_path / "p") == 0
    before = _dataset_bytes(tmp_path / "p_text_document")
    calls = []

    def interrupted(self, tokens, lengths):
        calls.append(len(lengths))
        raise KeyboardInterrupt

    monkeypatch.setattr(AtomicDatasetWriter, "add_documents", interrupted)
    assert _preprocess("--input", "builtin:python-topics", "--tokenizer", topics_tokenizer,
                       "--output-prefix", tmp_path / "p") == 130
    assert capsys.readouterr().err.endswith("headless-megatron preprocess: interrupted; partial outputs removed\n")
    assert calls and _dataset_bytes(tmp_path / "p_text_document") == before
    assert _outputs(tmp_path) == ["p_text_document.bin", "p_text_document.idx", "p_text_document.json", "p_tokenizer"]


def test_merge_needs_every_shard_and_one_tokenizer(topics_tokenizer, tmp_path, capsys):
    common = ["--input", "builtin:python-topics", "--output-prefix", tmp_path / "s"]
    assert _preprocess(*common, "--tokenizer", topics_tokenizer, "--shard", "0/3") == 0
    assert _preprocess(*common, "--tokenizer", topics_tokenizer, "--shard", "2/3") == 0
    assert _preprocess("--merge", "--output-prefix", tmp_path / "s") == 2
    assert capsys.readouterr().err.rstrip().endswith(f"--merge {tmp_path}/s: shards 1/3 are missing or did not finish")
    other = tmp_path / "other"
    assert _preprocess("--input", "builtin:python-topics", "--train-tokenizer", "bpe", "--vocab-size", "300",
                       "--output-prefix", other, "--tokenizer-only") == 0
    assert _preprocess(*common, "--tokenizer", f"{other}_tokenizer", "--shard", "1/3") == 0
    assert _preprocess("--merge", "--output-prefix", tmp_path / "s") == 2
    assert capsys.readouterr().err.rstrip().endswith(
        f"{tmp_path}/s-00001-of-00003_text_document was made with another tokenizer than "
        f"{tmp_path}/s-00000-of-00003_text_document; preprocess every shard with the same --tokenizer")
    assert not (tmp_path / "s_text_document.bin").exists()
    assert _preprocess("--merge", "--output-prefix", tmp_path / "none") == 2
    assert "no shards" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--input", "builtin:python-topics", "--train-tokenizer", "bpe", "--vocab-size", "300", "--shard", "0/2"],
     "--shard with --train-tokenizer would train a different tokenizer per shard"),
    (["--merge", "--input", "builtin:python-topics"], "--merge combines existing shards: drop --input"),
    (["--tokenizer", "x"], "--input is required (or --merge)"),
    (["--input", "builtin:python-topics"], "expected exactly one of --tokenizer and --train-tokenizer"),
    (["--input", "builtin:python-topics", "--train-tokenizer", "bpe"],
     "--train-tokenizer bpe: --vocab-size is required"),
    (["--input", "builtin:python-topics", "--tokenizer", "t.json", "--vocab-size", "9"],
     "--vocab-size goes with --train-tokenizer"),
])
def test_usage_errors(args, message, tmp_path, capsys):
    assert _preprocess(*args, "--output-prefix", tmp_path / "p") == 2
    assert message in capsys.readouterr().err
    assert _outputs(tmp_path) == []


def test_argument_errors_are_argparse_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        _preprocess("--input", "builtin:python-topics", "--workers", "0", "--output-prefix", tmp_path / "p")
    assert done.value.code == 2
    assert "argument --workers: expected a positive integer, got '0'" in capsys.readouterr().err


def test_the_megatron_lm_style_tool_reports_errors_on_stderr_with_status_2(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "tools/preprocess_data.py"), "--input", str(tmp_path / "x.jsonl"),
                           "--tokenizer", "gpt2", "--output-prefix", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"headless-megatron preprocess: error: --input {tmp_path}/x.jsonl: no such file or directory\n"
    )
