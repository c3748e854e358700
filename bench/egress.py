"""What the egress proxy costs: a large download and small requests through it, against the same directly.

Usage (after `make test` or `python3 build.py` has built the image):
    python3 bench/egress.py [--rounds 5] [--megabytes 50] [--requests 50] [--runtime runc|crun|runsc]

A plain HTTP server on this machine's own address (not loopback: the sandbox's loopback is its own)
serves a file of `--megabytes` and a tiny one. In the same process, alternated round by round:
- direct: this process downloads the file, and fetches the tiny one `--requests` times in a row
  (a new connection each, as a program's proxy connections are);
- through the proxy: a session of a center of its own (allowed ADDRESS:PORT literally) runs the same
  code, timed inside the sandbox, so the center's HTTP and the interpreter's start are not counted.
It prints the throughput of each, their ratio (goal: at least 0.5), and the added latency of one small
request (goal: under 5 ms). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import requests

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_DIR), str(Path(__file__).resolve().parent)]

from common import running_center  # noqa: E402

# The same measurement on both sides: the download's MB/s and each small request's milliseconds.
MEASURE = """
import json, time, urllib.request
opener = urllib.request.build_opener({proxy})
t = time.perf_counter(); size = len(opener.open({big!r}, timeout=120).read()); seconds = time.perf_counter() - t
small = []
for _ in range({count}):
    t = time.perf_counter(); opener.open({tiny!r}, timeout=30).read(); small.append((time.perf_counter() - t) * 1000)
print(json.dumps({{"mb_per_s": size / seconds / 1e6, "small_ms": small}}))
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """The file server, without a log line per request."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Nothing."""


def own_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 9))
        return probe.getsockname()[0]


def serve(folder: str, address: str) -> tuple[http.server.ThreadingHTTPServer, int]:
    """A threaded file server on `address` (a free port), serving `folder`."""
    server = http.server.ThreadingHTTPServer((address, 0), functools.partial(QuietHandler, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def direct(code: str) -> dict:
    """The measurement run in this process, without a proxy."""
    namespace: dict = {}
    lines: list[str] = []
    namespace["print"] = lines.append
    exec(code, namespace)  # noqa: S102 - the benchmark's own code
    return json.loads(lines[-1])


def main() -> None:
    """Alternate the direct and the proxied measurements; print both, their ratio and the added latency."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--runtime", default="runc")
    parser.add_argument("--cpus", default="1", help="the sandbox's CPU limit (its program and agent share it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "big.bin").write_bytes(os.urandom(args.megabytes * 1024 * 1024))
        Path(folder, "tiny.txt").write_text("ok\n")
        address = own_address()
        server, port = serve(folder, address)
        target = f"{address}:{port}"
        urls = {"big": f"http://{target}/big.bin", "tiny": f"http://{target}/tiny.txt", "count": args.requests}
        on_host = MEASURE.format(proxy="urllib.request.ProxyHandler({})", **urls)
        in_sandbox = MEASURE.format(proxy="", **urls)  # the sandbox's proxy variables
        settings = {"egress": {"allow": [target], "max_bytes": "100g", "max_connections": 64}, "timeout_seconds": 300,
                    "resource_limits": {"cpus": args.cpus}}
        measured: dict[str, list[dict]] = {"direct": [], "proxy": []}
        with running_center(args.runtime, 1, **settings) as url:
            session = requests.post(f"{url}/sessions", json={"network": {"allow": [target]}}, timeout=120).json()
            cell = f"{url}/sessions/{session['session_id']}/runcode"
            try:
                requests.post(cell, json={"code": "import json, urllib.request"}, timeout=120).raise_for_status()
                for _ in range(args.rounds):
                    measured["direct"].append(direct(on_host))
                    answer = requests.post(cell, json={"code": in_sandbox, "timeout": 300}, timeout=400).json()
                    if answer.get("status") != "ok":
                        raise SystemExit(f"the proxied measurement failed: {answer}")
                    measured["proxy"].append(json.loads(answer["output"].splitlines()[-1]))
            finally:
                requests.delete(f"{url}/sessions/{session['session_id']}", timeout=60)
        server.shutdown()
    rates = {side: statistics.median(m["mb_per_s"] for m in runs) for side, runs in measured.items()}
    small = {side: statistics.median(ms for m in runs for ms in m["small_ms"]) for side, runs in measured.items()}
    print(f"egress proxy, {args.runtime}, sandbox cpus {args.cpus}, {platform.node()}, {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds, "
          f"{args.megabytes} MB and {args.requests} small requests each")
    print(f"  download     direct {rates['direct']:8.1f} MB/s   proxy {rates['proxy']:8.1f} MB/s   "
          f"ratio {rates['proxy'] / rates['direct']:.2f} (goal >= 0.5)")
    print(f"  small request direct {small['direct']:7.2f} ms     proxy {small['proxy']:7.2f} ms     "
          f"added {small['proxy'] - small['direct']:.2f} ms (goal < 5)")


if __name__ == "__main__":
    main()
