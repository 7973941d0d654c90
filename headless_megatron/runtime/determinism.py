"""``deterministic_mode`` (Megatron-LM's ``--deterministic-mode``): two runs of the same config on
the same hardware and software give bit-identical losses and checkpoints.

Set in every rank before CUDA, cuBLAS and NCCL start, because each reads its switch once:

- ``torch.use_deterministic_algorithms(True)``: torch picks the deterministic implementation of an
  op where it has one (the embedding backward, ``index_put`` with accumulation, ...) and raises
  where it has none, rather than differ silently; cuDNN is made deterministic and stops
  benchmarking algorithms;
- ``CUBLAS_WORKSPACE_CONFIG=:4096:8``: cuBLAS's reductions reproducible (its documented setting);
- ``NCCL_ALGO=Ring``: one all-reduce algorithm, hence one summation order, whatever the message
  size (Megatron-LM asks the user to set it; here it is the default, and a value already set wins);
- ``NVTE_ALLOW_NONDETERMINISTIC_ALGO=0``: Transformer Engine's fused attention uses its
  deterministic backward (Megatron-Core refuses deterministic mode with TE otherwise).

Megatron-Core's own switch (``TransformerConfig.deterministic_mode``: the vocab-parallel embedding
gathers rows by indexing, not with ``F.embedding``) follows the config in
``config/megatron.transformer_config``, and :class:`~headless_megatron.models.attention.SDPAttention`
keeps to SDPA kernels whose backward is deterministic on GPUs. On CPU, training is already
deterministic; the mode costs nothing there.
"""

from __future__ import annotations

import os

import torch

DETERMINISTIC_ENVIRONMENT = {
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "NCCL_ALGO": "Ring",
    "NVTE_ALLOW_NONDETERMINISTIC_ALGO": "0",
}


def use_deterministic_algorithms() -> None:
    """Switch this process to deterministic kernels and collectives (see the module docstring)."""
    for name, value in DETERMINISTIC_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
