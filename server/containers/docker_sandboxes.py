"""Docker side of the sandboxes: start a locked-down container, wait for its agent, talk to it, remove it.

Sandboxes have no network at all (`--network none`: a loopback interface and nothing else). The
center talks to each agent over a Unix socket in a host folder bind-mounted into the container
under /agent, a folder that only the container's root (the agent) may enter. So no port exists
to publish, no address can be reached from inside, and no firewall rule is needed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker.types import LogConfig, Mount, Ulimit

import server.containers.security as sandbox_security
from sandbox.contract import (
    AGENT_SOCKET_DIR,
    AGENT_SOCKET_NAME,
    INTERRUPT_GRACE_SECONDS,
    SESSION_START_SECONDS,
    USERS_DIR,
    WORKSPACE,
)
from server.config import Config, size_in_bytes
from server.containers.agent_client import AgentClient, AgentRefused, AgentUnreachable, Listener
from server.containers.engine import Engine
from server.containers.image import INPUTS_LABEL, inputs_hash
from server.containers.warm_up import WarmUpPolicy
from server.errors import EngineError, EngineUnavailable, SandboxFailed

log = logging.getLogger(__name__)

__all__ = ["AgentUnreachable", "DockerSandboxes", "Sandbox", "SandboxStartError", "DEPLOYMENT_LABEL"]

DEPLOYMENT_LABEL = "code-interpreter.deployment"
# Each container's own id (128 random bits): a session keeps its sandbox's id as its session id, so
# the container of a session carries the session's label, from the day it was started warm.
SANDBOX_LABEL = "code-interpreter.sandbox"
# The agent runs as root inside the container with only what it needs: start the program as the
# sandbox user (SETUID, SETGID) and kill it (KILL). The program itself ends up with no capability.
AGENT_CAPABILITIES = ["SETUID", "SETGID", "KILL"]
# Each sandbox's program runs as a uid of its own, drawn from this range: per-user kernel limits
# (inotify instances, pipe buffers, RLIMIT_NPROC counts) are then not shared between sandboxes.
# High enough to belong to no host user nor to the usual subordinate-uid ranges (100000+65536*n).
PROGRAM_UID_BASE = 2_000_000
PROGRAM_UID_SPAN = 1_000_000
HEALTH_POLL_SECONDS = 0.01
GVISOR_THREAD_HEADROOM = 1024
GVISOR_COMPAT_PATH = "/opt/gvisor-compat/bin"  # made by Dockerfile.sandbox: busybox's ls and stat
RUN_GRACE_SECONDS = 15.0  # beyond the program's own limit, for the agent to collect and answer
EXIT_WAIT_SECONDS = 2.0  # for an agent that answered to exit by itself before its container is removed
MAX_SOCKET_PATH = 100  # sockaddr_un holds 108 bytes
# An agent that hears no request for the longest idle time a session may have plus this ends itself
# (--max-silence): its center is gone. A live center talks to each of its agents every few seconds
# (the pool's watcher every 2 s, the session sweeper every 5 s), and any use of a session is a request
# its agent hears, so a silence that long means the session was past its idle timeout anyway (even
# while the database is down and the sweeper cannot run). The margin is 12 sweeps: clocks, database
# writes and a slow round never make a session's agent end before its center would end the session.
SILENCE_MARGIN_SECONDS = 60.0


class SandboxStartError(Exception):
    """A container could not be started or its agent never answered."""


@dataclass
class Sandbox:
    """One running container whose agent is ready to run one program."""

    container_id: str
    slot: int  # the pool slot it fills (0: none, e.g. a session's own)
    socket_dir: str  # on the host
    program_uid: int  # the uid its program runs as, this sandbox's own
    sandbox_id: str = ""  # its SANDBOX_LABEL
    answered: bool = False  # the agent sent its report, after which it exits by itself
    agent: AgentClient = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.agent = AgentClient(self.socket_dir)

    @property
    def socket_path(self) -> str:
        """The agent's socket, as the host sees it."""
        return self.agent.socket_path

    def request(self, method: str, path: str, body: Any, timeout: float) -> tuple[int, Any]:
        """One HTTP exchange with the agent (see AgentClient.request)."""
        return self.agent.request(method, path, body, timeout)

    def health(self) -> dict[str, Any] | None:
        """The agent's /healthz answer, or None while it does not answer."""
        return self.agent.health()

    def run(self, job: dict[str, Any] | bytes, timeout: float | None = None,
            listener: Listener | None = None) -> dict[str, Any]:
        """Send the job (or its JSON, with the program's time limit) to the agent and return its report."""
        limit = float(job["timeout"]) if timeout is None and isinstance(job, dict) else float(timeout or 0)
        report = self.agent.run(job, timeout=limit + RUN_GRACE_SECONDS, listener=listener)
        self.answered = True
        return report

    def run_cell(self, job: bytes, timeout: float, listener: Listener | None = None) -> dict[str, Any]:
        """One cell of a session (the agent interrupts it at its limit, then kills it after a grace)."""
        return self.agent.run(job, timeout=timeout + INTERRUPT_GRACE_SECONDS + RUN_GRACE_SECONDS,
                              path="/session/cell", listener=listener)


def opaque_folder_name(label: str) -> str:
    """This deployment's socket folder name: stable for the host, not computable from inside a sandbox.

    The program can read its mounts (/proc/self/mountinfo), which show the host folder bound at
    /agent/sock: a keyed hash (the host's machine id is the key, a file no sandbox can read) names
    neither the deployment nor anything one could guess from it.
    """
    try:
        key = Path("/etc/machine-id").read_bytes().strip()
    except OSError:
        key = b""
    return hmac.new(key or b"code-interpreter", label.encode(), hashlib.sha256).hexdigest()[:16]


def default_socket_root() -> Path:
    """Where the agents' socket folders live on the host: /run when root, else a private temp folder."""
    if os.geteuid() == 0:
        return Path("/run/code-interpreter")
    return Path(tempfile.gettempdir()) / f"code-interpreter-{os.geteuid()}"


@dataclass(frozen=True)
class Unreachable:
    """Why an agent stopped answering, and whether the memory limit is the cause."""

    reason: str
    out_of_memory: bool = False


def oom_report(error: str, duration_ms: float | None) -> dict[str, Any]:
    """The report of a program the memory limit killed with its agent (which could not report it)."""
    return {"stdout": "", "stderr": "", "exit_code": 137, "status": "oom", "duration_ms": duration_ms,
            "error": error, "images": []}


class DockerSandboxes:
    """Starts and removes this deployment's sandbox containers."""

    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine or Engine()
        self.warm_up = WarmUpPolicy()
        self.label = config.deployment_label
        self.socket_root = (Path(config.sandbox_socket_dir) if config.sandbox_socket_dir
                            else default_socket_root()) / opaque_folder_name(self.label)
        self._lock = threading.Lock()
        self._uids_in_use: set[int] = set()
        self._unremoved: set[str] = set()  # containers the engine failed to remove: retried later

    # --- set-up and clean-up -------------------------------------------------------------

    def prepare(self) -> dict[str, Sandbox]:
        """Check the engine, image and runtime; remove a previous run's leftovers but its live sessions,
        which it returns by sandbox id."""
        try:
            self.engine.ping()
            labels = self.engine.image_labels(self.config.interpreter_image)
            runtimes = self.engine.runtimes()
        except (EngineUnavailable, EngineError) as e:
            raise SandboxStartError(f"cannot reach the Docker engine ({e.message}); is dockerd running?") from e
        if labels is None:
            raise SandboxStartError(
                f"sandbox image {self.config.interpreter_image} is missing: run `python3 build.py`")
        built_from = labels.get(INPUTS_LABEL)
        if built_from is None:
            log.warning("sandbox image %s carries no %s label: it was not built by build.py, so whether its "
                        "agent matches this checkout is unknown", self.config.interpreter_image, INPUTS_LABEL)
        elif built_from != inputs_hash(self.config.dependencies):
            raise SandboxStartError(
                f"sandbox image {self.config.interpreter_image} was built from other sources than this checkout "
                "(its agent, Dockerfile or dependencies changed): run `python3 build.py`")
        if self.config.sandbox_runtime not in runtimes:
            raise SandboxStartError(
                f"Docker has no runtime '{self.config.sandbox_runtime}' (known: {', '.join(runtimes)})")
        longest = self.socket_root / ("0" * 16) / AGENT_SOCKET_NAME
        if len(str(longest)) > MAX_SOCKET_PATH:
            raise SandboxStartError(f"socket folder {self.socket_root} is too deep for a Unix socket path; "
                                    "set sandbox_socket_dir to a shorter folder")
        sessions = self.session_sandboxes()
        removed = self.remove_leftovers(keep=sessions)
        if removed:
            log.info("removed %d leftover sandbox containers of deployment %s", removed, self.label)
        if sessions:
            log.info("kept %d session sandboxes of deployment %s", len(sessions), self.label)
        return sessions

    def remove_leftovers(self, keep: Collection[str] = ()) -> int:
        """Force-remove every container labelled with this deployment but those whose sandbox id is in
        `keep` (live sessions), and every socket folder but theirs."""
        try:
            containers = self.engine.labelled(DEPLOYMENT_LABEL, self.label)
        except EngineUnavailable as e:
            log.warning("could not list leftover sandboxes: %s", e.message)
            containers = [{"Id": container_id} for container_id in self._unremoved]
        kept_folders = set()
        removed = 0
        for container in containers:
            if (container.get("Labels") or {}).get(SANDBOX_LABEL) in keep:
                kept_folders.update(mount.get("Source") for mount in container.get("Mounts") or ())
                continue
            self._remove(container["Id"])
            removed += 1
        if not kept_folders:
            shutil.rmtree(self.socket_root, ignore_errors=True)
        elif self.socket_root.is_dir():
            for folder in self.socket_root.iterdir():
                if str(folder) not in kept_folders:
                    shutil.rmtree(folder, ignore_errors=True)
        return removed

    def session_sandboxes(self) -> dict[str, Sandbox]:
        """This deployment's containers whose agent says it holds a live session, by sandbox id.

        Asked of the agents themselves, not the database, so that a center that restarts while the
        database is down still tells sessions from leftovers.
        """
        found = {}
        try:
            containers = self.engine.labelled(DEPLOYMENT_LABEL, self.label)
        except EngineUnavailable:
            return {}
        for container in containers:
            labels = container.get("Labels") or {}
            sources = [mount.get("Source") for mount in container.get("Mounts") or ()
                       if mount.get("Destination") == AGENT_SOCKET_DIR]
            if not sources or not labels.get(SANDBOX_LABEL):
                continue
            sandbox = Sandbox(container["Id"], 0, sources[0], program_uid=0, sandbox_id=labels[SANDBOX_LABEL])
            health = sandbox.health()
            if health and health.get("mode") == "session" and health.get("alive", True):
                found[sandbox.sandbox_id] = sandbox
        return found

    def start_session(self, sandbox: Sandbox) -> None:
        """Turn a fresh sandbox into a session's: its agent keeps its interpreter, and ends only at the session's
        lifetime or after a long silence (agent_arguments) unless the center removes it first."""
        try:
            sandbox.agent.call("POST", "/session/start", {}, timeout=SESSION_START_SECONDS + RUN_GRACE_SECONDS)
        except (AgentRefused, AgentUnreachable) as e:
            raise SandboxFailed(f"the sandbox could not start a session ({e})") from e

    # --- one sandbox -----------------------------------------------------------------------

    def agent_arguments(self, program_uid: int) -> list[str]:
        """The agent's command line: its socket, the program's uid, how to warm up, the thread pools'
        size, when to end itself with no center left to remove it and, under gVisor, its process limit."""
        plan = self.warm_up.plan()
        cpus = self.config.resource_limits.cpus
        silence = self.config.session_idle_timeout_seconds + SILENCE_MARGIN_SECONDS
        arguments = ["--socket", f"{AGENT_SOCKET_DIR}/{AGENT_SOCKET_NAME}", "--uid", str(program_uid),
                     "--warm-delay", f"{plan.delay:g}", "--warm-first", ",".join(plan.first),
                     "--warm-rest", f"{plan.rest_delay:g}",
                     # As many threads as the CPU limit lets run at once (none set without a limit).
                     "--threads", str(math.ceil(float(cpus)) if cpus else 0),
                     # Every digit (repr, not :g, which rounds 1234567 to 1.23457e+06: an end too early).
                     "--session-lifetime", repr(float(self.config.session_max_lifetime_seconds)),
                     "--max-silence", repr(float(silence))]
        if self.config.sandbox_runtime == "runsc":
            # gVisor's own threads count against the container's pids limit, so that limit gets
            # headroom and the program's processes are capped inside instead, by RLIMIT_NPROC
            # (which gVisor counts per sandbox; under runc it would be shared across the host).
            arguments += ["--max-processes", str(self.config.resource_limits.pids)]
            # Debian's runsc (2022-12) answers statx with AT_NO_AUTOMOUNT, which coreutils 9's ls and
            # stat pass, with EINVAL: busybox's, which use stat(), go first on the program's PATH.
            arguments += ["--path-first", GVISOR_COMPAT_PATH]
        return arguments

    def container_options(self, slot: int, socket_dir: str, program_uid: int, sandbox_id: str) -> dict[str, Any]:
        """create_container's arguments: everything that locks a sandbox down; see docs/security.md."""
        limits = self.config.resource_limits
        runtime = self.config.sandbox_runtime
        security_opt = ["no-new-privileges"]
        profile = sandbox_security.seccomp_profile(runtime)
        if profile is not None:
            security_opt.append(f"seccomp={profile}")
        host: dict[str, Any] = dict(
            network_mode="none",
            mounts=[Mount(target=AGENT_SOCKET_DIR, source=socket_dir, type="bind")],
            runtime=runtime,
            init=True,
            cap_drop=["ALL"],
            cap_add=AGENT_CAPABILITIES,
            security_opt=security_opt,
            read_only=True,
            tmpfs={
                WORKSPACE: f"size={limits.disk},uid={program_uid},gid={program_uid},mode=0755,exec",
                "/tmp": f"size={limits.tmp},mode=1777",
                USERS_DIR: "size=64k,mode=0755",  # root's: the agent names the program's uid there
            },
            shm_size=limits.shm,
            pids_limit=limits.pids + (GVISOR_THREAD_HEADROOM if runtime == "runsc" else 0),
            ulimits=[
                Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
                Ulimit(name="fsize", soft=size_in_bytes(limits.file_size), hard=size_in_bytes(limits.file_size)),
                Ulimit(name="core", soft=0, hard=0),
            ],
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
        )
        if limits.memory:
            host.update(mem_limit=limits.memory, memswap_limit=limits.memory)  # equal: no swap
        if limits.cpus:
            host["nano_cpus"] = int(float(limits.cpus) * 1e9)
        if runtime != "runsc":
            # Its own cgroup namespace: /proc/self/cgroup and mountinfo show "/", not the host's
            # cgroup paths and container ids. (gVisor shows only its own mounts anyway.)
            host["cgroupns"] = "private"
        host_config = self.engine.create_host_config(**host)
        # Not an option of docker-py's: set on the API's HostConfig directly. Setting it replaces
        # Docker's own list, which sandbox_security restates.
        host_config["MaskedPaths"] = list(sandbox_security.MASKED_PATHS)
        return dict(
            image=self.config.interpreter_image,
            name=f"cia-{secrets.token_hex(8)}",
            command=self.agent_arguments(program_uid),
            labels={DEPLOYMENT_LABEL: self.label, SANDBOX_LABEL: sandbox_id},
            environment={},
            use_config_proxy=False,  # never hand the host's proxy settings to untrusted code
            hostname="sandbox",
            user="0",
            # No network at all, and under runc and crun no libnetwork either: with networking
            # disabled the engine skips its network sandbox, whose two helper processes
            # (libnetwork-setkey, set-ipv6) cost ~80 ms of CPU per container, and the runtime
            # itself gives the container an empty network namespace with its loopback up. gVisor
            # (with --network=host) would leave that loopback down, so it keeps Docker's.
            network_disabled=runtime != "runsc",
            host_config=host_config,
        )

    def make_socket_dir(self) -> str:
        """A fresh host folder for one agent's socket (the container's root must be able to write it)."""
        self.socket_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket_root.parent, 0o700)  # only this user (and root) can reach the sockets
        os.chmod(self.socket_root, 0o700)
        path = self.socket_root / secrets.token_hex(8)
        path.mkdir()
        os.chmod(path, 0o777)  # not widened by this: the parents are private, /agent is the agent's only
        return str(path)

    def _take_uid(self) -> int:
        """A program uid no live sandbox of this center uses (random: other centers on the host draw too)."""
        with self._lock:
            while True:
                uid = PROGRAM_UID_BASE + secrets.randbelow(PROGRAM_UID_SPAN)
                if uid not in self._uids_in_use:
                    self._uids_in_use.add(uid)
                    return uid

    def claim_uid(self, uid: int) -> None:
        """Mark a uid as taken by a sandbox this center did not start in this run (an adopted session's)."""
        with self._lock:
            self._uids_in_use.add(uid)

    def _give_back_uid(self, uid: int) -> None:
        with self._lock:
            self._uids_in_use.discard(uid)

    def launch(self, slot: int, cancelled: threading.Event | None = None) -> Sandbox:
        """Start a container for this slot and return it once its agent answers its health check.

        Raises SandboxStartError, or EngineUnavailable when the engine cannot be reached; either
        way nothing of the attempt is left behind (container, socket folder, uid).
        """
        deadline = time.monotonic() + self.config.sandbox_start_timeout
        program_uid = self._take_uid()
        socket_dir = self.make_socket_dir()
        sandbox_id = secrets.token_hex(16)
        try:
            container_id = self.engine.start_container(
                self.container_options(slot, socket_dir, program_uid, sandbox_id))
        except (EngineUnavailable, EngineError) as e:
            shutil.rmtree(socket_dir, ignore_errors=True)
            self._give_back_uid(program_uid)
            if isinstance(e, EngineUnavailable):
                raise
            raise SandboxStartError(f"cannot start a sandbox container: {e.message}") from e
        sandbox = Sandbox(container_id=container_id, slot=slot, socket_dir=socket_dir, program_uid=program_uid,
                          sandbox_id=sandbox_id)
        checks = 0
        while time.monotonic() < deadline and not (cancelled and cancelled.is_set()):
            if sandbox.health() is not None:
                return sandbox
            checks += 1
            if checks % 50 == 0 and not self._is_running(container_id):
                break
            time.sleep(HEALTH_POLL_SECONDS)
        logs = self.engine.logs(container_id)
        self.destroy(sandbox)
        raise SandboxStartError(f"sandbox agent on slot {slot} did not become healthy: {logs}")

    def destroy(self, sandbox: Sandbox) -> None:
        """Remove the container (SIGKILL, no grace period, if it still runs) and its socket folder.

        An agent that answered exits by itself within milliseconds; waiting for that (briefly)
        spares the engine a kill through containerd and the runtime, ~30 ms of CPU per container.
        A removal the engine fails is logged and tried again with the next one.
        """
        if sandbox.answered:
            self.engine.wait(sandbox.container_id, EXIT_WAIT_SECONDS)
        self._remove(sandbox.container_id)
        shutil.rmtree(sandbox.socket_dir, ignore_errors=True)
        self._give_back_uid(sandbox.program_uid)
        with self._lock:
            earlier_failures = self._unremoved - {sandbox.container_id}
        for container_id in earlier_failures:
            self._remove(container_id)

    def _remove(self, container_id: str) -> None:
        """Remove one container; remember it when the engine fails, so it is tried again."""
        removed = self.engine.remove(container_id)
        with self._lock:
            if removed:
                self._unremoved.discard(container_id)
            else:
                self._unremoved.add(container_id)

    @property
    def unremoved(self) -> frozenset[str]:
        """Containers whose removal failed so far (the engine was down); retried at the next removal."""
        with self._lock:
            return frozenset(self._unremoved)

    def is_healthy(self, sandbox: Sandbox) -> bool:
        """The agent answers (about a millisecond over its socket)."""
        return sandbox.health() is not None

    def run(self, sandbox: Sandbox, job: dict[str, Any] | bytes, timeout: float | None = None,
            listener: Listener | None = None) -> dict[str, Any]:
        """Run a job in the sandbox; a sandbox that fails is reported as SandboxFailed (or as an oom run)."""
        started = time.monotonic()
        try:
            return sandbox.run(job, timeout, listener)
        except AgentRefused as e:
            # The agent is alive and said why: no reason to wait on the engine to find out more.
            raise SandboxFailed(f"the sandbox refused the program: {e.agent_message}") from e
        except AgentUnreachable as e:
            if listener is not None and listener.hangup.done:
                raise SandboxFailed("the run was stopped: its client hung up") from e
            if self._was_oom_killed(sandbox):  # the memory limit took the agent down with the program
                return oom_report("the program ran out of memory and was killed",
                                  round((time.monotonic() - started) * 1000, 1))
            exit_code = self._exit_code(sandbox)
            if exit_code is not None:
                raise SandboxFailed(f"the sandbox was killed while running the program (exit code {exit_code}; "
                                    "under gVisor usually the memory limit)") from e
            raise SandboxFailed(f"the sandbox failed while running the program ({e})") from e

    def why_unreachable(self, sandbox: Sandbox) -> Unreachable:
        """Why a sandbox's agent stopped answering, in words (the engine's view of its container)."""
        if self._was_oom_killed(sandbox):
            return Unreachable("the session ran out of memory and its sandbox was killed", out_of_memory=True)
        state = self.engine.state(sandbox.container_id)
        if state is None:
            return Unreachable("its container is gone")
        if not state.get("Running"):
            return Unreachable(f"its container stopped (exit code {state.get('ExitCode')})")
        return Unreachable("its sandbox stopped answering")

    def _was_oom_killed(self, sandbox: Sandbox, settle_seconds: float = 8.0, after_exit_seconds: float = 2.0) -> bool:
        """Whether the memory limit killed the container.

        The engine may take a moment to notice: the container can still look alive (gVisor winds
        down), and the OOM event can land just after the exit event.
        """
        deadline = time.monotonic() + settle_seconds
        exited_at = None
        while True:
            state = self.engine.state(sandbox.container_id)
            if state is None:
                return False
            if state.get("OOMKilled"):
                return True
            now = time.monotonic()
            if not state.get("Running"):
                exited_at = exited_at or now
                if now - exited_at > after_exit_seconds:
                    return False
            elif now > deadline:
                return False
            time.sleep(0.1)

    def _exit_code(self, sandbox: Sandbox) -> int | None:
        """The container's exit code once it has stopped; None while it runs (or is gone)."""
        state = self.engine.state(sandbox.container_id)
        return None if state is None or state.get("Running") else state.get("ExitCode")

    def _is_running(self, container_id: str) -> bool:
        state = self.engine.state(container_id)
        return bool(state and state.get("Running"))
