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

:class:`TwoNodeSlurm` is the same with two nodes: each ``slurmd`` in its own network, UTS and mount
namespace (its own host name and address on a private bridge, and a private ``/etc/hosts`` that
names both nodes), so that the ranks of a job meet over a real network as on a cluster.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
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

    slurmd_timeout = 300  # SLURM's default: seconds without an answer from a slurmd before its node is DOWN

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.node = socket.gethostname().split(".")[0]  # slurmd finds its node by `hostname -s`
        self.cpus = max(2, os.cpu_count() or 1)
        self.conf = self.directory / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: dict[str, subprocess.Popen] = {}
        self.jobs: list[str] = []

    def _write_conf(self) -> None:
        # 127.0.0.1 as the addresses, so that the host name need not resolve. CPUs may exceed the
        # machine's (config_overrides), so that a 1-core runner still fits a 2-task job.
        d = self.directory
        self._write_conf_with(
            controller=f"{self.node}(127.0.0.1)",
            node_files=f"""\
SlurmdSpoolDir={d / "spool"}
SlurmdPidFile={d / "run/slurmd.pid"}
SlurmdLogFile={d / "log/slurmd.log"}""",
            nodes=f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            partition=self.node,
        )

    def _write_conf_with(self, controller: str, node_files: str, nodes: str, partition: str) -> None:
        for name in ("state", "spool", "log", "run"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        d = self.directory
        self.conf.write_text(f"""\
ClusterName=headless-test
SlurmctldHost={controller}
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
SlurmctldPidFile={d / "run/slurmctld.pid"}
SlurmctldLogFile={d / "log/slurmctld.log"}
{node_files}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
InactiveLimit=0
SlurmdTimeout={self.slurmd_timeout}
MinJobAge=600
KillWait=30
Waittime=0
{nodes}
PartitionName=test Nodes={partition} Default=YES MaxTime=INFINITE State=UP
""")

    def _daemon_commands(self) -> dict[str, list[str]]:
        return {"slurmctld": ["slurmctld", "-D", "-i", "-c"], "slurmd": ["slurmd", "-D"]}

    def _idle(self) -> bool:
        states = self._run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
        return bool(states) and all(state == "idle" for state in states)

    def start(self, timeout: float = 30.0) -> LocalSlurm:
        self._write_conf()
        for name, command in self._daemon_commands().items():
            with open(self.directory / "log" / f"{name}.out", "w") as out:
                self.daemons[name] = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._idle():
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
        for name in reversed(list(self.daemons)):
            process = self.daemons.pop(name)
            if process.poll() is not None:
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
        while not self._idle():
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


def namespaces_missing_reason() -> str | None:
    """Why :class:`TwoNodeSlurm` cannot run here (besides SLURM itself), or None when it can."""
    missing = [name for name in ("ip", "nsenter", "unshare", "mount", "hostname") if shutil.which(name) is None]
    if missing:
        return f"network namespaces need {', '.join(missing)} (Debian: iproute2, util-linux)"
    if os.geteuid() != 0:
        return "two nodes in network namespaces need root"
    probe = f"hm-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode:
        return f"cannot create a network namespace here ({made.stderr.strip()})"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _unused_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.233.0.0/16 that no interface of this machine uses."""
    in_use = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for third in range(os.getpid() % 200, os.getpid() % 200 + 256):
        subnet = ipaddress.IPv4Network(f"10.233.{third % 256}.0/24")
        if f" {subnet.network_address}"[:-1] not in in_use:
            return subnet
    raise RuntimeError("no free 10.233.x.0/24 subnet for the test bridge")


class TwoNodeSlurm(LocalSlurm):
    """Two nodes, ``hm-node1`` and ``hm-node2``, each a ``slurmd`` in its own network, UTS and
    mount namespace, joined by a bridge that also carries the ``slurmctld`` of the host.

    What is made, and undone by :meth:`stop` (also after a failed start): a bridge with the
    subnet's first address, two named network namespaces each holding one end of a veth pair
    (the node's address; the other end is on the bridge), and, inside each node's private mount
    namespace only, a bind mount of a hosts file over ``/etc/hosts``: the machine's own
    ``/etc/hosts`` is never written. Job steps run inside their node's namespaces, so
    ``hostname`` says ``hm-node2`` and ``MASTER_ADDR=hm-node1`` resolves, as on a real cluster.
    The disk is shared, as a cluster's shared file system is.
    """

    NODES = ("hm-node1", "hm-node2")

    def __init__(self, directory: str | os.PathLike, cpus_per_node: int = 4):
        super().__init__(directory)
        self.cpus = cpus_per_node
        tag = os.getpid() % 100000
        self.bridge = f"hmbr{tag}"
        self.namespaces = {node: f"hm{tag}-{node}" for node in self.NODES}
        self.veths = {node: f"hmv{tag}n{i}" for i, node in enumerate(self.NODES, 1)}
        self.subnet = _unused_subnet()
        hosts = list(self.subnet.hosts())
        self.controller_address = str(hosts[0])
        self.addresses = {node: str(hosts[10 + i]) for i, node in enumerate(self.NODES, 1)}
        self._network_made: list[tuple[str, ...]] = []  # `ip` commands that undo what was made

    def _write_conf(self) -> None:
        d = self.directory
        hosts = ["127.0.0.1 localhost", f"{self.controller_address} {self.node}"]
        hosts += [f"{address} {node}" for node, address in self.addresses.items()]
        (d / "hosts").write_text("\n".join(hosts) + "\n")
        # %n: each slurmd keeps its own spool, PID file and log.
        self._write_conf_with(
            controller=f"{self.node}({self.controller_address})",
            node_files=f"""\
SlurmdSpoolDir={d / "spool/%n"}
SlurmdPidFile={d / "run/slurmd-%n.pid"}
SlurmdLogFile={d / "log/slurmd-%n.log"}""",
            nodes="\n".join(
                f"NodeName={node} NodeAddr={address} CPUs={self.cpus} State=UNKNOWN"
                for node, address in self.addresses.items()
            ),
            partition=",".join(self.NODES),
        )

    def _ip(self, *args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")

    def _make_network(self) -> None:
        prefix = self.subnet.prefixlen
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._network_made.append(("link", "del", self.bridge))
        self._ip("addr", "add", f"{self.controller_address}/{prefix}", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        for node, namespace in self.namespaces.items():
            veth, inside = self.veths[node], self.veths[node] + "i"
            self._ip("netns", "add", namespace)
            self._network_made.append(("netns", "del", namespace))
            self._ip("link", "add", veth, "type", "veth", "peer", "name", inside)
            self._network_made.append(("link", "del", veth))
            self._ip("link", "set", veth, "master", self.bridge, "up")
            self._ip("link", "set", inside, "netns", namespace)
            self._ip("-n", namespace, "addr", "add", f"{self.addresses[node]}/{prefix}", "dev", inside)
            self._ip("-n", namespace, "link", "set", inside, "up")
            self._ip("-n", namespace, "link", "set", "lo", "up")

    def _daemon_commands(self) -> dict[str, list[str]]:
        commands = {"slurmctld": ["slurmctld", "-D", "-i", "-c"]}
        for node, namespace in self.namespaces.items():
            # Not `ip netns exec`, which remounts /sys and so hides the cgroup file system slurmd
            # needs. unshare's new mount namespace is private: the bind mount over /etc/hosts stays
            # inside it.
            (self.directory / "spool" / node).mkdir(parents=True, exist_ok=True)
            inside = (f"mount --bind {self.directory / 'hosts'} /etc/hosts && hostname {node} && "
                      f"exec slurmd -D -N {node}")
            commands[node] = ["nsenter", f"--net=/run/netns/{namespace}", "unshare", "--mount", "--uts",
                              "sh", "-c", inside]
        return commands

    def start(self, timeout: float = 30.0) -> TwoNodeSlurm:
        try:
            self._make_network()
        except Exception:
            self.stop()
            raise
        return super().start(timeout)

    @contextlib.contextmanager
    def slurmd_timeout_of(self, seconds: int):
        """Within the block, a node whose slurmd does not answer for ``seconds`` is set DOWN (the
        controller pings every third of that); SLURM's 300 s again afterwards. Not for the whole
        cluster: a loaded test machine can leave a ping unanswered for seconds."""
        self._reconfigure_slurmd_timeout(seconds)
        try:
            yield
        finally:
            self._reconfigure_slurmd_timeout(self.slurmd_timeout)

    def _reconfigure_slurmd_timeout(self, seconds: int) -> None:
        self.conf.write_text(re.sub(r"^SlurmdTimeout=\d+$", f"SlurmdTimeout={seconds}", self.conf.read_text(),
                                    flags=re.MULTILINE))
        self._run("scontrol", "reconfigure")

    def kill_slurmd(self, node: str) -> None:
        """SIGKILL ``node``'s slurmd; its job steps (their slurmstepd) go on without it."""
        process = self.daemons.pop(node)
        process.kill()
        process.wait()

    def start_slurmd(self, node: str) -> None:
        """Start ``node``'s slurmd again (after :meth:`kill_slurmd`); it finds its node's job steps."""
        with open(self.directory / "log" / f"{node}.out", "a") as out:
            self.daemons[node] = subprocess.Popen(self._daemon_commands()[node], env=self.env, stdout=out,
                                                  stderr=subprocess.STDOUT)

    def node_state(self, node: str) -> str:
        """``scontrol show node``'s State, e.g. IDLE, ALLOCATED, DOWN+NOT_RESPONDING."""
        text = self._run("scontrol", "show", "node", "-o", node).stdout
        return dict(field.split("=", 1) for field in text.split() if "=" in field)["State"]

    def processes_on(self, node: str) -> list[int]:
        """PIDs of every process in ``node``'s network namespace (its slurmd, the job steps)."""
        listed = subprocess.run(["ip", "netns", "pids", self.namespaces[node]], capture_output=True, text=True,
                                check=False)
        return [int(pid) for pid in listed.stdout.split()]

    def stop(self) -> None:
        super().stop()
        # Anything a job left behind in a node's namespace (the daemons are gone already).
        for node in self.NODES:
            for pid in self.processes_on(node):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        while self._network_made:
            subprocess.run(["ip", *self._network_made.pop()], capture_output=True, check=False)
