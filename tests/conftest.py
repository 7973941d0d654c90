import sys
from pathlib import Path

import pytest

# The multi-rank helpers in tests/ are imported by name, in this process and in the forked ranks.
sys.path.insert(0, str(Path(__file__).parent))

from data_fixtures import tiny_builtin_dataset  # noqa: E402  (needs the path above)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """Prefix of ``builtin:python-docs`` tokenized with a 512-id BPE tokenizer, built once per session."""
    return tiny_builtin_dataset(tmp_path_factory.mktemp("pydocs"))
