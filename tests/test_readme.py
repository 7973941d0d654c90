"""The README's commands run as written, in order, from a fresh directory: the shell blocks of its
Commands, Data and Pretraining sections are executed by bash, with ``headless-megatron`` wrapped
to add tiny-size flags (a few iterations, a 512-id tokenizer). Lines that need a GPU node, the
network or a value the user fills in are listed below with the reason; everything else runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
SECTIONS = ("Commands", "Data", "Pretraining")
NOT_RUN_HERE = {  # a fragment of the line: why the test does not run it
    "EleutherAI/pythia-70m": "downloads a tokenizer from the Hugging Face Hub",
    "torchrun --nproc-per-node 8": "a GPU node",
    "--data-path ...": "a dataset the user names",
    "bench preprocess": "a benchmark",
    "check --nproc-per-node 4": "four ranks: covered by tests/test_cli.py at two",
}
TINY = r'''
headless-megatron() {
    case "$1" in
        preprocess) case " $* " in *" --train-tokenizer "*) set -- "$@" --vocab-size 512;; esac
                    set -- "$@" --quiet;;
        pretrain|finetune) set -- "$@" --train-iters 3 --lr-warmup-iters 1 --eval-iters 0 --num-workers 0 \
                               --log-interval 1;;
    esac
    "$PYTHON" -m headless_megatron "$@"
}
set -euo pipefail
'''


def readme_commands() -> tuple[list[str], list[str]]:
    """(lines to run, lines left out) of the README's bash blocks in SECTIONS, continuations joined."""
    text = (REPOSITORY / "README.md").read_text()
    run, left_out = [], []
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        if section.split("\n", 1)[0].strip() not in SECTIONS:
            continue
        for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if not line or line.startswith("#"):
                    continue
                (left_out if any(fragment in line for fragment in NOT_RUN_HERE) else run).append(line)
    return run, left_out


def test_the_readme_commands_run_in_order(tmp_path):
    run, left_out = readme_commands()
    assert any("pretrain --nproc-per-node 2" in line for line in run)
    assert len(left_out) == 8, left_out  # check at 4 ranks, Hub tokenizer, benchmark, 2 GPU runs, 3 placeholders
    (tmp_path / "configs").symlink_to(REPOSITORY / "configs")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text("".join(f'{{"text": "Document {i} of the user\'s own corpus."}}\n'
                                            for i in range(30)))
    script = TINY + "\n".join(run) + "\n"
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPOSITORY),
                                 "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (tmp_path / "runs" / "demo" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert (tmp_path / "data" / "c_text_document.bin").is_file()
