"""Fault injection for tests that run the real command line (``tests/fault_runs.py``).

On ``PYTHONPATH``, Python imports this module at the start of every process; it does nothing unless
``HM_FAULT`` is set. ``HM_FAULT="ACTION PHASE ITERATION [RANK]"``: when rank RANK (default 0) is in
PHASE (``training``: computing iteration ITERATION; ``validation``: evaluating after it; ``save``:
writing ``iter_ITERATION``, after the checkpoint writer's helper has started; ``write``: in the
process that writes its shards, the background writer with ``--async-save``), it does ACTION:

- ``SIGTERM`` / ``SIGUSR1`` / ``SIGINT``: sends it to its whole process group (every rank, their
  helpers and the launcher: what slurmstepd and a terminal's Ctrl-C do);
- ``SIGINTx2``: the same twice, half a second apart (a user pressing Ctrl-C again);
- ``SIGKILL``: kills this rank alone, as the OOM killer would;
- ``raise``: raises a RuntimeError (an unexpected bug).
"""

import os
import sys

_SPEC = os.environ.get("HM_FAULT", "").split()


def _act():
    import signal
    import time

    action = _SPEC[0]
    if action == "raise":
        raise RuntimeError(f"injected fault: {' '.join(_SPEC)}")
    if action == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    number = getattr(signal, action.removesuffix("x2"))
    os.killpg(os.getpgid(0), number)
    if action.endswith("x2"):
        time.sleep(0.5)
        os.killpg(os.getpgid(0), number)
    time.sleep(0.1)  # let the handlers run before the phase goes on


def _this_rank() -> bool:
    wanted = _SPEC[3] if len(_SPEC) > 3 else "0"
    return os.environ.get("RANK", "0") == wanted


def _patch(loop):
    phase, iteration = _SPEC[1], int(_SPEC[2])
    Trainer = loop.Trainer
    if phase == "training":
        train_step = Trainer.train_step

        def faulty_train_step(self, data):
            if self.iteration + 1 == iteration and _this_rank():
                _act()
            return train_step(self, data)

        Trainer.train_step = faulty_train_step
    elif phase == "validation":
        evaluate = Trainer.evaluate

        def faulty_evaluate(self):
            if self.iteration == iteration and _this_rank():
                _act()
            return evaluate(self)

        Trainer.evaluate = faulty_evaluate
    elif phase == "save":
        from megatron.core import dist_checkpointing

        save = dist_checkpointing.save

        def faulty_save(state, directory, *args, **kwargs):
            if os.path.basename(str(directory)) == f"iter_{iteration:07d}.tmp" and _this_rank():
                _act()
            return save(state, directory, *args, **kwargs)

        dist_checkpointing.save = faulty_save
    elif phase == "write":  # in the process that writes the shards: a background writer with --async-save
        from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

        write = FileSystemWriterAsync.write_preloaded_data_multiproc

        def faulty_write(transform_list, use_msc, rank, write_buckets, *args, **kwargs):
            if any(f"iter_{iteration:07d}.tmp" in str(bucket[0]) for bucket in write_buckets) and _this_rank():
                _act()
            return write(transform_list, use_msc, rank, write_buckets, *args, **kwargs)

        FileSystemWriterAsync.write_preloaded_data_multiproc = staticmethod(faulty_write)
    else:
        raise ValueError(f"HM_FAULT: unknown phase {phase!r}")


if len(_SPEC) >= 3:
    import importlib.abc
    import importlib.util

    class _PatchOnImport(importlib.abc.MetaPathFinder):
        """Patches the training loop module right after it is first imported."""

        def find_spec(self, name, path=None, target=None):
            if name != "headless_megatron.training.loop":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _PatchOnImport())
