"""Load client for the dispatch center: fire N /runcode requests from C threads and check every answer.

Examples:
    python concurrent_test.py --requests 50 --concurrency 8
    python concurrent_test.py --kind plot --fetch-images --token s3cret
    python concurrent_test.py --kind timeout --requests 4 --json
    python concurrent_test.py --language bash --code 'echo hi' --expect hi

Exit status: 0 when every answer was right, 1 otherwise (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import requests

MAX_REASONS = 5
OK, WRONG, BUSY, CONN = "ok", "wrong", "busy", "connection_error"


@dataclass(frozen=True)
class Preset:
    """A preset program and what a right answer to it looks like."""

    code: str
    language: str = "python"
    http_status: int = 200
    status: str = "ok"
    expect: str | None = None
    error_contains: str | None = None
    run_timeout: float | None = None
    needs_image: bool = False


PRINT_CODE = "print('Hello, World!')"
PLOT_CODE = """import matplotlib.pyplot as plt
plt.plot([0, 1, 2, 3, 4], [0, 1, 4, 9, 16], marker="o")
plt.title("squares")
"""
PANDAS_CODE = """import pandas as pd
df = pd.DataFrame({"team": ["a", "b", "a", "c", "b", "a"], "points": [1, 2, 3, 4, 5, 6]})
sums = df.groupby("team")["points"].sum()
print("sums:", ";".join(f"{team}={int(total)}" for team, total in sums.items()))
"""
PRESETS: dict[str, Preset] = {
    "print": Preset(code=PRINT_CODE, expect="Hello, World!"),
    "plot": Preset(code=PLOT_CODE, needs_image=True),
    "pandas": Preset(code=PANDAS_CODE, expect="sums: a=10;b=7;c=4"),
    "error": Preset(code="raise ValueError('boom')", status="error", error_contains="ValueError"),
    "timeout": Preset(code="import time\ntime.sleep(100)", http_status=504, status="timeout", run_timeout=1),
}
BASH_PRESETS: dict[str, Preset] = {
    "print": Preset(code="echo 'Hello, World!'", language="bash", expect="Hello, World!"),
}


@dataclass(frozen=True)
class Plan:
    """Everything one request needs: where to send it, what to send and how to judge the answer."""

    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    expected: Preset
    http_timeout: float
    fetch_images: bool


@dataclass
class Result:
    """The outcome of one request."""

    outcome: str
    reason: str = ""
    latency_ms: float | None = None
    server_ms: float | None = None


@dataclass
class Summary:
    """Aggregated results of a whole run."""

    results: list[Result]
    elapsed_s: float
    allow_busy: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        """How many requests ended with this outcome."""
        return sum(1 for r in self.results if r.outcome == outcome)

    def passed(self) -> bool:
        """True when every answer was right (busy answers only with --allow-busy)."""
        bad = self.count(WRONG) + self.count(CONN) + (0 if self.allow_busy else self.count(BUSY))
        return bad == 0 and bool(self.results)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least pct% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    first, _, rest = __doc__.partition("\n")
    p = argparse.ArgumentParser(description=first, epilog=rest.strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:5000", help="center base URL (default: %(default)s)")
    p.add_argument("--requests", type=positive_int, default=20, help="number of requests (default: %(default)s)")
    p.add_argument("--concurrency", type=positive_int, default=4, help="worker threads (default: %(default)s)")
    p.add_argument("--token", help="bearer token sent as 'Authorization: Bearer TOKEN'")
    p.add_argument("--kind", choices=sorted(PRESETS), default="print",
                   help="preset program and its checks (default: %(default)s)")
    p.add_argument("--code", help="custom program; overrides --kind (then only HTTP 200, status ok and --expect count)")
    p.add_argument("--language", choices=["python", "bash"], default="python", help="languageType (default: python)")
    p.add_argument("--expect", help="substring the 'output' field must contain (default: derived from --kind)")
    p.add_argument("--fetch-images", action="store_true",
                   help="with --kind plot: GET the first image URL, expect 200 and Content-Type image/png")
    p.add_argument("--allow-busy", action="store_true", help="do not count HTTP 503 (pool busy) as a wrong answer")
    p.add_argument("--timeout", type=positive_float, default=120.0,
                   help="per-request HTTP timeout in seconds (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p


def expected_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Preset:
    """The program to send and the checks to apply, from --kind/--code/--language/--expect."""
    if args.code is not None:
        return Preset(code=args.code, language=args.language, expect=args.expect)
    presets = BASH_PRESETS if args.language == "bash" else PRESETS
    if args.kind not in presets:
        parser.error(f"--kind {args.kind} has no {args.language} program; use --code or --language python")
    preset = presets[args.kind]
    if args.expect is not None:
        preset = replace(preset, expect=args.expect)
    return preset


def make_plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Plan:
    """Turn parsed arguments into a request plan."""
    expected = expected_for(args, parser)
    body: dict[str, Any] = {"code": expected.code, "languageType": expected.language}
    if expected.run_timeout is not None:
        body["timeout"] = expected.run_timeout
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    return Plan(url=args.url.rstrip("/"), headers=headers, body=body, expected=expected,
                http_timeout=args.timeout, fetch_images=args.fetch_images and expected.needs_image)


def short(value: Any, limit: int = 120) -> str:
    """A one-line, length-limited repr for reasons."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def root_cause(exc: BaseException) -> BaseException:
    """The innermost wrapped exception (requests -> urllib3 MaxRetryError -> NewConnectionError ...)."""
    for _ in range(5):
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def describe_exception(exc: BaseException) -> str:
    """A stable one-line description of a requests exception (object addresses stripped so reasons dedupe)."""
    message = re.sub(r" at 0x[0-9a-fA-F]+", "", str(root_cause(exc)))
    return f"{type(exc).__name__}: {message}"[:200]


_local = threading.local()


def session() -> requests.Session:
    """One keep-alive session per worker thread (Session is not shared across threads)."""
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def image_urls(images: Any) -> list[str]:
    """The image URLs of an answer: SPEC says a name -> URL object; a plain list is accepted too."""
    if isinstance(images, dict):
        return [u for u in images.values() if isinstance(u, str)]
    if isinstance(images, list):
        return [u for u in images if isinstance(u, str)]
    return []


def check_image(url: str, timeout: float) -> str | None:
    """GET one image URL; None when it answers 200 with Content-Type image/png, else the reason."""
    try:
        response = session().get(url, timeout=timeout)
    except requests.RequestException as exc:
        return f"image fetch failed: {describe_exception(exc)}"
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if response.status_code != 200:
        return f"image GET answered HTTP {response.status_code}"
    if content_type != "image/png":
        return f"image Content-Type is {content_type or 'missing'!r}, not 'image/png'"
    return None


def check_body(body: dict[str, Any], plan: Plan) -> str | None:
    """None when a decoded /runcode answer matches the plan's expectations, else the first problem found."""
    want = plan.expected
    if body.get("status") != want.status:
        detail = f" (error: {short(body.get('error'), 160)})" if body.get("error") else ""
        return f"status {body.get('status')!r}, expected {want.status!r}{detail}"
    output = body.get("output")
    if want.expect is not None and (not isinstance(output, str) or want.expect not in output):
        return f"output lacks {want.expect!r}: got {short(output)}"
    if want.error_contains is not None and want.error_contains not in str(body.get("error", "")):
        return f"error lacks {want.error_contains!r}: got {short(body.get('error'))}"
    if want.needs_image:
        urls = image_urls(body.get("images"))
        if not urls:
            return f"no image URL in 'images': got {short(body.get('images'))}"
        if plan.fetch_images:
            return check_image(urls[0], plan.http_timeout)
    return None


def judge(response: requests.Response, plan: Plan) -> tuple[str, str, float | None]:
    """Classify one HTTP answer: (outcome, reason, server duration_ms)."""
    if response.status_code == 503:
        return BUSY, "HTTP 503 (pool busy)", None
    try:
        body = response.json()
    except ValueError:
        return WRONG, f"HTTP {response.status_code} with a non-JSON body: {short(response.text[:200])}", None
    if not isinstance(body, dict):
        return WRONG, f"HTTP {response.status_code} with a JSON {type(body).__name__}, not an object", None
    server_ms = body.get("duration_ms")
    server_ms = float(server_ms) if isinstance(server_ms, (int, float)) and not isinstance(server_ms, bool) else None
    if response.status_code != plan.expected.http_status:
        detail = f": {short(body.get('error'), 160)}" if body.get("error") else ""
        return WRONG, f"HTTP {response.status_code}, expected {plan.expected.http_status}{detail}", server_ms
    problem = check_body(body, plan)
    return (WRONG, problem, server_ms) if problem else (OK, "", server_ms)


def run_one(plan: Plan) -> Result:
    """Send one /runcode request and judge the answer; latency is the POST's client-side wall time."""
    start = time.perf_counter()
    try:
        response = session().post(f"{plan.url}/runcode", json=plan.body, headers=plan.headers,
                                  timeout=plan.http_timeout)
    except requests.RequestException as exc:
        return Result(CONN, describe_exception(exc))
    latency_ms = (time.perf_counter() - start) * 1000
    outcome, reason, server_ms = judge(response, plan)
    return Result(outcome, reason, latency_ms, server_ms)


def run_all(plan: Plan, total: int, concurrency: int, allow_busy: bool) -> Summary:
    """Run total requests on concurrency threads and collect the results."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="load") as pool:
        results = list(pool.map(lambda _: run_one(plan), range(total)))
    return Summary(results, time.perf_counter() - start, allow_busy)


def first_reasons(results: list[Result], outcome: str) -> list[dict[str, Any]]:
    """Up to MAX_REASONS distinct reasons for an outcome, in order of first appearance, with counts."""
    counts = Counter(r.reason for r in results if r.outcome == outcome)
    return [{"reason": reason, "count": n} for reason, n in list(counts.items())[:MAX_REASONS]]


def rounded(value: float | None, digits: int = 1) -> float | None:
    """Round a possibly missing number."""
    return None if value is None else round(value, digits)


def summary_dict(summary: Summary) -> dict[str, Any]:
    """The run's summary as plain JSON-able data."""
    latencies = [r.latency_ms for r in summary.results if r.latency_ms is not None]
    server = [r.server_ms for r in summary.results if r.server_ms is not None]
    total = len(summary.results)
    return {
        **summary.extra,
        "requests": total,
        "successes": summary.count(OK),
        "wrong": summary.count(WRONG),
        "wrong_reasons": first_reasons(summary.results, WRONG),
        "busy": summary.count(BUSY),
        "allow_busy": summary.allow_busy,
        "connection_errors": summary.count(CONN),
        "connection_error_reasons": first_reasons(summary.results, CONN),
        "latency_ms": {"p50": rounded(percentile(latencies, 50)), "p95": rounded(percentile(latencies, 95)),
                       "max": rounded(max(latencies, default=None))},
        "elapsed_s": round(summary.elapsed_s, 3),
        "throughput_rps": round(total / summary.elapsed_s, 2) if summary.elapsed_s > 0 else None,
        "server_duration_ms_p50": rounded(percentile(server, 50)),
        "passed": summary.passed(),
    }


def fmt(value: float | None, unit: str = "") -> str:
    """A number for the text report, or n/a."""
    return "n/a" if value is None else f"{value}{unit}"


def render_text(data: dict[str, Any]) -> str:
    """The human-readable report."""
    lat = data["latency_ms"]
    lines = [
        f"target:             {data['url']}/runcode  kind={data['kind']}  concurrency={data['concurrency']}",
        f"requests:           {data['requests']}",
        f"successes:          {data['successes']}",
        f"wrong answers:      {data['wrong']}",
        *(f"  - {r['reason']}  (x{r['count']})" for r in data["wrong_reasons"]),
        f"busy (HTTP 503):    {data['busy']}" + ("  (allowed)" if data["allow_busy"] else "  (counted as wrong)"),
        f"connection errors:  {data['connection_errors']}",
        *(f"  - {r['reason']}  (x{r['count']})" for r in data["connection_error_reasons"]),
        f"latency ms:         p50 {fmt(lat['p50'])}  p95 {fmt(lat['p95'])}  max {fmt(lat['max'])}",
        f"throughput:         {fmt(data['throughput_rps'], ' req/s')} over {data['elapsed_s']} s",
        f"server duration_ms: p50 {fmt(data['server_duration_ms_p50'])}",
        f"result:             {'PASS' if data['passed'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the load, print the summary; 0 only when every answer was right."""
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = make_plan(args, parser)
    summary = run_all(plan, args.requests, args.concurrency, args.allow_busy)
    summary.extra = {"url": plan.url, "kind": "custom" if args.code is not None else args.kind,
                     "language": plan.expected.language, "concurrency": args.concurrency}
    data = summary_dict(summary)
    print(json.dumps(data) if args.json else render_text(data))
    return 0 if data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
