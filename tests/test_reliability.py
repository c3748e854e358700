"""Faults survived: a sandbox killed mid-run, a client hanging up, PostgreSQL restarting or down,
sandboxes that cannot start. Each ends in a clear answer and a pool that heals itself."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import docker
import docker.errors
import pytest
import requests
from conftest import CenterProcess, containers_of, wait_until
from flask import Flask

from center import EXTENSION_KEY, create_app
from server.config import Config
from server.containers.docker_sandboxes import DockerSandboxes
from server.containers.pool import SandboxPool

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])"


def pool_stats(url: str) -> dict:
    """The pool part of /readyz."""
    return requests.get(f"{url}/readyz", timeout=5).json()["pool"]


def test_sandbox_killed_mid_run_gets_a_json_error_and_the_slot_is_replaced(
        live_server: Callable[..., str], docker_client: docker.DockerClient, base_config: Config) -> None:
    url = live_server(timeout_seconds=120)
    assert wait_until(lambda: pool_stats(url)["ready"] == 3, 60)
    answers: list[requests.Response] = []
    # The program would run for a minute: an answer that waits for its end cannot be mistaken for one that
    # came at once, however long killing every container takes on a slow runner.
    thread = threading.Thread(target=lambda: answers.append(
        requests.post(f"{url}/runcode", json={"code": "import time\ntime.sleep(60)"}, timeout=180)))
    thread.start()
    assert wait_until(lambda: pool_stats(url)["busy"] == 1, 30)
    started = time.monotonic()
    for container in containers_of(docker_client, base_config.deployment_label):
        try:
            docker_client.api.kill(container["Id"])  # the busy one and the waiting ones alike
        except docker.errors.APIError as e:  # one that stopped meanwhile (a slot being replaced) is fine
            if e.status_code not in (404, 409):
                raise
    thread.join()
    (answer,) = answers
    assert answer.status_code == 502 and "sandbox" in answer.json()["error"]
    assert time.monotonic() - started < 30, "the error comes at once, not when the program would have ended"
    # The killed ones still in the queue are skipped and replaced: ordinary requests work again.
    for _ in range(4):
        response = requests.post(f"{url}/runcode", json={"code": "print('healed')"}, timeout=60)
        assert response.status_code == 200 and response.json()["output"] == "healed\n"


def test_client_that_hangs_up_mid_run_gets_its_slot_back(live_server: Callable[..., str],
                                                          docker_client: docker.DockerClient,
                                                          base_config: Config) -> None:
    url = live_server()
    assert wait_until(lambda: pool_stats(url)["ready"] == 3, 60)
    host, port = url.removeprefix("http://").split(":")
    body = b'{"code": "import time\\ntime.sleep(3)"}'
    with socket.create_connection((host, int(port))) as client:
        client.sendall(b"POST /runcode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert wait_until(lambda: pool_stats(url)["busy"] == 1, 10)
    # The client is gone; the run ends at its own pace, then the slot is refilled.
    assert wait_until(lambda: pool_stats(url)["ready"] == 3, base_config.timeout_seconds + 30)
    slots = len(base_config.interpreter_port_range.ports)
    # A used container is removed as its replacement starts: on a slow runner both may be listed a moment.
    assert wait_until(lambda: len(containers_of(docker_client, base_config.deployment_label)) <= slots, 60)
    assert requests.post(f"{url}/runcode", json={"code": "print(1)"}, timeout=60).json()["output"] == "1\n"


def test_postgres_restart_and_outage(make_app: Callable[..., Flask], postgres_url: str,
                                     postgres_control: Callable[[str], None]) -> None:
    client = make_app(database_url=postgres_url).test_client()
    assert client.post("/runcode", json={"code": PLOT}).get_json()["images"]
    postgres_control("restart")
    body = client.post("/runcode", json={"code": PLOT}).get_json()
    (url,) = body["images"].values()
    assert client.get(url.removeprefix("http://localhost")).status_code == 200, "stale connections are replaced"

    postgres_control("stop")
    started = time.monotonic()
    response = client.post("/runcode", json={"code": "print('still here')\n" + PLOT})
    assert response.status_code == 200
    body = response.get_json()
    assert body["output"] == "still here\n" and body["status"] == "ok" and body["images"] == {}
    assert "database" in body["image_error"]
    assert time.monotonic() - started < 30, "bounded time without the database"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    assert client.get(url.removeprefix("http://localhost")).status_code == 500

    postgres_control("start")
    assert wait_until(lambda: client.get("/readyz").status_code == 200, 60)
    assert client.get(url.removeprefix("http://localhost")).status_code == 200
    assert client.post("/runcode", json={"code": PLOT}).get_json()["images"]


def most_starts(seconds: float, initial: float, cap: float) -> int:
    """The most starts one slot of the pool can make in `seconds`: the first at once, and after its n-th
    failure a wait of min(cap, initial * 2**(n - 1)) before the next (pool.py's backoff; each start's own
    time only delays them further)."""
    starts, at = 0, 0.0
    while at <= seconds:
        starts += 1
        at += min(cap, initial * 2 ** (starts - 1))
    return starts


def test_sandboxes_that_cannot_start_give_clear_503s_and_back_off(base_config: Config, tmp_path,
                                                                  docker_client: docker.DockerClient) -> None:
    config = replace(base_config, interpreter_image="code-interpreter-no-such-image:never",
                     deployment=f"{base_config.deployment}-broken", queue_wait_seconds=1, data_dir=str(tmp_path))
    launcher = DockerSandboxes(config)
    broken = SandboxPool(launcher, [9401, 9402], backoff_initial=0.2, backoff_max=2)
    began = time.monotonic()
    broken.start()
    app = create_app(config, pool=broken)
    try:
        client = app.test_client()
        response = client.post("/runcode", json={"code": "print(1)"})
        assert response.status_code == 503 and response.headers["Retry-After"]
        # Not ready once every slot has failed a start (on a slow runner the first failure may take a moment).
        assert wait_until(lambda: client.get("/readyz").status_code == 503, 60)
        time.sleep(max(0.0, 4 - (time.monotonic() - began)))  # seconds enough for a spin to show
        failed = broken.stats()["failed_total"]
        elapsed = time.monotonic() - began
        # Backoff 0.2, 0.4, 0.8, 1.6, 2, 2 ...: a handful of attempts per slot in the time it had (one more
        # each for a start at the very edge), not a spin.
        assert 2 <= failed <= 2 * (most_starts(elapsed, 0.2, 2) + 1), (failed, elapsed)
    finally:
        broken.close()
        app.extensions[EXTENSION_KEY].close()
    assert containers_of(docker_client, config.deployment_label) == []


def restart_docker_daemon() -> None:
    """Stop dockerd (SIGTERM, as a service manager would) and start it again; wait until it answers."""
    pid = int(open("/var/run/docker.pid").read().strip())
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 90, 0.5), "dockerd did not stop"
    with open("/var/log/dockerd-restarted-by-tests.log", "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    assert wait_until(_docker_answers, 90, 0.5), "dockerd did not come back"


def _docker_answers() -> bool:
    try:
        return bool(docker.from_env().ping())
    except docker.errors.DockerException:
        return False


def ready_sandboxes(center: CenterProcess) -> int:
    """How many of the center's sandboxes are ready now, as /readyz tells."""
    return requests.get(f"{center.url}/readyz", timeout=5).json()["pool"]["ready"]


def test_docker_daemon_restart_under_a_running_center(center_process: Callable[..., CenterProcess]) -> None:
    if os.environ.get("TEST_RESTART_DOCKER") != "1" or os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.skip("restarts the Docker daemon: opt in with TEST_RESTART_DOCKER=1 (as root; .ci/run does)")
    center = center_process().start()
    assert requests.post(f"{center.url}/runcode", json={"code": "print(1)"}, timeout=60).json()["output"] == "1\n"
    restart_docker_daemon()
    # The center is not restarted: its watcher notices the dead sandboxes and the slots refill.
    # (/readyz alone may say 200 for a moment before that: slots that start afresh count as able to
    # serve until a start fails, so the refill itself is what is waited for.)
    assert wait_until(lambda: center.ready() and ready_sandboxes(center) > 0, 120, 0.5), \
        "no sandbox became ready again"
    response = requests.post(f"{center.url}/runcode", json={"code": "print('after restart')"}, timeout=60)
    assert response.status_code == 200 and response.json()["output"] == "after restart\n"
    assert center.process.poll() is None
