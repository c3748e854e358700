"""The egress proxy: one gate per sandbox that may reach the network, a Unix socket in its socket folder.

The sandbox has no network. Its agent forwards each connection the program makes to the loopback
proxy port into this gate's socket (sandbox/egress_forwarder.py), so the socket a connection arrives on
says which sandbox it is: nothing the program sends can claim otherwise. Each connection is one HTTP
request: `CONNECT host:port` (HTTPS and anything else over TLS: the bytes are relayed, never read) or
an absolute-form `http://` request (sent on with `Connection: close`). The gate checks the host and
port against its allow-list, resolves the name itself, checks every address (policy.judge) and connects
to the address it checked. It answers a refusal with a 403 whose body says why, counts the bytes of
every connection against `max_bytes` and the connections at once against `max_connections`, cuts a
connection silent for IDLE_SECONDS, and logs each connection for the run's `network` list.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from server.egress.policy import Address, Network, Pattern, judge, names_host

log = logging.getLogger("center.egress")

HEAD_SECONDS = 10.0  # for the whole request head: a client that dribbles it (slow loris) is cut
MAX_HEAD_BYTES = 16 * 1024  # a larger head is refused (431) without reading the rest
MAX_REQUEST_LINE_BYTES = 8 * 1024
CONNECT_SECONDS = 10.0
IDLE_SECONDS = 120.0  # a connection with no byte either way for this long is closed
CLOSE_SECONDS = 10.0  # for the connections' threads to end once their sockets are shut
SETTLE_SECONDS = 2.0  # after a cell, for its connections to end and be listed with it
DRAIN_SECONDS = 2.0  # after a refusal, for the rest of what the client sends
MAX_LOG_ENTRIES = 100
MAX_LOGGED_HOST_CHARS = 255  # per run or cell, as the result body's `network` holds them
CHUNK = 256 * 1024  # read at once, and most waiting for one side (a download's pace is set by its reader)
GATE_SOCKET_NAME = "egress.sock"
# Headers about the hop to the proxy, not for the origin.
HOP_HEADERS = frozenset({b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive", b"te",
                         b"trailer", b"upgrade"})


ENDED = "_ended"  # in a log entry while it waits to be taken: the connection has ended


def new_entry() -> dict[str, Any]:
    """A connection's log entry before anything is known of it."""
    return {"host": "", "port": 0, "allowed": False, "reason": "", "bytes_out": 0, "bytes_in": 0}


class Refusal(Exception):
    """A request the gate answers with an HTTP error: its status and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Request:
    """What the program asked for: the host and port, and for plain HTTP the head to send on."""

    host: str
    port: int
    head: bytes | None  # None for CONNECT


@dataclass
class Usage:
    """What a sandbox's egress used: bytes against max_bytes (a run's, or a whole session's), the log."""

    max_bytes: int
    used: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0  # entries past MAX_LOG_ENTRIES since the last take


class Gate:
    """One sandbox's way out: its socket, allow-list, counters and log."""

    def __init__(self, socket_dir: str, allow: tuple[Pattern, ...], max_bytes: int, max_connections: int,
                 refused: tuple[Network, ...], on_connection: Callable[[str, int, int], None]) -> None:
        self.path = os.path.join(socket_dir, GATE_SOCKET_NAME)
        self.allow, self.max_connections, self.refused = allow, max_connections, refused
        self.on_connection = on_connection  # (outcome, bytes out, bytes in): the metrics
        self.usage = Usage(max_bytes)
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()  # every socket of a connection under way, closed with the gate
        self.serving: list[threading.Thread] = []  # each connection's thread: close() waits for their log entries
        self.closed = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.listener.bind(self.path)
        # The agent, root in its container, may not be this user: the folder (root's only) keeps others out.
        os.chmod(self.path, 0o666)
        self.listener.listen(64)
        self.thread = threading.Thread(target=self._accept, name="egress-gate", daemon=True)
        self.thread.start()

    def set_allow(self, allow: tuple[Pattern, ...]) -> None:
        """A new allow-list for the connections that come next."""
        with self.lock:
            self.allow = allow

    def take_log(self, settle: float = 0.0) -> list[dict[str, Any]]:
        """The connections that ended since the last call, in the order they were made (at most
        MAX_LOG_ENTRIES, then one saying how many more); those still open are listed by a later call.

        `settle`: wait up to that long for connections under way to end (a session's cell has ended: its
        connections end a moment later, once the agent has closed them)."""
        deadline = time.monotonic() + settle
        with self.lock:
            serving = list(self.serving)
        for thread in serving:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self.lock:
            entries, open_ones = [], []
            for entry in self.usage.entries:
                (entries if entry.pop(ENDED, False) else open_ones).append(entry)
            self.usage.entries = open_ones
            dropped, self.usage.dropped = self.usage.dropped, 0
        if dropped:
            entries.append({"host": "", "port": 0, "allowed": False, "bytes_out": 0, "bytes_in": 0,
                            "reason": f"{dropped} more connections, not listed"})
        return entries

    def close(self) -> None:
        """Stop accepting, cut every connection under way (and wait for each to log itself), remove the socket."""
        with self.lock:
            self.closed = True
            sockets = list(self.open)
        for sock in [self.listener, *sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.thread.join(timeout=5)
        deadline = time.monotonic() + CLOSE_SECONDS
        for thread in self.serving:  # their sockets are shut: each ends at once, after logging its entry
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self.lock:
                refused = self.closed or len(self.open) >= self.max_connections
                if not refused:
                    self.open.add(client)
            if refused:
                self._refuse_now(client)
                continue
            entry = new_entry()
            self._log(entry)  # its place in the log is the order it came in, whenever it ends
            thread = threading.Thread(target=self._serve, args=(client, entry), name="egress-connection",
                                      daemon=True)
            with self.lock:
                self.serving = [alive for alive in self.serving if alive.is_alive()] + [thread]
            thread.start()

    def _refuse_now(self, client: socket.socket) -> None:
        """Past max_connections: a short answer, never a thread."""
        client.setblocking(False)
        try:
            client.send(refusal_bytes(429, f"more than {self.max_connections} connections at once"))
        except OSError:
            pass
        client.close()
        self.on_connection("refused", 0, 0)
        self._log({**new_entry(), "reason": f"more than {self.max_connections} connections at once", ENDED: True})

    def _log(self, entry: dict[str, Any]) -> None:
        with self.lock:
            if len(self.usage.entries) < MAX_LOG_ENTRIES:
                self.usage.entries.append(entry)
            else:
                self.usage.dropped += 1

    def _serve(self, client: socket.socket, entry: dict[str, Any]) -> None:
        upstream: socket.socket | None = None
        outcome = "refused"
        try:
            head, rest = read_head(client)
            request = parse_request(head)
            entry.update(host=request.host[:MAX_LOGGED_HOST_CHARS], port=request.port)
            with self.lock:
                allow, left = self.allow, self.usage.max_bytes - self.usage.used
            if left <= 0:
                raise Refusal(403, f"this run has used its egress allowance of {self.usage.max_bytes} bytes")
            address = self._checked_address(request, allow)
            try:
                upstream = socket.create_connection((str(address), request.port), timeout=CONNECT_SECONDS)
            except OSError as e:
                raise Refusal(502, f"{request.host}:{request.port} could not be reached: {e.strerror or e}") from None
            with self.lock:
                if self.closed:
                    raise Refusal(503, "the sandbox's network was closed")
                self.open.add(upstream)
            if request.head is None:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = rest
            else:
                first = request.head + rest
            entry.update(allowed=True, reason="allowed", bytes_out=len(first))
            with self.lock:
                self.usage.used += len(first)
            outcome = "allowed"
            cut = self._relay(client, upstream, first, entry)
            if cut:
                entry["reason"] = cut
                outcome = "cut"
        except Refusal as refusal:
            entry["reason"] = refusal.reason
            answer_refusal(client, refusal)
        except OSError as e:  # the program hung up, or the origin did
            entry["reason"] = entry["reason"] or f"the connection failed: {e.strerror or e}"
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self.lock:
                        self.open.discard(sock)
                    sock.close()
            self.on_connection(outcome, entry["bytes_out"], entry["bytes_in"])
            with self.lock:
                entry[ENDED] = True

    def _checked_address(self, request: Request, allow: tuple[Pattern, ...]) -> Address:
        """The address to connect to, resolved here and checked against the allow-list; Refusal (403) if none."""
        try:
            addresses: Iterable[Address] = (ipaddress.ip_address(request.host.strip("[]")),)
        except ValueError:
            if not names_host(request.host, request.port, allow):  # not named: not even resolved
                raise Refusal(403, f"{request.host}:{request.port} is not in this run's allow-list") from None
            try:
                infos = socket.getaddrinfo(request.host, request.port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as e:
                raise Refusal(502, f"{request.host} could not be resolved: {e}") from None
            addresses = tuple(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        verdict = judge(request.host, request.port, addresses, allow, self.refused)
        if not verdict.allowed or verdict.address is None:
            raise Refusal(403, verdict.reason)
        return verdict.address

    def _relay(self, client: socket.socket, upstream: socket.socket, first: bytes, entry: dict[str, Any]) -> str:
        """Bytes both ways until the origin is done (or both sides are); "" then, else why the gate cut it.

        Non-blocking, with at most CHUNK bytes waiting for each side: what is read goes straight on when
        the other side takes it, and a side is watched only for what can happen next (a side that sent its
        end is not watched for reading again: its end stays readable, and would spin this loop).
        """
        for sock in (client, upstream):
            sock.setblocking(False)
        pending = {upstream: bytearray(first), client: bytearray()}  # bytes waiting to be written to each
        peer = {client: upstream, upstream: client}
        counter = {client: "bytes_out", upstream: "bytes_in"}
        ended: set[socket.socket] = set()  # sides that sent their end
        watched = {client: 0, upstream: 0}
        with selectors.DefaultSelector() as selector:
            last = time.monotonic()
            while True:
                if upstream in ended and not pending[client]:  # the origin is done, and all it sent is through
                    return ""
                for sock in (client, upstream):
                    events = (selectors.EVENT_READ if sock not in ended and len(pending[peer[sock]]) < CHUNK else 0) \
                        | (selectors.EVENT_WRITE if pending[sock] else 0)
                    if events != watched[sock]:
                        if not watched[sock]:
                            selector.register(sock, events)
                        elif events:
                            selector.modify(sock, events)
                        else:
                            selector.unregister(sock)
                        watched[sock] = events
                ready = selector.select(timeout=5)
                if not ready:
                    if time.monotonic() - last > IDLE_SECONDS:
                        return f"closed after {IDLE_SECONDS:g} s without traffic"
                    continue
                last = time.monotonic()
                for key, mask in ready:
                    sock = key.fileobj
                    if mask & selectors.EVENT_WRITE and pending[sock]:
                        try:
                            sent = sock.send(pending[sock])
                        except BlockingIOError:
                            sent = 0
                        del pending[sock][:sent]
                        if not pending[sock] and peer[sock] in ended:  # all its peer sent is through: its end too
                            try:
                                sock.shutdown(socket.SHUT_WR)
                            except OSError:
                                pass
                    if not mask & selectors.EVENT_READ:
                        continue
                    with self.lock:  # never more than one byte past the allowance: the cut is at its edge
                        room = self.usage.max_bytes - self.usage.used + 1
                    try:
                        data = sock.recv(max(1, min(CHUNK, room)))
                    except BlockingIOError:
                        continue
                    other = peer[sock]
                    if not data:
                        ended.add(sock)
                        if not pending[other]:
                            try:
                                other.shutdown(socket.SHUT_WR)
                            except OSError:
                                pass
                        continue
                    entry[counter[sock]] += len(data)
                    with self.lock:
                        self.usage.used += len(data)
                        over = self.usage.used > self.usage.max_bytes
                    if over:
                        return f"cut at the egress allowance of {self.usage.max_bytes} bytes"
                    if not pending[other]:  # straight on, the rest waits
                        try:
                            data = data[other.send(data):]
                        except BlockingIOError:
                            pass
                    pending[other] += data


def answer_refusal(client: socket.socket, refusal: Refusal) -> None:
    """Send the refusal, then take (and drop) what the client still sends for a moment: closing on unread
    bytes would reset the connection, and the client could lose the answer that says why."""
    try:
        client.sendall(refusal_bytes(refusal.status, refusal.reason))
        client.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + DRAIN_SECONDS
        client.settimeout(0.5)
        while time.monotonic() < deadline and client.recv(CHUNK):
            pass
    except OSError:
        pass


def refusal_bytes(status: int, reason: str) -> bytes:
    """An HTTP answer the program's client shows as any HTTP error: the status, and why in the body."""
    titles = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 429: "Too Many Requests",
              431: "Request Header Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable"}
    body = f"egress refused: {reason}\n".encode()
    return (f"HTTP/1.1 {status} {titles.get(status, 'Error')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Egress-Refused: 1\r\n\r\n").encode() + body


def read_head(client: socket.socket) -> tuple[bytes, bytes]:
    """(the request head without its blank line, what followed it), read within HEAD_SECONDS; Refusal else."""
    deadline = time.monotonic() + HEAD_SECONDS
    data = bytearray()
    while True:
        end = data.find(b"\r\n\r\n")
        if end != -1:
            return bytes(data[:end]), bytes(data[end + 4:])
        if len(data) > MAX_HEAD_BYTES:
            raise Refusal(431, f"the request head is longer than {MAX_HEAD_BYTES} bytes")
        if b"\r\n" not in data and len(data) > MAX_REQUEST_LINE_BYTES:
            raise Refusal(400, f"the request line is longer than {MAX_REQUEST_LINE_BYTES} bytes")
        left = deadline - time.monotonic()
        if left <= 0:
            raise Refusal(408, f"the request head did not arrive within {HEAD_SECONDS:g} s")
        client.settimeout(left)
        try:
            chunk = client.recv(MAX_HEAD_BYTES + 4 - len(data))
        except TimeoutError:
            raise Refusal(408, f"the request head did not arrive within {HEAD_SECONDS:g} s") from None
        if not chunk:
            raise Refusal(400, "the connection ended before its request head")
        data += chunk


def parse_request(head: bytes) -> Request:
    """The request a proxy takes: CONNECT host:port, or an absolute-form http:// request; Refusal (400) else."""
    line, _, header_block = head.partition(b"\r\n")
    if len(line) > MAX_REQUEST_LINE_BYTES:
        raise Refusal(400, f"the request line is longer than {MAX_REQUEST_LINE_BYTES} bytes")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise Refusal(400, "not an HTTP/1 proxy request (CONNECT host:port, or GET http://host/path)")
    method, target, version = parts
    try:
        target_text = target.decode("ascii")
    except UnicodeDecodeError:
        raise Refusal(400, "the request target is not ASCII") from None
    headers = parse_headers(header_block)
    if method == b"CONNECT":
        host, port = split_authority(target_text, None)
        return Request(host, port, None)
    if not target_text.lower().startswith("http://"):
        raise Refusal(400, "a plain request must name its origin in full (http://host/path); HTTPS goes by CONNECT")
    authority, slash, path = target_text[len("http://"):].partition("/")
    authority = authority.rpartition("@")[2]  # user:password@ is the origin's business, never the proxy's
    host, port = split_authority(authority, 80)
    names = [name.lower() for name, _ in headers]
    if b"content-length" in names and b"transfer-encoding" in names:
        raise Refusal(400, "a request with both Content-Length and Transfer-Encoding is ambiguous")
    lines = [method + b" " + (slash + path).encode() if slash else method + b" /", ]
    lines[0] += b" " + version
    if b"host" not in names:
        lines.append(b"Host: " + authority.encode())
    lines += [name + b": " + value for name, value in headers if name.lower() not in HOP_HEADERS]
    lines.append(b"Connection: close")
    return Request(host, port, b"\r\n".join(lines) + b"\r\n\r\n")


def parse_headers(block: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields; Refusal (400) for a malformed or folded line."""
    headers = []
    for raw in block.split(b"\r\n") if block else ():
        name, colon, value = raw.partition(b":")
        if not colon or not name or name != name.strip() or raw[:1] in (b" ", b"\t") or b"\r" in raw or b"\n" in raw:
            raise Refusal(400, "a malformed header line")
        headers.append((name, value.strip()))
    return headers


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """(host, port) of `host:port` or `[v6]:port`; Refusal (400) when it is not one."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if not port_text:
        if default_port is None:
            raise Refusal(400, "CONNECT needs host:port")
        port_text = str(default_port)
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise Refusal(400, f"{authority[:100]!r} is not host:port")
    return host.lower().rstrip("."), int(port_text)


class EgressProxy:
    """Opens the gates of this center's sandboxes, with the operator's limits and the addresses no name opens
    (found once, at the first gate: this machine's own and Docker's networks)."""

    def __init__(self, max_bytes: int, max_connections: int, refused: Callable[[], tuple[Network, ...]],
                 on_connection: Callable[[str, int, int], None]) -> None:
        self.max_bytes, self.max_connections = max_bytes, max_connections
        self.find_refused, self.on_connection = refused, on_connection
        self.refused: tuple[Network, ...] | None = None

    def open(self, socket_dir: str, allow: tuple[Pattern, ...]) -> Gate:
        """A gate in the sandbox's socket folder for this allow-list, with a fresh byte allowance."""
        if self.refused is None:
            self.refused = self.find_refused()
        return Gate(socket_dir, allow, self.max_bytes, self.max_connections, self.refused, self.on_connection)


def own_networks() -> tuple[Network, ...]:
    """This machine's interface addresses, each as a one-address network: the center's own addresses."""
    found: set[Network] = set()
    import fcntl
    import struct

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue  # no IPv4 address on it
            found.add(ipaddress.ip_network(socket.inet_ntoa(answer[20:24])))
    finally:
        probe.close()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                digits = line.split()[0]
                found.add(ipaddress.ip_network(ipaddress.IPv6Address(int(digits, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return tuple(sorted(found, key=str))
