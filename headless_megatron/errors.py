"""The one error path for mistakes the user can fix.

Everything a user can correct (a config key, a flag, a data file, a checkpoint, a model directory, an
evaluation input) raises a subclass of :class:`UserError` whose message is one line naming the key,
file or flag at fault and what was expected. The CLI prints it as ``headless-megatron <command>:
error: <message>`` and exits with :data:`EXIT_BAD_INPUT`; anything else that escapes is a bug and
keeps its traceback (exit 1).
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A mistake the user can fix, described in one line that starts with the key, file or flag."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's error message, to quote inside a one-line ``UserError``."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
