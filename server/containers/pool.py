"""The warm pool: a fixed number of slots, each holding a fresh sandbox started ahead of demand.

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

from server.errors import EngineUnavailable, PoolExhausted

log = logging.getLogger(__name__)

S = TypeVar("S")


class Launcher(Protocol[S]):
    """What the pool needs from the container side (DockerSandboxes in production)."""

    def launch(self, slot: int, cancelled: threading.Event | None = None) -> S:
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
    """One place in the pool (numbered as interpreter_port_range numbers them) and the sandbox living on it."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.state = SlotState.STARTING
        self.sandbox: S | None = None
        self.released = threading.Event()
        self.failures = 0
        self.generation = 0  # bumped for each new sandbox: queue entries of an older one are stale


class SandboxPool(Generic[S]):
    """Hands out ready sandboxes, one program each, and keeps every slot refilled."""

    def __init__(self, launcher: Launcher[S], slot_numbers: list[int], *, backoff_initial: float = 0.5,
                 backoff_max: float = 10.0, check_interval: float = 2.0) -> None:
        self.launcher = launcher
        self.slots = [Slot[S](number) for number in slot_numbers]
        # FIFO of (slot, generation): the longest-warmed sandbox first; (None, 0) wakes a waiter at close.
        self._ready: queue.Queue[tuple[Slot[S] | None, int]] = queue.Queue()
        self._waiting = 0  # acquire() calls blocked on the queue, woken at close
        self._engine_down: Exception | None = None  # why the last sandbox starts failed, while they fail
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
            thread = threading.Thread(target=self._keep_filled, args=(slot,), name=f"slot-{slot.number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        watcher = threading.Thread(target=self._watch, name="pool-watcher", daemon=True)
        watcher.start()
        self._threads.append(watcher)

    def close(self, timeout: float = 15.0) -> None:
        """Stop handing out and refilling, remove every sandbox the pool holds, wait for the slot threads.

        Waiting acquire() calls answer at once; a program still running is stopped (drain() first
        to let them finish).
        """
        self.stop_handing_out()
        for slot in self.slots:
            slot.released.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._reaper.shutdown(wait=True)

    def stop_handing_out(self) -> None:
        """From now on acquire() refuses at once, including the calls already waiting."""
        self._closing.set()
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Make every acquire() blocked on the queue look again at the pool's state."""
        with self._lock:
            waiting = self._waiting
        for _ in range(waiting):
            self._ready.put((None, 0))

    def drain(self, timeout: float) -> bool:
        """Wait until no sandbox is busy (at most `timeout` seconds); True when none is."""
        deadline = time.monotonic() + timeout
        while any(slot.state is SlotState.BUSY for slot in self.slots):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    @property
    def closing(self) -> bool:
        """True once close() was called."""
        return self._closing.is_set()

    # --- handing out -------------------------------------------------------------------------

    def acquire(self, timeout: float) -> Slot[S]:
        """A slot with a ready, live sandbox, marked busy; PoolExhausted if none frees up in time.

        A sandbox that died while it waited in the queue (killed, or the Docker daemon restarted)
        is retired on the spot and the next one is tried. While the engine cannot start sandboxes
        and none is ready, the answer is EngineUnavailable at once rather than after the wait.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.closing:
                raise PoolExhausted("the center is shutting down; try again shortly")
            if self._engine_down is not None and self._ready.empty():
                raise EngineUnavailable("no sandbox can be started: the Docker engine is not available") \
                    from self._engine_down
            remaining = deadline - time.monotonic()
            with self._lock:
                self._waiting += 1
            try:
                slot, generation = self._ready.get(timeout=remaining) if remaining > 0 else self._ready.get_nowait()
            except queue.Empty:
                raise PoolExhausted(
                    f"all {len(self.slots)} sandboxes are busy; try again shortly",
                    retry_after=max(1, round(timeout) or 1),
                ) from None
            finally:
                with self._lock:
                    self._waiting -= 1
            if slot is None:
                continue  # woken by a close, or a leftover wake-up: the loop's checks decide
            with self._lock:
                if generation != slot.generation or slot.state is not SlotState.READY:
                    continue  # stale: the watcher retired that sandbox already
                slot.state = SlotState.BUSY
            if self.launcher.is_healthy(slot.sandbox):
                return slot
            log.warning("the sandbox on slot %d died while it waited; replacing it", slot.number)
            self.dead_total += 1
            self.release(slot)

    def detach(self, timeout: float) -> S:
        """A ready sandbox handed over for good (a session's): its slot starts a replacement at once."""
        slot = self.acquire(timeout)
        with self._lock:
            sandbox, slot.sandbox = slot.sandbox, None
            slot.state = SlotState.STARTING
        slot.released.set()  # the slot's thread finds no sandbox to retire and starts the next
        assert sandbox is not None
        return sandbox

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

    def can_serve(self) -> bool:
        """Whether runs can be served: handing out, and a sandbox ready, busy, or starting with no failure yet.

        Every sandbox busy at once still counts (a balancer must not drop a loaded center).
        """
        if self.closing or (self._engine_down is not None and self._ready.empty()):
            return False
        return any(slot.state in (SlotState.READY, SlotState.BUSY)
                   or (slot.state is SlotState.STARTING and slot.failures == 0) for slot in self.slots)

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
                sandbox = self.launcher.launch(slot.number, cancelled=self._closing)
            except Exception as e:  # noqa: BLE001 - any start failure is retried with backoff
                if self.closing:
                    break
                slot.failures += 1
                self.failed_total += 1
                if isinstance(e, EngineUnavailable):
                    self._engine_down = e
                    self._wake_waiters()  # they answer 503 now rather than at the end of their wait
                delay = min(self.backoff_max, self.backoff_initial * 2 ** (slot.failures - 1))
                log.warning("sandbox on slot %d failed to start (%s); retrying in %.1f s", slot.number, e, delay)
                self._closing.wait(delay)
                continue
            self._engine_down = None
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
                        log.warning("the sandbox on slot %d stopped answering; replacing it", slot.number)

    def _retire(self, slot: Slot[S]) -> None:
        sandbox, slot.sandbox = slot.sandbox, None
        if sandbox is None:
            return
        if self.closing:
            self.launcher.destroy(sandbox)
        else:
            self._reaper.submit(self.launcher.destroy, sandbox)
