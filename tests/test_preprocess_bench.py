"""bench preprocess: a table of tokens/s per worker count over full preprocessing runs."""

from headless_megatron.cli import main
from headless_megatron.commands.bench import main_for_tool


def test_table_with_one_and_two_workers(capsys):
    assert main_for_tool("preprocess", ["--input", "builtin:python-topics", "--train-tokenizer", "bpe",
                                        "--vocab-size", "300", "--workers", "1", "2", "--repeat", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "corpus builtin:python-topics x2, tokenizer trained bpe (vocab 300) on builtin:python-topics (300 ids)"
    )
    assert lines[1].split() == ["workers", "documents", "tokens", "MB", "seconds", "tokens/s", "MB/s", "speed-up"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["1", "2"]
    assert rows[0][1] == rows[1][1] == "156" and rows[0][2] == rows[1][2]  # 2 x 78 documents, same tokens
    assert rows[0][-1] == "1.00x" and float(rows[1][5].replace(",", "")) > 0


def test_bad_input_is_reported(capsys):
    assert main(["bench", "preprocess", "--input", "missing.jsonl"]) == 2
    expected = "headless-megatron bench: error: --input missing.jsonl: no such file or directory\n"
    assert capsys.readouterr().err == expected
