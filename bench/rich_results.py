"""What rich results cost: the display machinery's imports, and a run whose value is a bundle against one without.

Usage (after `make test` or `python3 build.py` has built the image):
    python3 bench/rich_results.py [--runs 9] [--runtime runc|crun|runsc]

Two parts, each side by side in this one process:
- in a fresh interpreter of the image (`docker run --rm`), the cost of what a warm-up now imports for
  rich results (IPython's formatters, e2b-charts) and of making a DataFrame's bundle and a figure's
  chart once they are loaded, each against importing pandas (the table's own import) as a yardstick;
- through a center (2 slots, light load: the pool refilled and warmed before each request), pairs of
  programs that differ only in whether their value becomes a rich result: `print(df)` against `df`
  last (an HTML bundle), `print(6 * 7)` against `6 * 7`, a plot saved and closed against the same
  plot saved and left open (then it is shown: its bundle and chart). Each pair's ratio is the cost of the rich result.
It prints the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(PROJECT_DIR), str(Path(__file__).resolve().parent)]

from common import running_center, wait_ready  # noqa: E402

from server.config import load_config  # noqa: E402

SLOTS = 2
IMPORT_COSTS = """
import json, time
def ms(start): return round((time.perf_counter() - start) * 1000, 2)
t = time.perf_counter(); import pandas as pd; pandas_ms = ms(t)
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
t = time.perf_counter(); from IPython.core.formatters import DisplayFormatter; formatters_ms = ms(t)
t = time.perf_counter(); import e2b_charts; charts_ms = ms(t)
formatter = DisplayFormatter(); frame = pd.DataFrame({"a": range(20), "b": range(20)})
t = time.perf_counter(); formatter.format(frame); first_table_ms = ms(t)
t = time.perf_counter(); formatter.format(frame); table_ms = ms(t)
plt.plot([1, 2, 3]); figure = plt.gcf(); figure.savefig("/tmp/f.png")
t = time.perf_counter(); e2b_charts.chart_figure_to_dict(figure); first_chart_ms = ms(t)
t = time.perf_counter(); e2b_charts.chart_figure_to_dict(figure); chart_ms = ms(t)
print(json.dumps(dict(pandas_import=pandas_ms, formatters_import=formatters_ms, charts_import=charts_ms,
                      first_table_bundle=first_table_ms, table_bundle=table_ms, first_chart=first_chart_ms,
                      chart=chart_ms)))
"""
# A figure at the end of a run, in one interpreter: capture_backend with rich_display's listener (the
# figure's bundle: its PNG read back, its chart) against without it, alternated.
FIGURE_COST = """
import os, sys, time, statistics, threading
sys.path.insert(0, "/opt/sandbox")
import contract
contract.WORKSPACE = "/tmp"
os.chdir("/tmp")
os.environ["MPLBACKEND"] = "module://capture_backend"
r, w = os.pipe()
threading.Thread(target=lambda: [os.read(r, 1 << 20) for _ in iter(int, 1)], daemon=True).start()
import json, rich_display
rich_display.start(w)
import matplotlib.pyplot as plt, capture_backend, e2b_charts
capture_backend.OUTPUT_DIR = "/tmp"
def one(listen, save):
    capture_backend.on_image = rich_display.figure_shown if listen else None
    plt.plot([1, 2, 3], [3, 1, 2]); plt.title("t")
    if save:
        plt.savefig("/tmp/plot.png")
    t = time.perf_counter(); capture_backend.save_open_figures(); return (time.perf_counter() - t) * 1000
figures = {}
for save in (False, True):
    one(True, save); one(False, save)
    pairs = [(one(False, save), one(True, save)) for _ in range(15)]
    figures["saved" if save else "shown"] = [statistics.median(a for a, _ in pairs),
                                             statistics.median(b for _, b in pairs)]
print(json.dumps(figures))
"""
FRAME = "import pandas as pd\ndf = pd.DataFrame({'a': range(20), 'b': range(20)})\n"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.title('t')\n"
PAIRS = {  # name: (without a rich result, with one)
    "table": (FRAME + "print(df)", FRAME + "df"),
    "value": ("print(6 * 7)", "6 * 7"),
    "plot": (PLOT + "plt.savefig('plot.png')\nplt.close('all')", PLOT + "plt.savefig('plot.png')"),
}


def import_costs(image: str, runtime: str, runs: int) -> dict[str, float]:
    """The medians of IMPORT_COSTS' figures over `runs` fresh interpreters of the image."""
    samples = []
    for _ in range(runs):
        out = subprocess.run(["docker", "run", "--rm", "--network", "none", "--runtime", runtime,
                              "--entrypoint", "/opt/venv/bin/python3", image, "-c", IMPORT_COSTS],
                             capture_output=True, text=True, check=True, timeout=120).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}


def request_ms(url: str, code: str) -> float:
    """One request's time, in ms, in a freshly warmed sandbox."""
    wait_ready(url, SLOTS)
    time.sleep(2.5)  # light load: the replacement sandbox has warmed up
    started = time.perf_counter()
    body = requests.post(f"{url}/runcode", json={"code": code}, timeout=120).json()
    elapsed = (time.perf_counter() - started) * 1000
    if body.get("status") != "ok":
        raise SystemExit(f"{code!r}: {body.get('error')}")
    return elapsed


def main() -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--runtime", default="runc")
    args = parser.parse_args()
    image = load_config().interpreter_image
    print(f"rich results, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {args.runtime}")
    costs = import_costs(image, args.runtime, args.runs)
    print("  in a fresh interpreter (median ms; pandas' own import as the yardstick):")
    for key, value in costs.items():
        print(f"    {key:<20} {value:8.2f} ms   {value / costs['pandas_import']:6.1%} of pandas' import")
    figure = json.loads(subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--runtime", args.runtime, "--entrypoint",
         "/opt/venv/bin/python3", image, "-c", FIGURE_COST], capture_output=True, text=True, check=True,
        timeout=300).stdout.strip().splitlines()[-1])
    print("  a figure at the end of a run, in one interpreter (median ms of 15 alternated pairs):")
    for kind, (without, with_rich) in figure.items():
        print(f"    {kind:<6} without its bundle {without:6.1f}   with {with_rich:6.1f}   ratio "
              f"{with_rich / max(without, 0.01):5.2f}x")
    print("  whole requests at light load (p50 ms; the ratio is the rich result's cost):")
    with running_center(args.runtime, SLOTS) as url:
        for name, (plain, rich) in PAIRS.items():
            samples = [(request_ms(url, plain), request_ms(url, rich)) for _ in range(args.runs)]
            without = statistics.median(a for a, _ in samples)
            with_rich = statistics.median(b for _, b in samples)
            print(f"    {name:<6} without {without:7.1f}   with {with_rich:7.1f}   ratio {with_rich / without:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
