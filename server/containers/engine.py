"""The only module that speaks to the Docker engine: a narrow adapter over the Docker SDK.

Every failure of the engine (docker-py's exceptions and the `requests` errors it lets through
when the daemon's socket is gone or hangs) is translated here, once, into the service's own
errors: `EngineUnavailable` (503, try again) when the engine cannot be reached, `EngineError`
(502) when it answered with a refusal. Nothing above this module catches a docker exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import docker
import docker.errors
import requests

from server.errors import EngineError, EngineUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_API_TIMEOUT = 60


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Run a block of engine calls; whatever the engine does wrong comes out as one of our errors."""
    try:
        yield
    except docker.errors.NotFound as e:  # an absent object is an answer, but callers asked for it
        raise EngineError(f"{action}: {e.explanation or e}") from e
    except docker.errors.APIError as e:
        if e.status_code is not None and e.status_code >= 500 and _looks_unreachable(e):
            raise EngineUnavailable(f"{action}: the Docker engine is not available") from e
        raise EngineError(f"{action}: {e.explanation or e}") from e
    except (docker.errors.DockerException, requests.RequestException, ConnectionError, OSError) as e:
        # No daemon on the socket, a refused or reset connection, a read that timed out.
        raise EngineUnavailable(f"{action}: the Docker engine is not available") from e


def _looks_unreachable(error: docker.errors.APIError) -> bool:
    """A 5xx from the daemon that means it cannot work now (shutting down, containerd gone)."""
    text = str(error.explanation or error).lower()
    return any(word in text for word in ("connection refused", "shutting down", "containerd", "is not running"))


class Engine:
    """What the center asks of Docker: images, runtimes, and labelled containers' life cycle."""

    def __init__(self, client: Any = None, *, connect: Callable[[], Any] | None = None) -> None:
        self._client = client
        self._connect = connect or (lambda: docker.from_env(timeout=DEFAULT_API_TIMEOUT))

    @property
    def api(self) -> Any:
        """docker-py's low-level APIClient, connected on first use (the engine may be down at start)."""
        if self._client is None:
            with translated("connecting to Docker"):
                self._client = self._connect()
        return self._client.api

    def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers."""
        with translated("checking the Docker engine"):
            self.api.ping()

    def image_labels(self, image: str) -> dict[str, str] | None:
        """The image's labels, or None when the engine has no such image."""
        with translated(f"looking up image {image}"):
            try:
                return self.api.inspect_image(image)["Config"].get("Labels") or {}
            except docker.errors.ImageNotFound:
                return None

    def runtimes(self) -> list[str]:
        """The OCI runtimes the engine knows (runc, crun, runsc...)."""
        with translated("asking Docker for its runtimes"):
            return sorted(self.api.info().get("Runtimes", {}))

    def create_host_config(self, **options: Any) -> dict[str, Any]:
        """HostConfig as the engine's API version expects it (docker-py checks the options)."""
        with translated("preparing a container's settings"):
            return self.api.create_host_config(**options)

    def start_container(self, options: dict[str, Any]) -> str:
        """Create and start a container; on failure nothing is left behind. Returns its id."""
        container_id = None
        try:
            with translated("starting a sandbox container"):
                # The low-level calls: the high-level run() adds an inspect per container nobody reads.
                container_id = self.api.create_container(**options)["Id"]
                self.api.start(container_id)
        except (EngineError, EngineUnavailable):
            if container_id:
                self.remove(container_id)
            raise
        return container_id

    def remove(self, container_id: str) -> bool:
        """Force-remove a container (SIGKILL if it runs); True once it is gone, False if the engine failed."""
        try:
            with translated(f"removing container {container_id[:12]}"):
                self.api.remove_container(container_id, force=True)
        except EngineError as e:
            if isinstance(e.__cause__, docker.errors.NotFound) or "already in progress" in str(e):
                return True
            log.warning("%s", e.message)
            return False
        except EngineUnavailable as e:
            log.warning("%s", e.message)
            return False
        return True

    def wait(self, container_id: str, timeout: float) -> None:
        """Until the container has stopped, at most `timeout` seconds; any failure just ends the wait."""
        try:
            with translated("waiting for a container to stop"):
                self.api.wait(container_id, timeout=timeout)
        except (EngineError, EngineUnavailable):
            pass

    def state(self, container_id: str) -> dict[str, Any] | None:
        """The engine's State of the container; None when it is gone or the engine does not answer."""
        try:
            with translated("inspecting a container"):
                return self.api.inspect_container(container_id)["State"]
        except (EngineError, EngineUnavailable):
            return None

    def logs(self, container_id: str, lines: int = 20) -> str:
        """The container's last log lines (at most 2000 characters), or a placeholder."""
        try:
            with translated("reading a container's logs"):
                return self.api.logs(container_id, tail=lines).decode(errors="replace").strip()[-2000:]
        except (EngineError, EngineUnavailable):
            return "(no logs)"

    def network_subnets(self) -> list[str]:
        """The subnets of Docker's networks on this engine (CIDR text), as their IPAM configuration says."""
        with translated("listing networks"):
            networks = self.api.networks()
        return [config["Subnet"] for network in networks for config in (network.get("IPAM") or {}).get("Config") or ()
                if isinstance(config, dict) and config.get("Subnet")]

    def labelled(self, label: str, value: str) -> list[dict[str, Any]]:
        """Every container (running or not) whose label has this value, as the engine lists them."""
        with translated("listing sandbox containers"):
            return self.api.containers(all=True, filters={"label": f"{label}={value}"})
