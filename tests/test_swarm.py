"""The center as a Docker Swarm stack, for real: `make swarm-up`, the API through the front door's port, the front
door's own limits, a rolling update under traffic that refuses and loses nothing, a second Docker engine joining as
a second node (sessions and images across centers, each node's front door on its own center), `make swarm-down`.

Runs with `make test-swarm` (TEST_SWARM=1; root, the Docker engine, iproute2, nsenter and unshare). The second node
is a second dockerd on this machine: its own data root, exec root, pid file and socket, inside a network namespace
reached through a veth pair, and in a mount namespace of its own where /var/run/docker.sock is its socket (what a
center on that node mounts) and DNS fails fast (no registry is reachable from there).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import pytest
import requests
from conftest import free_port, unavailable, wait_until

from deploy.swarm.images import DEFAULT_CENTER_IMAGE, DEFAULT_FRONT_DOOR_IMAGE
from server.config import PROJECT_DIR, load_config
from server.containers.docker_sandboxes import DEPLOYMENT_LABEL

pytestmark = pytest.mark.skipif(os.environ.get("TEST_SWARM") != "1",
                                reason="deploys a swarm stack on this engine: opt in with make test-swarm")

TIMEOUT_SECONDS = 10  # the stack's timeout_seconds: short, so a drain and its grace stay short too
HEADER_TIMEOUT_SECONDS = 5  # the front door's timeout for a request head (its default)
CLIENT_CONNECTIONS = 100  # connections one client address may hold at the front door (its default)
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.savefig('chart.png')\nprint('plotted')"


@dataclass
class SwarmStack:
    """The stack under test: its name, where it answers, its token and the environment make ran with."""

    name: str
    port: int
    token: str
    environ: dict[str, str]
    swarm_was_active: bool = False
    down: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The published port on this node."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        """The bearer header."""
        return {"Authorization": f"Bearer {self.token}"}

    def make(self, target: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run a make target of the project with this stack's environment (and this interpreter)."""
        return subprocess.run(["make", "-C", str(PROJECT_DIR), target, f"PY={sys.executable}", "INSTALLED="],
                              env=self.environ, capture_output=True, text=True, timeout=timeout)


def docker_cli(*arguments: str, host: str | None = None, check: bool = True, timeout: float = 300) -> str:
    """The docker command line (on another engine with host=unix://...); its output."""
    command = ["docker", *(["-H", host] if host else []), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout.strip()


def answers(url: str, **kwargs: object) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        return requests.get(url, timeout=5, **kwargs).status_code  # type: ignore[arg-type]
    except requests.RequestException:
        return None


def served_by(url: str) -> str | None:
    """Which center the front door sent a ready GET to ("local/centerN": its own node's), or None."""
    try:
        response = requests.get(url, timeout=5)
    except requests.RequestException:
        return None
    return response.headers.get("X-Served-By") if response.status_code == 200 else None


def node_sandboxes(client: docker.DockerClient, stack: str) -> list[str]:
    """Sandbox containers of the stack's centers on an engine (their deployment label starts with the service)."""
    prefix = f"{stack}_center-"
    return [c["Id"] for c in client.api.containers(all=True, filters={"label": DEPLOYMENT_LABEL})
            if (c.get("Labels") or {}).get(DEPLOYMENT_LABEL, "").startswith(prefix)]


@pytest.fixture(scope="module")
def swarm_stack(docker_client: docker.DockerClient) -> Iterator[SwarmStack]:
    """`make swarm-up` on this node with a stack of the test's own (two sandbox slots); always taken down."""
    for tool in ("make", "ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            unavailable(f"the swarm tests need {tool}")
    if os.geteuid() != 0:
        unavailable("the swarm tests need root (a second engine in a network namespace)")
    name = f"cs{os.getpid() % 100000}"
    port = free_port()
    token = secrets.token_urlsafe(24)
    environ = {**os.environ, "SWARM_STACK": name, "CIA_PORT": str(port), "CIA_TOKEN": token,
               "SWARM_POOL_END": "8002", "SWARM_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS), "SWARM_STOP_GRACE": "40s",
               "SWARM_QUEUE_WAIT_SECONDS": "60", "SWARM_HEADER_TIMEOUT": f"{HEADER_TIMEOUT_SECONDS}s",
               "SWARM_CLIENT_CONNECTIONS": str(CLIENT_CONNECTIONS),
               "SWARM_PURGE": "1"}
    stack = SwarmStack(name, port, token, environ,
                       swarm_was_active=docker_cli("info", "--format", "{{.Swarm.LocalNodeState}}") == "active")
    started = time.monotonic()
    try:
        result = stack.make("swarm-up")
        assert result.returncode == 0, f"make swarm-up failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        stack.notes.append(f"make swarm-up took {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        if not stack.down:
            stack.make("swarm-down", timeout=600)
        print("\n".join(stack.notes))


def test_swarm_up_serves_the_api_through_the_front_door(swarm_stack: SwarmStack) -> None:
    url, auth = swarm_stack.url, swarm_stack.auth
    ready = requests.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["database"] == "ok" and ready.json()["pool"]["slots"] == 2
    # The front door answers: by any center it knows of at first ("any/..."), by this node's own from its agent's
    # first "ready", a second later at most ("local/..."). Only the front door publishes a port.
    assert ready.headers["X-Served-By"].startswith(("any/", "local/")), ready.headers
    assert wait_until(lambda: (served_by(f"{url}/readyz") or "").startswith("local/"), 30, 0.2)
    ports = {service: json.loads(docker_cli("service", "inspect", "--format", "{{json .Spec.EndpointSpec.Ports}}",
                                            f"{swarm_stack.name}_{service}")) for service in ("center", "front-door")}
    assert not ports["center"], ports
    assert [(p["TargetPort"], p["PublishedPort"], p["PublishMode"]) for p in ports["front-door"]] == \
        [(5000, swarm_stack.port, "host")], ports
    table = [  # (method, path, keyword arguments, expected status, check of the body)
        ("GET", "/healthz", {}, 200, lambda b: b["status"] == "ok"),
        ("POST", "/runcode", {"json": {"code": "print(1)"}, "headers": {}}, 401, lambda b: "token" in b["error"]),
        ("POST", "/runcode", {"json": {"code": "print(1)"}, "headers": {"Authorization": "Bearer wrong"}}, 401, None),
        ("POST", "/runcode", {"json": {"code": "print(6 * 7)"}}, 200, lambda b: b["output"] == "42\n"),
        ("POST", "/runcode", {"json": {"code": "echo $((6 * 7))", "languageType": "bash"}}, 200,
         lambda b: b["output"] == "42\n"),
        ("GET", "/runcode", {"params": {"code": "print('Hello, World!')"}}, 200,
         lambda b: b["output"] == "Hello, World!\n"),
        ("POST", "/runcode", {"data": "not json"}, 400, lambda b: "JSON" in b["error"]),
        ("POST", "/runcode", {"json": {"code": "1/0"}}, 200, lambda b: b["status"] == "error"),
        ("POST", "/runcode", {"json": {"code": "import time\ntime.sleep(30)", "timeout": 1}}, 504,
         lambda b: b["status"] == "timeout"),
        ("POST", "/runcode", {"json": {"code": "import socket\nsocket.create_connection(('db', 5432), 3)"}}, 200,
         lambda b: b["status"] == "error"),  # no network inside a sandbox, not even the stack's database
        ("GET", "/image/" + "x" * 32 + ".png", {}, 404, None),
        ("GET", "/no-such-route", {}, 404, None),
        ("DELETE", "/runcode", {}, 405, None),
    ]
    for method, path, kwargs, status, check in table:
        kwargs = {"headers": auth, **kwargs}
        response = requests.request(method, f"{url}{path}", timeout=60, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, (method, path, response.status_code, response.text[:500])
        if check is not None:
            assert check(response.json()), (method, path, response.text[:500])

    plotted = requests.post(f"{url}/runcode", json={"code": PLOT}, headers=auth, timeout=60).json()
    (image_url,) = plotted["images"].values()
    assert image_url.startswith(url)
    image = requests.get(image_url, timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png" and image.content[:4] == b"\x89PNG"

    created = requests.post(f"{url}/sessions", headers=auth, timeout=60)
    assert created.status_code == 201
    session = f"{url}/sessions/{created.json()['session_id']}"
    cell = requests.post(f"{session}/runcode", json={"code": "x = 20\nx * 2 + 2"}, headers=auth, timeout=60).json()
    assert cell["result"] == "42" and cell["execution_count"] == 1
    uploaded = requests.post(f"{session}/files", files={"file": ("data/in.csv", b"a,b\n1,2\n")}, headers=auth,
                             timeout=60)
    assert uploaded.status_code == 201 and uploaded.json()["files"] == [{"path": "data/in.csv", "size": 8}]
    cell = requests.post(f"{session}/runcode", json={"code": "open('data/in.csv').read().split()[1]"}, headers=auth,
                         timeout=60).json()
    assert cell["result"] == "'1,2'"
    download = requests.get(f"{session}/files/data/in.csv", headers=auth, timeout=60)
    assert download.status_code == 200 and download.content == b"a,b\n1,2\n"
    assert requests.get(session, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert requests.delete(session, headers=auth, timeout=60).status_code == 204
    assert requests.get(session, headers=auth, timeout=10).status_code == 410


def closed_by_peer(connection: socket.socket) -> bool:
    """Whether the other end closed a connection that has something to read (no data is expected on it yet)."""
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def test_the_front_door_cuts_slow_heads_and_greedy_clients(swarm_stack: SwarmStack) -> None:
    """A slowloris head meets the front door's header timeout (408, closed), not a center, while /healthz keeps
    answering through the front door; past its connection limit one address has its new connections closed."""
    url, address = swarm_stack.url, ("127.0.0.1", swarm_stack.port)
    slow = socket.create_connection(address, timeout=5)
    began = time.monotonic()
    slow.sendall(b"POST /runcode HTTP/1.1\r\nHost: front-door\r\nContent-Type: application/json\r\n")  # never ended
    meanwhile = []
    while time.monotonic() - began < HEADER_TIMEOUT_SECONDS - 1:
        response = requests.get(f"{url}/healthz", timeout=5)
        meanwhile.append((response.status_code, response.headers.get("X-Served-By", "")))
        time.sleep(0.5)
    slow.settimeout(HEADER_TIMEOUT_SECONDS + 10)
    answer = b""
    while chunk := slow.recv(4096):
        answer += chunk
    cut = time.monotonic() - began
    slow.close()
    swarm_stack.notes.append(f"front door: a half-sent head was answered {answer.split(b' ', 2)[1].decode()} and "
                             f"closed after {cut:.1f} s; /healthz answered {len(meanwhile)} times meanwhile")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"server: code-interpreter" not in answer.lower(), answer[:300]  # HAProxy's answer, not a center's
    assert HEADER_TIMEOUT_SECONDS - 0.5 <= cut < HEADER_TIMEOUT_SECONDS + 5, cut
    assert len(meanwhile) >= 3 and all(status == 200 and server.startswith("local/") for status, server in meanwhile), \
        meanwhile

    extra = 10
    crowd: list[socket.socket] = []
    time.sleep(0.5)  # the connections above are closed and uncounted
    try:
        for _ in range(CLIENT_CONNECTIONS + extra):  # idle, all from this one address
            crowd.append(socket.create_connection(address, timeout=5))
        time.sleep(1)  # well within the header timeout: only the refused ones have anything to read
        readable, _, _ = select.select(crowd, [], [], 0)
        refused = sum(closed_by_peer(connection) for connection in readable)
    finally:
        for connection in crowd:
            connection.close()
    swarm_stack.notes.append(f"front door: {refused} of {len(crowd)} idle connections from one address closed at once "
                             f"(limit {CLIENT_CONNECTIONS})")
    assert extra <= refused <= extra + 2, refused
    assert wait_until(lambda: answers(f"{url}/healthz") == 200, 10, 0.2)  # the address is served again


class Traffic:
    """Clients sending runs the whole time, one run after another: all but the last on a new connection each, the
    last keeping its connection to the front door alive. Nothing is sent again: every run's outcome is kept, an
    answer's status and output or the connection error met instead."""

    def __init__(self, url: str, auth: dict[str, str], clients: int) -> None:
        self.url, self.auth = url, auth
        self.stop = threading.Event()
        self.outcomes: list[tuple[str, float, str]] = []  # (outcome, when it ended, detail)
        self.longest = 0.0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(n, n == clients - 1), daemon=True)
                        for n in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def run(self, code: str, expected: str, client: requests.Session | None = None) -> None:
        """Send one run once and keep its outcome: "answered as expected", or what happened instead."""
        started = time.monotonic()
        try:
            response = (client or requests).post(f"{self.url}/runcode", json={"code": code}, headers=self.auth,
                                                 timeout=90)
        except requests.ConnectionError as e:
            outcome, detail = "refused or reset", repr(e)
        except requests.Timeout as e:
            outcome, detail = "no answer in time", repr(e)
        else:
            is_json = response.headers.get("Content-Type", "").startswith("application/json")
            output = response.json().get("output") if is_json else None
            if response.status_code == 200 and output == expected:
                outcome, detail = "answered as expected", ""
            else:
                outcome, detail = f"answered {response.status_code}", response.text[:300]
        ended = time.monotonic()
        with self.lock:
            self.outcomes.append((outcome, ended, detail))
            self.longest = max(self.longest, ended - started)

    def _client(self, number: int, keep_alive: bool) -> None:
        client = requests.Session() if keep_alive else None
        sent = 0
        while not self.stop.is_set():
            sent += 1
            expected = f"client {number} run {sent}\n"
            self.run(f"print({expected.strip()!r})", expected, client)


def center_container(stack: str) -> str | None:
    """This node's running center container of the stack."""
    found = docker_cli("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_center",
                       "--filter", "status=running").split()
    return found[0] if found else None


def test_rolling_update_refuses_and_loses_nothing(swarm_stack: SwarmStack) -> None:
    """The one-node stack's center is replaced (stop-first) under three clients: the front door holds what arrives
    while no center is ready, so every run, those in flight included, is answered 200 with its output."""
    url, auth = swarm_stack.url, swarm_stack.auth
    session = f"{url}/sessions/" + requests.post(f"{url}/sessions", headers=auth, timeout=60).json()["session_id"]
    assert requests.post(f"{session}/runcode", json={"code": "kept = 'state'"}, headers=auth, timeout=60).ok
    assert requests.post(f"{session}/files", files={"file": ("kept.txt", b"file")}, headers=auth, timeout=60).ok
    old = center_container(swarm_stack.name)
    assert old is not None

    with Traffic(url, auth, clients=3) as traffic:
        long_runs = [threading.Thread(target=traffic.run, args=(
            "import time\ntime.sleep(4)\nprint('long run done')", "long run done\n")) for _ in range(2)]
        for thread in long_runs:
            thread.start()
        time.sleep(1.5)  # the long runs are running now, on the old center
        began = time.monotonic()
        docker_cli("service", "update", "--force", "--detach", f"{swarm_stack.name}_center")
        replaced = wait_until(lambda: center_container(swarm_stack.name) not in (None, old)
                              and answers(f"{url}/readyz") == 200, 240, 0.5)
        assert replaced, docker_cli("service", "ps", f"{swarm_stack.name}_center", check=False)
        ready = time.monotonic()
        time.sleep(3)  # traffic on the new center too
        for thread in long_runs:
            thread.join(120)

    outcomes = Counter(outcome for outcome, _, _ in traffic.outcomes)
    swarm_stack.notes.append(f"rolling update: new center ready {ready - began:.1f} s after the update began; "
                             f"{len(traffic.outcomes)} runs from 3 clients and 2 long runs: {dict(outcomes)}; the "
                             f"longest took {traffic.longest:.1f} s (held by the front door while no center was ready)")
    assert set(outcomes) == {"answered as expected"}, \
        [(outcome, detail) for outcome, _, detail in traffic.outcomes if outcome != "answered as expected"][:10]
    # The traffic spanned the switch: runs ended before it, while the old center drained, and on the new center.
    ended = [moment for _, moment, _ in traffic.outcomes]
    assert min(ended) < began and sum(moment > ready for moment in ended) >= 3, (began, ready, sorted(ended))
    assert outcomes["answered as expected"] >= 12
    cell = requests.post(f"{session}/runcode", json={"code": "kept + open('kept.txt').read()"}, headers=auth,
                         timeout=60).json()
    assert cell["result"] == "'statefile'", cell
    assert requests.delete(session, headers=auth, timeout=60).status_code == 204


@dataclass
class SecondNode:
    """A second Docker engine on this machine, in its own network and mount namespaces."""

    tag: str
    address: str
    host_address: str
    socket: str
    data_root: Path
    exec_root: Path
    netns: str
    process: subprocess.Popen | None = None
    node_id: str = ""

    @property
    def docker_host(self) -> str:
        """Its API socket, for `docker -H`."""
        return f"unix://{self.socket}"

    def start(self, manager_address: str) -> None:
        """veth pair and network namespace, then dockerd in a mount namespace of its own."""
        host_end, node_end = f"{self.tag}h", f"{self.tag}n"
        run = lambda *command: subprocess.run(command, check=True, capture_output=True, timeout=60)  # noqa: E731
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end)
        run("ip", "link", "set", node_end, "netns", self.netns)
        run("ip", "addr", "add", f"{self.host_address}/30", "dev", host_end)
        run("ip", "link", "set", host_end, "up")
        # What this machine sends to the node leaves from the manager's advertised address: the node's
        # VXLAN device holds a static entry for each remote peer's address and drops encapsulated
        # packets from any other source (Linux vxlan_snoop: static entries are never "migrated").
        run("ip", "route", "replace", self.host_address.rsplit(".", 1)[0] + ".0/30", "dev", host_end, "scope", "link",
            "src", manager_address)
        inside = ["ip", "netns", "exec", self.netns]
        run(*inside, "ip", "addr", "add", f"{self.address}/30", "dev", node_end)
        run(*inside, "ip", "link", "set", node_end, "up")
        run(*inside, "ip", "link", "set", "lo", "up")
        run(*inside, "ip", "route", "add", "default", "via", self.host_address)
        for folder in (self.data_root, self.exec_root):
            folder.mkdir(parents=True, exist_ok=True)
        (self.exec_root / "daemon.json").write_text("{}")
        (self.exec_root / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # no registry: fail at once
        log = open(self.exec_root / "dockerd.log", "ab")
        script = (f"mount --bind {self.exec_root}/resolv.conf /etc/resolv.conf && exec dockerd "
                  f"--config-file {self.exec_root}/daemon.json --data-root {self.data_root} "
                  f"--exec-root {self.exec_root}/exec --pidfile {self.exec_root}/dockerd.pid -H unix://{self.socket}")
        # nsenter --net keeps this mount namespace's /sys (ip netns exec would remount it without cgroups).
        self.process = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount",
                                         "--propagation", "private", "sh", "-c", script],
                                        stdout=log, stderr=log, start_new_session=True)
        log.close()
        assert wait_until(self.answers, 90, 0.5), \
            (self.exec_root / "dockerd.log").read_text()[-3000:]
        # What a center on this node mounts as the engine's socket must be this engine's.
        subprocess.run(["nsenter", f"--target={self.process.pid}", "--mount", "mount", "--bind", self.socket,
                        "/run/docker.sock"], check=True, capture_output=True, timeout=30)

    def answers(self) -> bool:
        """Whether the engine answers on its socket."""
        return subprocess.run(["docker", "-H", self.docker_host, "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, timeout=30).returncode == 0

    def stop(self) -> None:
        """Everything it ran, the engine, its folders and namespace."""
        if self.process is not None and self.process.poll() is None and self.answers():
            ids = docker_cli("ps", "-aq", host=self.docker_host, check=False, timeout=60).split()
            if ids:
                docker_cli("rm", "-f", *ids, host=self.docker_host, check=False, timeout=120)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", f"{self.tag}h"], capture_output=True, timeout=30)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.exec_root, ignore_errors=True)


@pytest.fixture
def second_node(swarm_stack: SwarmStack) -> Iterator[SecondNode]:
    """A second engine joined to the swarm as a worker, holding the images (no registry); always removed."""
    number = os.getpid() % 100000
    subnet = 16 + number % 200
    node = SecondNode(tag=f"cia{number}", address=f"10.213.{subnet}.2", host_address=f"10.213.{subnet}.1",
                      socket=f"/run/cia2-{number}.sock", data_root=Path(f"/var/lib/cia2-{number}"),
                      exec_root=Path(f"/run/cia2-{number}"), netns=f"cia2-{number}")
    manager = docker_cli("info", "--format", "{{.Swarm.NodeAddr}}")
    try:
        node.start(manager)
        images = [os.environ.get("SWARM_CENTER_IMAGE", DEFAULT_CENTER_IMAGE),
                  os.environ.get("SWARM_FRONT_DOOR_IMAGE", DEFAULT_FRONT_DOOR_IMAGE), load_config().interpreter_image]
        started = time.monotonic()
        loaded = subprocess.run(f"docker save {' '.join(images)} | docker -H {node.docker_host} load", shell=True,
                                capture_output=True, text=True, timeout=600)
        assert loaded.returncode == 0, loaded.stderr
        swarm_stack.notes.append(f"second node: images loaded in {time.monotonic() - started:.0f} s")
        token = docker_cli("swarm", "join-token", "-q", "worker")
        docker_cli("swarm", "join", "--token", token, "--advertise-addr", node.address, f"{manager}:2377",
                   host=node.docker_host, timeout=120)
        node.node_id = docker_cli("info", "--format", "{{.Swarm.NodeID}}", host=node.docker_host)
        yield node
    finally:
        if node.process is not None:
            docker_cli("swarm", "leave", "--force", host=node.docker_host, check=False, timeout=60)
        if node.node_id:
            wait_until(lambda: docker_cli("node", "rm", "--force", node.node_id, check=False, timeout=60) != ""
                       or node.node_id not in docker_cli("node", "ls", "-q", check=False), 60, 2)
        node.stop()


def streamed_events(url: str, auth: dict[str, str], code: str) -> list[tuple[float, dict]]:
    """POST a cell with Accept: application/x-ndjson; each event with the moment it arrived."""
    arrivals = []
    with requests.post(url, json={"code": code}, headers={**auth, "Accept": "application/x-ndjson"}, stream=True,
                       timeout=90) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines(chunk_size=1):
            if line:
                arrivals.append((time.monotonic(), json.loads(line)))
    return arrivals


def test_a_second_node_serves_and_forwards_sessions_and_images(swarm_stack: SwarmStack,
                                                               second_node: SecondNode) -> None:
    auth = swarm_stack.auth
    # Each node's front door; each sends to its own node's center while that one is ready.
    first, second = swarm_stack.url, f"http://{second_node.address}:{swarm_stack.port}"
    began = time.monotonic()
    # Until the second node's center is ready, its front door sends to the first's ("any/...").
    assert wait_until(lambda: (served_by(f"{second}/readyz") or "").startswith("local/"), 300, 1), \
        docker_cli("service", "ps", "--no-trunc", f"{swarm_stack.name}_center", check=False)
    swarm_stack.notes.append(f"second node: its center ready behind its front door {time.monotonic() - began:.0f} s "
                             "after joining")
    per_node: Counter[str] = Counter()

    def call(base: str, method: str, path: str, **kwargs: object) -> requests.Response:
        per_node["first" if base == first else "second"] += 1
        response = requests.request(method, f"{base}{path}", headers=auth, timeout=90,
                                    **kwargs)  # type: ignore[arg-type]
        # Answered by that node's own center, never the other's: what the sessions below cross is the relay.
        assert response.headers.get("X-Served-By", "").startswith("local/"), (base, path, response.headers)
        return response

    for base in (first, second) * 3:  # both centers run programs
        response = call(base, "POST", "/runcode", json={"code": "print('anywhere')"})
        assert response.status_code == 200 and response.json()["output"] == "anywhere\n"

    on_first = call(first, "POST", "/sessions").json()["session_id"]
    on_second = call(second, "POST", "/sessions").json()["session_id"]
    payload = os.urandom(3 * 1024 * 1024)
    for session, here, there in ((on_first, first, second), (on_second, second, first)):
        # Made on one center, used through the other: cells, upload, listing, download, state.
        assert call(there, "GET", f"/sessions/{session}").json()["status"] == "idle"
        cell = call(there, "POST", f"/sessions/{session}/runcode", json={"code": "n = 41\nn + 1"}).json()
        assert cell["result"] == "42", cell
        uploaded = call(there, "POST", f"/sessions/{session}/files", files={"file": ("big/blob.bin", payload)})
        assert uploaded.status_code == 201, uploaded.text
        listing = call(there, "GET", f"/sessions/{session}/files").json()["files"]
        assert [(f["path"], f["size"]) for f in listing] == [("big/blob.bin", len(payload))]
        download = call(there, "GET", f"/sessions/{session}/files/big/blob.bin")
        assert download.status_code == 200 and hashlib.sha256(download.content).digest() == \
            hashlib.sha256(payload).digest()
        assert download.headers["Content-Disposition"].startswith("attachment")
        per_node["first" if there == first else "second"] += 1
        arrivals = streamed_events(f"{there}/sessions/{session}/runcode", auth,
                                   "import time\nprint('first', flush=True)\ntime.sleep(4)\nprint('second')")
        # A line may come in pieces (print writes the text and its newline apart): the first piece counts.
        first_line = min(moment for moment, event in arrivals if event["type"] == "stdout" and "first" in event["text"])
        finished, result = arrivals[-1]
        assert result["type"] == "result" and result["output"] == "first\nsecond\n", arrivals
        # The cell slept 4 s after its first line: half of that is left for the relay's latency on a slow runner.
        assert finished - first_line > 2.0, "the relay streamed the first line before the cell ended"
        cell = call(here, "POST", f"/sessions/{session}/runcode",
                    json={"code": "import os\n(n, os.path.getsize('big/blob.bin'))"}).json()
        assert cell["result"] == f"(41, {len(payload)})" and cell["execution_count"] == 3, cell
        other = requests.get(f"{there}/sessions/{session}", headers={"Authorization": "Bearer nope"}, timeout=30)
        assert other.status_code == 401
        assert call(there, "GET", "/sessions/" + "0" * 32).status_code == 404

    for here, there in ((first, second), (second, first)):  # images of one center served by the other
        plotted = call(here, "POST", "/runcode", json={"code": PLOT}).json()
        (image_url,) = plotted["images"].values()
        served = requests.get(image_url.replace(here, there), timeout=30)
        per_node["first" if there == first else "second"] += 1
        assert served.status_code == 200 and served.content[:4] == b"\x89PNG"

    assert call(second, "DELETE", f"/sessions/{on_first}").status_code == 204
    assert call(first, "GET", f"/sessions/{on_first}").status_code == 410

    # The second node leaves the swarm: its center goes, and its session answers 410 through the first.
    docker_cli("swarm", "leave", "--force", host=second_node.docker_host, timeout=60)
    left = time.monotonic()
    gone = wait_until(lambda: call(first, "GET", f"/sessions/{on_second}").status_code == 410, 120, 2)
    assert gone, call(first, "GET", f"/sessions/{on_second}").text
    swarm_stack.notes.append(f"second node: its session answered 410 {time.monotonic() - left:.0f} s after it left; "
                             f"requests per node {dict(per_node)}")
    assert "left" in call(first, "GET", f"/sessions/{on_second}").json()["error"]
    assert per_node["first"] >= 10 and per_node["second"] >= 10


def test_swarm_down_leaves_nothing(swarm_stack: SwarmStack, docker_client: docker.DockerClient) -> None:
    result = swarm_stack.make("swarm-down", timeout=600)
    swarm_stack.down = True
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    name = swarm_stack.name
    assert docker_cli("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={name}") == ""
    assert node_sandboxes(docker_client, name) == []
    assert [v for v in docker_cli("volume", "ls", "--format", "{{.Name}}").split() if v.startswith(f"{name}_")] == []
    if swarm_stack.swarm_was_active:
        secrets_left = docker_cli("secret", "ls", "--format", "{{.Name}}").split()
        assert [s for s in secrets_left if s.startswith(f"{name}_")] == []
    else:  # the one-node swarm that swarm-up made is left again (its secrets with it)
        assert docker_cli("info", "--format", "{{.Swarm.LocalNodeState}}") == "inactive"
    assert [n for n in docker_cli("network", "ls", "--format", "{{.Name}}").split() if n.startswith(f"{name}_")] == []
    assert answers(f"{swarm_stack.url}/healthz") is None
    print(json.dumps({"stack": name, "down": True}))
