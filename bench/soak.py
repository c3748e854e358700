"""Sustained mixed load: prints, plots, errors and timeouts at concurrency 12 against a pool of 3.

Usage: python3 bench/soak.py [--minutes 10] [--concurrency 12] [--slots 3] [--database-url URL]

It starts its own center, keeps `concurrency` clients busy for the given time and judges every
answer (a print: 200 ok; a plot: 200 with an image; an error: 200 status error; a timeout: 504;
any of them may be a 503 when the pool stays busy past queue_wait_seconds). Every 30 s it samples
the center's memory (RSS), its open database connections (PostgreSQL: pg_stat_activity; SQLite:
open descriptors on the file) and the containers of its deployment. It prints the samples and a
verdict, and exits non-zero on any wrong answer, container leak, or growth of memory or connections.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import requests
from sqlalchemy import create_engine, text

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from common import start_center, wait_ready  # noqa: E402

from server.containers.docker_sandboxes import DEPLOYMENT_LABEL  # noqa: E402

PROGRAMS = {
    "print": ({"code": "print('soak')"}, 200, "ok"),
    "plot": ({"code": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])"}, 200, "ok"),
    "error": ({"code": "raise KeyError('soak')"}, 200, "error"),
    "timeout": ({"code": "import time\ntime.sleep(60)", "timeout": 1}, 504, "timeout"),
}
MIX = ["print"] * 5 + ["plot"] * 3 + ["error"] + ["timeout"]


def judge(kind: str, response: requests.Response) -> str:
    """'ok', 'busy' (503) or what was wrong."""
    _, expected_status, expected_run = PROGRAMS[kind]
    if response.status_code == 503:
        return "busy"
    try:
        payload = response.json()
    except ValueError:
        return f"{kind}: HTTP {response.status_code}, not JSON"
    if response.status_code != expected_status or payload.get("status") != expected_run:
        return f"{kind}: HTTP {response.status_code} status {payload.get('status')} {payload.get('error', '')[:80]}"
    if kind == "plot" and not payload.get("images"):
        return "plot: no image"
    return "ok"


def client_loop(url: str, stop: threading.Event, outcomes: collections.Counter, lock: threading.Lock,
                latencies: list[float]) -> None:
    """One client: random programs from the mix until stopped."""
    session = requests.Session()
    while not stop.is_set():
        kind = random.choice(MIX)
        started = time.perf_counter()
        try:
            outcome = judge(kind, session.post(f"{url}/runcode", json=PROGRAMS[kind][0], timeout=120))
        except requests.RequestException as e:
            outcome = f"{kind}: connection error {type(e).__name__}"
        with lock:
            outcomes[outcome] += 1
            if outcome == "ok":
                latencies.append(time.perf_counter() - started)


def rss_mb(pid: int) -> float:
    """Resident memory of a process."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sqlite_handles(pid: int) -> int:
    """Open descriptors of the process on SQLite files (its connections)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if fd.resolve().name.startswith("code_interpreter.db"):
                count += 1
        except OSError:
            pass
    return count


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: the embedded SQLite)")
    args = parser.parse_args(argv)

    client = docker.from_env()
    outcomes: collections.Counter = collections.Counter()
    latencies: list[float] = []
    lock, stop = threading.Lock(), threading.Event()
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"queue_wait_seconds": 10, "timeout_seconds": 30}
        if args.database_url:
            settings["database_url"] = args.database_url
        process, url, deployment = start_center(Path(tmp), settings, args.slots)
        engine = create_engine(args.database_url) if args.database_url else None

        def connections() -> int:
            if engine is None:
                return sqlite_handles(process.pid)
            with engine.connect() as connection:  # our own probe connection is not counted
                return connection.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()")).scalar_one()

        threads = [threading.Thread(target=client_loop, args=(url, stop, outcomes, lock, latencies))
                   for _ in range(args.concurrency)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(min(30, max(0.1, args.minutes * 60 - (time.monotonic() - started))))
                containers = len(client.api.containers(all=True, filters={"label": f"{DEPLOYMENT_LABEL}={deployment}"}))
                with lock:
                    done = sum(outcomes.values())
                samples.append((round(time.monotonic() - started), round(rss_mb(process.pid), 1), connections(),
                                containers, done))
                at, rss, connections_now, containers_now, answers = samples[-1]
                print(f"t={at:4}s  rss={rss:6.1f} MB  db connections={connections_now:2}  "
                      f"containers={containers_now}  answers={answers}", flush=True)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            wait_ready(url, args.slots, timeout=60)
            leftover = len(client.api.containers(all=True, filters={"label": f"{DEPLOYMENT_LABEL}={deployment}"}))
            process.send_signal(signal.SIGTERM)
            process.wait(60)
            after_stop = len(client.api.containers(all=True, filters={"label": f"{DEPLOYMENT_LABEL}={deployment}"}))
            if engine is not None:
                engine.dispose()

    total = sum(outcomes.values())
    wrong = {k: v for k, v in outcomes.items() if k not in ("ok", "busy")}
    latencies.sort()
    print(f"\nanswers: {total} in {args.minutes:g} min ({total / (args.minutes * 60):.2f}/s), "
          f"ok {outcomes['ok']}, busy (503) {outcomes['busy']}, wrong {sum(wrong.values())}")
    for reason, count in sorted(wrong.items(), key=lambda item: -item[1])[:5]:
        print(f"  {count} x {reason}")
    if latencies:
        print(f"latency of right answers: p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
              f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.0f} ms")
    print(f"containers: at most {max(s[3] for s in samples) if samples else 0} during the run "
          f"(pool of {args.slots}), {leftover} after it, {after_stop} after SIGTERM")
    first, last = samples[min(1, len(samples) - 1)], samples[-1]
    rss_growth = last[1] - first[1]
    print(f"center memory: {first[1]} MB at t={first[0]}s -> {last[1]} MB at t={last[0]}s ({rss_growth:+.1f} MB); "
          f"db connections {first[2]} -> {last[2]}")
    leak = after_stop != 0 or max(s[3] for s in samples) > 2 * args.slots
    grew = rss_growth > 50 or last[2] > first[2] + 2
    print("verdict:", "PASS" if not wrong and not leak and not grew else "FAIL")
    return 0 if not wrong and not leak and not grew else 1


if __name__ == "__main__":
    sys.exit(main())
