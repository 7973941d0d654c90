"""``--profile`` (Megatron-LM's flags): a profile of iterations ``profile_step_start`` to
``profile_step_end`` on ``profile_ranks``.

With ``use_pytorch_profiler``, ``torch.profiler`` records CPU (and CUDA) activity, shapes and
stacks, and writes one trace per rank (``*.pt.trace.json``: Perfetto, or TensorBoard's profiler
plugin) into ``tensorboard_dir``, else ``<log_dir or save>/profile``. Without it, the iterations are
bracketed by ``cudaProfilerStart``/``cudaProfilerStop`` for NVIDIA Nsight Systems (``nsys profile
--capture-range=cudaProfilerApi``), with ``emit_nvtx`` turning the named ranges into NVTX ranges.

The named ranges: ``forward`` and ``backward`` of each micro-batch (:func:`backward_range`,
``training/forward.py``), ``cwt_loss`` (``cwt.py``) and ``optimizer`` (``training/loop.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from headless_megatron.errors import UserError


class ProfileError(UserError):
    """--profile cannot run here (one line)."""


class StepProfiler:
    """Started before the first iteration; :meth:`step` after each; :meth:`close` at the end."""

    def __init__(self, config, rank: int, next_iteration: int):
        self.start, self.end = config.profile_step_start, config.profile_step_end
        # A run resumed past the profiled iterations profiles nothing.
        self.active = config.profile and rank in (config.profile_ranks or [0]) and next_iteration < self.end
        self.iteration = next_iteration - 1  # the last one finished
        self.profiler = self.nvtx = None
        if not self.active:
            return
        if not config.use_pytorch_profiler:
            if not torch.cuda.is_available():
                raise ProfileError("profile: without use_pytorch_profiler it marks the iterations for NVIDIA Nsight "
                                   "Systems (cudaProfilerStart/Stop), which needs a GPU; add --use-pytorch-profiler")
            self._start_nsys_capture()
            return
        directory = Path(config.tensorboard_dir or Path(config.metrics_dir) / "profile")
        before = max(self.start - next_iteration, 0)  # iterations to run before the profiled ones
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=max(before - 1, 0), warmup=min(before, 1),
                                             active=self.end - max(self.start, next_iteration), repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(directory), worker_name=f"rank{rank}"),
            record_shapes=True,
            with_stack=True,
        )
        self.profiler.start()

    def step(self) -> None:
        """After each iteration."""
        self.iteration += 1
        if not self.active:
            return
        if self.profiler is not None:
            self.profiler.step()
        elif self.iteration == self.end - 1:
            self.close()
        else:
            self._start_nsys_capture()

    def _start_nsys_capture(self) -> None:
        if self.nvtx is None and self.start - 1 <= self.iteration < self.end - 1:  # the next one is profiled
            torch.cuda.cudart().cudaProfilerStart()
            self.nvtx = torch.autograd.profiler.emit_nvtx(record_shapes=True)
            self.nvtx.__enter__()

    def close(self) -> None:
        """At the end of training (also when stopped early): stop, and write the trace."""
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
        if self.nvtx is not None:
            torch.cuda.cudart().cudaProfilerStop()
            self.nvtx.__exit__(None, None, None)
            self.nvtx = None


def backward_range(loss: torch.Tensor) -> torch.Tensor:
    """``loss`` itself, whose backward pass shows as the range ``backward`` in a profile: opened
    when autograd reaches the loss, closed when the whole backward pass ends (a callback the autograd
    engine runs then, as torch's own DDP hooks the end of backward)."""
    return _BackwardRange.apply(loss)


class _BackwardRange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss):
        return loss.view_as(loss)

    @staticmethod
    def backward(ctx, gradient):
        span = torch.profiler.record_function("backward")
        span.__enter__()
        torch.autograd.Variable._execution_engine.queue_callback(lambda: span.__exit__(None, None, None))
        return gradient
