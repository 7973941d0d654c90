"""The weights of a Hugging Face model directory, read tensor by tensor (memory-mapped), under the
names its conversion expects."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from headless_megatron.convert import ConversionError
from headless_megatron.errors import first_line

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


class SafetensorsWeights:
    """The tensors of a Hugging Face model directory, read one at a time (memory-mapped) from
    ``model.safetensors`` or the shards a ``model.safetensors.index.json`` lists.

    Given the names a conversion ``expects``, a tensor stored under an older spelling that
    ``transformers``' own loader accepts is read under the expected name: a base model's weights
    saved without the head model's prefix (``h.0.ln_1.weight`` for ``transformer.h.0.ln_1.weight``:
    the original GPT-2 on the Hub), and LayerNorm's ``gamma``/``beta`` for ``weight``/``bias`` (the
    original BERT checkpoints).
    """

    def __init__(self, directory: str | os.PathLike, expects: set[str] = frozenset()):
        self.directory = Path(directory)
        index = self.directory / SAFETENSORS_INDEX
        if index.is_file():
            self.file_of = dict(json.loads(index.read_text())["weight_map"])
        elif (self.directory / SAFETENSORS_FILE).is_file():
            with self._open(SAFETENSORS_FILE) as weights:
                self.file_of = dict.fromkeys(weights.keys(), SAFETENSORS_FILE)
        else:
            raise ConversionError(
                f"{self.directory}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}; only safetensors weights are "
                "read (save the model with save_pretrained, which writes them)"
            )
        self._open_files: dict[str, Any] = {}
        self.stored_name = {name: name for name in self.file_of}
        for name in expects - set(self.file_of):
            stored = next((older for older in _older_spellings(name) if older in self.file_of), None)
            if stored is not None:
                self.stored_name[name] = stored
                del self.stored_name[stored]

    def _open(self, name: str):
        from safetensors import SafetensorError, safe_open

        try:
            return safe_open(self.directory / name, framework="pt")
        except SafetensorError as error:
            raise ConversionError(f"{self.directory / name}: not a complete safetensors file ({first_line(error)}); "
                                  "download or save the model again") from error

    def names(self) -> set[str]:
        return set(self.stored_name)

    def _file(self, name: str):
        file = self.file_of[name]
        if file not in self._open_files:
            self._open_files[file] = self._open(file)
        return self._open_files[file]

    def __call__(self, name: str) -> torch.Tensor:
        stored = self.stored_name[name]
        return self._file(stored).get_tensor(stored)

    def shape(self, name: str) -> tuple[int, ...]:
        stored = self.stored_name[name]
        return tuple(self._file(stored).get_slice(stored).get_shape())

    def region(self, name: str, index: tuple[slice, ...]) -> torch.Tensor:
        """``tensor[index]`` read alone (``safe_open``'s ``get_slice``), not the whole tensor."""
        stored = self.stored_name[name]
        return self._file(stored).get_slice(stored)[index]


def _older_spellings(name: str) -> list[str]:
    """The names ``transformers`` also loads the tensor ``name`` from, most specific first."""
    legacy = {".LayerNorm.weight": ".LayerNorm.gamma", ".LayerNorm.bias": ".LayerNorm.beta"}
    spellings = [name[: -len(new)] + old for new, old in legacy.items() if name.endswith(new)]
    without_prefix = [spelling.split(".", 1)[1] for spelling in [name, *spellings] if "." in spelling]
    return spellings + without_prefix
