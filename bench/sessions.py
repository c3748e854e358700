"""Sessions, measured side by side with one-shot runs in the same run, on the same center.

Usage (after `make test` or `python3 build.py` has built the image):
    python3 bench/sessions.py [--cells 30] [--creates 10] [--runtime runc|crun|runsc]

It starts its own center (4 slots, SQLite in a temp folder) and measures, one request at a time
with the pool refilled in between (light load):
- creating a session (a warm sandbox taken from the pool) and deleting it;
- a print cell and a matplotlib plot cell in a session (imports paid once, by an earlier cell),
  next to the same print and plot as one-shot `/runcode` requests;
- the memory of an idle session (its container's cgroup), after numpy, pandas and matplotlib.
It prints the figures and the ratios. Nothing is asserted: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import docker
import requests

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_DIR), str(Path(__file__).resolve().parent)]

from common import running_center, wait_ready  # noqa: E402

SLOTS = 4
PRINT = "print('Hello, World!')"
PLOT = "plt.figure()\nplt.plot([1, 4, 9, 16])\nplt.title('squares')"
PLOT_ONE_SHOT = "import matplotlib.pyplot as plt\n" + PLOT


def timed(action: Callable[[], requests.Response], expect: int = 200) -> float:
    """Milliseconds the request took (checked for its status)."""
    started = time.perf_counter()
    response = action()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != expect:
        raise SystemExit(f"unexpected answer {response.status_code}: {response.text[:300]}")
    return elapsed


def summary(name: str, samples: list[float]) -> float:
    """Print p50/p95 of the samples; return the p50."""
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    print(f"  {name:<34} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   (n={len(samples)})")
    return p50


def container_memory_mib(client: docker.DockerClient, session_id: str) -> float:
    """The session container's memory use (cgroup), in MiB."""
    (container,) = client.api.containers(filters={"label": f"code-interpreter.sandbox={session_id}"})
    stats = client.api.stats(container["Id"], stream=False)
    usage = stats["memory_stats"].get("usage", 0) - stats["memory_stats"].get("stats", {}).get("cache", 0)
    return usage / 2**20


def main() -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=30)
    parser.add_argument("--creates", type=int, default=10)
    parser.add_argument("--runtime", default="runc")
    args = parser.parse_args()
    print(f"sessions bench, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, runtime {args.runtime}")
    with running_center(args.runtime, SLOTS) as url:
        client = docker.from_env()
        creates, deletes = [], []
        for _ in range(args.creates):
            wait_ready(url, SLOTS)
            time.sleep(2.5)  # let the ready sandboxes finish warming (seaborn too), as on a quiet server
            started = time.perf_counter()
            response = requests.post(f"{url}/sessions", timeout=60)
            creates.append((time.perf_counter() - started) * 1000)
            session_id = response.json()["session_id"]
            deletes.append(timed(lambda s=session_id: requests.delete(f"{url}/sessions/{s}", timeout=60), 204))
        session_id = requests.post(f"{url}/sessions", timeout=60).json()["session_id"]
        cell_url = f"{url}/sessions/{session_id}/runcode"
        requests.post(cell_url, json={"code": "import numpy, pandas\nimport matplotlib.pyplot as plt"},
                      timeout=60)
        time.sleep(2)
        idle_mib = container_memory_mib(client, session_id)
        one_shot, in_session = {"print": [], "plot": []}, {"print": [], "plot": []}
        for _ in range(args.cells):
            for kind, one_shot_code, cell_code in (("print", PRINT, PRINT), ("plot", PLOT_ONE_SHOT, PLOT)):
                wait_ready(url, SLOTS)
                time.sleep(2.5)
                one_shot[kind].append(timed(lambda c=one_shot_code: requests.post(
                    f"{url}/runcode", json={"code": c}, timeout=60)))
                in_session[kind].append(timed(lambda c=cell_code: requests.post(
                    cell_url, json={"code": c}, timeout=60)))
        requests.delete(f"{url}/sessions/{session_id}", timeout=60)
    print("creating and ending a session (a warm sandbox from the pool):")
    summary("create", creates)
    summary("delete", deletes)
    print("a cell in a session next to the same program one-shot (light load, same run):")
    ratios = {}
    for kind in ("print", "plot"):
        cell = summary(f"{kind} cell in a session", in_session[kind])
        alone = summary(f"{kind} one-shot /runcode", one_shot[kind])
        ratios[kind] = cell / alone
    print(f"  print cell / one-shot print: {ratios['print']:.2f}x;  plot cell / one-shot plot: {ratios['plot']:.2f}x")
    print(f"memory of an idle session with numpy, pandas and matplotlib imported: {idle_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
