"""Shared fixtures: a real Docker engine, the built sandbox image, one warm pool, apps and servers on it.

With CI=true a missing Docker engine or PostgreSQL fails the tests that need it instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
import yaml
from flask import Flask
from sqlalchemy import create_engine, text
from werkzeug.serving import make_server

import build
from center import EXTENSION_KEY, create_app
from center import make_server as make_waitress_server
from server.config import PROJECT_DIR, Config, PortRange
from server.containers.docker_sandboxes import DEPLOYMENT_LABEL, DockerSandboxes, Sandbox
from server.containers.pool import SandboxPool

CI = os.environ.get("CI", "").lower() == "true"
RUNTIME = os.environ.get("TEST_SANDBOX_RUNTIME", "runc")
DEFAULT_TEST_POSTGRES_URL = "postgresql+psycopg2://cia:cia@127.0.0.1:5432/cia_test"


def unavailable(message: str) -> None:
    """Skip on a developer machine without the service; fail in CI, where it must be there."""
    if CI:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll predicate until it is truthy or timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def rss_mib(pid: int) -> float:
    """A process's resident memory in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def containers_of(client: docker.DockerClient, deployment: str) -> list[dict]:
    """Every container (running or not) labelled with this deployment, as the engine's list entries.

    The low-level list does not inspect each container, so one removed meanwhile cannot make it fail.
    """
    return client.api.containers(all=True, filters={"label": f"{DEPLOYMENT_LABEL}={deployment}"})


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    """A client of the real Docker engine."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        unavailable(f"no Docker engine: {e}")
    return client


@pytest.fixture(scope="session")
def sandbox_image(docker_client: docker.DockerClient) -> str:
    """The sandbox image, built once per run when missing or stale (a no-op when current)."""
    return build.build()


@pytest.fixture(scope="session")
def base_config(sandbox_image: str, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Settings of the shared test pool: three slots, a short time limit."""
    return Config(
        deployment=f"pytest-{os.getpid()}",
        interpreter_image=sandbox_image,
        interpreter_port_range=PortRange(9101, 9103),
        timeout_seconds=10,
        queue_wait_seconds=30,
        sandbox_runtime=RUNTIME,
        data_dir=str(tmp_path_factory.mktemp("data")),
    )


@pytest.fixture(scope="session")
def sandboxes(base_config: Config) -> Iterator[DockerSandboxes]:
    """The Docker side, prepared (network made, leftovers removed)."""
    launcher = DockerSandboxes(base_config)
    launcher.prepare()
    yield launcher
    launcher.remove_leftovers()


@pytest.fixture(scope="session")
def pool(sandboxes: DockerSandboxes, base_config: Config) -> Iterator[SandboxPool]:
    """One warm pool shared by the apps of the whole run (starting containers is the slow part)."""
    sandbox_pool = SandboxPool(sandboxes, base_config.interpreter_port_range.ports)
    sandbox_pool.start()
    assert wait_until(lambda: sandbox_pool.stats()["ready"] > 0, 120), "the test pool never became ready"
    yield sandbox_pool
    sandbox_pool.close()


@pytest.fixture
def run_in_sandbox(sandboxes: DockerSandboxes) -> Iterator[Callable[..., dict[str, Any]]]:
    """Factory: start a fresh sandbox on its own, run one job in it, remove it, return the agent's report.

    The default time limit only bounds a hang: the sandbox is always cold, and a first matplotlib figure
    (fonts, the CJK fallback) takes seconds on a slow, busy runner. Tests of the limit pass their own."""
    def run(code: str, language: str = "python", variables: dict | None = None, timeout: float = 60,
            **limits: int) -> dict[str, Any]:
        sandbox = sandboxes.launch(9150)
        try:
            job = {"language": language, "code": code, "variables": variables or {}, "timeout": timeout, **limits}
            return sandbox.run(job)
        finally:
            sandboxes.destroy(sandbox)

    yield run


@pytest.fixture
def sandbox(sandboxes: DockerSandboxes) -> Iterator[Sandbox]:
    """One fresh sandbox of the test's own, talked to directly; removed afterwards."""
    sandbox = sandboxes.launch(9151)
    yield sandbox
    sandboxes.destroy(sandbox)


@pytest.fixture
def make_app(pool: SandboxPool, base_config: Config, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Factory: an app on the shared pool with config overrides (its own SQLite file by default)."""
    apps: list[Flask] = []

    def factory(**overrides: object) -> Flask:
        config = replace(base_config, data_dir=str(tmp_path), **overrides)
        app = create_app(config, pool=pool)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions[EXTENSION_KEY].close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """An app with the defaults: SQLite, no token."""
    return make_app()


@pytest.fixture
def client(app: Flask):
    """Flask's test client on `app`."""
    return app.test_client()


@pytest.fixture
def live_server(make_app: Callable[..., Flask]) -> Iterator[Callable[..., str]]:
    """Factory: serve an app over real HTTP on 127.0.0.1 (for concurrent clients); returns its URL."""
    servers = []

    def start(**overrides: object) -> str:
        server = make_server("127.0.0.1", 0, make_app(**overrides), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def waitress_server(make_app: Callable[..., Flask]) -> Iterator[Callable[..., str]]:
    """Factory: serve an app with waitress, set up as center.py sets it up (streaming needs its flushing
    and its hang-up detection); returns its URL."""
    servers = []
    closing = threading.Event()

    def serve(server: Any) -> None:
        try:
            server.run()
        except Exception:
            if not closing.is_set():  # closing its sockets under waitress's loop may make it fail: that is the end
                raise

    def start(**overrides: object) -> str:
        app = make_app(**overrides)
        server = make_waitress_server(app, app.extensions[EXTENSION_KEY].config, port=0)
        threading.Thread(target=serve, args=(server,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.effective_port}"

    yield start
    closing.set()
    for server in servers:
        server.close()
        server.task_dispatcher.shutdown(timeout=5)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL database (TEST_POSTGRES_URL, or the one .ci/run creates)."""
    url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES_URL)
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as e:  # noqa: BLE001 - any failure means: no PostgreSQL here
        unavailable(f"no PostgreSQL at {url}: {type(e).__name__}: {e}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def postgres_control(postgres_url: str) -> Iterator[Callable[[str], None]]:
    """Stop/start/restart the local PostgreSQL cluster (root and pg_ctlcluster needed); always restarted."""
    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        unavailable("controlling PostgreSQL needs root and pg_ctlcluster")
    version, cluster = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                                      check=True).stdout.split()[:2]

    def control(action: str) -> None:
        subprocess.run(["pg_ctlcluster", version, cluster, action], check=True, capture_output=True, timeout=60)

    yield control
    if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode != 0:
        control("start")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database the center supports: the embedded SQLite file and PostgreSQL."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'images.db'}"


class CenterProcess:
    """A real `python3 center.py --config FILE` process, as a user starts it."""

    def __init__(self, config_path: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.config_path, self.port = config_path, port
        self.env = {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = config_path.with_suffix(".log")
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True) -> CenterProcess:
        """Start the process and (by default) wait until /readyz answers 200."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, str(PROJECT_DIR / "center.py"), "--config",
                                         str(self.config_path)], cwd=PROJECT_DIR, stdout=log, stderr=log,
                                        env=self.env)
        log.close()
        if wait_ready and not wait_until(self.ready, 120, 0.2):
            self.stop()
            raise AssertionError(f"center did not become ready:\n{self.log_path.read_text()[-3000:]}")
        return self

    def ready(self) -> bool:
        """/readyz answers 200."""
        try:
            return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def signal(self, signum: int) -> None:
        """Send a signal to the center."""
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def center_process(base_config: Config, tmp_path: Path) -> Iterator[Callable[..., CenterProcess]]:
    """Factory: write a config file (its own deployment label, port and data) and make a CenterProcess."""
    made: list[CenterProcess] = []

    def factory(env: dict[str, str] | None = None, **settings: object) -> CenterProcess:
        port = free_port()
        values = {
            "host": "127.0.0.1", "scheduler_port": port, "interpreter_image": base_config.interpreter_image,
            "interpreter_port_range": {"start": 9201, "end": 9202}, "timeout_seconds": 10,
            "sandbox_runtime": base_config.sandbox_runtime, "deployment": f"pytest-center-{port}",
            "data_dir": str(tmp_path / "data"),
        }
        values.update(settings)
        config_path = tmp_path / f"center-{port}.yaml"
        config_path.write_text(yaml.safe_dump(values))
        center = CenterProcess(config_path, port, env)
        made.append(center)
        return center

    yield factory
    for center in made:
        center.stop()
