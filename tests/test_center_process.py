"""`python3 center.py --config FILE` as a user runs it: start, stop, crash, restart, bad config."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
import requests
from conftest import CenterProcess, containers_of, wait_until

from server.config import PROJECT_DIR

PLOT = "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])"


@pytest.fixture
def center_process(center_process: Callable[..., CenterProcess]) -> Callable[..., CenterProcess]:
    """conftest's factory, with limits that only bound a hang: a center just started may still be starting its
    first sandboxes (seconds on a slow, busy runner) when the first request comes, which then waits in the
    queue, and a first figure in a cold sandbox takes seconds there too. Under the requests' 60 s timeouts."""
    def factory(env: dict[str, str] | None = None, **settings: object) -> CenterProcess:
        settings.setdefault("queue_wait_seconds", 45)
        settings.setdefault("timeout_seconds", 30)
        return center_process(env, **settings)

    return factory


def deployment(center: CenterProcess) -> str:
    """The deployment label the factory gave this center."""
    return f"pytest-center-{center.port}"


def sandboxes_of(docker_client: docker.DockerClient, center: CenterProcess, count: int) -> set[str]:
    """The ids of the center's containers, once there are `count` of them: a center answers /readyz while
    its pool is still creating them."""
    assert wait_until(lambda: len(containers_of(docker_client, deployment(center))) == count, 120), \
        containers_of(docker_client, deployment(center))
    return {c["Id"] for c in containers_of(docker_client, deployment(center))}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_leaves_no_container(center_process: Callable[..., CenterProcess],
                                         docker_client: docker.DockerClient, signum: int) -> None:
    center = center_process().start()
    sandboxes_of(docker_client, center, 2)
    response = requests.post(f"{center.url}/runcode", json={"code": "print('served')"}, timeout=60)
    assert response.json()["output"] == "served\n"
    center.signal(signum)
    assert center.process.wait(60) == 0
    assert containers_of(docker_client, deployment(center)) == []


def test_leftovers_of_a_killed_center_are_removed_at_next_start(center_process: Callable[..., CenterProcess],
                                                                docker_client: docker.DockerClient) -> None:
    center = center_process().start()
    orphans = sandboxes_of(docker_client, center, 2)
    center.signal(signal.SIGKILL)
    center.process.wait(30)
    assert {c["Id"] for c in containers_of(docker_client, deployment(center))} == orphans, "SIGKILL cleans nothing"
    center.start()  # removes the leftovers before it serves; its new pool's containers come afterwards
    remaining = sandboxes_of(docker_client, center, 2)
    assert not remaining & orphans
    assert requests.post(f"{center.url}/runcode", json={"code": "print(3)"}, timeout=60).json()["output"] == "3\n"


def test_image_survives_a_restart(center_process: Callable[..., CenterProcess]) -> None:
    center = center_process().start()
    body = requests.post(f"{center.url}/runcode", json={"code": PLOT}, timeout=60).json()
    (url,) = body["images"].values()
    before = requests.get(url, timeout=10)
    assert before.status_code == 200
    assert center.stop() == 0
    center.start()
    after = requests.get(url, timeout=10)
    assert after.status_code == 200 and after.content == before.content
    assert after.headers["Content-Type"] == "image/png"


def test_image_survives_a_restart_on_postgres(center_process: Callable[..., CenterProcess], postgres_url: str) -> None:
    center = center_process(database_url=postgres_url).start()
    (url,) = requests.post(f"{center.url}/runcode", json={"code": PLOT}, timeout=60).json()["images"].values()
    center.stop()
    center.start()
    assert requests.get(url, timeout=10).status_code == 200


def test_serves_with_waitress_not_the_development_server(center_process: Callable[..., CenterProcess]) -> None:
    center = center_process().start()
    response = requests.get(f"{center.url}/healthz", timeout=10)
    assert response.headers["Server"] == "code-interpreter"
    assert "development server" not in center.log_path.read_text()


@pytest.mark.parametrize("content, key", [
    ("bogus_key: 1\n", "bogus_key"),
    ("scheduler_port: abc\n", "scheduler_port"),
    ("interpreter_port_range: {start: 9000, end: 8000}\n", "interpreter_port_range"),
    ("resource_limits: {memory: lots}\n", "resource_limits.memory"),
    ("auth_tokens: secret\ntimeout_seconds: [1]\n", "timeout_seconds"),
])
def test_bad_config_stops_the_start_with_one_line_naming_the_key(tmp_path: Path, content: str, key: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    result = subprocess.run([sys.executable, str(PROJECT_DIR / "center.py"), "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0], result.stderr


def test_environment_overrides_the_file(center_process: Callable[..., CenterProcess]) -> None:
    center = center_process(env={"CIA_AUTH_TOKENS": "from-env"}, auth_tokens=["from-file"]).start()
    url = f"{center.url}/runcode"
    for token, status in (("from-file", 401), ("from-env", 200)):
        response = requests.post(url, json={"code": "print(1)"}, headers={"Authorization": f"Bearer {token}"},
                                 timeout=60)
        assert response.status_code == status


def test_sigterm_during_start_up_removes_the_sandboxes_already_started(center_process: Callable[..., CenterProcess],
                                                                       docker_client: docker.DockerClient) -> None:
    # A "database" that takes connections and never answers: start-up waits on it while the pool is already
    # starting sandboxes. Listed as three hosts (the same one), so that libpq tries it three times, each for
    # the center's connect_timeout of 5 s: ~15 s of start-up, time enough for a slow runner's first container
    # to appear and be seen.
    with socket.socket() as silent_database:
        silent_database.bind(("127.0.0.1", 0))
        silent_database.listen(16)
        port = silent_database.getsockname()[1]
        hosts = "&".join([f"host=127.0.0.1:{port}"] * 3)
        center = center_process(database_url=f"postgresql+psycopg2://u:p@/d?{hosts}")
        center.start(wait_ready=False)
        assert wait_until(lambda: containers_of(docker_client, deployment(center)), 60), "no sandbox started"
        assert requests_fail(f"{center.url}/healthz"), "still starting: not serving yet"
        center.signal(signal.SIGTERM)
        assert center.process.wait(60) == 0
    assert containers_of(docker_client, deployment(center)) == [], "start-up stopped midway left sandboxes"


def requests_fail(url: str) -> bool:
    """Whether nothing answers at the URL."""
    try:
        requests.get(url, timeout=2)
    except requests.RequestException:
        return True
    return False


def test_sigterm_lets_running_programs_finish_then_stops(center_process: Callable[..., CenterProcess],
                                                         docker_client: docker.DockerClient) -> None:
    center = center_process().start()
    answers: list[requests.Response] = []
    running = threading.Thread(target=lambda: answers.append(requests.post(
        f"{center.url}/runcode", json={"code": "import time\nprint('began', flush=True)\ntime.sleep(4)\nprint('done')"},
        timeout=60)))
    running.start()
    # The run may first wait for the center's first sandbox: the deadline covers the queue wait.
    assert wait_until(lambda: requests.get(f"{center.url}/readyz", timeout=5).json()["pool"]["busy"] == 1, 60)
    center.signal(signal.SIGTERM)
    running.join(60)
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["output"] == "began\ndone\n", answer.text
    assert center.process.wait(60) == 0
    assert containers_of(docker_client, deployment(center)) == []
    assert "finishing the running programs" in center.log_path.read_text()


def test_a_draining_center_refuses_new_connections_and_answers_those_it_took(
        center_process: Callable[..., CenterProcess]) -> None:
    center = center_process().start()
    answers: list[requests.Response] = []
    # The run lasts 10 s: the refusal is seen long before it ends, however slow the runner.
    running = threading.Thread(target=lambda: answers.append(requests.post(
        f"{center.url}/runcode", json={"code": "import time\ntime.sleep(10)\nprint('done')"}, timeout=60)))
    running.start()
    assert wait_until(lambda: requests.get(f"{center.url}/readyz", timeout=5).json()["pool"]["busy"] == 1, 60)
    center.signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            requests.get(f"{center.url}/healthz", timeout=2)
        except requests.ConnectionError as e:
            return "refused" in str(e).lower()
        return False

    # At once, not after the drain: a balancer or client retries elsewhere, knowing nothing was sent.
    assert wait_until(refused, 5, 0.05), "new connections are refused while the center drains"
    assert running.is_alive(), "the run taken in before the signal is still running"
    running.join(60)
    assert [(a.status_code, a.json()["output"]) for a in answers] == [(200, "done\n")]
    assert center.process.wait(60) == 0
