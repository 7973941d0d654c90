"""The one error path for mistakes the user can fix.

Everything a user can correct (a config key, a flag, a data file, a checkpoint, a model directory, an
evaluation input) raises a subclass of :class:`UserError` whose message is one line naming the key,
file or flag at fault and what was expected. The CLI prints it as ``headless-megatron <command>:
error: <message>`` (:func:`report_user_error`) and exits with :data:`EXIT_BAD_INPUT`; anything else
that escapes is a bug and keeps its traceback (exit 1). Usage errors that argparse finds read the
same (:class:`OneLineErrorParser`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

EXIT_BAD_INPUT = 2

# Set by the --nproc-per-node launcher for its ranks: the first rank to create this file reports.
REPORTED_MARK_VARIABLE = "HEADLESS_MEGATRON_ERROR_REPORTED"


class UserError(Exception):
    """A mistake the user can fix, described in one line that starts with the key, file or flag."""


class UsageError(UserError):
    """A flag value or a combination of flags that a command refuses."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's error message, to quote inside a one-line ``UserError``."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def first_few(names: list[str], shown: int = 5) -> str:
    """Up to ``shown`` names, and how many more: a one-line message even for a whole model's worth."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def report_user_error(prog: str, error: UserError) -> int:
    """Print ``<prog>: error: <message>`` on stderr (once per launch of several local ranks, by the
    first rank that fails) and return :data:`EXIT_BAD_INPUT`."""
    if _first_to_report():
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def _first_to_report() -> bool:
    mark = os.environ.get(REPORTED_MARK_VARIABLE)
    if not mark:
        return True
    try:
        os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``<prog>: error: <message>``, with exit
    status 2 like every other bad input (the usage text is ``--help``'s)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")
