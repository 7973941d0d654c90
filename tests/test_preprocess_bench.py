"""bench preprocess: one table of the tokenizer engines at 1 and 2 workers, each a whole preprocess process."""

import json

from headless_megatron.benchmarks.preprocess import Prose
from headless_megatron.cli import main
from headless_megatron.commands.bench import main_for_tool

HEADER = ["corpus MB", "engine", "workers", "tokens", "tokenize s", "MB/s", "tokens/s", "tokenize x", "process s",
          "start-up s", "process x", "peak RSS MiB", "identical"]


def test_one_table_of_engines_and_workers_on_the_same_corpus(capsys):
    assert main_for_tool("preprocess", ["--megabytes", "0.5", "--engines", "fastokens", "hf", "--workers", "2", "1",
                                        "--vocab-size", "400", "--train-megabytes", "0.3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("corpus: docstrings of the installed packages (")
    assert "; tokenizer: trained bpe (vocab 400) on the first 0.3 MB of the docstrings of the installed" in lines[0]
    assert [cell.strip() for cell in lines[1].split("|")] == HEADER
    rows = [dict(zip(HEADER, (cell.strip() for cell in line.split("|")), strict=True)) for line in lines[3:]]
    assert [(row["engine"], row["workers"]) for row in rows] == [("hf", "1"), ("hf", "2"), ("fastokens", "1"),
                                                                ("fastokens", "2")]
    assert {row["corpus MB"] for row in rows} == {"0.50"} and len({row["tokens"] for row in rows}) == 1
    assert [row["identical"] for row in rows] == ["ref", "yes", "yes", "yes"]
    assert [row["tokenize x"] for row in rows[:2]] == [row["process x"] for row in rows[:2]] == ["1.00x", "1.00x"]
    for row in rows:
        process, start_up, tokenize = (float(row[key]) for key in ("process s", "start-up s", "tokenize s"))
        assert 0 < start_up <= process and abs(process - start_up - tokenize) < 0.02  # 0.5 MB: tokenize ~0.00 s
        assert float(row["MB/s"]) > 0 and int(row["peak RSS MiB"].replace(",", "")) > 50
        assert float(row["tokenize x"].removesuffix("x")) > 0


def test_the_corpus_is_package_prose_repeated_to_size(tmp_path):
    prose = Prose()
    prose.write_jsonl(tmp_path / "small.jsonl", 0.2)
    texts = [json.loads(line)["text"] for line in (tmp_path / "small.jsonl").read_text().splitlines()]
    assert 0.2e6 <= sum(len(text.encode()) for text in texts) < 0.2e6 + max(len(text.encode()) for text in texts)
    assert len(set(texts)) == len(texts) and all(len(text) >= 200 for text in texts)
    prose.lines, prose._sizes = prose.lines[:3], prose._sizes[:3]  # as if the packages held three documents
    prose._source = iter(())
    prose.write_jsonl(tmp_path / "repeated.jsonl", 0.01)
    repeated = [json.loads(line)["text"] for line in (tmp_path / "repeated.jsonl").read_text().splitlines()]
    assert len(repeated) > 3 and repeated == (texts[:3] * len(repeated))[:len(repeated)]


def test_bad_input_is_reported(capsys):
    assert main(["bench", "preprocess", "--input", "missing.jsonl"]) == 2
    expected = "headless-megatron bench: error: --input missing.jsonl: no such file or directory\n"
    assert capsys.readouterr().err == expected
