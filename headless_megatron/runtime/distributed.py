"""Process group and Megatron parallel state, the same way on one CPU, a GPU node or a SLURM cluster.

A process learns its place from the environment: torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
(plus ``MASTER_ADDR``/``MASTER_PORT``), or, when started directly by ``srun`` with one task per GPU,
from ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``. With neither, it is a single rank.
Collectives give up after ``timeout_minutes`` (``distributed_timeout_minutes``), and
:func:`naming_lost_ranks` then says which ranks were lost (docs/faults.md).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import socket
import subprocess
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

from headless_megatron.config import ParallelLayout
from headless_megatron.errors import UserError, first_line
from headless_megatron.runtime import cpu
from headless_megatron.runtime.processes import kill_children

# The key of the rendezvous store (the TCP store on MASTER_ADDR) that says, after a failed
# collective, which ranks are still alive.
_ALIVE_KEY = "headless_megatron/alive/{rank}"
# Every rank's host name, by rank: gathered once at start-up, so that a census can name the hosts
# of lost ranks even when the store went with them.
_rank_hosts: list[str] = []


def map_slurm_environment(environ: dict | None = None) -> None:
    """Fill torch's rendezvous variables from SLURM's when a task was started by ``srun`` directly.

    Does nothing when ``RANK`` is already set (torchrun) or when not under SLURM.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env or "SLURM_PROCID" not in env:
        return
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_PORT", "29500")
    if "MASTER_ADDR" not in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        env["MASTER_ADDR"] = _first_slurm_host(nodelist) if nodelist else "127.0.0.1"


def _first_slurm_host(nodelist: str) -> str:
    result = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    )
    return result.stdout.split()[0]


def device_for_this_rank() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU (with the Megatron CPU adapter on)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    cpu.activate()
    return torch.device("cpu")


def init_distributed(
    layout: ParallelLayout | None = None,
    seed: int = 1234,
    timeout_minutes: float = 10.0,
) -> torch.device:
    """Start the process group (NCCL on GPU, gloo on CPU) and Megatron's parallel state.

    ``layout`` defaults to one rank per model copy (no model parallelism). Also seeds Python, NumPy, torch and
    Megatron's model-parallel RNG tracker. Returns this rank's device. Idempotent for the process
    group; the parallel state is rebuilt if it already exists.
    """
    from megatron.core import parallel_state, tensor_parallel

    layout = layout or ParallelLayout()

    map_slurm_environment()
    device = device_for_this_rank()
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if "WORLD_SIZE" in os.environ:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout
            )
        else:
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                store=dist.HashStore(),
                rank=0,
                world_size=1,
                timeout=timeout,
            )
    layout.data_parallel_size(dist.get_world_size())
    _rank_hosts[:] = [""] * dist.get_world_size()
    dist.all_gather_object(_rank_hosts, socket.gethostname())
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tensor_model_parallel_size,
        pipeline_model_parallel_size=layout.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=layout.virtual_pipeline_model_parallel_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    # Python's and NumPy's generators too, as Megatron-LM seeds them: their states are saved with
    # every checkpoint, and two runs of one config must save the same bytes.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return device


def _store() -> dist.Store:
    return dist.distributed_c10d._get_default_store()


@contextlib.contextmanager
def naming_lost_ranks(wait_seconds: float = 10.0):
    """When a collective fails (a peer's connection broke, or ``distributed_timeout_minutes``
    passed), print which ranks no longer respond before the error ends this rank.

    Torch's error names an address at best, and after a timeout nothing; this asks every rank to
    check in at the rendezvous store and names, with their hosts, the ones that do not within
    ``wait_seconds``: the lost node's ranks, or a hung (stopped) rank. Errors that do not come from
    a collective pass through untouched.

    The run is over then, and this rank's helper processes are killed before the error ends it:
    DataLoader workers ignore SIGTERM (SLURM's stop signal must not kill them), so the terminate()
    that multiprocessing sends its children at exit cannot end them, and the rank would wait for
    them forever instead of exiting.
    """
    try:
        yield
    except RuntimeError as error:
        if isinstance(error, dist.DistError) or "/gloo/" in str(error):
            if dist.is_initialized() and dist.get_world_size() > 1:
                print(f"rank {dist.get_rank()}: a collective failed ({first_line(error)}); "
                      f"{_census(wait_seconds)}", flush=True)
            kill_children()
        raise


def _census(wait_seconds: float) -> str:
    """Check in at the store and wait for the other ranks to; say who did not."""
    rank, world = dist.get_rank(), dist.get_world_size()
    store = _store()
    store.set_timeout(datetime.timedelta(seconds=wait_seconds))
    answer: dict = {}

    def check_in() -> None:
        try:
            store.set(_ALIVE_KEY.format(rank=rank), "1")
            silent = [other for other in range(world) if other != rank]
            deadline = time.monotonic() + wait_seconds
            while silent and time.monotonic() < deadline:
                time.sleep(0.5)
                silent = [other for other in silent if not store.check([_ALIVE_KEY.format(rank=other)])]
            answer["silent"] = silent
        except RuntimeError as error:
            answer["error"] = first_line(error)

    # A store whose process is stopped keeps its connections open, and a check() on it never
    # returns: ask from a thread and give up on it after the census' own wait.
    asking = threading.Thread(target=check_in, name="census", daemon=True)
    asking.start()
    asking.join(wait_seconds + 5)
    if "silent" not in answer:
        # The store lives in rank 0 (srun) or in the first node's torchrun: lost with that node.
        store_host = os.environ.get("MASTER_ADDR", "")
        why = answer.get("error", f"no answer in {wait_seconds + 5:.0f}s")
        lost = [other for other in range(world) if other != rank and _same_host(_rank_hosts[other], store_host)]
        named = f": {_lost_or_hung(lost)}, the node of the store" if lost else ""
        return f"the rendezvous store at {store_host} does not answer either ({why}){named}"
    if not answer["silent"]:
        return "every rank is still alive, so no rank was lost"
    return f"{_lost_or_hung(answer['silent'])}, silent for {wait_seconds:.0f}s"


def _lost_or_hung(ranks: list[int]) -> str:
    named = ", ".join(f"{other} ({_rank_hosts[other]})" for other in ranks)
    return f"lost or hung: rank{'s' if len(ranks) > 1 else ''} {named}"


def _same_host(host: str, address: str) -> bool:
    """Whether the host name ``host`` is ``address`` (a name, short or full, or an IP address)."""
    if host == address or (not address[:1].isdigit() and host.split(".")[0] == address.split(".")[0]):
        return True
    try:
        return socket.gethostbyname(host) == socket.gethostbyname(address)
    except OSError:
        return False


def destroy_distributed() -> None:
    """Tear down Megatron's parallel state and the process group (safe to call twice)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def is_rank_zero() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def on_rank_zero_for_all(action):
    """``action()``'s result on rank 0 (None elsewhere), or its one-line error raised on every rank,
    so that no rank waits in a collective for a peer that has given up."""
    problem = result = None
    if dist.get_rank() == 0:
        try:
            result = action()
        except UserError as error:
            problem = error
    shared = [problem]
    dist.broadcast_object_list(shared, src=0)
    if shared[0] is not None:
        raise shared[0]
    return result
