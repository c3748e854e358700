"""CPU per request, by process: the center against `docker run --rm` of the same program, under load.

Usage (after `make test` or `python3 build.py` has built the image):
    python3 bench/cpu_per_request.py [--requests 48] [--concurrency 8] [--runtime runc|crun]

On a saturated host throughput is the CPU one request costs, wherever it is spent. This starts its
own center (4 slots, SQLite), sends prints and then savefig plots at concurrency 8, and reads, before
and after, the whole machine's busy time (/proc/stat) and the CPU of the long-lived processes: dockerd,
containerd, the center, this script (the HTTP clients) and, for `docker run --rm`, the docker CLI it
starts. What is left is the containers (their runtime's init, the agent, the program), the
containerd shims and runtime binaries started per container, and the kernel's work for them. The
same for `docker run --rm --network none` under runc, in the same run. Last, the floor any service
that gives each run a fresh container pays: a bare container of the same image (no agent, no limits,
no hardening) created, started, waited for and removed through the engine's API, running
`python3 -c "print(1)"`, under the center's runtime. Other processes on the machine count in the
rest: run it on a quiet machine. Nothing is asserted; read the figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_DIR), str(Path(__file__).resolve().parent)]

from common import start_center, wait_ready  # noqa: E402
from latency import BASELINE_CODE, WARM_UP_SETTLE_SECONDS, center_call, center_plan, docker_run, steady_throughput  # noqa: E402

from sandbox.contract import WARM_REST_SECONDS  # noqa: E402
from server.config import load_config  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
ENGINE = ("dockerd", "containerd")
KINDS = ("print", "savefig")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all but idle, iowait and steal)."""
    with open("/proc/stat") as f:
        fields = [int(value) for value in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / TICK  # guest time is counted in user already


def process_seconds(pid: int) -> float:
    """CPU seconds of a process and of its children it has waited for."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / TICK  # utime, stime, cutime, cstime


def pids_named(name: str) -> list[int]:
    """The processes whose command name is `name`."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() == name:
                pids.append(int(entry))
        except OSError:
            pass  # gone meanwhile
    return pids


def own_seconds(who: int) -> float:
    """CPU seconds of this script (RUSAGE_SELF) or of the children it waited for (RUSAGE_CHILDREN)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def cpu_per_call(call: Callable[[], object], requests: int, concurrency: int, center_pid: int | None
                 ) -> tuple[dict[str, float], float]:
    """Milliseconds of CPU per call by process, and calls per second, over `requests` calls (after
    `concurrency` more that fill the pipeline)."""
    engine = {name: pids_named(name) for name in ENGINE}

    def sample() -> dict[str, float]:
        figures = {name: sum(process_seconds(pid) for pid in pids) for name, pids in engine.items()}
        figures.update(machine=machine_busy_seconds(), bench=own_seconds(resource.RUSAGE_SELF),
                       cli=own_seconds(resource.RUSAGE_CHILDREN))
        if center_pid is not None:
            figures["center"] = process_seconds(center_pid)
        return figures

    before = sample()
    rate, _ = steady_throughput(call, requests, concurrency, concurrency)
    after = sample()
    per_call = {name: (after[name] - before[name]) * 1000 / (requests + concurrency) for name in before}
    named = sum(value for name, value in per_call.items() if name != "machine")
    per_call["rest"] = per_call["machine"] - named
    return per_call, rate


def bare_container(client: docker.APIClient, image: str, runtime: str) -> None:
    """One bare container's whole life through the engine's API: no CLI, no agent, no limits, no hardening."""
    host_config = client.create_host_config(network_mode="none", runtime=runtime)
    container = client.create_container(image, entrypoint=["python3"], command=["-c", "print(1)"],
                                        network_disabled=True, host_config=host_config)
    try:
        client.start(container)
        client.wait(container)
    finally:
        client.remove_container(container, force=True)


ROWS = (("machine", "the whole machine"), ("dockerd", "dockerd"), ("containerd", "containerd"),
        ("center", "the center"), ("cli", "the docker CLI"), ("bench", "this script's HTTP clients"),
        ("rest", "containers, shims, runtimes, kernel"))


def main(argv: list[str] | None = None) -> int:
    """Measure both sides for prints and savefig plots and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="counted, after --concurrency more")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--runtime", default="runc", choices=("runc", "crun", "runsc"), help="the center's sandboxes")
    args = parser.parse_args(argv)

    image = load_config().interpreter_image
    client = docker.from_env()
    client.ping()  # fail early and clearly without an engine
    results: dict[str, tuple[dict[str, float], float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        process, url, _ = start_center(Path(tmp), {"interpreter_image": image, "sandbox_runtime": args.runtime},
                                       args.slots)
        try:
            def settle() -> None:
                """Until the pool has refilled and warmed up: its work would count against what follows."""
                wait_ready(url, args.slots)
                time.sleep(WARM_UP_SETTLE_SECONDS + WARM_REST_SECONDS)

            for kind in KINDS:
                plan = center_plan(url, kind)
                settle()
                results[f"center {kind}"] = cpu_per_call(lambda plan=plan: center_call(plan), args.requests,
                                                         args.concurrency, process.pid)
                settle()
                results[f"docker run {kind}"] = cpu_per_call(
                    lambda kind=kind: docker_run(image, "runc", BASELINE_CODE[kind]), args.requests,
                    args.concurrency, None)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    results[f"bare container, {args.runtime}"] = cpu_per_call(
        lambda: bare_container(client.api, image, args.runtime), args.requests, args.concurrency, None)

    print(f"CPU per request (ms) at concurrency {args.concurrency}, {args.requests + args.concurrency} requests "
          f"each; the center's sandboxes under {args.runtime}, docker run --rm under runc; {os.cpu_count()} cores")
    columns = list(results)
    width = max(20, *(len(column) + 2 for column in columns))
    print(f"{'':38}" + "".join(f"{column:>{width}}" for column in columns))
    for key, label in ROWS:
        cells = [results[column][0].get(key) for column in columns]
        print(f"{label:38}" + "".join(f"{'-' if cell is None else f'{cell:.0f}':>{width}}" for cell in cells))
    print(f"{'requests per second':38}" + "".join(f"{results[column][1]:>{width}.1f}" for column in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
