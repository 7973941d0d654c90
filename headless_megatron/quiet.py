"""Quiet by default: the third-party warnings that tell a user nothing they can act on, silenced by
message and origin, each with the reason it is safe to hide.

:func:`quiet_known_warnings` installs the filters in this process and exports them in
``PYTHONWARNINGS``, so that the interpreters it starts apply them before their first import of
Megatron (torchrun's ranks, ``run_local_ranks``' fork server, the checkpoint writer's and tokenizer
workers' spawned processes). Log records are dropped where their logger is used
(:func:`drop_log_records`). ``headless-megatron --verbose`` shows all of it again, in every process
of the run (:data:`VERBOSE_VARIABLE`).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import NamedTuple

VERBOSE_VARIABLE = "HEADLESS_MEGATRON_VERBOSE"


class KnownWarning(NamedTuple):
    message: str
    """The start of the message, as both ``warnings.filterwarnings`` and ``PYTHONWARNINGS`` match it."""
    category: type[Warning]
    module: str
    """A regular expression for the module the warning is attributed to (in this process)."""
    why: str


KNOWN_WARNINGS = (
    KnownWarning("Transformer Engine and Apex are not installed", UserWarning, r"megatron\.core\.",
                 "Megatron's optional fused kernels; `headless-megatron env` reports which ones run"),
    KnownWarning("Apex is not installed", UserWarning, r"megatron\.core\.",
                 "the torch norm replaces Apex's; `headless-megatron env` reports the layer spec"),
    KnownWarning("full scope is deprecated", UserWarning, r"megatron\.core\.transformer\.transformer_config",
                 "Megatron's own default cuda_graph_scope trips its deprecation check; no CUDA graph is captured"),
    KnownWarning("`torch.distributed.", FutureWarning, r"torch\.distributed\.c10d_logger",
                 "Megatron-Core 0.16.1 calls collectives by their older names (all_gather_into_tensor, ...)"),
    KnownWarning("`load_state_dict` is deprecated", FutureWarning, r"megatron\.core\.dist_checkpointing\.",
                 "Megatron-Core 0.16.1 loads torch_dist checkpoints through the older name of dcp.load"),
    KnownWarning("Please use DTensor instead and we are deprecating ShardedTensor", FutureWarning,
                 r"headless_megatron\.runtime\.cpu|torch\.distributed\.|megatron\.core\.",
                 "Megatron-Core 0.16.1 reads torch_dist checkpoints through ShardedTensor, which torch deprecates"),
    KnownWarning("The .grad attribute of a Tensor that is not a leaf", UserWarning,
                 r"headless_megatron\.runtime\.cpu|megatron\.core\.optimizer\.",
                 "Megatron's distributed optimizer reads .grad of its shard views in zero_grad and expects None"),
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE) == "1"


def quiet_known_warnings() -> None:
    """Hide :data:`KNOWN_WARNINGS` in this process and in the Python processes it starts."""
    if verbose():
        return
    for known in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(known.message), category=known.category,
                                module=known.module)
    # PYTHONWARNINGS matches modules by their full name only, so the children's filters go by
    # message; a user's own entries come last and win.
    ours = [f"ignore:{known.message}:{known.category.__name__}" for known in KNOWN_WARNINGS]
    users = [entry for entry in os.environ.get("PYTHONWARNINGS", "").split(",") if entry and entry not in ours]
    os.environ["PYTHONWARNINGS"] = ",".join(ours + users)


def ignore_warning(message: str, category: type[Warning], module: str) -> None:
    """Hide the warnings of ``category`` from ``module`` (regular expressions) whose message starts
    with ``message`` in this process (unless verbose): for noise only some processes emit."""
    if not verbose():
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def drop_log_records(logger_name: str, pattern: str) -> None:
    """Drop the records of ``logger_name`` whose message matches ``pattern`` (unless verbose); once
    per logger and pattern however often it is called."""
    if verbose():
        return
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropMatching) and f.pattern.pattern == pattern for f in logger.filters):
        logger.addFilter(_DropMatching(pattern))
