"""The error raised for bad data-preparation input or usage.

Its message is one line that names the file, key or flag at fault and says what was expected; the
CLI prints it as ``headless-megatron <command>: error: <message>`` and exits with status 2.
"""

from __future__ import annotations

from headless_megatron.errors import UserError


class DataError(UserError):
    """Bad input or usage for data preparation (missing file, unknown key, empty corpus, ...)."""
