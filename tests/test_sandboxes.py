"""The Docker side on its own: how sandbox containers are set up, and refusing an unsafe network."""

from __future__ import annotations

from dataclasses import replace

import docker
import pytest

from server.config import Config
from server.containers.docker_sandboxes import DockerSandboxes, SandboxStartError


def test_socket_folder_too_deep_is_refused(base_config: Config, tmp_path) -> None:
    deep = tmp_path / ("d" * 90)
    with pytest.raises(SandboxStartError, match="too deep"):
        DockerSandboxes(replace(base_config, sandbox_socket_dir=str(deep))).prepare()


def test_an_image_built_from_other_sources_is_refused_at_start(base_config: Config) -> None:
    stale = replace(base_config, dependencies=(*base_config.dependencies, "a-package-the-image-lacks"))
    with pytest.raises(SandboxStartError, match="other sources than this checkout.*build.py"):
        DockerSandboxes(stale).prepare()


def test_container_is_locked_down(docker_client: docker.DockerClient, sandboxes: DockerSandboxes) -> None:
    sandbox = sandboxes.launch(9160)
    try:
        host = docker_client.api.inspect_container(sandbox.container_id)["HostConfig"]
        assert host["NetworkMode"] == "none", "no network at all: the agent is reached over a Unix socket"
        assert host["PortBindings"] in (None, {}), "nothing is published on the host"
        assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETUID"]
        assert host["Privileged"] is False and host["ReadonlyRootfs"] is True
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["Memory"] == host["MemorySwap"] == 512 * 1024**2, "memory limit with no swap"
        assert host["NanoCpus"] == 10**9 and host["PidsLimit"] >= 128
        assert host["Init"] is True
        assert not any("docker.sock" in bind for bind in host.get("Binds") or [])
        config = docker_client.api.inspect_container(sandbox.container_id)["Config"]
        assert not [e for e in config["Env"] if not e.startswith(("PATH=", "LANG=", "LC_ALL=", "MATPLOTLIBRC=",
                                                                     "PYTHONDONTWRITEBYTECODE=", "DEBIAN_FRONTEND=",
                                                                     "HOSTNAME="))]
    finally:
        sandboxes.destroy(sandbox)
