"""Load client for the dispatch center: fire N /runcode requests from C threads and check every answer.

With --sessions N it drives N notebook sessions at once instead: each is created, gets a small CSV
uploaded, runs cells that build on each other's state and read the CSV, lists and downloads its
files and is deleted; every answer's content is checked and each step's latency reported.

Examples:
    python concurrent_test.py --requests 50 --concurrency 8
    python concurrent_test.py --kind plot --fetch-images --token s3cret
    python concurrent_test.py --kind timeout --requests 4 --json
    python concurrent_test.py --language bash --code 'echo hi' --expect hi
    python concurrent_test.py --sessions 4 --rounds 5 --check-conflict

Exit status: 0 when every answer was right, 1 otherwise (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
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
    # As LLM-written code draws: saved to a file, which comes back as the one image.
    "savefig": Preset(code=PLOT_CODE + 'plt.savefig("chart.png")\n', needs_image=True),
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
    sessions = p.add_argument_group("session mode (replaces the /runcode load above)")
    sessions.add_argument("--sessions", type=positive_int, metavar="N",
                          help="drive N sessions at once, each on its own thread, and check every step")
    sessions.add_argument("--rounds", type=positive_int, default=3,
                          help="state-building cells per session, besides the fixed ones (default: %(default)s)")
    sessions.add_argument("--check-conflict", action="store_true",
                          help="also check that a call while a cell runs answers 409 and the cell still answers")
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


# --- session mode -----------------------------------------------------------------------------------

SESSION_STEPS = ("create", "upload", "cell", "files", "download", "conflict", "delete")
CSV_PATH = "inputs/orders.csv"  # a subfolder: uploads may carry one in the part's filename
REPORT_PATH = "report.csv"


class StepFailed(Exception):
    """A session step got a wrong answer (or none): the session stops there, with this outcome and reason."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


@dataclass(frozen=True)
class SessionPlan:
    """What every session of a --sessions run does and where."""

    url: str
    headers: dict[str, str]
    http_timeout: float
    rounds: int
    check_conflict: bool


@dataclass
class SessionRun:
    """One session's outcome and the latency of each of its steps (ms by step name)."""

    outcome: str = OK
    reason: str = ""
    latencies: dict[str, list[float]] = field(default_factory=lambda: {step: [] for step in SESSION_STEPS})
    cells: int = 0


@dataclass(frozen=True)
class SessionData:
    """The CSV one session uploads and the answers its cells must give: distinct per session,
    so that state or files that leak from one session into another show as wrong answers."""

    marker: str
    index: int
    csv: bytes
    rows: int
    qty_total: int
    revenue: int

    @classmethod
    def make(cls, index: int) -> SessionData:
        """This session's data: quantities shift with its index, prices are fixed."""
        rows = [(f"item{i}", i + index, 10 * i) for i in range(1, 7)]
        text = "item,qty,price\n" + "".join(f"{name},{qty},{price}\n" for name, qty, price in rows)
        return cls(marker=f"s{index}-{secrets.token_hex(4)}", index=index, csv=text.encode(), rows=len(rows),
                   qty_total=sum(qty for _, qty, _ in rows), revenue=sum(qty * price for _, qty, price in rows))


class SessionDriver:
    """Walks one session through its steps on its own HTTP connection, timing and checking each answer."""

    def __init__(self, plan: SessionPlan, index: int) -> None:
        self.plan, self.data = plan, SessionData.make(index)
        self.http = requests.Session()
        self.http.headers.update(plan.headers)
        self.run = SessionRun()
        self.session_url = ""
        self.count = 0  # the execution_count the last cell answered

    def call(self, step: str, method: str, path: str, timed: bool = True, **kwargs: Any) -> requests.Response:
        """One HTTP call of a step, timed; a connection failure ends the session as connection_error."""
        start = time.perf_counter()
        try:
            response = self.http.request(method, f"{self.plan.url}{path}", timeout=self.plan.http_timeout, **kwargs)
        except requests.RequestException as exc:
            raise StepFailed(CONN, f"{step}: {describe_exception(exc)}") from exc
        if timed:
            self.run.latencies[step].append((time.perf_counter() - start) * 1000)
        return response

    @staticmethod
    def expect_status(step: str, response: requests.Response, status: int) -> Any:
        """The answer's JSON (None for an empty body) when its HTTP status is the expected one."""
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
        if response.status_code != status:
            detail = body.get("error") if isinstance(body, dict) else response.text[:200]
            raise StepFailed(WRONG, f"{step}: HTTP {response.status_code}, expected {status}: {short(detail, 160)}")
        return body

    def execute(self) -> SessionRun:
        """Create, use and delete the session; whatever fails, a created session is deleted."""
        self.guarded(self.create)
        if self.session_url:  # created, even if its answer was wrong: it must not outlive the run
            if self.run.outcome == OK:
                self.guarded(self.use)
            self.guarded(self.delete)
        return self.run

    def guarded(self, stage: Callable[[], None]) -> None:
        """Run a stage; its failure is recorded, not raised."""
        try:
            stage()
        except StepFailed as failure:
            self.fail(failure.outcome, failure.reason)
        except Exception as exc:  # noqa: BLE001 - an answer of an unexpected shape is a wrong answer
            self.fail(WRONG, f"{stage.__name__}: {type(exc).__name__}: {exc}"[:200])

    def fail(self, outcome: str, reason: str) -> None:
        """Record a failure; the first one is the one reported (later steps depend on the earlier ones)."""
        if self.run.outcome == OK:
            self.run.outcome, self.run.reason = outcome, reason

    def create(self) -> None:
        """POST /sessions: 201 with an id, an idle status and a Location; 503 is busy (the center is full)."""
        response = self.call("create", "POST", "/sessions", json={})
        if response.status_code == 503:
            raise StepFailed(BUSY, "create: HTTP 503 (all sessions in use)")
        body = self.expect_status("create", response, 201)
        session_id = body.get("session_id") if isinstance(body, dict) else None
        if not isinstance(session_id, str) or not session_id:
            raise StepFailed(WRONG, f"create: no session_id in {short(body)}")
        self.session_url = f"/sessions/{session_id}"
        if response.headers.get("Location") != self.session_url:
            raise StepFailed(WRONG, f"create: Location {response.headers.get('Location')!r}, not {self.session_url!r}")
        if body.get("status") != "idle" or body.get("execution_count") not in (0, None):
            raise StepFailed(WRONG, f"create: a new session is not idle with no cells: {short(body)}")

    def use(self) -> None:
        """Every step between creation and deletion, in order: each depends on the one before."""
        data = self.data
        self.upload()
        self.cell("import pandas as pd\n"
                  f"df = pd.read_csv({CSV_PATH!r})\n"
                  "print(len(df), int(df['qty'].sum()))",
                  output=f"{data.rows} {data.qty_total}\n", result=None)
        self.cell("revenue = int((df['qty'] * df['price']).sum())\n"
                  f"marker = {data.marker!r}\n"
                  "revenue", result=str(data.revenue))
        for n in range(1, self.plan.rounds + 1):
            self.cell("calls = globals().get('calls', 0) + 1\n(calls, revenue * calls, marker)",
                      result=repr((n, data.revenue * n, data.marker)))
        self.cell(f"wc -l < {CSV_PATH}; echo \"$((6 * 7))\"", language="bash", output=f"{data.rows + 1}\n42\n")
        self.cell(f"df.assign(revenue=df['qty'] * df['price']).to_csv({REPORT_PATH!r}, index=False)\n"
                  f"len(open({REPORT_PATH!r}).read().splitlines())", result=str(data.rows + 1))
        if self.plan.check_conflict:
            self.conflict()
        self.files()
        report = self.download(REPORT_PATH)
        first = report.decode(errors="replace").splitlines()[:2]
        qty = 1 + data.index  # the first row's quantity (see SessionData.make)
        want = ["item,qty,price,revenue", f"item1,{qty},10,{10 * qty}"]
        if first != want:
            raise StepFailed(WRONG, f"download: {REPORT_PATH} starts {short(first)}, expected {short(want)}")
        if self.download(CSV_PATH) != data.csv:
            raise StepFailed(WRONG, f"download: {CSV_PATH} differs from the uploaded bytes")

    def upload(self) -> None:
        """POST the CSV as a multipart `file` part whose filename holds a folder: 201 with its path and size."""
        response = self.call("upload", "POST", f"{self.session_url}/files",
                             files=[("file", (CSV_PATH, self.data.csv, "text/csv"))])
        body = self.expect_status("upload", response, 201)
        want = [{"path": CSV_PATH, "size": len(self.data.csv)}]
        if not isinstance(body, dict) or body.get("files") != want:
            raise StepFailed(WRONG, f"upload: answered {short(body)}, expected files {want}")

    def cell(self, code: str, language: str = "python", output: str | None = None, result: str | None = None,
             ) -> dict[str, Any]:
        """Run one cell: 200, status ok, the next execution_count, and the expected output and result."""
        step = f"cell {self.count + 1}"
        response = self.call("cell", "POST", f"{self.session_url}/runcode",
                             json={"code": code, "languageType": language})
        body = self.expect_status(step, response, 200)
        self.run.cells += 1
        if not isinstance(body, dict):
            raise StepFailed(WRONG, f"{step}: a JSON {type(body).__name__}, not an object")
        if body.get("status") != "ok":
            problem = short(body.get("error") or body.get("stderr"))
            raise StepFailed(WRONG, f"{step}: status {body.get('status')!r}: {problem}")
        if body.get("execution_count") != self.count + 1:
            count = body.get("execution_count")
            raise StepFailed(WRONG, f"{step}: execution_count {count!r}, expected {self.count + 1}")
        self.count += 1
        if output is not None and body.get("output") != output:
            raise StepFailed(WRONG, f"{step}: output {short(body.get('output'))}, expected {output!r}")
        if language == "python" and body.get("result") != result:
            raise StepFailed(WRONG, f"{step}: result {short(body.get('result'))}, expected {result!r}")
        return body

    def conflict(self) -> None:
        """While a slow cell runs, GET says busy and another cell answers 409; the slow cell still answers."""
        answers: list[requests.Response | BaseException] = []

        def slow_cell() -> None:
            try:  # a connection of its own: requests.Session is not for two threads at once
                answers.append(requests.post(f"{self.plan.url}{self.session_url}/runcode", headers=self.plan.headers,
                                             json={"code": "import time\ntime.sleep(2)\nmarker",
                                                   "languageType": "python"}, timeout=self.plan.http_timeout))
            except requests.RequestException as exc:
                answers.append(exc)

        slow = threading.Thread(target=slow_cell, name="slow-cell", daemon=True)
        slow.start()
        seen_busy = False
        while slow.is_alive() and not seen_busy:  # poll until the slow cell holds the session
            state = self.expect_status("conflict", self.call("conflict", "GET", self.session_url, timed=False), 200)
            seen_busy = isinstance(state, dict) and state.get("status") == "busy"
            if not seen_busy:
                time.sleep(0.02)
        if seen_busy:
            response = self.call("conflict", "POST", f"{self.session_url}/runcode",
                                 json={"code": "marker", "languageType": "python"})
            self.expect_status("conflict", response, 409)
            if not response.headers.get("Retry-After"):
                raise StepFailed(WRONG, "conflict: the 409 has no Retry-After")
        slow.join(self.plan.http_timeout)
        if not answers or isinstance(answers[0], BaseException):
            reason = describe_exception(answers[0]) if answers else "no answer"
            raise StepFailed(CONN, f"conflict: the slow cell failed: {reason}")
        body = self.expect_status("conflict", answers[0], 200)
        if not seen_busy:
            raise StepFailed(WRONG, "conflict: the session never said busy while its slow cell ran")
        self.count += 1
        self.run.cells += 1
        if body.get("result") != repr(self.data.marker) or body.get("execution_count") != self.count:
            raise StepFailed(WRONG, f"conflict: the slow cell answered {short(body)}")

    def files(self) -> None:
        """GET the listing: the uploaded CSV with its size, and the report a cell wrote."""
        body = self.expect_status("files", self.call("files", "GET", f"{self.session_url}/files"), 200)
        listed = body.get("files") if isinstance(body, dict) else None
        if not isinstance(listed, list):
            raise StepFailed(WRONG, f"files: no list in {short(body)}")
        sizes = {f.get("path"): f.get("size") for f in listed if isinstance(f, dict)}
        if sizes.get(CSV_PATH) != len(self.data.csv) or REPORT_PATH not in sizes:
            raise StepFailed(WRONG, f"files: expected {CSV_PATH} ({len(self.data.csv)} bytes) and {REPORT_PATH}, "
                                    f"got {short(sizes)}")
        if not all(isinstance(f.get("modified"), (int, float, str)) for f in listed):
            raise StepFailed(WRONG, f"files: an entry without 'modified': {short(listed)}")

    def download(self, path: str) -> bytes:
        """GET one file: 200 as an attachment; its bytes."""
        response = self.call("download", "GET", f"{self.session_url}/files/{path}")
        self.expect_status("download", response, 200)
        if "attachment" not in response.headers.get("Content-Disposition", ""):
            raise StepFailed(WRONG, f"download: {path} is not sent as an attachment")
        return response.content

    def delete(self) -> None:
        """DELETE: 204; afterwards the session answers 410."""
        self.expect_status("delete", self.call("delete", "DELETE", self.session_url), 204)
        self.expect_status("delete", self.call("delete", "GET", self.session_url, timed=False), 410)


def run_sessions(plan: SessionPlan, total: int) -> tuple[list[SessionRun], float]:
    """Drive total sessions at once, one thread each; their runs and the wall time."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=total, thread_name_prefix="session") as pool:
        runs = list(pool.map(lambda index: SessionDriver(plan, index).execute(), range(total)))
    return runs, time.perf_counter() - start


def session_summary(runs: list[SessionRun], elapsed_s: float, allow_busy: bool,
                    extra: dict[str, Any]) -> dict[str, Any]:
    """The session run's summary as plain JSON-able data."""
    results = [Result(run.outcome, run.reason) for run in runs]
    summary = Summary(results, elapsed_s, allow_busy)
    steps = {}
    for step in SESSION_STEPS:
        values = [ms for run in runs for ms in run.latencies[step]]
        if values:
            steps[step] = {"count": len(values), "p50": rounded(percentile(values, 50)),
                           "p95": rounded(percentile(values, 95)), "max": rounded(max(values))}
    cells = sum(run.cells for run in runs)
    return {
        **extra,
        "sessions": len(runs),
        "successes": summary.count(OK),
        "wrong": summary.count(WRONG),
        "wrong_reasons": first_reasons(results, WRONG),
        "busy": summary.count(BUSY),
        "allow_busy": allow_busy,
        "connection_errors": summary.count(CONN),
        "connection_error_reasons": first_reasons(results, CONN),
        "cells": cells,
        "step_latency_ms": steps,
        "elapsed_s": round(elapsed_s, 3),
        "cells_per_s": round(cells / elapsed_s, 2) if elapsed_s > 0 else None,
        # busy sessions are allowed, but a run where no session got through proves nothing
        "passed": summary.passed() and summary.count(OK) > 0,
    }


def render_session_text(data: dict[str, Any]) -> str:
    """The human-readable report of a session run."""
    lines = [
        f"target:             {data['url']}/sessions  sessions={data['sessions']}  rounds={data['rounds']}"
        f"  check_conflict={data['check_conflict']}",
        f"sessions passed:    {data['successes']} of {data['sessions']}",
        f"wrong answers:      {data['wrong']}",
        *(f"  - {r['reason']}  (x{r['count']})" for r in data["wrong_reasons"]),
        f"busy (HTTP 503):    {data['busy']}" + ("  (allowed)" if data["allow_busy"] else "  (counted as wrong)"),
        f"connection errors:  {data['connection_errors']}",
        *(f"  - {r['reason']}  (x{r['count']})" for r in data["connection_error_reasons"]),
        "latency ms:         step       count      p50      p95      max",
        *(f"                    {step:<9}{v['count']:>6}{fmt(v['p50']):>9}{fmt(v['p95']):>9}{fmt(v['max']):>9}"
          for step, v in data["step_latency_ms"].items()),
        f"cells:              {data['cells']} ({fmt(data['cells_per_s'], ' cells/s')}) over {data['elapsed_s']} s",
        f"result:             {'PASS' if data['passed'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the load, print the summary; 0 only when every answer was right."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sessions is not None:
        if args.code is not None:
            parser.error("--code is for /runcode loads; --sessions runs its own cells")
        headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
        session_plan = SessionPlan(url=args.url.rstrip("/"), headers=headers, http_timeout=args.timeout,
                                   rounds=args.rounds, check_conflict=args.check_conflict)
        runs, elapsed = run_sessions(session_plan, args.sessions)
        data = session_summary(runs, elapsed, args.allow_busy, {
            "url": session_plan.url, "mode": "sessions", "rounds": args.rounds,
            "check_conflict": args.check_conflict})
        print(json.dumps(data) if args.json else render_session_text(data))
        return 0 if data["passed"] else 1
    plan = make_plan(args, parser)
    summary = run_all(plan, args.requests, args.concurrency, args.allow_busy)
    summary.extra = {"url": plan.url, "kind": "custom" if args.code is not None else args.kind,
                     "language": plan.expected.language, "concurrency": args.concurrency}
    data = summary_dict(summary)
    print(json.dumps(data) if args.json else render_text(data))
    return 0 if data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
