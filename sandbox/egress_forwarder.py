"""The sandbox's one way out: a loopback port whose connections the agent carries to the center's egress gate.

The container has no network interface but loopback. The program's proxy variables (set only while
its run or session may reach the network) name 127.0.0.1:EGRESS_PORT; the agent, listening there from
its start, carries each connection byte for byte into the gate's Unix socket in its socket folder
(which the program cannot reach). The gate, in the center, decides everything: this side only
relays, and without a gate (no egress now) the connection is closed at once.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import threading

from contract import AGENT_SOCKET_DIR, EGRESS_PORT, EGRESS_SOCKET_NAME

MAX_CARRIED = 64  # connections carried at once; more are closed at once (the gate allows fewer anyway)
CHUNK = 256 * 1024  # read at once: fewer trips through the relay for a large download
GATE_PATH = os.path.join(AGENT_SOCKET_DIR, EGRESS_SOCKET_NAME)


def start(gate_path: str = GATE_PATH) -> None:
    """Listen on the loopback port (held from the start, so no program takes it) and carry what comes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", EGRESS_PORT))
        listener.listen(64)
    except OSError as e:
        listener.close()
        print(f"agent: no egress port ({e})", file=sys.stderr)
        return
    slots = threading.BoundedSemaphore(MAX_CARRIED)
    threading.Thread(target=accept, args=(listener, slots, gate_path), name="egress-port", daemon=True).start()


def accept(listener: socket.socket, slots: threading.BoundedSemaphore, gate_path: str) -> None:
    """Take each connection; carry it in a thread of its own while there are slots."""
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            continue  # out of descriptors for a moment: the program's connection is the one that fails
        if not slots.acquire(blocking=False):
            client.close()
            continue
        threading.Thread(target=carry, args=(client, slots, gate_path), name="egress-carry", daemon=True).start()


def carry(client: socket.socket, slots: threading.BoundedSemaphore, gate_path: str) -> None:
    """Relay one connection to the gate and back until both ends are done."""
    gate = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            gate.connect(gate_path)
        except OSError:
            return  # no gate: the run may not reach the network now
        relay(client, gate)
    finally:
        gate.close()
        client.close()
        slots.release()


def relay(one: socket.socket, other: socket.socket) -> None:
    """Bytes both ways; each side's end is passed on; returns when both ended or either failed."""
    peer = {one: other, other: one}
    open_sides = {one, other}
    with selectors.DefaultSelector() as selector:
        for sock in (one, other):
            sock.setblocking(True)
            selector.register(sock, selectors.EVENT_READ)
        while open_sides:
            for key, _ in selector.select():
                sock = key.fileobj
                try:
                    data = sock.recv(CHUNK)
                    if data:
                        peer[sock].sendall(data)
                        continue
                    peer[sock].shutdown(socket.SHUT_WR)
                except OSError:
                    return
                selector.unregister(sock)
                open_sides.discard(sock)
