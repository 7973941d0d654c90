"""``headless-megatron check``: the smoke test's config, and a pipeline-parallel run through the real loop.

(The tensor + sequence parallel run is in tests/test_cli.py.)
"""

import argparse
import subprocess
import sys

from headless_megatron.commands.check import VOCAB, add_arguments, check_config


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_config_is_a_tiny_gpt_whose_global_batch_covers_every_data_parallel_rank():
    config = check_config(_args("--pipeline-model-parallel-size", "2", "--num-microbatches", "3"), world_size=8)
    assert (config.model, config.loss, config.mock_data, config.vocab_size) == ("gpt", "cwt", True, VOCAB)
    assert config.num_layers == 4  # two per pipeline stage
    assert config.global_batch_size == 4 * 3 * 4  # micro-batch x micro-batches x DP (8 ranks / PP 2)
    assert config.num_microbatches(8) == 3
    assert (config.save, config.eval_iters, config.num_workers) == (None, 0, 0)


def test_sequence_parallel_is_dropped_without_tensor_parallelism():
    assert not check_config(_args("--sequence-parallel"), world_size=1).sequence_parallel
    with_tp = _args("--sequence-parallel", "--tensor-model-parallel-size", "2")
    assert check_config(with_tp, world_size=2).sequence_parallel


def test_check_trains_on_two_pipeline_stages():
    done = subprocess.run(
        [sys.executable, "-m", "headless_megatron", "check", "--nproc-per-node", "2",
         "--pipeline-model-parallel-size", "2", "--train-iters", "10"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "check: world 2 = TP 1 x PP 2 x DP 1, cpu, local spec, 10 iterations" in done.stdout
    assert done.stdout.count("iteration      10/10 | loss") == 1
    assert done.stdout.count("check passed") == 1
