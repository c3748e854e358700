"""The warm pool: one slot per port, each holding a fresh sandbox started ahead of demand.

As in urllib3's connection pool, one queue is both the semaphore and the free list: it holds
the slots whose sandbox is ready. `acquire()` takes one or raises PoolExhausted after the wait;
`sandbox()` is the context manager that gives the slot back. A sandbox runs one program only:
giving a slot back retires its container, and the slot's own thread starts a replacement,
which joins the queue only once its agent answers.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

from errors import PoolExhausted

log = logging.getLogger(__name__)

S = TypeVar("S")


class Launcher(Protocol[S]):
    """What the pool needs from the container side (DockerSandboxes in production)."""

    def launch(self, port: int, deadline_seconds: float | None = None,
               cancelled: threading.Event | None = None) -> S:
        """Start a sandbox for the slot and return it once it can run a program."""
        ...

    def destroy(self, sandbox: S) -> None:
        """Remove the sandbox and everything it holds."""
        ...

    def is_healthy(self, sandbox: S) -> bool:
        """Whether the sandbox still answers (cheap: called at every hand-out)."""
        ...


class SlotState(enum.Enum):
    """Where a slot is in its cycle: starting -> ready -> busy -> (retired) -> starting."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPED = "stopped"


class Slot(Generic[S]):
    """One port of the range and the sandbox currently living on it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.state = SlotState.STARTING
        self.sandbox: S | None = None
        self.released = threading.Event()
        self.failures = 0
        self.generation = 0  # bumped for each new sandbox: queue entries of an older one are stale


class SandboxPool(Generic[S]):
    """Hands out ready sandboxes, one program each, and keeps every slot refilled."""

    def __init__(self, launcher: Launcher[S], ports: list[int], *, backoff_initial: float = 0.5,
                 backoff_max: float = 10.0, check_interval: float = 2.0) -> None:
        self.launcher = launcher
        self.slots = [Slot[S](port) for port in ports]
        # FIFO of (slot, generation): the longest-warmed sandbox first.
        self._ready: queue.Queue[tuple[Slot[S], int]] = queue.Queue()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Retiring a container is slow-ish Docker work that must not delay its replacement.
        self._reaper = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandbox-reaper")
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.check_interval = check_interval
        self.started_total = 0
        self.failed_total = 0
        self.dead_total = 0

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start every slot's thread and the watcher; sandboxes come up in the background."""
        for slot in self.slots:
            thread = threading.Thread(target=self._keep_filled, args=(slot,), name=f"slot-{slot.port}", daemon=True)
            thread.start()
            self._threads.append(thread)
        watcher = threading.Thread(target=self._watch, name="pool-watcher", daemon=True)
        watcher.start()
        self._threads.append(watcher)

    def close(self, timeout: float = 15.0) -> None:
        """Stop refilling, remove every sandbox the pool holds, wait for the slot threads."""
        self._closing.set()
        for slot in self.slots:
            slot.released.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._reaper.shutdown(wait=True)

    @property
    def closing(self) -> bool:
        """True once close() was called."""
        return self._closing.is_set()

    # --- handing out -------------------------------------------------------------------------

    def acquire(self, timeout: float) -> Slot[S]:
        """A slot with a ready, live sandbox, marked busy; PoolExhausted if none frees up in time.

        A sandbox that died while it waited in the queue (killed, or the Docker daemon restarted)
        is retired on the spot and the next one is tried.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                slot, generation = self._ready.get(timeout=remaining) if remaining > 0 else self._ready.get_nowait()
            except queue.Empty:
                raise PoolExhausted(
                    f"all {len(self.slots)} sandboxes are busy; try again shortly",
                    retry_after=max(1, round(timeout) or 1),
                ) from None
            if self.closing:
                raise PoolExhausted("the center is shutting down; try again shortly")
            with self._lock:
                if generation != slot.generation or slot.state is not SlotState.READY:
                    continue  # stale: the watcher retired that sandbox already
                slot.state = SlotState.BUSY
            if self.launcher.is_healthy(slot.sandbox):
                return slot
            log.warning("the sandbox on slot %d died while it waited; replacing it", slot.port)
            self.dead_total += 1
            self.release(slot)

    def release(self, slot: Slot[S]) -> None:
        """Give the slot back: its sandbox is retired and a fresh one started in its place (once)."""
        self._retire_if(slot, SlotState.BUSY)

    def _retire_if(self, slot: Slot[S], expected: SlotState) -> bool:
        """Move the slot from `expected` to STARTING and wake its thread; False if it was elsewhere."""
        with self._lock:
            if slot.state is not expected:
                return False
            slot.state = SlotState.STARTING
        slot.released.set()
        return True

    @contextmanager
    def sandbox(self, timeout: float) -> Iterator[S]:
        """`with pool.sandbox(wait) as sandbox:` one ready sandbox for one program."""
        slot = self.acquire(timeout)
        try:
            assert slot.sandbox is not None
            yield slot.sandbox
        finally:
            self.release(slot)

    def stats(self) -> dict[str, int]:
        """Counts for /readyz and /metrics."""
        states = [slot.state for slot in self.slots]
        return {
            "slots": len(self.slots),
            "ready": states.count(SlotState.READY),
            "busy": states.count(SlotState.BUSY),
            "starting": states.count(SlotState.STARTING),
            "started_total": self.started_total,
            "failed_total": self.failed_total,
            "dead_total": self.dead_total,
        }

    # --- one slot's thread -------------------------------------------------------------------

    def _keep_filled(self, slot: Slot[S]) -> None:
        """Loop: start a sandbox, offer it, wait until it is used, retire it, start the next."""
        while not self.closing:
            slot.state = SlotState.STARTING
            try:
                sandbox = self.launcher.launch(slot.port, cancelled=self._closing)
            except Exception as e:  # noqa: BLE001 - any start failure is retried with backoff
                if self.closing:
                    break
                slot.failures += 1
                self.failed_total += 1
                delay = min(self.backoff_max, self.backoff_initial * 2 ** (slot.failures - 1))
                log.warning("sandbox on port %d failed to start (%s); retrying in %.1f s", slot.port, e, delay)
                self._closing.wait(delay)
                continue
            slot.failures = 0
            self.started_total += 1
            slot.released.clear()
            if self.closing:
                slot.sandbox = sandbox
                self._retire(slot)
                break
            with self._lock:
                slot.sandbox = sandbox
                slot.generation += 1
                slot.state = SlotState.READY
                self._ready.put((slot, slot.generation))
            slot.released.wait()
            self._retire(slot)
        slot.state = SlotState.STOPPED

    def _watch(self) -> None:
        """Every few seconds, retire ready sandboxes whose agent stopped answering (e.g. Docker restarted),
        so /readyz tells the truth and the slots refill without waiting for a request."""
        while not self._closing.wait(self.check_interval):
            for slot in self.slots:
                sandbox = slot.sandbox
                if slot.state is SlotState.READY and sandbox is not None and not self.launcher.is_healthy(sandbox):
                    if self._retire_if(slot, SlotState.READY):
                        self.dead_total += 1
                        log.warning("the sandbox on slot %d stopped answering; replacing it", slot.port)

    def _retire(self, slot: Slot[S]) -> None:
        sandbox, slot.sandbox = slot.sandbox, None
        if sandbox is None:
            return
        if self.closing:
            self.launcher.destroy(sandbox)
        else:
            self._reaper.submit(self.launcher.destroy, sandbox)
