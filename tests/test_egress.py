"""Egress on an allow-list (SPEC "Egress"), on real sandboxes: the program reaches exactly what its run may
reach through the center's proxy, and nothing else, and every hostile request to the proxy is refused.

The test host lives in a network namespace this module makes (a veth pair on a private /30, as the
swarm suite's second engine): an HTTP server on an allowed port, one on a port that is not allowed,
a 3 MB file for the byte cap. The ceiling lists the test host's address literally (a private address
opens only so). Traffic stays on this machine. Needs root (ip netns), as CI runs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import unavailable, wait_until
from flask import Flask

from center import EXTENSION_KEY
from client import Client, ForbiddenError, InvalidArgumentError
from server.config import EgressSettings
from server.egress.policy import parse_patterns
from server.egress.proxy import Gate

ALLOWED_PORT, OTHER_PORT = 8000, 8001
PRIVATE_NAME = "private.egress-test.invalid"  # put in /etc/hosts by the test host, naming its private address
LOOPBACK_NAME = "loopback.egress-test.invalid"  # and this one naming 127.0.0.1, where the center listens
BIG_BYTES = 3 * 1024 * 1024
PACKAGE, PACKAGE_MODULE = "egress-test-pkg", "egress_test_pkg"  # on the test host's package index only
PACKAGE_VALUE = "installed through the proxy"


def build_index(folder: Path) -> None:
    """A PEP 503 index at /simple/ holding one pure-Python wheel, built here (a wheel is a zip with a RECORD)."""
    import base64
    import hashlib
    import zipfile

    dist = f"{PACKAGE_MODULE}-1.0"
    files = {f"{PACKAGE_MODULE}/__init__.py": f"VALUE = {PACKAGE_VALUE!r}\n".encode(),
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n".encode(),
             f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test_egress\nRoot-Is-Purelib: true\n"
                                        b"Tag: py3-none-any\n"}
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()) + f"{dist}.dist-info/RECORD,,\n"
    project = folder / "simple" / PACKAGE
    project.mkdir(parents=True)
    wheel = f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(project / wheel, "w") as archive:
        for name, data in {**files, f"{dist}.dist-info/RECORD": record.encode()}.items():
            archive.writestr(name, data)
    (project / "index.html").write_text(f'<!DOCTYPE html><html><body><a href="{wheel}">{wheel}</a></body></html>')
    (folder / "simple" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{PACKAGE}/">{PACKAGE}</a></body></html>')


class NamespaceHost:
    """A network namespace with two HTTP servers, reached from the host through a veth pair."""

    def __init__(self, folder: Path) -> None:
        number = random.randint(1, 250)
        self.netns = f"cia-egress-{os.getpid()}"
        self.host_end, self.node_end = f"cegh{os.getpid() % 100000}", f"cegn{os.getpid() % 100000}"
        self.gateway, self.address = f"10.213.{number}.1", f"10.213.{number}.2"
        self.folder = folder
        self.servers: list[subprocess.Popen] = []

    def start(self) -> None:
        def run(*command: str) -> None:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                unavailable(f"{' '.join(command)}: {result.stderr.strip()}")

        (self.folder / "hello.txt").write_text("hello from the test host\n")
        (self.folder / "big.bin").write_bytes(os.urandom(BIG_BYTES))
        build_index(self.folder)
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.host_end, "type", "veth", "peer", "name", self.node_end)
        run("ip", "link", "set", self.node_end, "netns", self.netns)
        run("ip", "addr", "add", f"{self.gateway}/30", "dev", self.host_end)
        run("ip", "link", "set", self.host_end, "up")
        inside = ["ip", "netns", "exec", self.netns]
        run(*inside, "ip", "addr", "add", f"{self.address}/30", "dev", self.node_end)
        run(*inside, "ip", "link", "set", self.node_end, "up")
        run(*inside, "ip", "link", "set", "lo", "up")
        for port in (ALLOWED_PORT, OTHER_PORT):
            self.servers.append(subprocess.Popen(
                [*inside, sys.executable, "-m", "http.server", "--bind", self.address, "--directory",
                 str(self.folder), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        import socket

        def listening() -> bool:
            try:
                socket.create_connection((self.address, ALLOWED_PORT), timeout=1).close()
                socket.create_connection((self.address, OTHER_PORT), timeout=1).close()
                return True
            except OSError:
                return False

        assert wait_until(listening, 30), "the test host's servers did not start"
        with open("/etc/hosts", "a") as hosts:
            hosts.write(f"{self.address} {PRIVATE_NAME}\n127.0.0.1 {LOOPBACK_NAME}\n")

    def stop(self) -> None:
        hosts = Path("/etc/hosts")
        hosts.write_text("".join(line for line in hosts.read_text().splitlines(keepends=True)
                                 if PRIVATE_NAME not in line and LOOPBACK_NAME not in line))
        for server in self.servers:
            server.kill()
            server.wait(10)
        subprocess.run(["ip", "link", "del", self.host_end], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def test_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespaceHost]:
    """The test host, for the whole module."""
    if os.geteuid() != 0:
        unavailable("the egress suite makes a network namespace: it needs root")
    host = NamespaceHost(tmp_path_factory.mktemp("egress-host"))
    try:
        host.start()
        yield host
    finally:
        host.stop()


@pytest.fixture
def egress_app(make_app: Callable[..., Flask], test_host: NamespaceHost) -> Callable[..., Flask]:
    """Factory: an app whose ceiling is the test host's allowed port, its other port and any public host."""
    def make(**egress: Any) -> Flask:
        settings = {"allow": (f"{test_host.address}:{ALLOWED_PORT}", f"{test_host.address}:{OTHER_PORT}", "*",
                              f"{PRIVATE_NAME}:{OTHER_PORT}"),
                    "max_connections": 4, **egress}
        return make_app(egress=EgressSettings(**settings), timeout_seconds=60)
    return make


def run(app: Flask, code: str, allow: list[str] | None, timeout: float = 30) -> dict[str, Any]:
    """POST /runcode with the allow-list (None: no network field); the body."""
    body: dict[str, Any] = {"code": code, "timeout": timeout}
    if allow is not None:
        body["network"] = {"allow": allow}
    response = app.test_client().post("/runcode", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


FETCH = ("import urllib.request\n"
         "try:\n"
         "    print(urllib.request.urlopen({url!r}, timeout=20).read().decode()[:200])\n"
         "except Exception as e:\n"
         "    said = (e.read().decode() if hasattr(e, 'read') else str(e)).strip()\n"
         "    print('FAILED', type(e).__name__, getattr(e, 'code', ''), said)\n")


def test_an_allowed_host_is_reached_through_the_proxy_and_logged(egress_app: Callable[..., Flask],
                                                                  test_host: NamespaceHost) -> None:
    app = egress_app()
    url = f"http://{test_host.address}:{ALLOWED_PORT}/hello.txt"
    code = (FETCH.format(url=url) +
            "import requests\nprint(requests.get(" + repr(url) + ", timeout=20).text)\n"
            "import http.client\n"  # a CONNECT tunnel, as HTTPS goes
            "c = http.client.HTTPConnection('127.0.0.1', 3128, timeout=20)\n"
            f"c.set_tunnel({test_host.address!r}, {ALLOWED_PORT})\n"
            "c.request('GET', '/hello.txt')\nprint(c.getresponse().read().decode())\n")
    body = run(app, code, [f"{test_host.address}:{ALLOWED_PORT}"])
    assert body["status"] == "ok", body
    assert body["output"].count("hello from the test host") == 3, body["output"]
    assert len(body["network"]) == 3
    for entry in body["network"]:
        assert entry["host"] == test_host.address and entry["port"] == ALLOWED_PORT and entry["allowed"] is True
        assert entry["bytes_in"] > 25 and entry["bytes_out"] > 20


def test_without_an_allow_list_the_sandbox_has_no_network(egress_app: Callable[..., Flask],
                                                          test_host: NamespaceHost) -> None:
    app = egress_app()
    url = f"http://{test_host.address}:{ALLOWED_PORT}/hello.txt"
    body = run(app, FETCH.format(url=url) + "import os\nprint(sorted(k for k in os.environ if 'proxy' in k.lower()))",
               None)
    assert "FAILED URLError" in body["output"] and "[]" in body["output"], body["output"]
    assert "network" not in body, "nothing changes for a run that names no network"
    # Allowed, a program that ignores the proxy variables still meets a sandbox with no network.
    direct = (f"import socket\ntry:\n    socket.create_connection(({test_host.address!r}, {ALLOWED_PORT}), timeout=5)\n"
              "    print('REACHED')\nexcept OSError as e:\n    print('NO NETWORK', e)")
    body = run(app, direct, [f"{test_host.address}:{ALLOWED_PORT}"])
    assert "NO NETWORK" in body["output"] and "REACHED" not in body["output"]


def test_entries_beyond_the_ceiling_are_403_and_malformed_ones_400(egress_app: Callable[..., Flask],
                                                                    make_app: Callable[..., Flask]) -> None:
    client = egress_app().test_client()
    response = client.post("/runcode", json={"code": "1", "network": {"allow": ["10.0.0.0/8"]}})
    assert response.status_code == 403 and "'10.0.0.0/8'" in response.get_json()["error"]
    for network in ({"allow": ["exa mple.com"]}, {"allow": "pypi.org"}, ["pypi.org"], {"deny": []}):
        response = client.post("/runcode", json={"code": "1", "network": network})
        assert response.status_code == 400, network
    closed = make_app().test_client()  # no egress configured: any entry is beyond the ceiling
    response = closed.post("/runcode", json={"code": "1", "network": {"allow": ["pypi.org"]}})
    assert response.status_code == 403 and "pypi.org" in response.get_json()["error"]
    assert closed.post("/runcode", json={"code": "1", "network": {"allow": []}}).status_code == 200


def test_a_port_not_listed_and_internal_addresses_are_refused_with_a_reason(egress_app: Callable[..., Flask],
                                                                           test_host: NamespaceHost) -> None:
    app = egress_app()
    targets = [f"http://{test_host.address}:{OTHER_PORT}/hello.txt",  # a port the run did not name
               "http://169.254.169.254/latest/meta-data/",  # the metadata address
               f"http://{PRIVATE_NAME}:{OTHER_PORT}/hello.txt",  # an allowed name resolving to a private address
               "http://[::ffff:127.0.0.1]/",  # loopback, as an IPv4-mapped IPv6 address
               "http://[::1]/",  # IPv6 loopback
               f"http://{LOOPBACK_NAME}/",  # a name `*` covers, resolving to loopback (where the center listens)
               f"http://{test_host.gateway}/"]  # the center's own address
    code = "".join(FETCH.format(url=url) for url in targets)
    body = run(app, code, [f"{test_host.address}:{ALLOWED_PORT}", "*", f"{PRIVATE_NAME}:{OTHER_PORT}"])
    lines = body["output"].splitlines()
    assert len(lines) == len(targets) and all(line.startswith("FAILED HTTPError 403") for line in lines), \
        "\n".join(lines)
    assert all("egress refused" in line for line in lines)
    assert [entry["allowed"] for entry in body["network"]] == [False] * len(targets)
    assert "allow-list" in body["network"][0]["reason"]
    assert all("internal" in entry["reason"] for entry in body["network"][1:]), body["network"]


RAW = """
import socket, time
def ask(data, wait=15):
    s = socket.create_connection(('127.0.0.1', 3128), timeout=wait)
    try:
        s.sendall(data)
    except OSError:
        pass
    answer = b''
    try:
        while chunk := s.recv(65536):
            answer += chunk
    except OSError:
        pass
    s.close()
    return answer.split(b'\\r\\n')[0].decode(errors='replace')
"""


def test_hostile_requests_to_the_proxy_are_refused_and_leave_nothing_behind(egress_app: Callable[..., Flask],
                                                                           test_host: NamespaceHost) -> None:
    app = egress_app()
    target = f"{test_host.address}:{ALLOWED_PORT}"
    code = RAW + "\n".join([
        f"print('refused-port', ask(b'CONNECT {test_host.address}:{OTHER_PORT} HTTP/1.1\\r\\n\\r\\n'))",
        "print('long-line', ask(b'CONNECT ' + b'a' * 9000 + b':443 HTTP/1.1\\r\\n\\r\\n'))",
        "print('huge-head', ask(b'GET http://" + target + "/ HTTP/1.1\\r\\n' + b'X: ' + b'y' * (10 * 1024 * 1024)))",
        "print('http2', ask(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'))",
        "print('smuggle', ask(b'POST http://" + target + "/ HTTP/1.1\\r\\nContent-Length: 4\\r\\n"
        "Transfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n'))",
        "print('http10', ask(b'GET http://" + target + "/hello.txt HTTP/1.0\\r\\n\\r\\n'))",
        "t = time.monotonic(); s = socket.create_connection(('127.0.0.1', 3128)); s.sendall(b'CONN')",
        "print('slow', s.recv(100).split(b'\\r\\n')[0].decode(), round(time.monotonic() - t))",
        "many = []",
        "for _ in range(1000):",  # the program's own descriptor limit (256) ends it first
        "    try: many.append(socket.create_connection(('127.0.0.1', 3128), timeout=5))",
        "    except OSError: break",
        "time.sleep(1)",
        "print('many', len(many))",
        "[m.close() for m in many]",
    ])
    fds_before = len(os.listdir("/proc/self/fd"))
    body = run(app, code, [target], timeout=60)
    answers = dict(line.split(" ", 1) for line in body["output"].splitlines())
    assert answers["refused-port"].startswith("HTTP/1.1 403"), answers
    assert answers["long-line"].startswith("HTTP/1.1 400"), answers
    assert answers["huge-head"].startswith("HTTP/1.1 431"), answers
    assert answers["http2"].startswith("HTTP/1.1 400"), answers
    assert answers["smuggle"].startswith("HTTP/1.1 400"), answers
    assert answers["http10"].startswith("HTTP/1.0 200"), answers
    status, seconds = answers["slow"].rsplit(" ", 1)
    assert status.startswith("HTTP/1.1 408") and 8 <= int(seconds) <= 30, answers
    assert int(answers["many"]) >= 100, answers
    reasons = [entry["reason"] for entry in body["network"]]
    assert any("connections at once" in reason for reason in reasons), reasons
    # The center answers and holds no descriptor of all that once the run has ended.
    assert app.test_client().get("/healthz").status_code == 200
    assert wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before + 2, 30), \
        (fds_before, len(os.listdir("/proc/self/fd")))


def test_the_byte_allowance_cuts_a_download_and_says_so(egress_app: Callable[..., Flask],
                                                       test_host: NamespaceHost) -> None:
    app = egress_app(max_bytes="1m")
    url = f"http://{test_host.address}:{ALLOWED_PORT}/big.bin"
    code = ("import urllib.request\ntry:\n"
            f"    print(len(urllib.request.urlopen({url!r}, timeout=20).read()))\n"
            "except Exception as e:\n    print('CUT', type(e).__name__)")
    body = run(app, code, [f"{test_host.address}:{ALLOWED_PORT}"])
    assert body["output"].startswith("CUT"), body["output"]
    entry = body["network"][0]
    assert entry["allowed"] is True and "allowance of 1048576 bytes" in entry["reason"]
    assert entry["bytes_in"] <= 1024 * 1024 + 65536


def test_the_log_keeps_the_order_connections_came_in_whenever_they_end(tmp_path: Path) -> None:
    """A refused connection that the program keeps open ends after one it closed at once: the run's
    `network` still lists them as they were made (it listed them as they ended, out of order under load)."""
    import socket

    gate = Gate(str(tmp_path), parse_patterns(["example.com"]), 1 << 20, 8, (), lambda *_: None)
    clients = []
    try:
        for address in ("10.0.0.1", "10.0.0.2"):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(gate.path)
            client.sendall(f"CONNECT {address}:9 HTTP/1.1\r\n\r\n".encode())
            assert client.recv(100).startswith(b"HTTP/1.1 403")
            clients.append(client)
        clients[1].close()  # the second ends first; the first is let go by the gate's drain
        log = gate.take_log(settle=10)
        assert [entry["host"] for entry in log] == ["10.0.0.1", "10.0.0.2"], log
        assert all("_ended" not in entry for entry in log)
    finally:
        for client in clients:
            client.close()
        gate.close()


def test_egress_is_counted_in_the_metrics(egress_app: Callable[..., Flask], test_host: NamespaceHost) -> None:
    app = egress_app()
    run(app, FETCH.format(url=f"http://{test_host.address}:{OTHER_PORT}/"), [f"{test_host.address}:{ALLOWED_PORT}"])
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'code_interpreter_egress_connections_total{outcome="refused"} 1.0' in metrics


class Cells:
    """A session through a Flask test client: its cells and its network."""

    def __init__(self, app: Flask, **create: Any) -> None:
        self.client = app.test_client()
        response = self.client.post("/sessions", json=create)
        assert response.status_code == 201, response.get_data(as_text=True)
        self.body = response.get_json()
        self.id = self.body["session_id"]

    def run(self, code: str) -> dict[str, Any]:
        """One cell that must answer 200: its body."""
        response = self.client.post(f"/sessions/{self.id}/runcode", json={"code": code, "timeout": 30})
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def set_network(self, network: Any) -> tuple[int, dict[str, Any]]:
        """PUT /sessions/<id>/network: (status, body)."""
        response = self.client.put(f"/sessions/{self.id}/network", json=network)
        return response.status_code, response.get_json()

    def end(self) -> None:
        """DELETE the session."""
        assert self.client.delete(f"/sessions/{self.id}").status_code == 204


PROXY_VARIABLES = "import os\nprint(sorted(k for k in os.environ if 'proxy' in k.lower()))\n"


def test_a_session_opens_its_network_between_cells_then_locks_it_down(egress_app: Callable[..., Flask],
                                                                       test_host: NamespaceHost) -> None:
    target = f"{test_host.address}:{ALLOWED_PORT}"
    fetch = FETCH.format(url=f"http://{target}/hello.txt")
    tunnel = RAW + f"print('tunnel', ask(b'CONNECT {target} HTTP/1.1\\r\\n\\r\\n', wait=5))\n"
    session = Cells(egress_app())
    try:
        assert session.body["network"] == {"allow": []}  # the default: nothing
        cell = session.run(fetch + PROXY_VARIABLES)
        assert "FAILED URLError" in cell["output"] and "[]" in cell["output"], cell["output"]
        assert cell["network"] == []

        status, body = session.set_network({"allow": [target]})  # open: install first...
        assert status == 200 and body["network"] == {"allow": [target]}, body
        cell = session.run(fetch)
        assert cell["output"].strip() == "hello from the test host", cell
        entry, = cell["network"]
        assert entry["host"] == test_host.address and entry["allowed"] is True and entry["bytes_in"] > 25
        assert session.client.get(f"/sessions/{session.id}").get_json()["network"] == {"allow": [target]}

        status, body = session.set_network({"allow": []})  # ...then lock down
        assert status == 200 and body["network"] == {"allow": []}
        cell = session.run(fetch + PROXY_VARIABLES + tunnel)
        lines = cell["output"].splitlines()
        assert lines[0].startswith("FAILED URLError") and lines[1] == "[]", lines
        # A program that finds the proxy port anyway is refused there: the gate follows the list too.
        assert lines[2].startswith("tunnel HTTP/1.1 403"), lines
        entry, = cell["network"]
        assert entry["allowed"] is False and "allow-list" in entry["reason"]

        response = session.client.post(f"/sessions/{session.id}/runcode",
                                       json={"code": "1", "network": {"allow": [target]}})
        assert response.status_code == 400 and "PUT /sessions/<id>/network" in response.get_json()["error"]
        status, body = session.set_network({"allow": ["10.0.0.0/8"]})
        assert status == 403 and "'10.0.0.0/8'" in body["error"], body
        for network in ({"allow": ["exa mple.com"]}, {"allow": "pypi.org"}, ["pypi.org"], {}, None):
            assert session.set_network(network)[0] == 400, network
        assert session.client.get(f"/sessions/{session.id}").get_json()["network"] == {"allow": []}
    finally:
        session.end()
    assert session.set_network({"allow": []})[0] == 410


def test_a_session_created_with_a_network_has_one_byte_allowance_for_all_its_cells(
        egress_app: Callable[..., Flask], test_host: NamespaceHost) -> None:
    target = f"{test_host.address}:{ALLOWED_PORT}"
    download = ("import urllib.request\ntry:\n"
                f"    print(len(urllib.request.urlopen('http://{target}/big.bin', timeout=20).read()))\n"
                "except Exception as e:\n    print('CUT', type(e).__name__)")
    app = egress_app(max_bytes="4m")
    session = Cells(app, network={"allow": [target]})
    gate = app.extensions[EXTENSION_KEY].registry.live[session.id].gate
    try:
        assert session.body["network"] == {"allow": [target]}
        cell = session.run(download)
        assert cell["output"] == f"{BIG_BYTES}\n", cell  # 3 MiB of the session's 4
        cell = session.run(download)
        assert cell["output"].startswith("CUT"), cell["output"]
        entry, = cell["network"]
        assert "allowance of 4194304 bytes" in entry["reason"], entry
    finally:
        session.end()
    # Its gate went with it: the socket, the listening thread and every connection's thread.
    assert gate.closed and not os.path.exists(gate.path) and gate.listener.fileno() == -1
    assert not gate.thread.is_alive() and not any(thread.is_alive() for thread in gate.serving)


def test_a_center_without_egress_gives_sessions_no_network(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    response = client.post("/sessions", json={"network": {"allow": ["pypi.org"]}})
    assert response.status_code == 403 and "pypi.org" in response.get_json()["error"]
    session = client.post("/sessions", json={"network": {"allow": []}}).get_json()["session_id"]
    try:
        response = client.put(f"/sessions/{session}/network", json={"allow": ["pypi.org"]})
        assert response.status_code == 403
        response = client.put(f"/sessions/{session}/network", json={"allow": []})
        assert response.status_code == 200 and response.get_json()["network"] == {"allow": []}
        cell = client.post(f"/sessions/{session}/runcode", json={"code": PROXY_VARIABLES}).get_json()
        assert cell["output"] == "[]\n" and "network" not in cell, cell
    finally:
        client.delete(f"/sessions/{session}")


def test_a_session_installs_a_package_from_the_index_then_locks_down(egress_app: Callable[..., Flask],
                                                                     test_host: NamespaceHost) -> None:
    target = f"{test_host.address}:{ALLOWED_PORT}"
    app = egress_app(package_index=f"http://{target}/simple/")
    session = Cells(app, network={"allow": [target]})
    try:
        cell = session.run(f"!pip install {PACKAGE}\nimport {PACKAGE_MODULE}\nprint({PACKAGE_MODULE}.VALUE)")
        assert f"Successfully installed {PACKAGE}-1.0" in cell["output"], cell
        assert cell["output"].endswith(f"{PACKAGE_VALUE}\n"), cell["output"]  # importable in the same cell
        assert all(entry["allowed"] for entry in cell["network"]) and cell["network"], cell["network"]

        assert session.set_network({"allow": []})[0] == 200  # locked down: what was installed stays
        cell = session.run(f"import {PACKAGE_MODULE}\nprint({PACKAGE_MODULE}.__file__)\n%pip install requests-oauthlib")
        assert cell["output"].startswith("/workspace/.local/lib/python3.11/site-packages/"), cell
        assert "packages cannot be installed at run time: this run cannot reach the network" in cell["stderr"]
        listing = session.client.get(f"/sessions/{session.id}/files?limit=10000").get_json()["files"]
        assert any(f"/{PACKAGE_MODULE}/__init__.py" in file["path"] for file in listing), listing
    finally:
        session.end()


def test_a_one_shot_run_installs_and_imports_in_one_program(egress_app: Callable[..., Flask],
                                                            test_host: NamespaceHost) -> None:
    target = f"{test_host.address}:{ALLOWED_PORT}"
    app = egress_app(package_index=f"http://{target}/simple/")
    code = ("import subprocess, sys\n"
            f"subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', {PACKAGE!r}], check=True)\n"
            f"import {PACKAGE_MODULE}\nprint({PACKAGE_MODULE}.VALUE)\n")
    body = run(app, code, [target], timeout=60)
    assert body["status"] == "ok" and body["output"] == f"{PACKAGE_VALUE}\n", body
    assert body["files"] == {}, "what pip installed is not an output of the run"
    # Without the index's host, pip reaches nothing, and the image's root file system was never written.
    body = run(app, code, [], timeout=60)
    assert body["status"] == "error" and "CalledProcessError" in body["error"], body


def test_the_python_client_opens_a_run_and_a_session_and_locks_the_session_down(
        live_server: Callable[..., str], test_host: NamespaceHost) -> None:
    target = f"{test_host.address}:{ALLOWED_PORT}"
    fetch = FETCH.format(url=f"http://{target}/hello.txt")
    url = live_server(egress=EgressSettings(allow=(target,)), timeout_seconds=60)
    with Client(url) as center:
        result = center.run(fetch, network=[target])
        assert result.stdout.strip() == "hello from the test host" and result.network[0]["allowed"] is True, result
        with pytest.raises(ForbiddenError, match="10.0.0.0/8"):
            center.run("1", network=["10.0.0.0/8"])
        with center.session(network=[target]) as session:
            assert session.info["network"] == {"allow": [target]}
            assert session.run(fetch).stdout.strip() == "hello from the test host"
            assert session.set_network([])["network"] == {"allow": []}
            cell = session.run(fetch)
            assert cell.stdout.startswith("FAILED URLError") and cell.network == [], cell
            with pytest.raises(ForbiddenError):
                session.set_network(["10.0.0.0/8"])
            with pytest.raises(InvalidArgumentError, match="list of hosts"):
                session.set_network(target)  # type: ignore[arg-type]  # the slip the client names

