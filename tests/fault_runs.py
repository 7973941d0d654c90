"""Run the real ``headless-megatron`` command line in its own session, inject a fault, and check
how it ends: exit code, output, time, and that no process of the run is left.

    run = FaultRun(["pretrain", "--nproc-per-node", "2", ...], tmp_path, fault="SIGTERM save 4")
    result = run.finish(timeout=60)       # kills what is left (and fails the caller's asserts)
    assert result.code == 0 and not result.leftovers

The fault is injected by ``tests/fault_injection/sitecustomize.py`` (see there for ``fault``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPOSITORY = Path(__file__).resolve().parent.parent
INJECTION = Path(__file__).resolve().parent / "fault_injection"


@dataclass
class FaultResult:
    code: int | None
    """The exit code, or None when the run was still running at the timeout (a hang)."""
    stdout: str
    stderr: str
    seconds: float
    leftovers: list[str]
    """Processes of the run's session still alive once the command returned (killed since)."""

    @property
    def error_lines(self) -> list[str]:
        """The distinct lines on stderr, without the warnings libraries print at import."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        noise = ("Warning:", "warnings.warn(")
        return sorted({line for line in lines if not any(mark in line for mark in noise)})


class FaultRun:
    def __init__(self, argv: list[str], directory: Path, fault: str | None = None, env: dict | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        environment = dict(os.environ, **(env or {}))
        paths = [str(INJECTION), str(REPOSITORY), environment.get("PYTHONPATH", "")]
        environment["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        environment.pop("HM_FAULT", None)
        self.fault = fault
        if fault:
            environment["HM_FAULT"] = fault
        environment.setdefault("OMP_NUM_THREADS", "1")
        self.stdout_path, self.stderr_path = self.directory / "stdout.txt", self.directory / "stderr.txt"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "headless_megatron", *argv], stdout=out, stderr=err, env=environment,
                cwd=REPOSITORY, start_new_session=True,
            )
        self.started = time.monotonic()
        self.session = self.process.pid

    def session_processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["pid"]):
            try:
                if process.pid != os.getpid() and os.getsid(process.pid) == self.session:
                    found.append(process)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        return found

    def wait_until(self, condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"condition not reached; stderr:\n{self.stderr_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def signal_group(self, number: int) -> None:
        os.killpg(self.session, number)

    def finish(self, timeout: float) -> FaultResult:
        """Wait for the command (at most ``timeout`` s from its start); then wait a moment for its
        helpers, record the survivors and kill every process of the session."""
        try:
            code = self.process.wait(timeout=max(0.1, timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            code = None
        seconds = time.monotonic() - self.started
        deadline = time.monotonic() + 10
        while self.session_processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        leftovers = []
        for process in self.session_processes():
            try:
                leftovers.append(" ".join(process.cmdline())[:160])
                process.kill()
            except psutil.Error:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        result = FaultResult(code, self.stdout_path.read_text(), self.stderr_path.read_text(), seconds, leftovers)
        self._record(result)
        return result

    def _record(self, result: FaultResult) -> None:
        """With ``HM_FAULT_RECORD=FILE``, append the outcome as a JSON line: the figures of docs/faults.md."""
        record_file = os.environ.get("HM_FAULT_RECORD")
        if record_file:
            import json

            with open(record_file, "a") as stream:
                stream.write(json.dumps({
                    "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                    "fault": self.fault, "exit": result.code, "seconds": round(result.seconds, 1),
                    "leftovers": len(result.leftovers), "last_line": (result.error_lines or [""])[-1][:200],
                }) + "\n")


def pretrain_argv(dataset: str, save: Path | None, *flags: str, nproc: int = 1, iters: int = 12) -> list[str]:
    """A tiny GPT run on ``dataset``: 4 layers of 64, a few seconds on a CPU."""
    argv = ["pretrain"] + (["--nproc-per-node", str(nproc)] if nproc > 1 else [])
    argv += ["--config", "configs/gpt_headless_tiny.yaml", "--data-path", dataset, "--train-iters", str(iters),
             "--lr-warmup-iters", "2", "--eval-iters", "0", "--log-interval", "1", "--num-workers", "1",
             "--save", str(save) if save else "none", *flags]
    return argv
