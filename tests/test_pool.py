"""Pure-logic tests of server/containers/pool.py's SandboxPool bookkeeping, driven by a fake launcher (no Docker)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from server.containers.pool import SandboxPool, SlotState
from server.errors import EngineUnavailable, PoolExhausted

FIRST_PORT = 9001
WAIT = 10.0  # generous deadline for anything that happens in background threads


@dataclass(eq=False)  # identity semantics: two sandboxes are never "equal"
class FakeSandbox:
    """What the fake launcher hands out: the slot it was started for and a serial number."""

    slot: int
    serial: int


class FakeLauncher:
    """Stands in for DockerSandboxes: can fail its first launches and can hold launches until `gate` is set."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.gate = threading.Event()
        self.gate.set()  # clear it to make launches block (until set again or the pool is closing)
        self._lock = threading.Lock()
        self._serials = itertools.count(1)
        self.attempts = 0
        self.failure: Callable[[str], Exception] = RuntimeError
        self.launched: list[FakeSandbox] = []
        self.destroyed: list[FakeSandbox] = []
        self.dead: set[int] = set()

    def launch(self, slot: int, cancelled: threading.Event | None = None) -> FakeSandbox:
        with self._lock:
            self.attempts += 1
            attempt = self.attempts
        if attempt <= self.fail_first:
            raise self.failure(f"launch {attempt} failed")
        while not self.gate.wait(0.01):
            if cancelled is not None and cancelled.is_set():
                raise RuntimeError("launch cancelled")
        with self._lock:
            sandbox = FakeSandbox(slot=slot, serial=next(self._serials))
            self.launched.append(sandbox)
        return sandbox

    def destroy(self, sandbox: FakeSandbox) -> None:
        with self._lock:
            self.destroyed.append(sandbox)

    def is_healthy(self, sandbox: FakeSandbox) -> bool:
        with self._lock:
            return sandbox.serial not in self.dead

    def kill(self, sandbox: FakeSandbox) -> None:
        """Make a sandbox die while it waits in the pool."""
        with self._lock:
            self.dead.add(sandbox.serial)

    def was_destroyed(self, sandbox: FakeSandbox) -> bool:
        with self._lock:
            return any(item is sandbox for item in self.destroyed)


def eventually(predicate: Callable[[], object], timeout: float = WAIT) -> bool:
    """Poll predicate until it holds or the (generous) deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


PoolFactory = Callable[..., tuple[SandboxPool[FakeSandbox], FakeLauncher]]


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    """Build started pools on fake launchers; every pool is closed at the end of the test."""
    pools: list[SandboxPool[FakeSandbox]] = []

    def factory(slots: int = 2, launcher: FakeLauncher | None = None, *, start: bool = True,
                backoff_initial: float = 0.01, backoff_max: float = 0.05,
                check_interval: float = 2.0) -> tuple[SandboxPool[FakeSandbox], FakeLauncher]:
        launcher = launcher or FakeLauncher()
        ports = list(range(FIRST_PORT, FIRST_PORT + slots))
        pool = SandboxPool(launcher, ports, backoff_initial=backoff_initial, backoff_max=backoff_max,
                           check_interval=check_interval)
        pools.append(pool)
        if start:
            pool.start()
        return pool, launcher

    yield factory
    for pool in pools:
        pool.close(timeout=5)


def all_ready(pool: SandboxPool[FakeSandbox]) -> bool:
    """Every slot holds a ready sandbox."""
    return pool.stats()["ready"] == len(pool.slots)


# --- filling -------------------------------------------------------------------------------------

def test_start_fills_every_slot(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=3)
    assert eventually(lambda: all_ready(pool))
    assert pool.stats() == {"slots": 3, "ready": 3, "busy": 0, "starting": 0, "started_total": 3, "failed_total": 0,
                            "dead_total": 0}
    assert sorted(sandbox.slot for sandbox in launcher.launched) == [9001, 9002, 9003]
    for slot in pool.slots:
        assert slot.state is SlotState.READY
        assert slot.sandbox is not None and slot.sandbox.slot == slot.number


def test_nothing_is_launched_before_start(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=2, start=False)
    assert launcher.attempts == 0
    assert pool.stats()["ready"] == 0
    with pytest.raises(PoolExhausted):
        pool.acquire(0)


def test_stats_count_starting_slots(make_pool: PoolFactory) -> None:
    launcher = FakeLauncher()
    launcher.gate.clear()
    pool, _ = make_pool(slots=2, launcher=launcher)
    assert eventually(lambda: launcher.attempts == 2)
    assert pool.stats()["starting"] == 2
    assert pool.stats()["ready"] == 0
    with pytest.raises(PoolExhausted):
        pool.acquire(0.05)
    launcher.gate.set()
    assert eventually(lambda: all_ready(pool))
    assert pool.stats()["starting"] == 0


# --- handing out ---------------------------------------------------------------------------------

def test_acquire_marks_the_slot_busy(make_pool: PoolFactory) -> None:
    pool, _ = make_pool(slots=3)
    assert eventually(lambda: all_ready(pool))
    slot = pool.acquire(5)
    assert slot.state is SlotState.BUSY
    assert slot.sandbox is not None and slot.sandbox.slot == slot.number
    stats = pool.stats()
    assert (stats["slots"], stats["ready"], stats["busy"], stats["starting"]) == (3, 2, 1, 0)

    others = [pool.acquire(5), pool.acquire(5)]
    stats = pool.stats()
    assert (stats["ready"], stats["busy"]) == (0, 3)
    assert len({id(s.sandbox) for s in [slot, *others]}) == 3
    assert len({s.number for s in [slot, *others]}) == 3


def test_release_retires_the_sandbox_and_refills_the_slot(make_pool: PoolFactory) -> None:
    launcher = FakeLauncher()
    pool, _ = make_pool(slots=1, launcher=launcher)
    assert eventually(lambda: all_ready(pool))
    slot = pool.acquire(5)
    used = slot.sandbox
    assert used is not None
    launcher.gate.clear()  # hold the replacement so the "starting" phase can be seen
    pool.release(slot)
    assert eventually(lambda: launcher.was_destroyed(used))
    assert eventually(lambda: pool.stats()["starting"] == 1)
    assert pool.stats()["busy"] == 0
    launcher.gate.set()
    assert eventually(lambda: all_ready(pool))
    fresh = pool.acquire(5).sandbox
    assert fresh is not None and fresh is not used
    assert pool.stats()["started_total"] == 2


def test_a_sandbox_is_never_handed_out_twice(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=1)
    handed_out: list[FakeSandbox] = []
    for _ in range(5):
        with pool.sandbox(WAIT) as sandbox:
            handed_out.append(sandbox)
    assert len({id(sandbox) for sandbox in handed_out}) == 5
    assert eventually(lambda: all(launcher.was_destroyed(sandbox) for sandbox in handed_out))


def test_concurrent_users_never_share_a_sandbox(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=2)
    lock = threading.Lock()
    in_use: set[int] = set()
    seen: list[FakeSandbox] = []
    problems: list[str] = []

    def worker() -> None:
        for _ in range(8):
            try:
                with pool.sandbox(WAIT) as sandbox:
                    with lock:
                        if id(sandbox) in in_use or any(s is sandbox for s in seen):
                            problems.append(f"sandbox {sandbox.serial} handed out twice")
                        in_use.add(id(sandbox))
                        seen.append(sandbox)
                    time.sleep(0.001)
                    with lock:
                        in_use.discard(id(sandbox))
            except PoolExhausted as e:
                problems.append(e.message)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert problems == []
    assert len(seen) == 32
    assert eventually(lambda: all(launcher.was_destroyed(sandbox) for sandbox in seen))


# --- exhaustion ----------------------------------------------------------------------------------

def test_acquire_with_everything_busy_raises_pool_exhausted(make_pool: PoolFactory) -> None:
    pool, _ = make_pool(slots=1)
    assert eventually(lambda: all_ready(pool))
    busy = pool.acquire(5)
    began = time.monotonic()
    with pytest.raises(PoolExhausted) as excinfo:
        pool.acquire(0.3)
    waited = time.monotonic() - began
    assert 0.2 <= waited < 5
    error = excinfo.value
    assert error.status == 503
    assert int(error.headers["Retry-After"]) >= 1
    assert error.message.strip() and "\n" not in error.message

    began = time.monotonic()
    with pytest.raises(PoolExhausted):
        pool.acquire(0)
    assert time.monotonic() - began < 5

    used = busy.sandbox
    pool.release(busy)
    recovered = pool.acquire(WAIT)
    assert recovered.sandbox is not None and recovered.sandbox is not used


def test_retry_after_is_a_whole_number_of_seconds(make_pool: PoolFactory) -> None:
    pool, _ = make_pool(slots=1, start=False)
    with pytest.raises(PoolExhausted) as excinfo:
        pool.acquire(0.01)
    assert excinfo.value.headers["Retry-After"].isdigit()


def test_a_waiting_acquire_gets_the_refilled_slot(make_pool: PoolFactory) -> None:
    pool, _ = make_pool(slots=1)
    busy = pool.acquire(WAIT)
    used = busy.sandbox
    got: list[FakeSandbox | None] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(WAIT).sandbox))
    waiter.start()
    pool.release(busy)
    waiter.join(WAIT + 5)
    assert len(got) == 1
    assert got[0] is not None and got[0] is not used


# --- failures and backoff ------------------------------------------------------------------------

def test_failing_launches_are_retried_and_counted(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=1, launcher=FakeLauncher(fail_first=3))
    assert eventually(lambda: all_ready(pool))
    stats = pool.stats()
    assert stats["failed_total"] == 3
    assert stats["started_total"] == 1
    assert launcher.attempts == 4
    assert pool.slots[0].failures == 0  # reset once a launch succeeds


def test_backoff_is_capped_by_backoff_max(make_pool: PoolFactory) -> None:
    # Uncapped, ten failures from 0.01 s would wait 0.01 * (2**10 - 1) > 10 s in all; capped at 0.02 s, under 1 s.
    pool, _ = make_pool(slots=1, launcher=FakeLauncher(fail_first=10), backoff_initial=0.01, backoff_max=0.02)
    assert eventually(lambda: all_ready(pool), timeout=5)
    assert pool.stats()["failed_total"] == 10


def test_failing_launches_back_off_instead_of_spinning(make_pool: PoolFactory) -> None:
    launcher = FakeLauncher(fail_first=10**9)
    began = time.monotonic()
    pool, _ = make_pool(slots=1, launcher=launcher, backoff_initial=0.2, backoff_max=30)
    assert eventually(lambda: launcher.attempts >= 1)  # the first one, however late the slot's thread runs
    time.sleep(0.5)
    attempts = launcher.attempts
    elapsed = time.monotonic() - began
    # Waits of 0.2, 0.4, 0.8 ... s put attempt k (from 0) no earlier than 0.2 * (2**k - 1) s after the start.
    allowed = sum(1 for k in range(64) if 0.2 * (2**k - 1) <= elapsed)
    assert 1 <= attempts <= allowed
    assert pool.stats()["starting"] == 1
    began = time.monotonic()
    pool.close(timeout=5)  # a close interrupts the backoff wait
    assert time.monotonic() - began < 5
    assert pool.slots[0].state is SlotState.STOPPED
    assert launcher.attempts - 1 <= pool.stats()["failed_total"] <= launcher.attempts  # one may end in the close


# --- closing -------------------------------------------------------------------------------------

def test_close_destroys_every_ready_sandbox(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=3)
    assert eventually(lambda: all_ready(pool))
    ready = list(launcher.launched)
    pool.close(timeout=5)
    assert pool.closing
    assert all(launcher.was_destroyed(sandbox) for sandbox in ready)
    assert len(launcher.destroyed) == len(launcher.launched) == 3
    assert all(slot.state is SlotState.STOPPED for slot in pool.slots)
    assert all(slot.sandbox is None for slot in pool.slots)
    stats = pool.stats()
    assert (stats["ready"], stats["busy"], stats["starting"]) == (0, 0, 0)


def test_close_also_removes_busy_sandboxes_and_launches_no_more(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=2)
    assert eventually(lambda: all_ready(pool))
    busy = pool.acquire(5)
    pool.close(timeout=5)
    assert busy.sandbox is None
    assert len(launcher.destroyed) == len(launcher.launched) == 2
    assert all(slot.state is SlotState.STOPPED for slot in pool.slots)
    launched = len(launcher.launched)
    time.sleep(0.1)
    assert len(launcher.launched) == launched


def test_close_cancels_launches_in_progress(make_pool: PoolFactory) -> None:
    launcher = FakeLauncher()
    launcher.gate.clear()
    pool, _ = make_pool(slots=2, launcher=launcher)
    assert eventually(lambda: launcher.attempts == 2)
    began = time.monotonic()
    pool.close(timeout=5)
    assert time.monotonic() - began < 5
    assert all(slot.state is SlotState.STOPPED for slot in pool.slots)
    assert launcher.launched == []


def test_acquire_after_close_raises_pool_exhausted(make_pool: PoolFactory) -> None:
    pool, _ = make_pool(slots=1)
    assert eventually(lambda: all_ready(pool))
    pool.close(timeout=5)
    with pytest.raises(PoolExhausted):
        pool.acquire(0.05)


def test_a_waiting_acquire_is_answered_at_once_when_the_pool_stops(make_pool: PoolFactory) -> None:
    pool, _ = make_pool(slots=1)
    assert eventually(lambda: all_ready(pool))
    pool.acquire(5)
    outcome: list[BaseException] = []
    began = time.monotonic()

    def wait_long() -> None:
        try:
            pool.acquire(60)
        except PoolExhausted as e:
            outcome.append(e)

    waiter = threading.Thread(target=wait_long)
    waiter.start()
    assert eventually(lambda: pool._waiting == 1)
    pool.stop_handing_out()
    waiter.join(30)
    assert not waiter.is_alive(), "the waiting request was not answered"
    assert time.monotonic() - began < 30, "answered long before its 60 s wait would have ended"
    assert "shutting down" in outcome[0].message


def test_drain_waits_for_busy_sandboxes_only(make_pool: PoolFactory) -> None:
    pool, _ = make_pool(slots=2)
    assert eventually(lambda: all_ready(pool))
    assert pool.drain(0) is True, "nothing busy: nothing to wait for"
    busy = pool.acquire(5)
    assert pool.drain(0.05) is False
    threading.Timer(0.2, pool.release, args=(busy,)).start()
    assert pool.drain(WAIT) is True


def test_an_unreachable_engine_answers_at_once_and_recovers(make_pool: PoolFactory) -> None:
    launcher = FakeLauncher(fail_first=10**9)
    launcher.failure = EngineUnavailable
    pool, _ = make_pool(slots=1, launcher=launcher, backoff_initial=0.05, backoff_max=0.05)
    assert eventually(lambda: launcher.attempts >= 1)
    began = time.monotonic()
    with pytest.raises(EngineUnavailable) as excinfo:
        pool.acquire(60)
    assert time.monotonic() - began < 30, "not after the whole queue wait"
    assert excinfo.value.status == 503 and int(excinfo.value.headers["Retry-After"]) >= 1
    launcher.fail_first = 0  # the engine is back
    assert eventually(lambda: all_ready(pool)), "once the engine answers, the slot fills again"
    assert pool.acquire(WAIT).sandbox is not None


# --- the context manager -------------------------------------------------------------------------

def test_sandbox_context_manager_yields_a_sandbox_and_releases_it(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=1)
    with pool.sandbox(WAIT) as sandbox:
        assert isinstance(sandbox, FakeSandbox)
        assert pool.stats()["busy"] == 1
    assert eventually(lambda: launcher.was_destroyed(sandbox))
    assert eventually(lambda: all_ready(pool))


def test_sandbox_context_manager_releases_when_the_body_raises(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=1)
    used: list[FakeSandbox] = []
    with pytest.raises(ValueError, match="boom"):
        with pool.sandbox(WAIT) as sandbox:
            used.append(sandbox)
            raise ValueError("boom")
    assert eventually(lambda: launcher.was_destroyed(used[0]))
    assert eventually(lambda: all_ready(pool))
    assert pool.stats()["busy"] == 0
    with pool.sandbox(WAIT) as again:
        assert again is not used[0]


def test_sandbox_context_manager_raises_pool_exhausted_without_releasing(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=1)
    with pool.sandbox(WAIT) as held:
        with pytest.raises(PoolExhausted):
            with pool.sandbox(0.05):
                pytest.fail("the body must not run when no sandbox is free")
        assert not launcher.was_destroyed(held)  # the failed attempt did not retire someone else's sandbox
        assert pool.stats()["busy"] == 1


def test_a_sandbox_that_died_in_the_queue_is_replaced_not_handed_out(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=2)
    assert eventually(lambda: all_ready(pool))
    first_two = list(launcher.launched)
    launcher.kill(first_two[0])
    with pool.sandbox(WAIT) as sandbox:
        assert sandbox is first_two[1], "the live sandbox is handed out, the dead one skipped"
    assert eventually(lambda: launcher.was_destroyed(first_two[0]))
    assert pool.stats()["dead_total"] == 1
    assert eventually(lambda: all_ready(pool))
    with pool.sandbox(WAIT) as sandbox:
        assert sandbox not in first_two


def test_the_watcher_replaces_dead_ready_sandboxes_without_a_request(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=2, check_interval=0.05)
    assert eventually(lambda: all_ready(pool))
    victims = list(launcher.launched)
    for sandbox in victims:
        launcher.kill(sandbox)
    assert eventually(lambda: all(launcher.was_destroyed(sandbox) for sandbox in victims))
    assert eventually(lambda: all_ready(pool) and pool.stats()["dead_total"] == 2)
    handed_out = []
    for _ in range(2):
        slot = pool.acquire(WAIT)
        handed_out.append(slot.sandbox)
    assert not set(map(id, handed_out)) & set(map(id, victims)), "stale queue entries are never handed out"
    with pytest.raises(PoolExhausted):
        pool.acquire(0.1)


def test_a_detached_sandbox_is_handed_over_not_retired_and_its_slot_refills(make_pool: PoolFactory) -> None:
    pool, launcher = make_pool(slots=1)
    assert eventually(lambda: all_ready(pool))
    sandbox = pool.detach(5)
    assert eventually(lambda: all_ready(pool)), "the slot starts a replacement"
    assert pool.slots[0].sandbox is not sandbox
    assert not launcher.was_destroyed(sandbox), "the detached sandbox is its new owner's to remove"
    pool.close(timeout=5)
    assert not launcher.was_destroyed(sandbox), "closing the pool leaves it alone too"


def test_can_serve_while_every_sandbox_is_busy_or_starting_but_not_while_failing_or_closing(
        make_pool: PoolFactory) -> None:
    launcher = FakeLauncher()
    launcher.gate.clear()  # the first launches hang: every slot is starting, none has failed
    pool, _ = make_pool(slots=2, launcher=launcher)
    assert pool.can_serve(), "starting with no failure yet counts"
    launcher.gate.set()
    assert eventually(lambda: all_ready(pool))
    taken = [pool.acquire(WAIT), pool.acquire(WAIT)]
    assert pool.stats()["busy"] == 2 and pool.can_serve(), "every sandbox busy at once still counts"
    for slot in taken:
        pool.release(slot)
    pool.stop_handing_out()
    assert not pool.can_serve(), "a draining pool hands nothing out"

    failing = FakeLauncher(fail_first=10**6)
    broken, _ = make_pool(slots=2, launcher=failing, backoff_initial=1, backoff_max=1)
    assert eventually(lambda: all(slot.failures for slot in broken.slots))
    assert not broken.can_serve(), "slots that keep failing to start do not"
