"""The embedded corpora: real English text from the Python installation, fixed content and order."""

import re
from collections import Counter

import pytest

from headless_megatron.data import builtin
from headless_megatron.data.builtin import builtin_corpus_names, builtin_document_count, builtin_documents
from headless_megatron.data.errors import DataError


def test_names_and_prefix():
    assert builtin_corpus_names() == ("python-docs", "python-topics")
    assert builtin.is_builtin("builtin:python-docs") and not builtin.is_builtin("python-docs")
    assert list(builtin_documents("builtin:python-topics")) == list(builtin_documents("python-topics"))


def test_python_docs_is_about_two_megabytes_of_english_prose():
    documents = list(builtin_documents("python-docs"))
    size = sum(len(document.encode("utf-8")) for document in documents)
    assert 1_000_000 < size < 3_000_000
    assert len(documents) == builtin_document_count("python-docs") > 1000
    assert len(set(documents)) == len(documents), "each document is kept once"
    assert all(document == document.strip() and len(document) >= builtin.MIN_DOCSTRING_CHARS for document in documents)
    words = Counter(re.findall(r"[a-z]+", " ".join(documents).lower()))
    assert {"the", "a", "is", "to", "of", "and"} <= {word for word, _ in words.most_common(8)}


def test_topics_come_first_then_docstrings_in_source_order():
    topics = list(builtin_documents("python-topics"))
    documents = list(builtin_documents("python-docs"))
    assert documents[: len(topics)] == topics
    assert topics[0].startswith('The "assert" statement')  # the topic "assert" sorts first
    assert documents[len(topics)].startswith("Record of phased-in incompatible language changes.")  # __future__.py


def test_content_and_order_are_recomputed_identically():
    first = list(builtin_documents("python-docs"))
    builtin._documents.cache_clear()
    assert list(builtin_documents("python-docs")) == first


def test_unknown_name_lists_the_available_corpora():
    with pytest.raises(DataError, match=r"^--input builtin:wiki: unknown built-in corpus "
                                        r"\(available: builtin:python-docs, builtin:python-topics\)$"):
        builtin_documents("builtin:wiki")
