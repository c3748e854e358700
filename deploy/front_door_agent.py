"""The center's side of the front door (deploy/front_door/haproxy.cfg): HAProxy's agent check, and a stop
that the front doors hear of before the center stops listening.

A center told to stop refuses new connections at once (center.py, Shutdown). A front door that still
counts it as up would send it the next request and meet that refusal; with no other center on the node
(a one-node stack replaces its center stop-first) nothing could take the request instead. So the
center's entrypoint keeps the center as a child process and stays first in the container: on SIGTERM
its agent answers "drain" at once, and only NOTICE_SECONDS later, once every front door has asked
(their agent checks come every second), does the center get the signal. By then no front door sends it
anything new; they hold new requests until the next center is ready (hold.lua).

Each front door's agent checks send its node's id from its "local" backend ("any" from the other): the
agent answers "maint" to another node's, so a front door prefers its own node's center, where that
node's sessions live, and falls back on the others only while its own is not ready. The "local"
servers start in maintenance (haproxy.cfg) and leave it only on this agent's "ready", and "maint" and
"drain" are administrative states that outlast an address change: a server whose address is handed to
another center is never taken for this node's by mistake, not even between two checks.
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Sequence

AGENT_PORT = 5001
# Longer than the front doors' agent-inter (1 s) with room for one missed check.
NOTICE_SECONDS = 2.5
ASK_SECONDS = 2.0  # a front door sends its line at once; a peer that does not is answered anyway


class _AgentServer(socketserver.ThreadingTCPServer):
    """One short connection per check; a restarted center binds the port again at once."""

    allow_reuse_address = True
    daemon_threads = True


class _Check(socketserver.BaseRequestHandler):
    """One agent check: read the line the front door sends, answer one line, close."""

    server: _AgentServer

    def handle(self) -> None:
        connection: socket.socket = self.request
        connection.settimeout(ASK_SECONDS)
        try:
            asked = connection.recv(256).decode("ascii", "replace").strip()
        except OSError:
            asked = ""
        try:
            connection.sendall(self.server.agent.reply(asked).encode())  # type: ignore[attr-defined]
        except OSError:
            pass  # the front door gave up waiting: it asks again in a second


class FrontDoorAgent:
    """Answers HAProxy's agent checks on AGENT_PORT: "up ready", "maint" to another node, "drain" when leaving."""

    def __init__(self, node_id: str, port: int = AGENT_PORT) -> None:
        self.node_id = node_id
        self.leaving = threading.Event()
        self.server = _AgentServer(("0.0.0.0", port), _Check)
        self.server.agent = self  # type: ignore[attr-defined]

    def reply(self, asked: str) -> str:
        """The agent's answer to a front door that sent `asked` (its node id, or "any")."""
        if self.leaving.is_set():
            return "drain\n"  # no new requests; the ones in flight finish
        if asked not in ("", "any", self.node_id):
            # Not that node's own center: out of its "local" backend (it stays in its "any" one). The
            # description follows " #": HAProxy ignores a reply whose first word is not a keyword.
            return "maint #another node\n"
        # "ready" ends the maintenance the "local" servers start in, and a "drain" that an earlier
        # center at this address left behind.
        return "up ready\n"

    def start(self) -> None:
        """Answer in a thread of its own."""
        threading.Thread(target=self.server.serve_forever, name="front-door-agent", daemon=True).start()


def supervise(argv: Sequence[str], node_id: str) -> int:
    """Run argv as a child, with the agent answering for it; on SIGTERM or SIGINT announce "drain" and pass
    the signal on NOTICE_SECONDS later (a second signal at once). Returns the child's exit code."""
    child = os.fork()
    if child == 0:  # pragma: no cover - replaced by the center
        try:
            os.execv(argv[0], list(argv))
        finally:
            os._exit(127)
    agent = FrontDoorAgent(node_id)

    def pass_on(signum: int) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass  # it has ended already

    def on_signal(signum: int, _frame: object) -> None:
        if agent.leaving.is_set():
            pass_on(signum)
            return
        agent.leaving.set()
        print(f"front_door_agent: {signal.Signals(signum).name}: draining at the front doors, the center stops "
              f"in {NOTICE_SECONDS} s", file=sys.stderr, flush=True)
        timer = threading.Timer(NOTICE_SECONDS, pass_on, (signum,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    while True:
        # First in the container, this process also reaps whatever the center's children leave behind.
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention
