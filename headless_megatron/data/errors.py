"""The error raised for bad data-preparation input or usage.

Its message is one line that names the file, key or flag at fault and says what was expected; the
``preprocess`` command prints it as ``headless-megatron preprocess: error: <message>`` and exits
with status 2. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input or usage for data preparation (missing file, unknown key, empty corpus, ...)."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's error message, to quote inside a one-line ``DataError``."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
