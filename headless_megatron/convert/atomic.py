"""Write an output directory all at once or not at all.

    with atomic_directory("hf/tiny", overwrite=False) as staging:
        ...write files into staging...
    # now hf/tiny holds them; had anything raised (Ctrl-C included), nothing would be there

The files are written into a hidden scratch directory beside the output (same filesystem, so the
final ``rename`` is atomic) and renamed into place only when the block succeeds. A failure removes
the scratch directory and leaves any existing output untouched. An existing non-empty output is
refused before any work, unless ``overwrite``, which swaps the new directory in and only then
deletes the old one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from headless_megatron.convert import ConversionError


def check_output(output: str | os.PathLike, overwrite: bool) -> Path:
    """``output`` as a path, after refusing an existing file or, without ``overwrite``, a non-empty directory."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConversionError(f"output {output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConversionError(f"output {output}: already exists and is not empty (--overwrite replaces it)")
    return output


@contextlib.contextmanager
def atomic_directory(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A scratch directory that becomes ``output`` when the ``with`` block succeeds."""
    output = check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        yield staging
        _ordinary_permissions(staging)
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _ordinary_permissions(staging: Path) -> None:
    """mkdtemp makes the directory private, and some writers (safetensors) create private files:
    give everything the mode of an ordinary new file or directory under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    for path in staging.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _publish(staging: Path, output: Path) -> None:
    if not output.exists() or not any(output.iterdir()):
        os.replace(staging, output)  # an empty directory is replaced atomically too
        return
    replaced = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".replaced", dir=output.parent))
    os.replace(output, replaced)
    os.replace(staging, output)
    shutil.rmtree(replaced, ignore_errors=True)
