"""The agent's state: its one worker, warmed up while idle, and its mode, fresh until a run or a session takes it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from agent_options import AgentOptions
from job_request import Job
from life_watch import LifeWatch
from worker_process import COLD_START_SECONDS, Worker, kill_sandbox_processes

if TYPE_CHECKING:  # a name for the type only: session.py is loaded once a session starts, and imports nothing here
    from session import Session


class Agent:
    """Holds this container's one worker, its mode (fresh, then "oneshot" or "session" for good) and its life watch."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.worker = Worker(options)
        self.lock = threading.Lock()  # guards `used`, `mode` and the decision to warm up
        self.used = False
        self.mode = "fresh"  # then "oneshot" (POST /run) or "session" (POST /session/start), for good
        self.session: Session | None = None  # once in session mode
        self.life = LifeWatch(options.session_lifetime, options.max_silence)
        timer = threading.Timer(options.warm_delay, self.warm_up)
        timer.daemon = True
        timer.start()

    def warm_up(self) -> None:
        """Import the heavy modules once the sandbox sat idle for `warm_delay`, the groups `warm_first`
        first (the center's choice; see warm_up.py there): under load a request takes the sandbox at
        once and a warm-up would only burn CPU that other requests need; when idle, the next plot
        finds pandas and matplotlib loaded."""
        self.worker.started.wait(COLD_START_SECONDS)  # with no delay the worker may still be starting
        with self.lock:
            if self.used or not self.worker.started.is_set():
                return
            self.worker.warming = True
            try:
                self.worker.send(f"warm {','.join(self.options.warm_first)} {self.options.warm_rest:g}\n".encode())
            except OSError:
                pass

    def take_worker(self, job: Job) -> Worker:
        """A worker waiting for the job: warm or never asked to warm, or still warming up for a job that
        needs those modules (it stops its warm-up at the next step and keeps what it imported);
        otherwise a cold one."""
        worker = self.worker
        if worker.warming and not worker.warm.is_set() and not job.uses_preloaded_modules():
            kill_sandbox_processes()  # a cold start beats waiting for imports the program does not need
            worker.wait()
            worker = self.worker = Worker(self.options)
        if not worker.started.wait(COLD_START_SECONDS):
            raise RuntimeError("the sandbox worker did not start")
        return worker

    def health(self) -> dict[str, Any]:
        """The /healthz answer: the worker's state and the agent's mode (and a session's state)."""
        worker = self.worker
        answer = {"ok": True, "warm": worker.warm.is_set(), "warm_all": worker.warm_all.is_set(),
                  "warming": worker.warming, "used": self.used,
                  "mode": self.mode}
        if self.session is not None:
            answer.update(self.session.health())
        return answer

    def take(self, mode: str) -> str | None:
        """Switch a fresh agent to `mode` for good; why not when it is not fresh."""
        with self.lock:
            if self.mode == "oneshot":
                return "this sandbox has already run a program"
            if self.mode == "session":
                return "this sandbox is a session's"
            self.mode, self.used = mode, True
        return None
