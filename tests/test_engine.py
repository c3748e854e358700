"""The Docker adapter on its own: every failure of the engine becomes one of the service's errors.

Most tests use a real docker-py client pointed at a socket where no engine listens (the engine is
down, for real, without stopping the machine's dockerd), or a fake low-level API that fails the way
docker-py and requests fail. The last tests run the center against that dead engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
import yaml
from conftest import free_port, wait_until

from center import create_app
from server.config import PROJECT_DIR, Config
from server.containers.docker_sandboxes import DockerSandboxes, SandboxStartError
from server.containers.engine import Engine
from server.containers.pool import SandboxPool
from server.errors import EngineError, EngineUnavailable


def dead_engine(tmp_path: Path) -> Engine:
    """An engine whose socket has no daemon behind it."""
    socket_path = tmp_path / "no-dockerd.sock"
    return Engine(connect=lambda: docker.DockerClient(base_url=f"unix://{socket_path}", version="1.41", timeout=2))


class FailingAPI:
    """A low-level API whose every call raises the given exception."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*_args: Any, **_kwargs: Any) -> Any:
            raise self.error
        return call


class FakeClient:
    """Stands in for docker.DockerClient: only `.api` is used by Engine."""

    def __init__(self, api: Any) -> None:
        self.api = api


@pytest.mark.parametrize("error", [
    requests.ConnectionError("connection refused"),
    requests.ReadTimeout("read timed out"),
    docker.errors.DockerException("Error while fetching server API version"),
    ConnectionResetError("reset by peer"),
])
def test_unreachable_engine_errors_become_engine_unavailable(error: Exception) -> None:
    engine = Engine(FakeClient(FailingAPI(error)))
    with pytest.raises(EngineUnavailable) as excinfo:
        engine.ping()
    assert excinfo.value.status == 503 and excinfo.value.headers["Retry-After"].isdigit()
    assert excinfo.value.__cause__ is error
    with pytest.raises(EngineUnavailable):
        engine.start_container({"image": "x"})
    with pytest.raises(EngineUnavailable):
        engine.labelled("label", "value")


def test_an_engine_refusal_becomes_engine_error() -> None:
    response = requests.Response()
    response.status_code = 400
    refusal = docker.errors.APIError("bad", response=response, explanation="invalid mount config")
    engine = Engine(FakeClient(FailingAPI(refusal)))
    with pytest.raises(EngineError) as excinfo:
        engine.start_container({"image": "x"})
    assert excinfo.value.status == 502 and "invalid mount config" in excinfo.value.message


def test_reads_of_a_dead_engine_answer_none_not_an_exception(tmp_path: Path) -> None:
    engine = dead_engine(tmp_path)
    assert engine.state("abc") is None
    assert engine.logs("abc") == "(no logs)"
    assert engine.remove("abc") is False, "a removal that did not happen says so"
    engine.wait("abc", 0.1)  # returns


def test_connecting_to_a_dead_engine_is_engine_unavailable(tmp_path: Path) -> None:
    engine = Engine(connect=lambda: docker.DockerClient(base_url=f"unix://{tmp_path}/none.sock", timeout=2))
    with pytest.raises(EngineUnavailable, match="not available"):
        engine.ping()


def test_prepare_against_a_dead_engine_says_so_in_one_line(base_config: Config, tmp_path: Path) -> None:
    sandboxes = DockerSandboxes(base_config, dead_engine(tmp_path))
    with pytest.raises(SandboxStartError) as excinfo:
        sandboxes.prepare()
    assert "Docker engine" in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_a_launch_against_a_dead_engine_leaves_nothing_behind(base_config: Config, tmp_path: Path) -> None:
    config = replace(base_config, sandbox_socket_dir=str(tmp_path / "sockets"), deployment="pytest-dead-engine")
    sandboxes = DockerSandboxes(config, dead_engine(tmp_path))
    for _ in range(3):  # retries leak nothing either
        with pytest.raises(EngineUnavailable):
            sandboxes.launch(1)
    assert list(sandboxes.socket_root.iterdir()) == [], "no socket folder is left by a failed start"
    assert sandboxes._uids_in_use == set(), "no program uid stays taken"


class FlakyRemovalEngine(Engine):
    """An engine whose container removals fail until `healthy` is set (the engine restarting)."""

    def __init__(self) -> None:
        super().__init__(FakeClient(None))
        self.healthy = False
        self.removed: list[str] = []

    def remove(self, container_id: str) -> bool:
        if not self.healthy:
            return False
        self.removed.append(container_id)
        return True

    def wait(self, container_id: str, timeout: float) -> None:
        return None


def test_failed_removals_are_remembered_and_retried(base_config: Config, tmp_path: Path) -> None:
    from server.containers.docker_sandboxes import Sandbox

    engine = FlakyRemovalEngine()
    sandboxes = DockerSandboxes(replace(base_config, sandbox_socket_dir=str(tmp_path)), engine)
    first = Sandbox("c1", 1, str(tmp_path / "s1"), 2_000_001)
    sandboxes.destroy(first)
    assert sandboxes.unremoved == {"c1"} and engine.removed == []
    engine.healthy = True
    sandboxes.destroy(Sandbox("c2", 1, str(tmp_path / "s2"), 2_000_002))
    assert sorted(engine.removed) == ["c1", "c2"], "the earlier failure is retried with the next removal"
    assert sandboxes.unremoved == frozenset()


def test_runs_answer_503_at_once_while_the_engine_is_down(base_config: Config, tmp_path: Path) -> None:
    config = replace(base_config, deployment="pytest-dead-engine", data_dir=str(tmp_path),
                     sandbox_socket_dir=str(tmp_path / "sockets"), queue_wait_seconds=60)
    pool = SandboxPool(DockerSandboxes(config, dead_engine(tmp_path)), [1, 2], backoff_initial=0.1, backoff_max=0.5)
    pool.start()
    try:
        client = create_app(config, pool=pool).test_client()
        assert wait_until(lambda: pool.failed_total >= 2, 30)
        began = time.monotonic()
        response = client.post("/runcode", json={"code": "print(1)"})
        assert response.status_code == 503, response.get_json()
        assert "Docker engine" in response.get_json()["error"]
        assert response.headers["Retry-After"].isdigit()
        assert time.monotonic() - began < 30, "answered long before the 60 s queue wait"
        assert client.get("/readyz").status_code == 503
    finally:
        pool.close()


def test_a_center_started_while_the_engine_is_down_exits_1_with_one_line(tmp_path: Path,
                                                                          base_config: Config) -> None:
    config_path = tmp_path / "center.yaml"
    config_path.write_text(yaml.safe_dump({
        "scheduler_port": free_port(), "interpreter_image": base_config.interpreter_image,
        "data_dir": str(tmp_path / "data"), "deployment": "pytest-no-engine",
    }))
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-dockerd.sock"}
    result = subprocess.run([sys.executable, str(PROJECT_DIR / "center.py"), "--config", str(config_path)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    problems = [line for line in lines if "INFO" not in line and "WARNING" not in line]
    assert len(problems) == 1 and "Docker engine" in problems[0], result.stderr
    assert "Traceback" not in result.stderr
