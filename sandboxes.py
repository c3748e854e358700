"""Docker side of the sandboxes: start a locked-down container, wait for its agent, talk to it, remove it.

Sandboxes have no network at all (`--network none`: a loopback interface and nothing else). The
center talks to each agent over a Unix socket in a host folder bind-mounted into the container
under /agent, a folder that only the container's root (the agent) may enter. So no port exists
to publish, no address can be reached from inside, and no firewall rule is needed.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.types import LogConfig, Mount, Ulimit

from config import Config
from errors import SandboxFailed

log = logging.getLogger(__name__)

DEPLOYMENT_LABEL = "code-interpreter.deployment"
PORT_LABEL = "code-interpreter.port"
SANDBOX_UID = 61000  # the image's `sandbox` user (Dockerfile.sandbox)
AGENT_SOCKET_DIR = "/agent/sock"  # inside the container; /agent is root's only (Dockerfile.sandbox)
SOCKET_NAME = "agent.sock"
# The agent runs as root inside the container with only what it needs: start the program as the
# sandbox user (SETUID, SETGID) and kill it (KILL). The program itself ends up with no capability.
AGENT_CAPABILITIES = ["SETUID", "SETGID", "KILL"]
HEALTH_POLL_SECONDS = 0.01
GVISOR_THREAD_HEADROOM = 1024
RUN_GRACE_SECONDS = 15.0  # beyond the program's own limit, for the agent to collect and answer
EXIT_WAIT_SECONDS = 2.0  # for an agent that answered to exit by itself before its container is removed
MAX_SOCKET_PATH = 100  # sockaddr_un holds 108 bytes


class SandboxStartError(Exception):
    """A container could not be started or its agent never answered."""


class AgentUnreachable(Exception):
    """The agent did not answer, or answered something that is not its JSON."""


def size_in_bytes(size: str) -> int:
    """'50m' -> 52428800 (Docker's units: b, k, m, g, powers of 1024)."""
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    size = size.strip().lower()
    if size and size[-1] in units:
        return int(float(size[:-1]) * units[size[-1]])
    return int(float(size))


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("agent", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        """Connect to the socket file instead of a TCP address."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass
class Sandbox:
    """One running container whose agent is ready to run one program."""

    container_id: str
    name: str
    port: int  # the slot's number, from interpreter_port_range
    socket_dir: str  # on the host
    answered: bool = False  # the agent sent its report, after which it exits by itself

    @property
    def socket_path(self) -> str:
        """The agent's socket, as the host sees it."""
        return os.path.join(self.socket_dir, SOCKET_NAME)

    def request(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, Any]:
        """One HTTP exchange with the agent: (status, decoded JSON); AgentUnreachable on any failure."""
        connection = UnixHTTPConnection(self.socket_path, timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise AgentUnreachable(f"{type(e).__name__}: {e}") from e
        finally:
            connection.close()

    def health(self) -> dict[str, Any] | None:
        """The agent's /healthz answer, or None while it does not answer."""
        if not os.path.exists(self.socket_path):  # cheap: no connection attempt before the agent binds
            return None
        try:
            status, body = self.request("GET", "/healthz", None, timeout=1)
        except AgentUnreachable:
            return None
        return body if status == 200 else None

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Send the job to the agent and return its JSON report."""
        status, body = self.request("POST", "/run", job, timeout=job["timeout"] + RUN_GRACE_SECONDS)
        if status != 200 or not isinstance(body, dict):
            raise AgentUnreachable(f"the agent answered HTTP {status}: {str(body)[:200]}")
        self.answered = True
        return body


def default_socket_root() -> Path:
    """Where the agents' socket folders live on the host: /run when root, else a private temp folder."""
    if os.geteuid() == 0:
        return Path("/run/code-interpreter")
    return Path(tempfile.gettempdir()) / f"code-interpreter-{os.geteuid()}"


class DockerSandboxes:
    """Starts and removes this deployment's sandbox containers."""

    def __init__(self, config: Config, client: docker.DockerClient | None = None) -> None:
        self.config = config
        self.client = client or docker.from_env(timeout=60)
        self.label = config.deployment_label
        self.socket_root = (Path(config.sandbox_socket_dir) if config.sandbox_socket_dir
                            else default_socket_root()) / self.label

    # --- set-up and clean-up -------------------------------------------------------------

    def prepare(self) -> None:
        """Check the engine, image and runtime; remove a previous run's leftovers."""
        try:
            self.client.ping()
        except docker.errors.DockerException as e:
            raise SandboxStartError(f"cannot reach the Docker engine: {e}") from e
        try:
            self.client.images.get(self.config.interpreter_image)
        except docker.errors.ImageNotFound as e:
            raise SandboxStartError(
                f"sandbox image {self.config.interpreter_image} is missing: run `python3 build.py`"
            ) from e
        runtimes = self.client.info().get("Runtimes", {})
        if self.config.sandbox_runtime not in runtimes:
            raise SandboxStartError(
                f"Docker has no runtime '{self.config.sandbox_runtime}' (known: {', '.join(sorted(runtimes))})"
            )
        longest = self.socket_root / f"{65535}-{'0' * 8}" / SOCKET_NAME
        if len(str(longest)) > MAX_SOCKET_PATH:
            raise SandboxStartError(f"socket folder {self.socket_root} is too deep for a Unix socket path; "
                                    "set sandbox_socket_dir to a shorter folder")
        removed = self.remove_leftovers()
        if removed:
            log.info("removed %d leftover sandbox containers of deployment %s", removed, self.label)

    def remove_leftovers(self) -> int:
        """Force-remove every container labelled with this deployment, and their socket folders."""
        containers = self.client.api.containers(all=True, filters={"label": f"{DEPLOYMENT_LABEL}={self.label}"})
        for container in containers:
            self._remove(container["Id"])
        shutil.rmtree(self.socket_root, ignore_errors=True)
        return len(containers)

    # --- one sandbox -----------------------------------------------------------------------

    def agent_arguments(self) -> list[str]:
        """The agent's command line: its socket and, under gVisor, the program's process limit."""
        arguments = ["--socket", f"{AGENT_SOCKET_DIR}/{SOCKET_NAME}"]
        if self.config.sandbox_runtime == "runsc":
            # gVisor's own threads count against the container's pids limit, so that limit gets
            # headroom and the program's processes are capped inside instead, by RLIMIT_NPROC
            # (which gVisor counts per sandbox; under runc it would be shared across the host).
            arguments += ["--max-processes", str(self.config.resource_limits.pids)]
        return arguments

    def container_options(self, port: int, socket_dir: str) -> dict[str, Any]:
        """create_container's arguments: everything that locks a sandbox down; see README's security section."""
        limits = self.config.resource_limits
        host: dict[str, Any] = dict(
            network_mode="none",
            mounts=[Mount(target=AGENT_SOCKET_DIR, source=socket_dir, type="bind")],
            runtime=self.config.sandbox_runtime,
            init=True,
            cap_drop=["ALL"],
            cap_add=AGENT_CAPABILITIES,
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={
                "/workspace": f"size={limits.disk},uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0755,exec",
                "/tmp": f"size={limits.tmp},mode=1777",
            },
            shm_size=limits.shm,
            pids_limit=limits.pids + (GVISOR_THREAD_HEADROOM if self.config.sandbox_runtime == "runsc" else 0),
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
        return dict(
            image=self.config.interpreter_image,
            name=f"cia-{self.label}-{port}-{secrets.token_hex(4)}",
            command=self.agent_arguments(),
            labels={DEPLOYMENT_LABEL: self.label, PORT_LABEL: str(port)},
            environment={},
            use_config_proxy=False,  # never hand the host's proxy settings to untrusted code
            hostname="sandbox",
            user="0",
            # No network at all, and under runc and crun no libnetwork either: with networking
            # disabled the engine skips its network sandbox, whose two helper processes
            # (libnetwork-setkey, set-ipv6) cost ~80 ms of CPU per container, and the runtime
            # itself gives the container an empty network namespace with its loopback up. gVisor
            # (with --network=host) would leave that loopback down, so it keeps Docker's.
            network_disabled=self.config.sandbox_runtime != "runsc",
            host_config=self.client.api.create_host_config(**host),
        )

    def make_socket_dir(self, port: int) -> str:
        """A fresh host folder for one agent's socket (the container's root must be able to write it)."""
        self.socket_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket_root.parent, 0o700)  # only this user (and root) can reach the sockets
        os.chmod(self.socket_root, 0o700)
        path = self.socket_root / f"{port}-{secrets.token_hex(4)}"
        path.mkdir()
        os.chmod(path, 0o777)  # not widened by this: the parents are private, /agent is the agent's only
        return str(path)

    def launch(self, port: int, deadline_seconds: float | None = None,
               cancelled: threading.Event | None = None) -> Sandbox:
        """Start a container for this port and return it once its agent answers its health check."""
        deadline = time.monotonic() + (deadline_seconds or self.config.sandbox_start_timeout)
        socket_dir = self.make_socket_dir(port)
        options = self.container_options(port, socket_dir)
        container_id = None
        try:
            # The low-level calls: the high-level run() adds an inspect per container nobody reads.
            container_id = self.client.api.create_container(**options)["Id"]
            self.client.api.start(container_id)
        except docker.errors.DockerException as e:
            if container_id:
                self._remove(container_id)
            shutil.rmtree(socket_dir, ignore_errors=True)
            raise SandboxStartError(f"cannot start a sandbox container: {e}") from e
        sandbox = Sandbox(container_id=container_id, name=options["name"], port=port, socket_dir=socket_dir)
        checks = 0
        while time.monotonic() < deadline and not (cancelled and cancelled.is_set()):
            if sandbox.health() is not None:
                return sandbox
            checks += 1
            if checks % 50 == 0 and not self._is_running(container_id):
                break
            time.sleep(HEALTH_POLL_SECONDS)
        logs = self._logs(container_id)
        self.destroy(sandbox)
        raise SandboxStartError(f"sandbox agent on slot {port} did not become healthy: {logs}")

    def destroy(self, sandbox: Sandbox) -> None:
        """Remove the container (SIGKILL, no grace period, if it still runs) and its socket folder.

        An agent that answered exits by itself within milliseconds; waiting for that (briefly)
        spares the engine a kill through containerd and the runtime, ~30 ms of CPU per container.
        """
        if sandbox.answered:
            self._wait_for_exit(sandbox.container_id, EXIT_WAIT_SECONDS)
        self._remove(sandbox.container_id)
        shutil.rmtree(sandbox.socket_dir, ignore_errors=True)

    def _wait_for_exit(self, container_id: str, timeout: float) -> None:
        """Until the container has stopped, at most `timeout` seconds (then it is killed anyway)."""
        try:
            self.client.api.wait(container_id, timeout=timeout)
        except (docker.errors.DockerException, requests.RequestException):
            pass

    def is_healthy(self, sandbox: Sandbox) -> bool:
        """The agent answers (about a millisecond over its socket)."""
        return sandbox.health() is not None

    def run(self, sandbox: Sandbox, job: dict[str, Any]) -> dict[str, Any]:
        """Run a job in the sandbox; a sandbox that fails is reported as SandboxFailed (or as an oom run)."""
        started = time.monotonic()
        try:
            return sandbox.run(job)
        except AgentUnreachable as e:
            if self._was_oom_killed(sandbox):  # the memory limit took the agent down with the program
                return {"stdout": "", "stderr": "", "exit_code": 137, "status": "oom",
                        "duration_ms": round((time.monotonic() - started) * 1000, 1),
                        "error": "the program ran out of memory and was killed", "images": []}
            exit_code = self._exit_code(sandbox)
            if exit_code is not None:
                raise SandboxFailed(f"the sandbox was killed while running the program (exit code {exit_code}; "
                                    "under gVisor usually the memory limit)") from e
            raise SandboxFailed(f"the sandbox failed while running the program ({e})") from e

    def _was_oom_killed(self, sandbox: Sandbox, settle_seconds: float = 8.0, after_exit_seconds: float = 2.0) -> bool:
        """Whether the memory limit killed the container.

        The engine may take a moment to notice: the container can still look alive (gVisor winds
        down), and the OOM event can land just after the exit event.
        """
        deadline = time.monotonic() + settle_seconds
        exited_at = None
        while True:
            state = self._state(sandbox.container_id)
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

    def _state(self, container_id: str) -> dict[str, Any] | None:
        """The engine's State of the container; None when it is gone or the engine does not answer."""
        try:
            return self.client.api.inspect_container(container_id)["State"]
        except docker.errors.DockerException:
            return None

    def _exit_code(self, sandbox: Sandbox) -> int | None:
        """The container's exit code once it has stopped; None while it runs (or is gone)."""
        state = self._state(sandbox.container_id)
        return None if state is None or state.get("Running") else state.get("ExitCode")

    def _is_running(self, container_id: str) -> bool:
        state = self._state(container_id)
        return bool(state and state.get("Running"))

    def _logs(self, container_id: str) -> str:
        try:
            return self.client.api.logs(container_id, tail=20).decode(errors="replace").strip()[-2000:]
        except docker.errors.DockerException:
            return "(no logs)"

    def _remove(self, container_id: str) -> None:
        try:
            self.client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "already in progress" not in str(e):
                log.warning("could not remove container %s: %s", container_id[:12], e)
