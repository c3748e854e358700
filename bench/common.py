"""What the benchmarks share: start a center of their own on a temp config, wait for its pool."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_center(workdir: Path, settings: dict[str, Any], slots: int) -> tuple[subprocess.Popen, str, str]:
    """Run center.py on a temp config (settings override the defaults); return process, URL, deployment."""
    port = free_port()
    deployment = f"bench-{port}"
    config = {
        "scheduler_port": port, "deployment": deployment, "data_dir": str(workdir / "data"),
        "interpreter_port_range": {"start": 9301, "end": 9300 + slots}, "queue_wait_seconds": 60, **settings,
    }
    config_path = workdir / "bench.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(workdir / "center.log", "wb")
    process = subprocess.Popen([sys.executable, str(PROJECT_DIR / "center.py"), "--config", str(config_path)],
                               stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, slots)
    return process, url, deployment


def wait_ready(url: str, slots: int, timeout: float = 120) -> None:
    """Until every slot of the pool holds a ready sandbox."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=2).json()["pool"]["ready"] == slots:
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"the center at {url} did not get {slots} ready sandboxes in {timeout} s")


@contextmanager
def running_center(runtime: str, slots: int, **settings: Any) -> Iterator[str]:
    """`with running_center("runc", 4) as url:` a center of the benchmark's own (more config `settings` if
    given), stopped (SIGTERM) afterwards."""
    with tempfile.TemporaryDirectory() as workdir:
        process, url, _ = start_center(Path(workdir), {"sandbox_runtime": runtime, **settings}, slots)
        try:
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
