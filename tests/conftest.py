"""Session-wide fixtures: the tokenized tiny corpora and the reference training runs, each built once
per session (per xdist worker) and shared by every test that reads them."""

import os
import sys
from pathlib import Path

import pytest

# The multi-rank helpers in tests/ are imported by name, in this process and in the forked ranks.
sys.path.insert(0, str(Path(__file__).parent))

from data_fixtures import TOPICS_VOCAB, tiny_builtin_dataset  # noqa: E402  (needs the path above)
from training_runs import train_reference, train_saved_run  # noqa: E402

# Under pytest-xdist the workers share the cores: each rank a test starts gets one intra-op thread
# (run_on_ranks, torchrun and the fault runs read OMP_NUM_THREADS), not all the cores each.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """Prefix of ``builtin:python-docs`` tokenized with a 512-id BPE tokenizer."""
    return tiny_builtin_dataset(tmp_path_factory.mktemp("pydocs"))


@pytest.fixture(scope="session")
def topics_dataset(tmp_path_factory):
    """Prefix of ``builtin:python-topics`` tokenized with a ``TOPICS_VOCAB``-id BPE tokenizer (the
    conversion tests: 79 long documents, a vocabulary that pads to 512)."""
    return tiny_builtin_dataset(tmp_path_factory.mktemp("topics"), vocab_size=TOPICS_VOCAB, corpus="python-topics")


@pytest.fixture(scope="session")
def gpt_reference(dataset):
    """The tiny headless GPT trained on one rank without a stop: the losses that other layouts,
    resumed and restarted runs must reproduce."""
    return train_reference(dataset)


@pytest.fixture(scope="session")
def gpt_saved_run(dataset, tmp_path_factory):
    """The reference run saved at iterations 10 and 20 and stopped at 20: tests resume copies of it."""
    return train_saved_run(dataset, tmp_path_factory.mktemp("gpt-saved") / "run")


_UNGROUPED: set[str] = set()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup`` a module's tests run on one worker, so that its module-scoped
    fixtures (trained checkpoints, tokenizers, a SLURM cluster) are built once; the SLURM modules
    are one group of their own (``pytestmark`` there)."""
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_collection_finish(session):
    """Find grouped tests that pytest-xdist's ``loadgroup`` could not tag: it appends ``@group`` to
    their node ids, which pytest 9.2 no longer lets it do, and they would then run on both workers
    at once (two single-node SLURM clusters colliding on the job ports). setup.py pins pytest below
    9.2."""
    if session.config.getoption("loadgroup", False):
        _UNGROUPED.update(item.nodeid for item in session.items
                          if item.get_closest_marker("xdist_group") and "@" not in item.nodeid)


def pytest_runtest_setup(item):
    if item.nodeid in _UNGROUPED:
        pytest.fail("--dist loadgroup could not group this test with its xdist_group (pytest-xdist cannot tag node "
                    "ids under this pytest); install the pytest that setup.py's test extra names", pytrace=False)
