"""The training configuration's reporting fields: logging, evaluation, timers, profiles, TensorBoard
and Weights & Biases. A base of :class:`~headless_megatron.config.schema.TrainConfig`, kept in a
module of its own so that each stays readable in one sitting; the same rules apply (Megatron-LM's
names, a docstring per field, which is its ``--help``)."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(kw_only=True)
class ReportingFields:
    """What a run reports, and when."""

    # ---- Logging and evaluation ----
    log_interval: int = 10
    """Print and record the training metrics every this many iterations."""
    timing_log_level: int = 0
    """1: after each metrics line, print Megatron-Core's timers (forward-backward, batch-generator,
    optimizer, save-checkpoint: per iteration, across ranks as timing_log_option says). 0: only
    record them (the slowest rank's) in metrics.jsonl, TensorBoard and W&B."""
    timing_log_option: Literal["minmax", "max", "all"] = "minmax"
    """How timing_log_level 1 prints each timer: min and max over ranks, max only, or every rank."""
    mfu_peak_tflops: float | None = None
    """Dense bf16/fp16 peak TFLOP/s of one device, for MFU. None: from the device's name (H100 SXM,
    PCIe or NVL, H200, A100, B200, GB200, MI300X, ...); no MFU on CPU or an unlisted device."""
    eval_interval: int = 1000
    """Evaluate on the validation split every this many iterations (and at the end)."""
    eval_iters: int = 10
    """Validation batches (of global_batch_size sequences) per evaluation; 0 disables
    evaluation."""
    log_dir: str | None = None
    """Directory for the metrics log. None: the save directory (no metrics file when both are
    unset)."""
    profile: bool = False
    """Profile iterations profile_step_start to profile_step_end (exclusive) on profile_ranks: with
    use_pytorch_profiler a torch.profiler trace per rank (Perfetto, TensorBoard) in tensorboard_dir,
    else in <log_dir or save>/profile; without it, cudaProfilerStart/Stop around those iterations
    for NVIDIA Nsight Systems (nsys profile --capture-range=cudaProfilerApi), with NVTX ranges.
    Named ranges either way: forward, backward, cwt_loss, optimizer."""
    use_pytorch_profiler: bool = False
    """With profile: torch.profiler instead of Nsight Systems (the one that works on CPU)."""
    profile_step_start: int = 10
    """First profiled iteration."""
    profile_step_end: int = 12
    """Iteration at which profiling stops (not profiled)."""
    profile_ranks: list[int] | None = None
    """Global ranks to profile. None: rank 0."""
    tensorboard_dir: str | None = None
    """Directory for TensorBoard event files with the scalars of metrics.jsonl and W&B (loss, lr,
    grad norm, throughput, step times, memory, validation loss). None: no TensorBoard."""
    wandb_project: str | None = None
    """Weights & Biases project to log to. None: no W&B logging."""
    wandb_exp_name: str | None = None
    """Weights & Biases run name. None: W&B picks one."""
    wandb_mode: Literal["online", "offline", "disabled"] = "online"
    """Weights & Biases mode, used only when wandb_project is set."""
