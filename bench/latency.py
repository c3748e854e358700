"""Latency, throughput and memory of the center, side by side with `docker run --rm` of the same image.

Usage (after `make test` or `python3 build.py` has built the image):
    python3 bench/latency.py [--requests 30] [--throughput-requests 64] [--concurrency 8]
                             [--runtime runc|crun|runsc] [--baseline-runtime runc|crun|runsc]

It starts its own center (`center.py --config <temp file>`, 4 slots, SQLite in a temp folder) and measures:
- light load: a print, a matplotlib plot, the same plot saved with `plt.savefig` (as LLM-written
  code does) and a pandas group-by, one request at a time once the pool has refilled;
- back to back: plots (with and without savefig) from one client that sends the next request as
  soon as the last is answered (a batch job, an evaluation harness), p50 and p95;
- under load: the steady throughput of prints and of savefig plots at concurrency 8 (counted after
  the first 8 answers, so the pool's ready sandboxes give no head start), in rounds alternating
  with `docker run --rm` at the same concurrency, the ratio being the median of the rounds'
  ratios; the center's p95 latency under that load;
- the memory of a warm sandbox;
then the same programs with `docker run --rm --network none IMAGE python3 -c CODE` (by default under
runc, Docker's stock runtime: what a user would otherwise run). It prints every figure and the
ratios. Nothing is asserted: the machines are shared and noisy; read the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_DIR), str(Path(__file__).resolve().parent)]

from common import start_center, wait_ready  # noqa: E402

from concurrent_test import PRESETS, Plan, percentile, run_all, run_one  # noqa: E402
from server.config import load_config  # noqa: E402
from server.containers.docker_sandboxes import DEPLOYMENT_LABEL  # noqa: E402

KINDS = ("print", "plot", "savefig", "pandas")
BACK_TO_BACK_KINDS = ("plot", "savefig")
LOAD_KINDS = ("print", "savefig")
# The baseline has no capture backend: the plot is saved explicitly, as such a user would.
BASELINE_PLOT = "import matplotlib\nmatplotlib.use('Agg')\n" + PRESETS["plot"].code + "plt.savefig('/tmp/plot.png')\n"
BASELINE_CODE = {"print": PRESETS["print"].code, "plot": BASELINE_PLOT, "savefig": BASELINE_PLOT,
                 "pandas": PRESETS["pandas"].code}
IDLE_BASELINE = "import numpy, pandas, matplotlib.pyplot, time\ntime.sleep(30)"
WARM_UP_SETTLE_SECONDS = 2.5  # an idle sandbox starts its imports after 0.5 s; they take about a second


def center_plan(url: str, kind: str) -> Plan:
    """A request plan for one of concurrent_test.py's presets."""
    preset = PRESETS[kind]
    return Plan(url=url, headers={}, body={"code": preset.code, "languageType": "python"}, expected=preset,
                http_timeout=120, fetch_images=False)


def center_latencies(url: str, kind: str, count: int, gap: float, slots: int) -> list[float]:
    """Light load: one request at a time, each once the pool is refilled (as between an LLM's tool calls)."""
    latencies = []
    for _ in range(count):
        wait_ready(url, slots)
        time.sleep(gap)
        summary = run_all(center_plan(url, kind), 1, 1, allow_busy=False)
        result = summary.results[0]
        if result.outcome != "ok":
            raise SystemExit(f"center answered wrongly to a {kind}: {result.reason}")
        latencies.append(result.latency_ms)
    return latencies


def center_back_to_back(url: str, kind: str, count: int, slots: int) -> list[float]:
    """One client, the next request as soon as the last answered: the pool never waits idle."""
    wait_ready(url, slots)
    time.sleep(WARM_UP_SETTLE_SECONDS)
    plan = center_plan(url, kind)
    latencies = []
    for _ in range(count):
        result = run_one(plan)
        if result.outcome != "ok":
            raise SystemExit(f"center answered wrongly to a {kind}: {result.reason}")
        latencies.append(result.latency_ms)
    return latencies


def docker_run(image: str, runtime: str, code: str) -> float:
    """Milliseconds of one `docker run --rm` of the program (the user's alternative)."""
    started = time.perf_counter()
    result = subprocess.run(["docker", "run", "--rm", "--network", "none", f"--runtime={runtime}",
                             "--entrypoint", "python3", image, "-c", code], capture_output=True, text=True)
    elapsed = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise SystemExit(f"docker run failed: {result.stderr[-500:]}")
    return elapsed


def steady_throughput(call: Any, total: int, concurrency: int, warmup: int) -> tuple[float, list[float]]:
    """Calls per second with `concurrency` callers, over `total` calls after the first `warmup` answers;
    and the latencies (ms) of those counted calls."""
    finished: list[tuple[float, float]] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        started = time.perf_counter()
        call()
        with lock:
            finished.append((time.perf_counter(), (time.perf_counter() - started) * 1000))

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(warmup + total)))
    finished.sort()
    counted = finished[warmup:]
    return total / (finished[-1][0] - finished[warmup - 1][0]), [latency for _, latency in counted]


def center_call(plan: Plan) -> None:
    """One request through the center; SystemExit on a wrong answer (a benchmark of wrong answers is void)."""
    result = run_one(plan)
    if result.outcome != "ok":
        raise SystemExit(f"wrong answer under load: {result.outcome} {result.reason}")


def container_memory_mb(client: docker.DockerClient, container_ids: list[str]) -> float | None:
    """Median memory use (RSS + page cache minus inactive files, as `docker stats` shows) of the containers."""
    values = []
    for container_id in container_ids:
        stats = client.api.stats(container_id, stream=False, one_shot=True)["memory_stats"]
        usage = stats.get("usage")
        if usage is None:
            continue
        inactive = stats.get("stats", {}).get("total_inactive_file", 0)
        values.append((usage - inactive) / 2**20)
    return sorted(values)[len(values) // 2] if values else None


def median(values: list[float]) -> float:
    """The middle value (the lower middle of an even count)."""
    return sorted(values)[(len(values) - 1) // 2]


def summarize(values: list[float]) -> dict[str, float]:
    """p50 and p95 (nearest rank), milliseconds."""
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1)}


def ratio(baseline: float, ours: float) -> str:
    """'6.3x' style ratio, or n/a."""
    return f"{baseline / ours:.1f}x" if ours else "n/a"


def main(argv: list[str] | None = None) -> int:
    """Run the whole comparison and print it (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="light-load requests per program")
    parser.add_argument("--baseline-requests", type=int, default=10, help="docker run --rm per program")
    parser.add_argument("--throughput-requests", type=int, default=64, help="counted, after --concurrency more")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5,
                        help="throughput rounds, each the center then docker run (alternated, so drift hits both)")
    parser.add_argument("--back-to-back", type=int, default=30, help="back-to-back requests per plot kind")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--gap", type=float, default=0.5, help="pause between light-load requests (s)")
    parser.add_argument("--runtime", default="runc", choices=("runc", "crun", "runsc"), help="the center's sandboxes")
    parser.add_argument("--baseline-runtime", default="runc", choices=("runc", "crun", "runsc"),
                        help="docker run --rm's runtime")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    image = load_config().interpreter_image
    client = docker.from_env()
    figures: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
                               "runtime": args.runtime, "baseline_runtime": args.baseline_runtime, "image": image}
    with tempfile.TemporaryDirectory() as tmp:
        process, url, deployment = start_center(Path(tmp), {"interpreter_image": image,
                                                            "sandbox_runtime": args.runtime}, args.slots)
        try:
            time.sleep(3)  # let the fresh pool finish its warm-up imports before measuring memory
            ids = [c["Id"] for c in client.api.containers(filters={"label": f"{DEPLOYMENT_LABEL}={deployment}"})]
            figures["center_memory_per_warm_container_mb"] = container_memory_mb(client, ids)
            for kind in KINDS:
                figures[f"center_{kind}_ms"] = summarize(center_latencies(url, kind, args.requests, args.gap,
                                                                          args.slots))
            for kind in BACK_TO_BACK_KINDS:
                figures[f"center_{kind}_back_to_back_ms"] = summarize(
                    center_back_to_back(url, kind, args.back_to_back, args.slots))

            def settled_throughput(call: Any) -> tuple[float, list[float]]:
                """Steady throughput, measured once the refilled pool's warm-up imports are done."""
                wait_ready(url, args.slots)
                time.sleep(WARM_UP_SETTLE_SECONDS)
                return steady_throughput(call, args.throughput_requests, args.concurrency, args.concurrency)

            for kind in LOAD_KINDS:
                plan = center_plan(url, kind)
                rounds, loaded = [], []
                for _ in range(args.rounds):
                    ours, latencies = settled_throughput(lambda plan=plan: center_call(plan))
                    theirs, _ = settled_throughput(
                        lambda kind=kind: docker_run(image, args.baseline_runtime, BASELINE_CODE[kind]))
                    rounds.append((ours, theirs))
                    loaded += latencies
                figures[f"center_{kind}_throughput_rps"] = round(median([ours for ours, _ in rounds]), 2)
                figures[f"docker_run_{kind}_throughput_rps"] = round(median([theirs for _, theirs in rounds]), 2)
                figures[f"{kind}_throughput_rounds_rps"] = [[round(a, 2), round(b, 2)] for a, b in rounds]
                figures[f"ratio_{kind}_throughput"] = f"{median([ours / theirs for ours, theirs in rounds]):.1f}x"
                figures[f"center_{kind}_under_load_ms"] = summarize(loaded)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)

    for kind in KINDS:
        figures[f"docker_run_{kind}_ms"] = summarize(
            [docker_run(image, args.baseline_runtime, BASELINE_CODE[kind]) for _ in range(args.baseline_requests)])
    idle = client.containers.run(image, entrypoint="python3", command=["-c", IDLE_BASELINE], detach=True,
                                 network_mode="none", runtime=args.baseline_runtime, remove=True)
    time.sleep(4)
    figures["docker_run_memory_with_imports_mb"] = container_memory_mb(client, [idle.id])
    idle.kill()

    for kind in KINDS:
        baseline, ours = figures[f"docker_run_{kind}_ms"]["p50"], figures[f"center_{kind}_ms"]["p50"]
        figures[f"ratio_{kind}_p50"] = ratio(baseline, ours)
    for kind in BACK_TO_BACK_KINDS:
        back_to_back = figures[f"center_{kind}_back_to_back_ms"]
        figures[f"ratio_{kind}_back_to_back_p50"] = ratio(figures[f"docker_run_{kind}_ms"]["p50"], back_to_back["p50"])
        figures[f"{kind}_back_to_back_p95_over_p50"] = f"{back_to_back['p95'] / back_to_back['p50']:.1f}"
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:40} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
