"""What E2B's API costs over this center's own: run_code through E2B's SDK against a session cell through client.py.

Usage (after `make test` or `python3 build.py` has built the image):
    python3 bench/e2b_sdk.py [--rounds 30] [--runtime runc|crun|runsc]

One center of its own; one E2B sandbox (through `e2b_code_interpreter.Sandbox`) and one session (through
`client.Session`), each warmed by a first cell. Then, alternated in this one process, the same cells in
each: a print, and a small matplotlib plot shown (its PNG and chart come back as a result). It prints the
median and 90th percentile of each and the ratio SDK / session (goal: at most 1.2). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_DIR), str(Path(__file__).resolve().parent)]

from common import running_center  # noqa: E402
from e2b_code_interpreter import Sandbox  # noqa: E402

from client import Client  # noqa: E402

CELLS = {
    "print": "print('hello')",
    "plot": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()",
}


def timed(call: Callable[[], object]) -> float:
    """Milliseconds one call takes."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    """Alternate SDK and client cells; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runtime", default="runc")
    args = parser.parse_args()
    with running_center(args.runtime, 2, auth_tokens=["bench-key"]) as url:
        os.environ.update(E2B_API_URL=f"{url}/e2b", E2B_SANDBOX_URL=f"{url}/e2b/sandbox", E2B_API_KEY="bench-key")
        with Client(url, token="bench-key") as center, Sandbox.create(timeout=3600) as sbx, \
                center.session() as session:
            for code in CELLS.values():  # the first of each imports what it needs
                sbx.run_code(code)
                session.run(code)
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for name, code in CELLS.items():
                    times.setdefault(("sdk", name), []).append(timed(lambda code=code: sbx.run_code(code)))
                    times.setdefault(("session", name), []).append(timed(lambda code=code: session.run(code)))
    print(f"E2B's SDK against session cells, {args.runtime}, {platform.node()}, {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds")
    for name in CELLS:
        sdk, own = times[("sdk", name)], times[("session", name)]
        p50 = statistics.median(sdk), statistics.median(own)
        p90 = statistics.quantiles(sdk, n=10)[-1], statistics.quantiles(own, n=10)[-1]
        print(f"  {name:6} sdk p50 {p50[0]:7.1f} ms p90 {p90[0]:7.1f}   session p50 {p50[1]:7.1f} ms "
              f"p90 {p90[1]:7.1f}   ratio {p50[0] / p50[1]:.2f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
