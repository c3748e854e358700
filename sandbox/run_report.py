"""A run's or a cell's report: how the program ended, said in one line, and what it left added."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from contract import MAX_ERROR_SUMMARY_BYTES, OUTPUT_CUT_NOTICE, cut_result
from displays import Displays
from job_request import Job
from output_files import Snapshot, collect_outputs
from output_pipes import json_prefix, json_suffix

ERROR_TAIL_BYTES = 4096  # of stderr repeated as `error` (JSON-encoded): the whole of it is in `stderr`
STATUS_MESSAGES = {
    "timeout": "execution exceeded the time limit of {timeout:g} s and was killed",
    "output_limit": ("output (stdout and stderr together) exceeded {max_output_bytes} bytes and was cut; "
                     "the program was stopped"),
    "oom": "the program ran out of memory and was killed",
}


def oom_kill_count() -> int:
    """How many times this container's memory cgroup has OOM-killed a process (v1 or v2)."""
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def signal_description(number: int) -> str:
    """'signal 9 (SIGKILL)', 'signal 40 (SIGRTMIN+6)': any number a process can die of."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN < number < signal.SIGRTMAX:
            name = f"SIGRTMIN+{number - signal.SIGRTMIN}"
        else:
            return f"signal {number}"
    return f"signal {number} ({name})"


def exit_code_of(returncode: int) -> int:
    """A process's exit status as a shell reports it: 128 + the signal's number when a signal killed it."""
    return returncode if returncode >= 0 else 128 - returncode


def record_result(record: dict[str, Any] | None) -> str | None:
    """A record's "result" (the repr of the last expression), cut as the worker cuts it: the program
    can write a record of its own on the status pipe it inherits, so nothing in one is trusted."""
    value = (record or {}).get("result")
    return cut_result(value) if isinstance(value, str) else None


def describe_error(status: str, returncode: int, stderr: str, job: Job, summary: Any = None) -> str:
    """A one-line reason: the status's or the signal's; the exception and the program's line (the worker's
    `summary`); bash's last line of stderr; else stderr's tail, a few KB at most (all of it is in `stderr`)."""
    if status in STATUS_MESSAGES:
        return STATUS_MESSAGES[status].format(timeout=job.timeout, max_output_bytes=job.max_output_bytes)
    if returncode < 0:
        return f"the program was killed by {signal_description(-returncode)}"
    if isinstance(summary, str) and summary.strip():
        return json_prefix(summary, MAX_ERROR_SUMMARY_BYTES)
    stderr = stderr.strip()
    if job.language == "bash" and stderr:
        last = stderr.rpartition("\n")[2].strip()
        return f"{json_prefix(last, MAX_ERROR_SUMMARY_BYTES)} (exit code {returncode})"
    # A Python program that failed without an exception of its own (sys.exit("message"), a crash at exit).
    tail = json_suffix(stderr, ERROR_TAIL_BYTES)
    if len(tail) < len(stderr):
        tail = "…" + tail
    return tail or f"the program exited with code {returncode}"


def complete_report(report: dict[str, Any], job: Job, before: Snapshot | None, with_files: bool,
                    describe: Callable[[], str], displays: Displays | None = None) -> dict[str, Any]:
    """The report with what the program left: its images (and, `with_files`, its other files) made since
    `before`, its rich `results` (what `displays` kept), the notice of a cut output, and `describe()`'s
    one-line `error` unless it ended ok."""
    status = report["status"]
    try:
        outputs = collect_outputs(job, before, with_files)
        report.update(images=outputs.images, skipped=outputs.skipped.report())
        if with_files:
            report["files"] = outputs.files
    except Exception as e:  # noqa: BLE001 - the program's output is reported whatever its folder holds
        what = "outputs" if with_files else "images"
        report["skipped"] = [{"name": ".", "reason": f"{what} could not be collected: {type(e).__name__}: {e}"}]
    if displays is not None:
        report["results"] = displays.report(report.get("images") or [])
        report["skipped"] = report.get("skipped", []) + displays.skipped
    if status == "output_limit":
        report["output_notice"] = OUTPUT_CUT_NOTICE.format(max_output_bytes=job.max_output_bytes)
    if status != "ok":
        report["error"] = describe()
    return report
