"""A private single-node SLURM cluster for tests: real ``slurmctld`` and ``slurmd`` from the
distribution's packages (Debian: ``slurmctld slurmd slurm-client``), nothing installed or changed
outside a temporary directory.

    with LocalSlurm(tmp_dir) as cluster:
        job = cluster.sbatch("examples/slurm/pretrain_gpt.sbatch", "--ntasks-per-node=2", env=...)
        cluster.wait(job, lambda info: info["JobState"] == "COMPLETED")

The daemons run in the foreground as children of the test process, with their own ``slurm.conf``
(``SLURM_CONF``), state, spool and log directories and free ports; authentication is ``auth/none``,
so munge is not needed. Requeued jobs restart at once (:meth:`release`) instead of after SLURM's
two-minute requeue delay. :meth:`stop` cancels the jobs, then stops the daemons by their PIDs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd")


def slurm_missing_reason() -> str | None:
    """Why a local cluster cannot run here, or None when it can."""
    missing = [name for name in (*DAEMONS, "sbatch", "srun", "scontrol") if shutil.which(name) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} not found; Debian: slurmctld slurmd slurm-client)"
    if os.geteuid() != 0:
        return "a local SLURM needs root (slurmd starts job steps as the submitting user)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalSlurm:
    """A one-node cluster whose daemons live as long as this object; see the module docstring."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.node = socket.gethostname().split(".")[0]  # slurmd finds its node by `hostname -s`
        self.cpus = max(2, os.cpu_count() or 1)
        self.conf = self.directory / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: dict[str, subprocess.Popen] = {}
        self.jobs: list[str] = []

    def _write_conf(self) -> None:
        for name in ("state", "spool", "log", "run"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        d = self.directory
        # 127.0.0.1 as the addresses, so that the host name need not resolve. CPUs may exceed the
        # machine's (config_overrides), so that a 1-core runner still fits a 2-task job.
        self.conf.write_text(f"""\
ClusterName=headless-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}
SlurmctldPidFile={d / "run/slurmctld.pid"}
SlurmdPidFile={d / "run/slurmd.pid"}
SlurmctldLogFile={d / "log/slurmctld.log"}
SlurmdLogFile={d / "log/slurmd.log"}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
InactiveLimit=0
MinJobAge=600
KillWait=30
Waittime=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 30.0) -> LocalSlurm:
        self._write_conf()
        commands = {"slurmctld": ["slurmctld", "-D", "-i", "-c"], "slurmd": ["slurmd", "-D"]}
        for name, command in commands.items():
            with open(self.directory / "log" / f"{name}.out", "w") as out:
                self.daemons[name] = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self._run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() != "idle":
            exited = {n: p.returncode for n, p in self.daemons.items() if p.poll() is not None}
            if exited or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the local SLURM did not start (exited: {exited}):\n{self.logs()}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        """Cancel this cluster's jobs, wait for them, then stop the daemons by their PIDs."""
        if self.jobs and self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
            self._run("scancel", *self.jobs, check=False)
            deadline = time.monotonic() + 40
            while self._run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            process = self.daemons.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, *command: str, check: bool = True, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
        done = subprocess.run(command, env=env or self.env, cwd=cwd, capture_output=True, text=True, timeout=60,
                              check=False)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def sbatch(self, script: str | os.PathLike, *options: str, env: dict | None = None, cwd=None) -> str:
        """Submit ``script`` with sbatch ``options`` and extra environment ``env``; return the job id."""
        done = self._run("sbatch", "--parsable", *options, str(script), env={**self.env, **(env or {})}, cwd=cwd)
        job = done.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job

    def job(self, job: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
        text = self._run("scontrol", "show", "job", "-o", job).stdout
        return dict(field.split("=", 1) for field in text.split() if "=" in field)

    def wait(self, job: str, condition, timeout: float = 120.0, poll: float = 0.5) -> dict[str, str]:
        """Poll the job until ``condition(info)`` holds; fail with the job and daemon state if it does not."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job)
            if condition(info):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job}: condition not met within {timeout:.0f}s: {info}\n{self.logs()}")
            time.sleep(poll)

    def signal(self, job: str, name: str, batch: bool = False) -> None:
        """``scancel --signal=NAME``: to every process of the job's steps, or with ``batch`` to the batch shell."""
        self._run("scancel", f"--signal={name}", *(["--batch"] if batch else []), job)

    def cancel(self, job: str) -> None:
        """``scancel``: SIGTERM to every process of the job, SIGKILL after KillWait."""
        self._run("scancel", job)

    def release(self, job: str, timeout: float = 30.0) -> None:
        """Let a requeued job start at once rather than after SLURM's requeue delay (BeginTime).

        Not in the same second as the node's clean-up of the previous run, though: slurmd revokes
        the job's credentials at that second, and a new one issued within it is refused too ("Job
        credential revoked"). So wait for the node to be idle again, then start one second later.
        """
        deadline = time.monotonic() + timeout
        while self._run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() != "idle":
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job}: the node did not become idle after the requeue\n{self.logs()}")
            time.sleep(0.2)
        self._run("scontrol", "update", f"jobid={job}", "StartTime=now+1")

    def logs(self, lines: int = 15) -> str:
        parts = []
        for path in sorted((self.directory / "log").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)
