"""A one-shot run (POST /run): its input files written, its program run to the end, and its report."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from agent_state import Agent
from displays import Displays
from job_request import Job
from output_files import Snapshot, workspace_snapshot
from output_pipes import EventStream, OutputBudget, OutputReader
from run_report import complete_report, describe_error, exit_code_of, oom_kill_count, record_result
from worker_process import Worker, kill_sandbox_processes


def prepare(agent: Agent, job: Job) -> tuple[Worker, Snapshot | None]:
    """The worker for the job, its input files written (workspace.WorkspaceError when they cannot be), and the
    workspace as it was then (None without input files: every file found afterwards is new)."""
    worker = agent.take_worker(job)
    before = None
    if job.files:
        import workspace  # only for input files: a run without any pays nothing for it

        workspace.write_files(agent.options.uid, job.files)
        job.files = []  # the agent's memory is the container's: the bytes are in the workspace now
        before = workspace_snapshot(deep=True)  # input files may be in folders
    return worker, before


def execute(job: Job, worker: Worker, before: Snapshot | None, events: EventStream | None = None) -> dict[str, Any]:
    """Run the prepared job to its end (exit, timeout or output cap) and report what happened; its output also
    goes to `events` as it comes, when given."""
    oom_before = oom_kill_count()
    finished = threading.Event()
    budget = OutputBudget(int(job.max_output_bytes), finished)
    readers = [OutputReader(pipe, budget, events.output(index) if events else None)
               for index, pipe in enumerate((worker.stdout, worker.stderr))]
    for reader in readers:
        reader.start()
    threading.Thread(target=lambda: (worker.wait(), finished.set()), daemon=True).start()

    worker.displays = Displays(job, events)
    started = time.monotonic()
    payload = json.dumps({"language": job.language, "code": job.code, "variables": job.program_variables(),
                          "environment": job.environment})
    try:
        worker.send(payload.encode() + b"\n")
        worker.stdin.close()
    except BrokenPipeError:
        pass  # the worker is gone; its exit status tells why
    timed_out = not finished.wait(job.timeout)
    duration_ms = (time.monotonic() - started) * 1000
    # Whatever ended the run, nothing of the program may outlive it (background jobs included).
    kill_sandbox_processes()
    returncode = worker.wait()
    for reader in readers:
        reader.join(timeout=2)
    worker.status_thread.join(timeout=2)  # the result record, written just before the worker exited
    stdout, stderr = readers

    if timed_out:
        status = "timeout"
    elif budget.cut:
        status = "output_limit"
    elif oom_kill_count() > oom_before:
        status = "oom"
    elif returncode != 0:
        status = "error"
    else:
        status = "ok"
    record = worker.record or {}
    report: dict[str, Any] = {
        "stdout": stdout.text(), "stderr": stderr.text(), "exit_code": exit_code_of(returncode),
        "status": status, "duration_ms": round(duration_ms, 1), "images": [], "files": [], "skipped": [],
        "warm": worker.warming,  # ran in a worker that warmed up (all of it, or until the program came)
        "result": record_result(record),
    }
    return complete_report(report, job, before, with_files=True, displays=worker.displays,
                           describe=lambda: describe_error(status, returncode, report["stderr"], job,
                                                           record.get("error")))
