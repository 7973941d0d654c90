"""Embedded corpora: real English text that every Python installation already has, no download.

``builtin:python-docs`` is the documentation that ships inside the Python installation running this
code: the language-reference topics of ``pydoc_data`` (what ``help("with")`` prints) followed by the
docstrings of the standard library's modules, classes and functions (read from the ``.py`` sources
with ``ast``, never imported, so no module runs). 1.8 MB in 2,475 documents on CPython 3.11.

Documents are whole topics and whole docstrings of at least ``MIN_DOCSTRING_CHARS`` characters (short
ones such as "Return self+value." are left out), each kept once, in a fixed order: topics by name,
then source files by path, then docstrings in source order. The content is therefore the same on
every machine with the same Python release and distribution (a distribution that leaves parts of the
standard library out, such as ``tkinter``, gives a subset).

``builtin:python-topics`` is the first part alone (about 0.5 MB in 78 long documents), for the
fastest tests.
"""

from __future__ import annotations

import ast
import functools
import gc
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from headless_megatron.data.errors import DataError

PREFIX = "builtin:"
MIN_DOCSTRING_CHARS = 200
# Tests, IDLE's tests and the topics module itself (a 0.5 MB dict literal read through pydoc_data).
_SKIPPED_DIRECTORIES = {"test", "tests", "idle_test", "pydoc_data", "site-packages", "__pycache__"}

DESCRIPTIONS = {
    "python-docs": "pydoc_data topics + standard library docstrings of this Python (~1.8 MB)",
    "python-topics": "pydoc_data topics only, the language reference (~0.5 MB)",
}


def builtin_corpus_names() -> tuple[str, ...]:
    return tuple(DESCRIPTIONS)


def is_builtin(spec: str) -> bool:
    return spec.startswith(PREFIX)


def builtin_documents(name: str) -> Iterator[str]:
    """The documents of ``builtin:<name>`` (``name`` with or without the ``builtin:`` prefix)."""
    return iter(_documents(name.removeprefix(PREFIX)))


def builtin_document_count(name: str) -> int:
    return len(_documents(name.removeprefix(PREFIX)))


@functools.cache
def _documents(name: str) -> tuple[str, ...]:
    if name == "python-topics":
        return _unique(_pydoc_topics())
    if name == "python-docs":
        return _unique(_pydoc_topics() + _stdlib_docstrings())
    known = ", ".join(PREFIX + n for n in DESCRIPTIONS)
    raise DataError(f"--input {PREFIX}{name}: unknown built-in corpus (available: {known})")


def _pydoc_topics() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    return tuple(topics[key].strip() for key in sorted(topics))


def _stdlib_docstrings() -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(
        (path for path in root.rglob("*.py") if _SKIPPED_DIRECTORIES.isdisjoint(path.relative_to(root).parts)),
        key=lambda path: path.relative_to(root).as_posix(),
    )
    docstrings: list[str] = []
    # Parsing 11 MB of source builds millions of short-lived AST nodes; the cyclic collector would
    # triple the time by walking them over and over, and none of them form cycles worth collecting.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for path in sources:
            try:
                tree = ast.parse(path.read_bytes(), filename=str(path))
            except (SyntaxError, ValueError):  # a few files are test data with deliberate errors
                continue
            for node in (tree, *_definitions(tree.body)):
                text = ast.get_docstring(node, clean=True)
                if text and len(text) >= MIN_DOCSTRING_CHARS:
                    docstrings.append(text.strip())
            del tree
    finally:
        if collecting:
            gc.enable()
    return tuple(docstrings)


def _definitions(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Classes and functions in source order, including methods and nested definitions."""
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
            yield from _definitions(node.body)


def _unique(documents: tuple[str, ...]) -> tuple[str, ...]:
    """First occurrence of each document (the same docstring is copied in several modules)."""
    return tuple(dict.fromkeys(documents))
