"""Run a function on N local ranks (gloo on CPU): multi-rank tests become ordinary tests.

    from local_ranks import run_on_ranks

    def _check(layout):                     # module level, so that it can be pickled
        device = init_distributed(layout)
        ...
        return value                         # anything picklable; tensors travel by value

    results = run_on_ranks(_check, world_size=2, args=(ParallelLayout(2, 1),))

Ranks are forked from a server process that has torch and Megatron-Core already imported, which
saves several seconds per rank. A failing rank's traceback is raised in the caller (with every other
failing rank's); ranks that are still running are killed, and a rank that does not report within the
timeout fails the call with the list of ranks that hung.

The package's own :func:`~headless_megatron.runtime.launch.run_local_ranks` (import-hf, bench)
reports the first failing rank; a test wants every rank's traceback, and keyword arguments.
"""

from __future__ import annotations

import pickle
import queue
import time
import traceback
from typing import Any, Callable, Sequence

from headless_megatron.runtime.launch import free_port, join_local_world, rank_process_context


class RankFailure(RuntimeError):
    """One or more ranks raised or hung; the message carries each rank's traceback."""


def _rank_entry(fn, rank, world_size, port, args, kwargs, extra_env, results):
    join_local_world(rank, world_size, port, extra_env)
    try:
        value = fn(*args, **kwargs)
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # noqa: BLE001 - the parent re-raises it with context
        results.put((rank, False, traceback.format_exc()))
    finally:
        from headless_megatron.runtime.distributed import destroy_distributed

        try:
            destroy_distributed()
        except Exception:  # noqa: BLE001 - the process exits anyway
            pass


PORT_ATTEMPTS = 3


def run_on_ranks(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    kwargs: dict | None = None,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` ranks; return the per-rank results, by rank.

    The rendezvous port is free when chosen but another process may take it before rank 0 listens
    on it; the ranks then fail to start, before ``fn`` runs, and are started again on another port."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _run_once(fn, world_size, args, kwargs, timeout, env)
        except RankFailure as failure:
            if "EADDRINUSE" not in str(failure) or attempt == PORT_ATTEMPTS:
                raise


def _run_once(fn, world_size, args, kwargs, timeout, env) -> list[Any]:
    context = rank_process_context()
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(
            target=_rank_entry,
            args=(fn, rank, world_size, port, tuple(args), kwargs or {}, env or {}, results),
            name=f"rank{rank}",
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    values: dict[int, Any] = {}
    failures: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(values) + len(failures) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                rank, ok, payload = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [
                    r for r, p in enumerate(processes)
                    if p.exitcode not in (None, 0) and r not in values and r not in failures
                ]
                for r in dead:
                    failures[r] = f"rank {r} died with exit code {processes[r].exitcode}"
                continue
            if ok:
                values[rank] = pickle.loads(payload)
            else:
                failures[rank] = payload
                # Give the peers a moment to report their own errors before they are killed.
                deadline = min(deadline, time.monotonic() + 5.0)
    finally:
        finished = len(values) + len(failures) == world_size and not failures
        for process in processes:
            process.join(timeout=10.0 if finished else 0.5)
            if process.is_alive():
                process.kill()
                process.join()
    hung = [r for r in range(world_size) if r not in values and r not in failures]
    if failures or hung:
        parts = [f"--- rank {r} ---\n{failures[r]}" for r in sorted(failures)]
        if hung:
            parts.append(f"ranks {hung} did not finish within {timeout:.0f}s (killed)")
        raise RankFailure(f"{getattr(fn, '__name__', fn)} failed on {world_size} ranks:\n" + "\n".join(parts))
    return [values[r] for r in range(world_size)]
