"""`python3 center.py --config FILE` as a user runs it: start, stop, crash, restart, bad config."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
import requests
from conftest import CenterProcess, containers_of

from config import PROJECT_DIR

PLOT = "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])"


def deployment(center: CenterProcess) -> str:
    """The deployment label the factory gave this center."""
    return f"pytest-center-{center.port}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_leaves_no_container(center_process: Callable[..., CenterProcess],
                                         docker_client: docker.DockerClient, signum: int) -> None:
    center = center_process().start()
    assert len(containers_of(docker_client, deployment(center))) == 2
    response = requests.post(f"{center.url}/runcode", json={"code": "print('served')"}, timeout=60)
    assert response.json()["output"] == "served\n"
    center.signal(signum)
    assert center.process.wait(60) == 0
    assert containers_of(docker_client, deployment(center)) == []


def test_leftovers_of_a_killed_center_are_removed_at_next_start(center_process: Callable[..., CenterProcess],
                                                                docker_client: docker.DockerClient) -> None:
    center = center_process().start()
    orphans = {c["Id"] for c in containers_of(docker_client, deployment(center))}
    assert len(orphans) == 2
    center.signal(signal.SIGKILL)
    center.process.wait(30)
    assert {c["Id"] for c in containers_of(docker_client, deployment(center))} == orphans, "SIGKILL cleans nothing"
    center.start()
    remaining = {c["Id"] for c in containers_of(docker_client, deployment(center))}
    assert remaining and not remaining & orphans
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
