"""Run Megatron-Core 0.16.x on CPU (gloo) without editing or vendoring it.

Megatron-Core has no CPU path, but its tensor/pipeline/sequence/data-parallel code is ordinary
``torch.distributed`` code once a handful of CUDA assumptions are redirected. :func:`activate` does
that, once per process, and only when CUDA is unavailable; on a CUDA machine it changes nothing.

What is redirected, and why each piece is needed (line numbers refer to megatron-core 0.16.1):

* ``torch.cuda.current_device()`` returns ``torch.device("cpu")``. Megatron uses it as a *device* for
  the global memory buffer, the SP/TP mapping buffers, the DDP param/grad buffers, pipeline receive
  buffers and RoPE's ``inv_freq``. This patch, unlike a function mode, is also seen inside custom
  ``autograd.Function.backward`` (e.g. the SP reduce-scatter in ``layers.py``).
* The "CUDA" RNG is emulated by a dedicated CPU ``torch.Generator``: Megatron's RNG tracker
  (``model_parallel_cuda_manual_seed``, ``fork()``) saves and restores it, while the default CPU
  generator stays untouched, so the tracker's "CPU RNG state changed within GPU RNG context" check
  holds. On CPU, dropout inside ``fork()`` therefore draws from the default CPU generator, which
  that check would report on every forward; with dropout it says nothing useful on CPU and is
  filtered out of Megatron's log.
* ``torch.cuda.synchronize`` (pipeline p2p) becomes a no-op, and Megatron's advice to set
  ``CUDA_DEVICE_MAX_CONNECTIONS`` (a CUDA stream setting) is not shown.
* A process-wide :class:`torch.overrides.TorchFunctionMode` maps literal ``"cuda"`` devices in factory
  calls and ``Tensor.to`` to CPU (schedules' token counters, optimizer scalars, grad clipping), makes
  ``Tensor.cuda()`` a no-op (the tied embedding copy on the last pipeline stage), and reports CPU
  tensors with their ``torch.cuda.*Tensor`` spelling in ``Tensor.type()``, which the Megatron
  optimizers and ``clip_grads`` assert on.

The SP-capable norm that the local layer spec needs is not CPU-specific and lives in
:mod:`headless_megatron.models.specs`.
"""

from __future__ import annotations

import logging
import threading

import torch
from torch.overrides import TorchFunctionMode

from headless_megatron.quiet import ignore_warning

_lock = threading.Lock()
_active = False
_emulated_cuda_generator: torch.Generator | None = None


def is_active() -> bool:
    """Whether the CPU adapter has been activated in this process."""
    return _active


def activate() -> bool:
    """Make Megatron-Core usable on CPU; idempotent. Returns True when the adapter is active.

    Does nothing (and returns False) when CUDA is available, so callers may call it unconditionally.
    """
    global _active
    if torch.cuda.is_available():
        return False
    with _lock:
        if _active:
            return True
        _redirect_current_device()
        _emulate_cuda_rng()
        torch.cuda.synchronize = _no_op
        _CudaDevicesToCpu().__enter__()  # stays entered for the life of the process
        # A CUDA stream setting, meaningless without CUDA (TP's async all-reduce, SP).
        ignore_warning(r"When using .* it is recommended to set the environment variable CUDA_DEVICE_MAX_CONNECTIONS",
                       UserWarning, r"megatron\.core\.tensor_parallel\.layers")
        _active = True
    return True


def _no_op(*_args, **_kwargs) -> None:
    return None


def _redirect_current_device() -> None:
    cpu = torch.device("cpu")
    torch.cuda.current_device = lambda: cpu


def _emulate_cuda_rng() -> None:
    global _emulated_cuda_generator
    _emulated_cuda_generator = torch.Generator(device="cpu")
    generator = _emulated_cuda_generator

    def get_rng_state(device=None, **_kwargs):
        return generator.get_state()

    def set_rng_state(new_state, device=None, **_kwargs):
        generator.set_state(new_state)

    def manual_seed(seed):
        generator.manual_seed(int(seed))

    torch.cuda.get_rng_state = get_rng_state
    torch.cuda.set_rng_state = set_rng_state
    torch.cuda.manual_seed = manual_seed
    torch.cuda.manual_seed_all = manual_seed
    torch.cuda.random.get_rng_state = get_rng_state

    # The tracker calls these module-level helpers by their global names, and they index
    # torch.cuda.default_generators, which a CPU build does not have.
    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = get_rng_state
    mcore_random._set_cuda_rng_state = set_rng_state
    logging.getLogger(mcore_random.__name__).addFilter(_DropoutOnCpuIsExpected())


class _DropoutOnCpuIsExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare integer device index means a CUDA ordinal in torch's factory functions.
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaDevicesToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU; see the module docstring for the call sites."""

    _CPU = torch.device("cpu")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        device = kwargs.get("device")
        if device is not None and _is_cuda_device(device):
            kwargs["device"] = self._CPU
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], self._CPU, *args[2:])
        return func(*args, **kwargs)
