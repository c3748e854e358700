"""Docker side of the sandboxes: start a locked-down container, wait for its agent, talk to it, remove it."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import requests
from docker.types import LogConfig, Ulimit

from config import Config
from errors import SandboxFailed
from host_firewall import protect_host

log = logging.getLogger(__name__)

DEPLOYMENT_LABEL = "code-interpreter.deployment"
PORT_LABEL = "code-interpreter.port"
SANDBOX_UID = 61000  # the image's `sandbox` user (Dockerfile.sandbox)
# The agent runs as root inside the container with only what it needs: start the program as the
# sandbox user (SETUID, SETGID) and kill it (KILL). The program itself ends up with no capability.
AGENT_CAPABILITIES = ["SETUID", "SETGID", "KILL"]
HEALTH_POLL_SECONDS = 0.02
GVISOR_THREAD_HEADROOM = 1024
RUN_GRACE_SECONDS = 15.0  # beyond the program's own limit, for the agent to collect and answer


class SandboxStartError(Exception):
    """A container could not be started or its agent never answered."""


def size_in_bytes(size: str) -> int:
    """'50m' -> 52428800 (Docker's units: b, k, m, g, powers of 1024)."""
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    size = size.strip().lower()
    if size and size[-1] in units:
        return int(float(size[:-1]) * units[size[-1]])
    return int(float(size))


@dataclass
class Sandbox:
    """One running container whose agent is ready to run one program."""

    container_id: str
    name: str
    port: int
    address: str
    started_at: float = field(default_factory=time.monotonic)
    http: requests.Session = field(default_factory=requests.Session, repr=False)

    @property
    def url(self) -> str:
        """Base URL of the agent, reachable from this host only (internal network, no published port)."""
        return f"http://{self.address}:{self.port}"

    def health(self) -> dict[str, Any] | None:
        """The agent's /healthz answer, or None while it does not answer."""
        try:
            response = self.http.get(f"{self.url}/healthz", timeout=1)
            return response.json() if response.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Send the job to the agent and return its JSON report; any failure is the raised exception."""
        response = self.http.post(f"{self.url}/run", json=job, timeout=(5, job["timeout"] + RUN_GRACE_SECONDS))
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        """Drop the HTTP connection."""
        self.http.close()


class DockerSandboxes:
    """Starts and removes this deployment's sandbox containers."""

    def __init__(self, config: Config, client: docker.DockerClient | None = None) -> None:
        self.config = config
        self.client = client or docker.from_env(timeout=60)
        self.label = config.deployment_label
        self._network_lock = threading.Lock()

    # --- set-up and clean-up -------------------------------------------------------------

    def prepare(self) -> None:
        """Check the engine, image and runtime; make the network; remove a previous run's leftovers."""
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
        self.ensure_network()
        removed = self.remove_leftovers()
        if removed:
            log.info("removed %d leftover sandbox containers of deployment %s", removed, self.label)

    def ensure_network(self) -> None:
        """An internal bridge with inter-container traffic off: no egress, no sandbox-to-sandbox."""
        name = self.config.sandbox_network
        with self._network_lock:
            if not self.client.networks.list(names=[name]):
                try:
                    self.client.networks.create(
                        name, driver="bridge", internal=True, check_duplicate=True,
                        options={"com.docker.network.bridge.enable_icc": "false"},
                        labels={"code-interpreter.network": "sandboxes"},
                    )
                except docker.errors.APIError as e:
                    if not self.client.networks.list(names=[name]):  # not a lost race with another center
                        raise SandboxStartError(f"cannot create network {name}: {e}") from e
            network = self.client.networks.get(name)
        options = network.attrs.get("Options") or {}
        if not network.attrs.get("Internal") or options.get("com.docker.network.bridge.enable_icc") != "false":
            raise SandboxStartError(f"network {name} exists but is not internal with inter-container traffic off; "
                                    f"remove it (docker network rm {name}) or set sandbox_network to another name")
        if self.config.block_host_access:
            protect_host(options.get("com.docker.network.bridge.name") or f"br-{network.id[:12]}")

    def remove_leftovers(self) -> int:
        """Force-remove every container labelled with this deployment; return how many."""
        containers = self.client.api.containers(all=True, filters={"label": f"{DEPLOYMENT_LABEL}={self.label}"})
        for container in containers:
            self._remove(container["Id"])
        return len(containers)

    # --- one sandbox -----------------------------------------------------------------------

    def agent_arguments(self, port: int) -> list[str]:
        """The agent's command line: its port and, under gVisor, the program's process limit."""
        arguments = ["--port", str(port)]
        if self.config.sandbox_runtime == "runsc":
            # gVisor's own threads count against the container's pids limit, so that limit gets
            # headroom and the program's processes are capped inside instead, by RLIMIT_NPROC
            # (which gVisor counts per sandbox; under runc it would be shared across the host).
            arguments += ["--max-processes", str(self.config.resource_limits.pids)]
        return arguments

    def container_options(self, port: int) -> dict[str, Any]:
        """Everything that locks a sandbox down; see README's security section."""
        limits = self.config.resource_limits
        options: dict[str, Any] = dict(
            image=self.config.interpreter_image,
            name=f"cia-{self.label}-{port}-{secrets.token_hex(4)}",
            detach=True,
            labels={DEPLOYMENT_LABEL: self.label, PORT_LABEL: str(port)},
            command=self.agent_arguments(port),
            environment={},
            use_config_proxy=False,  # never hand the host's proxy settings to untrusted code
            hostname="sandbox",
            # Names cannot resolve on an internal network; fail fast instead of after 10 s of retries.
            dns_opt=["timeout:1", "attempts:1"],
            network=self.config.sandbox_network,
            runtime=self.config.sandbox_runtime,
            init=True,
            user="0",
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
            options.update(mem_limit=limits.memory, memswap_limit=limits.memory)  # equal: no swap
        if limits.cpus:
            options["nano_cpus"] = int(float(limits.cpus) * 1e9)
        return options

    def launch(self, port: int, deadline_seconds: float | None = None,
               cancelled: threading.Event | None = None) -> Sandbox:
        """Start a container for this port and return it once its agent answers its health check."""
        deadline = time.monotonic() + (deadline_seconds or self.config.sandbox_start_timeout)
        try:
            container = self.client.containers.run(**self.container_options(port))
            container.reload()
            address = container.attrs["NetworkSettings"]["Networks"][self.config.sandbox_network]["IPAddress"]
        except (docker.errors.DockerException, KeyError) as e:
            raise SandboxStartError(f"cannot start a sandbox container: {e}") from e
        sandbox = Sandbox(container_id=container.id, name=container.name, port=port, address=address)
        checks = 0
        while time.monotonic() < deadline and not (cancelled and cancelled.is_set()):
            if sandbox.health() is not None:
                return sandbox
            checks += 1
            if checks % 25 == 0 and not self._is_running(container.id):
                break
            time.sleep(HEALTH_POLL_SECONDS)
        logs = self._logs(container.id)
        self.destroy(sandbox)
        raise SandboxStartError(f"sandbox agent on port {port} did not become healthy: {logs}")

    def destroy(self, sandbox: Sandbox) -> None:
        """Remove the container at once (SIGKILL, no grace period) and forget its connection."""
        sandbox.close()
        self._remove(sandbox.container_id)

    def run(self, sandbox: Sandbox, job: dict[str, Any]) -> dict[str, Any]:
        """Run a job in the sandbox; a sandbox that fails is reported as SandboxFailed (or as an oom run)."""
        started = time.monotonic()
        try:
            return sandbox.run(job)
        except (requests.RequestException, ValueError) as e:
            if self._was_oom_killed(sandbox):  # the memory limit took the agent down with the program
                return {"stdout": "", "stderr": "", "exit_code": 137, "status": "oom",
                        "duration_ms": round((time.monotonic() - started) * 1000, 1),
                        "error": "the program ran out of memory and was killed", "images": []}
            raise SandboxFailed(f"the sandbox failed while running the program ({type(e).__name__})") from e

    def _was_oom_killed(self, sandbox: Sandbox, settle_seconds: float = 3.0) -> bool:
        """Whether the memory limit killed the container (the engine may take a moment to notice)."""
        deadline = time.monotonic() + settle_seconds
        while True:
            try:
                state = self.client.api.inspect_container(sandbox.container_id)["State"]
            except docker.errors.DockerException:
                return False
            if state.get("OOMKilled"):
                return True
            if not state.get("Running") or time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def _is_running(self, container_id: str) -> bool:
        try:
            return self.client.api.inspect_container(container_id)["State"]["Running"]
        except docker.errors.DockerException:
            return False

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
