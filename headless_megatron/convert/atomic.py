"""Write an output directory all at once or not at all.

    with atomic_directory("hf/tiny", overwrite=False) as staging:
        ...write files into staging...
    # now hf/tiny holds them; had anything raised (Ctrl-C included), nothing would be there

    with atomic_directory("hf/tiny", overwrite=True, replaceable=earlier_export) as staging: ...

The files are written into a hidden scratch directory beside the output (same filesystem, so the
final ``rename`` is atomic) and renamed into place only when the block succeeds, after they are
synced to disk (``durable``). A failure removes
the scratch directory and leaves any existing output untouched. An existing non-empty output is
refused before any work, unless ``overwrite``, which swaps the new directory in and only then
deletes the old one. ``overwrite`` replaces only what ``replaceable`` recognises as an earlier output
of the same command (an export's model card, an import's lone iteration 0): a mistyped path to a
training run, a dataset or a home directory is refused, never deleted. A write that fails (a full
disk, a read-only place) is a :class:`ConversionError` naming the output and the cause.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from headless_megatron import durable
from headless_megatron.convert import ConversionError
from headless_megatron.errors import first_line

Recogniser = Callable[[Path], str | None]
"""Given an existing non-empty output: None when it is an earlier output that may be replaced, else
what it is not (``"not an earlier export: no config.json"``)."""


def check_output(output: str | os.PathLike, overwrite: bool, replaceable: Recogniser | None = None) -> Path:
    """``output`` as a path, after refusing an existing file, a non-empty directory without
    ``overwrite``, and with it one that ``replaceable`` does not recognise (all of them without one)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConversionError(f"output {output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise ConversionError(f"output {output}: already exists and is not empty (--overwrite replaces it)")
        refusal = "nothing may be replaced here" if replaceable is None else replaceable(output)
        if refusal is not None:
            raise ConversionError(f"output {output}: --overwrite replaces only an earlier output of this command, and "
                                  f"this directory is {refusal}; give another --output or remove it yourself")
    return output


def check_apart(output: str | os.PathLike, sources: Iterable[str | os.PathLike], what: str) -> None:
    """Refuse an ``output`` that is, contains or lies inside one of ``sources`` (the run or model a
    conversion reads): writing there would mix the two, and ``--overwrite`` would delete the input."""
    resolved = Path(output).resolve()
    clashes = []
    for source in map(lambda path: Path(path).resolve(), sources):
        if resolved == source:
            clashes.append((0, "is", source))
        elif source.is_relative_to(resolved):
            clashes.append((1, "contains", source))
        elif resolved.is_relative_to(source):
            clashes.append((2, "is inside", source))
    if clashes:
        _, relation, source = min(clashes)  # the plainest account: "is" before "contains"
        raise ConversionError(f"output {output}: {relation} the {what} {source} that this command reads; "
                              "give a directory of its own")


@contextlib.contextmanager
def atomic_directory(
    output: str | os.PathLike,
    overwrite: bool = False,
    replaceable: Recogniser | None = None,
    writer_errors: tuple[type[Exception], ...] = (),
) -> Iterator[Path]:
    """A scratch directory that becomes ``output`` when the ``with`` block succeeds. An ``OSError``
    on the way, or one of ``writer_errors`` (what a library that writes files raises in its place,
    such as safetensors' ``SafetensorError``), becomes a one-line :class:`ConversionError`."""
    output = check_output(output, overwrite, replaceable)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    except OSError as error:
        raise ConversionError(f"output {output}: cannot write in {output.parent}: {_cause(error)}") from error
    try:
        yield staging
        _ordinary_permissions(staging)
        _publish(staging, output)
    except (OSError, *writer_errors) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConversionError(f"output {output}: cannot write it: {_cause(error, staging)}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _cause(error: Exception, staging: Path | None = None) -> str:
    """Why a write failed, with the file at fault when the error names one in ``staging`` (by its
    name in the output: the staging directory is gone by the time the user reads it)."""
    if not isinstance(error, OSError) or not error.strerror:
        return first_line(error)
    if staging is not None and error.filename and Path(error.filename).is_relative_to(staging):
        inside = Path(error.filename).relative_to(staging)
        if inside != Path("."):
            return f"{inside}: {error.strerror}"
    return error.strerror


def _ordinary_permissions(staging: Path) -> None:
    """mkdtemp makes the directory private, and some writers (safetensors) create private files:
    give everything the mode of an ordinary new file or directory under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    for path in staging.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _publish(staging: Path, output: Path) -> None:
    durable.sync_tree(staging)
    if not output.exists() or not any(output.iterdir()):
        durable.replace(staging, output)  # an empty directory is replaced atomically too
        return
    replaced = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".replaced", dir=output.parent))
    os.replace(output, replaced)
    durable.replace(staging, output)
    shutil.rmtree(replaced, ignore_errors=True)
