"""Streaming, measured: how long a line the program prints takes to reach the client.

Usage (after `make test` or `python3 build.py` has built the image):
    python3 bench/streaming.py [--runs 5] [--lines 20] [--runtime runc|crun|runsc]

It starts its own center (2 slots, served by waitress as in production) and runs a program that
prints the wall-clock time, then sleeps 0.2 s, `--lines` times; the client notes when each line
arrives (NDJSON, then SSE). The container shares the host's clock, so arrival minus printed time
is the line's delay from the program's write to the client's read. For comparison, the same
program's first line without streaming arrives with the whole answer, after every sleep.
It prints p50/p95/max. Nothing is asserted: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import requests

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_DIR), str(Path(__file__).resolve().parent)]

from common import running_center, wait_ready  # noqa: E402

SLOTS = 2
PROGRAM = "import time\nfor _ in range({lines}):\n    print(repr(time.time()), flush=True)\n    time.sleep(0.2)"


def delays(url: str, lines: int, accept: str) -> list[float]:
    """Milliseconds from each printed line's write to its arrival at the client."""
    found: list[float] = []
    pending = ""
    with requests.post(f"{url}/runcode", json={"code": PROGRAM.format(lines=lines)}, headers={"Accept": accept},
                       stream=True, timeout=120) as response:
        response.raise_for_status()
        for data in response.iter_lines(chunk_size=1):
            arrived = time.time()
            raw = data.decode()
            payload = raw[len("data: "):] if raw.startswith("data: ") else raw
            if not payload or raw.startswith("event: "):
                continue
            event = json.loads(payload)
            if event["type"] != "stdout":
                continue
            pending += event["text"]
            while "\n" in pending:
                line, _, pending = pending.partition("\n")
                found.append((arrived - float(line)) * 1000)
    return found


def plain_first_line_delay(url: str, lines: int) -> float:
    """Milliseconds from the first line's write to its arrival without streaming (with the whole answer)."""
    answer = requests.post(f"{url}/runcode", json={"code": PROGRAM.format(lines=lines)}, timeout=120)
    arrived = time.time()
    return (arrived - float(answer.json()["output"].split("\n")[0])) * 1000


def summary(values: list[float]) -> str:
    """p50, p95 and max in ms."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms   max {ordered[-1]:7.1f} ms"


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--runtime", default="runc")
    args = parser.parse_args()
    print(f"streaming delays, {platform.node()} ({platform.machine()}), runtime {args.runtime}, "
          f"{args.runs} runs x {args.lines} lines")
    with running_center(args.runtime, SLOTS) as url:
        results: dict[str, list[float]] = {"NDJSON": [], "SSE": []}
        plain: list[float] = []
        for _ in range(args.runs):
            for name, accept in (("NDJSON", "application/x-ndjson"), ("SSE", "text/event-stream")):
                wait_ready(url, SLOTS)
                results[name] += delays(url, args.lines, accept)
            wait_ready(url, SLOTS)
            plain.append(plain_first_line_delay(url, args.lines))
        for name, values in results.items():
            print(f"  {name:7} line delay    {summary(values)}   ({len(values)} lines)")
        print(f"  plain   first line    {summary(plain)}   (the whole answer: the run's end)")


if __name__ == "__main__":
    main()
