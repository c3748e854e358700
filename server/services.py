"""What the app's requests share: config, database, the sandboxes and their pool, metrics, budgets.

`build_services(config)` makes them without starting anything; `Services.start()` starts the pool
and the sweepers; `Services.close()` releases everything, whatever point start-up had reached.
Views reach them with `services()` and open their database session with `db_session()`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import current_app, g
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from models import create_tables, make_engine, make_session_factory
from server.config import Config
from server.containers.docker_sandboxes import DockerSandboxes
from server.containers.pool import SandboxPool
from server.egress.policy import Network
from server.egress.proxy import EgressProxy, own_networks
from server.errors import ServiceError, StorageFailed
from server.metrics import Metrics
from server.peers import PeerDirectory
from server.session_registry import SessionRegistry
from server.spool import SPOOL_BYTES, ByteBudget
from server.storage import RetentionSweeper

log = logging.getLogger(__name__)

EXTENSION_KEY = "code_interpreter"
SMALL_BODY_BYTES = 64 * 1024  # bodies up to this size are parsed without asking the budget


def _load_malloc_trim() -> ctypes._CFuncPtr | None:
    """glibc's malloc_trim, which hands freed heap memory back to the system (None elsewhere)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _load_malloc_trim()
M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """Let the process's threads share MALLOC_ARENAS heaps (glibc; nothing elsewhere). Call it before any
    thread starts.

    glibc gives threads heaps of their own, up to 8 per core, and each keeps its peak: every waitress
    thread that sent a 20 MB download held ~17 MB for good (measured: six downloads kept 95 MiB; a
    center with 32 threads would settle near 300 MB). The GIL serializes most allocations anyway, so
    sharing costs no speed.
    """
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass


class BodyBudget(ByteBudget):
    """Bounds the request bytes being parsed at once, across all threads.

    A JSON body costs many times its size in memory while it is parsed and checked; without a
    bound, a few concurrent bodies at the size limit take the center's memory for good. Small
    bodies never wait: only those over SMALL_BODY_BYTES take their size from the budget.
    """

    def __init__(self, total_bytes: int) -> None:
        super().__init__(total_bytes, "the center is busy reading other large requests; try again shortly", 1)

    def take(self, size: int, timeout: float) -> int:
        """Reserve `size` bytes unless the body is small; ServiceUnavailable if they do not free up in time."""
        return 0 if size <= SMALL_BODY_BYTES else super().take(size, timeout)

    @contextmanager
    def reserve(self, size: int, timeout: float) -> Iterator[None]:
        """`with budget.reserve(len, wait):` parse a body inside; afterwards its memory goes back to the system.

        Whatever the block parsed must be garbage by its end (return only what is small or encoded).
        """
        reserved = self.take(size, timeout)
        try:
            yield
        finally:
            self.give_back(reserved)
            if reserved and MALLOC_TRIM is not None:
                # The parsed objects are freed by now, but glibc keeps the pages for this thread's
                # arena; without a trim the center keeps a large body's peak for good.
                MALLOC_TRIM(0)


@dataclass
class Services:
    """What the app's requests share: config, database, the sandboxes and their pool."""

    config: Config
    db_engine: Engine
    database: sessionmaker  # makes the database sessions (`db`): one per request, see db_session()
    sandboxes: DockerSandboxes
    pool: SandboxPool
    owns_pool: bool
    metrics: Metrics
    body_budget: BodyBudget
    spool_budget: ByteBudget
    registry: SessionRegistry
    peers: PeerDirectory
    egress: EgressProxy | None = None  # None: no egress for anyone (the config's ceiling is empty)
    retention: RetentionSweeper | None = None
    tables_ready: bool = False
    started: bool = field(default=False, repr=False)

    def start(self) -> None:
        """Prepare Docker (leftovers removed), start the pool and the image sweeper; create tables if possible."""
        found: dict = {}
        if self.owns_pool:
            self.started = True  # from here on close() removes containers, even if start-up stops midway
            found = self.sandboxes.prepare()
            self.pool.start()  # sandboxes warm up while the database is reached
        try:
            self.ensure_tables()
        except StorageFailed as e:
            log.warning("%s at start (%s); the tables will be created when it answers", e.message, e.__cause__)
        self.registry.start(found)
        self.peers.start()
        if self.config.image_retention_days > 0:
            self.retention = RetentionSweeper(self.database, self.config.image_retention_days)
            self.retention.start()

    def ensure_tables(self) -> None:
        """Create the tables once the database answers (it may be down when the center starts)."""
        if self.tables_ready:
            return
        try:
            create_tables(self.db_engine)
        except SQLAlchemyError as e:
            raise StorageFailed("the image database is unavailable") from e
        self.tables_ready = True

    def drain(self, timeout: float) -> bool:
        """Refuse new runs at once and wait (at most `timeout`) for the running ones to finish."""
        self.pool.stop_handing_out()
        return self.pool.drain(timeout)

    def close(self) -> None:
        """Release everything: the pool's containers (and any leftovers), the database connections."""
        if self.retention is not None:
            self.retention.stop()
        self.peers.close()
        # An app on a pool it does not own (tests, embedding) does not outlive its sessions either.
        self.registry.close(end_sessions=not self.owns_pool)
        if self.owns_pool and self.started:
            self.pool.close()
            # Sessions outlive the center: a center that starts again serves them.
            self.sandboxes.remove_leftovers(keep=self.registry.kept_sandbox_ids())
        self.db_engine.dispose()


def build_services(config: Config, pool: SandboxPool | None = None) -> Services:
    """Make the services for this config without starting anything; with a pool, share it (tests)."""
    engine = make_engine(config.resolved_database_url())
    owns_pool = pool is None
    if pool is None:
        sandboxes = DockerSandboxes(config)
        pool = SandboxPool(sandboxes, config.interpreter_port_range.ports)
    else:
        sandboxes = pool.launcher
    # Room for one body at the size limit (and the small ones that never wait).
    budget = BodyBudget(config.max_request_bytes + SMALL_BODY_BYTES)
    database = make_session_factory(engine)
    metrics = Metrics(pool)
    egress = None
    if config.egress.ceiling:
        egress = EgressProxy(config.egress.byte_allowance, config.egress.max_connections,
                             lambda: refused_networks(sandboxes), metrics.count_egress)
    registry = SessionRegistry(config, sandboxes, pool, database, egress)
    peers = PeerDirectory(config.advertise_url, registry.node, database)
    return Services(config, engine, database, sandboxes, pool, owns_pool, metrics, budget,
                    ByteBudget(SPOOL_BYTES), registry, peers, egress)


def refused_networks(sandboxes: DockerSandboxes) -> tuple[Network, ...]:
    """The networks no host name may open besides the internal ranges: this machine's addresses, Docker's networks."""
    found = list(own_networks())
    try:
        found += [ipaddress.ip_network(subnet, strict=False) for subnet in sandboxes.engine.network_subnets()]
    except (ServiceError, ValueError) as e:
        log.warning("Docker's networks are not known to the egress proxy: %s", e)
    return tuple(found)


def services() -> Services:
    """The current app's Services."""
    return current_app.extensions[EXTENSION_KEY]


def db_session() -> DbSession:
    """This request's database session, opened on first use and closed in teardown."""
    if "db" not in g:
        svc = services()
        svc.ensure_tables()
        g.db = svc.database()
    return g.db


def close_db_session(_exc: BaseException | None = None) -> None:
    """teardown_appcontext: give the request's connection back."""
    session = g.pop("db", None)
    if session is not None:
        try:
            session.close()
        except SQLAlchemyError as e:  # its connection died with the database: the pool discards it
            log.warning("closing a database session failed: %s", type(e).__name__)
