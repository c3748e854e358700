"""What the common libraries cost to import in a warm sandbox, to decide what the warm-up should import.

Usage (after `make test` or `python3 build.py` has built the image):
    python3 bench/imports.py [--runs 7] [--runtime runc|crun|runsc]

It starts its own center (2 slots, SQLite in a temp folder) and, one request at a time with the
pool refilled and warmed in between, imports each library in a fresh warm sandbox (numpy, pandas and
matplotlib are already loaded there by the warm-up) and reports the import time measured inside the
program, and the whole request's time for a chart that uses the library. It prints the figures;
nothing is asserted.
"""

from __future__ import annotations

import argparse
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
LIBRARIES = {
    "seaborn": "import seaborn as sns\nsns.histplot([1, 2, 2, 3, 3, 3])",
    "statsmodels.api": "import statsmodels.api as sm\nsm.OLS([1, 2, 3], sm.add_constant([1, 2, 4])).fit()",
    "sklearn.linear_model": "from sklearn.linear_model import LinearRegression\n"
                            "LinearRegression().fit([[1], [2], [3]], [1, 2, 3])",
    "scipy.stats": "from scipy import stats\nstats.ttest_ind([1, 2, 3], [2, 3, 4])",
    "matplotlib.pyplot": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])",
}


def measure(url: str, module: str, code: str) -> tuple[float, float]:
    """(import time inside the program, whole request time), in ms, in a freshly warmed sandbox."""
    wait_ready(url, SLOTS)
    time.sleep(2.5)  # an idle sandbox warms up after 0.5 s; the imports take about a second
    program = f"import time\n_t = time.perf_counter()\nimport {module}\nprint((time.perf_counter() - _t) * 1000)\n"
    started = time.perf_counter()
    response = requests.post(f"{url}/runcode", json={"code": program + code}, timeout=120)
    elapsed = (time.perf_counter() - started) * 1000
    body = response.json()
    if body.get("status") != "ok":
        raise SystemExit(f"{module}: {body.get('error')}")
    return float(body["output"].split()[0]), elapsed


def main() -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--runtime", default="runc")
    args = parser.parse_args()
    print(f"import costs in a warm sandbox, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {args.runtime}")
    with running_center(args.runtime, SLOTS) as url:
        for module, code in LIBRARIES.items():
            samples = [measure(url, module, code) for _ in range(args.runs)]
            imports = statistics.median(sample[0] for sample in samples)
            requests_ms = statistics.median(sample[1] for sample in samples)
            print(f"  {module:<22} import p50 {imports:7.1f} ms   chart request p50 {requests_ms:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
