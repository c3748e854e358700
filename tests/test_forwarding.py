"""Two centers sharing one database, each with its own address: a session's requests reach the center holding it
through the other one (api/forwarding.py), and a session whose center has left answers 410 (peers.py).

The swarm suite (test_swarm.py) does the same across two Docker engines; this one runs in `make test`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import free_port, wait_until
from flask import Flask
from sqlalchemy import update

from center import EXTENSION_KEY
from center import make_server as make_waitress_server
from models import CenterRecord
from server.api.forwarding import FORWARDED_HEADER
from server.config import EgressSettings
from server.services import Services

TOKEN = "forwarding-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Center:
    """One center of the pair: its app, its waitress server (as center.py serves) and its URL."""

    app: Flask
    server: Any
    url: str
    stopped: threading.Event

    def start(self) -> None:
        """Serve in a thread of its own."""
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self.server.run()
        except Exception:
            if not self.stopped.is_set():  # closing its sockets under waitress's loop may end it so
                raise

    def stop(self) -> None:
        """Stop serving: its port refuses connections from now on."""
        if not self.stopped.is_set():
            self.stopped.set()
            self.server.close()
            self.server.task_dispatcher.shutdown(timeout=5)

    @property
    def services(self) -> Services:
        """The app's Services."""
        return self.app.extensions[EXTENSION_KEY]


def start_pair(make_app: Callable[..., Flask], tmp_path: Path, **overrides: Any) -> list[Center]:
    """Centers A and B on one SQLite file, each advertising its own address (the shared pool serves both)."""
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    centers = []
    for name in ("a", "b"):
        port = free_port()
        app = make_app(database_url=database, deployment=f"pytest-forward-{name}", auth_tokens=(TOKEN,),
                       advertise_url=f"http://127.0.0.1:{port}", **overrides)
        center = Center(app, make_waitress_server(app, app.extensions[EXTENSION_KEY].config, port=port),
                        f"http://127.0.0.1:{port}", threading.Event())
        center.start()
        centers.append(center)
    return centers


@pytest.fixture
def two_centers(make_app: Callable[..., Flask], tmp_path: Path) -> Iterator[tuple[Center, Center]]:
    """Centers A and B (start_pair)."""
    centers = start_pair(make_app, tmp_path)
    yield centers[0], centers[1]
    for center in centers:
        center.stop()


def test_a_forwarded_session_keeps_its_network_and_either_center_changes_it(make_app: Callable[..., Flask],
                                                                            tmp_path: Path) -> None:
    """The allow-list is in the shared database; its gate is at the center holding the sandbox."""
    a, b = start_pair(make_app, tmp_path, egress=EgressSettings(allow=("pypi.org", "files.pythonhosted.org")))
    try:
        created = requests.post(f"{a.url}/sessions", json={"network": {"allow": ["pypi.org"]}}, headers=AUTH,
                                timeout=60)
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        through_b = f"{b.url}/sessions/{session_id}"
        assert requests.get(through_b, headers=AUTH, timeout=30).json()["network"] == {"allow": ["pypi.org"]}
        proxy = {"code": "import os\nos.environ.get('HTTPS_PROXY')"}
        cell = requests.post(f"{through_b}/runcode", json=proxy, headers=AUTH, timeout=60).json()
        assert cell["result"] == "'http://127.0.0.1:3128'" and cell["network"] == [], cell

        changed = requests.put(f"{through_b}/network", json={"allow": []}, headers=AUTH, timeout=30)
        assert changed.status_code == 200 and changed.json()["network"] == {"allow": []}, changed.text
        assert a.services.registry.live[session_id].gate.allow == ()  # A's gate follows at once
        cell = requests.post(f"{through_b}/runcode", json=proxy, headers=AUTH, timeout=60).json()
        assert cell["result"] is None, cell
        refused = requests.put(f"{through_b}/network", json={"allow": ["example.com"]}, headers=AUTH, timeout=30)
        assert refused.status_code == 403 and "example.com" in refused.json()["error"]
        assert requests.delete(through_b, headers=AUTH, timeout=60).status_code == 204
    finally:
        for center in (a, b):
            center.stop()


def test_a_session_on_one_center_is_used_through_the_other(two_centers: tuple[Center, Center]) -> None:
    a, b = two_centers
    created = requests.post(f"{a.url}/sessions", headers=AUTH, timeout=60)
    assert created.status_code == 201
    session_id = created.json()["session_id"]
    through_b = f"{b.url}/sessions/{session_id}"
    assert session_id in a.services.registry.live and session_id not in b.services.registry.live

    assert requests.get(through_b, headers=AUTH, timeout=30).json()["status"] == "idle"
    cell = requests.post(f"{through_b}/runcode", json={"code": "v = 6\nv * 7"}, headers=AUTH, timeout=60)
    assert cell.status_code == 200 and cell.json()["result"] == "42"
    assert cell.headers["X-Request-ID"]
    payload = bytes(range(256)) * 4096
    uploaded = requests.post(f"{through_b}/files", files={"file": ("dir/blob.bin", payload)}, headers=AUTH, timeout=60)
    assert uploaded.status_code == 201 and uploaded.json()["files"] == [{"path": "dir/blob.bin", "size": len(payload)}]
    download = requests.get(f"{through_b}/files/dir/blob.bin", headers=AUTH, timeout=60)
    assert download.status_code == 200 and download.content == payload
    assert download.headers["Content-Disposition"].startswith("attachment")
    assert download.headers["Content-Length"] == str(len(payload))
    plotted = requests.post(f"{through_b}/runcode", json={"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2])"},
                            headers=AUTH, timeout=60).json()
    (image_url,) = plotted["images"].values()
    assert image_url.startswith(b.url), "links name the host the client used"
    assert requests.get(image_url, timeout=30).status_code == 200

    arrivals = []
    with requests.post(f"{through_b}/runcode", json={"code": "import time\nprint('one', flush=True)\ntime.sleep(3)"},
                       headers={**AUTH, "Accept": "application/x-ndjson"}, stream=True, timeout=60) as streamed:
        assert streamed.status_code == 200
        for line in streamed.iter_lines(chunk_size=1):
            if line:
                arrivals.append((time.monotonic(), json.loads(line)))
    # A line may come in pieces (print writes the text and its newline apart): the first piece counts.
    # It came while the cell still slept for 3 s, not with the end (half of those 3 s are left for the
    # relay's latency on a slow runner).
    first = min(moment for moment, event in arrivals if event["type"] == "stdout" and "one" in event["text"])
    assert arrivals[-1][1]["type"] == "result" and arrivals[-1][0] - first > 1.5, arrivals

    assert requests.get(through_b, headers={"Authorization": "Bearer other"}, timeout=30).status_code == 401
    assert requests.delete(through_b, headers=AUTH, timeout=60).status_code == 204
    assert requests.get(f"{a.url}/sessions/{session_id}", headers=AUTH, timeout=30).status_code == 410


def test_a_relayed_request_is_never_relayed_again(two_centers: tuple[Center, Center]) -> None:
    a, b = two_centers
    session_id = requests.post(f"{a.url}/sessions", headers=AUTH, timeout=60).json()["session_id"]
    looped = requests.get(f"{b.url}/sessions/{session_id}", headers={**AUTH, FORWARDED_HEADER: "x"}, timeout=30)
    assert looped.status_code == 410 and "another center" in looped.json()["error"]


def test_a_center_that_does_not_answer_is_a_503_then_gone_is_a_410(two_centers: tuple[Center, Center]) -> None:
    a, b = two_centers
    session_id = requests.post(f"{a.url}/sessions", headers=AUTH, timeout=60).json()["session_id"]
    a.services.peers.close()  # A's heartbeat stops...
    a.stop()  # ...and so does its server
    refused = requests.get(f"{b.url}/sessions/{session_id}", headers=AUTH, timeout=30)
    assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
    long_ago = datetime.now(timezone.utc) - timedelta(minutes=5)
    with b.services.database() as db:
        db.execute(update(CenterRecord).where(CenterRecord.node == a.services.registry.node)
                   .values(heartbeat_at=long_ago))
        db.commit()
    gone = requests.get(f"{b.url}/sessions/{session_id}", headers=AUTH, timeout=30)
    assert gone.status_code == 410 and "left" in gone.json()["error"]
    again = requests.post(f"{b.url}/sessions/{session_id}/runcode", json={"code": "1"}, headers=AUTH, timeout=30)
    assert again.status_code == 410, "ended in the registry for good"


def test_a_client_that_hangs_up_on_the_relay_interrupts_the_cell(two_centers: tuple[Center, Center]) -> None:
    a, b = two_centers
    session_id = requests.post(f"{a.url}/sessions", headers=AUTH, timeout=60).json()["session_id"]
    cells = f"{b.url}/sessions/{session_id}/runcode"
    assert requests.post(cells, json={"code": "x = 41"}, headers=AUTH, timeout=60).json()["status"] == "ok"
    code = "import time\nx += 1\nprint('sleeping', flush=True)\ntime.sleep(100)"
    with requests.post(cells, json={"code": code}, headers={**AUTH, "Accept": "application/x-ndjson"}, stream=True,
                       timeout=60) as streamed:
        for line in streamed.iter_lines(chunk_size=1):
            if line and json.loads(line).get("type") == "stdout":
                break
    # Hung up on B: B drops its relay, A sees its client go and interrupts the cell (not a 100 s sleep).
    answers: list[requests.Response] = []

    def next_cell_runs() -> bool:
        answers.append(requests.post(cells, json={"code": "print(x)"}, headers=AUTH, timeout=60))
        return answers[-1].status_code != 409

    assert wait_until(next_cell_runs, 45, 0.5)
    assert answers[-1].status_code == 200 and answers[-1].json()["output"] == "42\n"


@pytest.mark.parametrize("target", ["files/../../../metrics", "files/..%2F..%2F..%2Fmetrics",
                                    "files/%2E%2E/%2E%2E/%2E%2E/metrics", "files/./x/../../../../healthz"])
def test_a_path_with_dot_segments_is_refused_before_it_is_forwarded(two_centers: tuple[Center, Center],
                                                                     target: str) -> None:
    """Before: through B, files/../../../metrics reached A's /metrics (200): the HTTP library on the way
    resolved the dot segments after B had decided to forward, before A's route could check the path."""
    a, b = two_centers
    session_id = requests.post(f"{a.url}/sessions", headers=AUTH, timeout=60).json()["session_id"]
    host, port = b.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(f"GET /sessions/{session_id}/{target} HTTP/1.1\r\nHost: x\r\n"
                           f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] in (b"400", b"404"), answer[:300]
    assert b"code_interpreter" not in body and "error" in json.loads(body)


def test_an_e2b_sandbox_on_one_center_is_used_through_the_other(make_app: Callable[..., Flask],
                                                               tmp_path: Path) -> None:
    """E2B's SDK pointed at center B reaches a sandbox center A holds: every call is relayed (streams too)."""
    from e2b_code_interpreter import Sandbox

    a, b = start_pair(make_app, tmp_path)
    try:
        created = Sandbox.create(api_key=TOKEN, api_url=f"{a.url}/e2b", sandbox_url=f"{a.url}/e2b/sandbox")
        assert created.sandbox_id in a.services.registry.live
        b.services.registry.sweep()  # B learns the deployment's sandbox tokens at its sweeps (every 5 s)
        sbx = Sandbox.connect(created.sandbox_id, api_key=TOKEN, api_url=f"{b.url}/e2b",
                              sandbox_url=f"{b.url}/e2b/sandbox")
        assert sbx.run_code("x = 6\nprint('through b')\nx * 7").text == "42"
        sbx.files.write("via-b.txt", "relayed")
        assert sbx.files.read("via-b.txt") == "relayed"
        assert [entry.name for entry in sbx.files.list("/home/user")] == ["via-b.txt"]
        assert sbx.commands.run("cat via-b.txt").stdout == "relayed"
        assert sbx.get_info().sandbox_id == created.sandbox_id
        assert sbx.kill() is True
        assert created.sandbox_id not in a.services.registry.live
    finally:
        for center in (a, b):
            center.stop()
