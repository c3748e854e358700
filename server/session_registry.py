"""The session registry: sandboxes kept alive for one owner's cells, in the database every center shares.

A session is a sandbox whose agent was switched to session mode: one persistent interpreter whose
globals, imports and files carry over from cell to cell. The database holds who owns it, where it
lives and when it ends; this center holds the live sandboxes of its own sessions and one lock each
(a second call while a cell runs is a 409). A sweeper ends sessions idle past their timeout or past
their lifetime, and those whose container died. A center that restarts adopts its live sessions
again (the containers carry the session id as their sandbox label; see sandboxes.session_sandboxes).

Where the center has egress (config `egress.allow`), each live session has a gate of its own in its
socket folder (server/egress/proxy.py) for as long as it lives: its allow-list is the record's `network`
(set at creation, changed by PUT .../network between cells), its byte allowance counts for the whole
session, and each cell's connections come back as that cell's `network` list.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from models import SessionRecord
from server.config import Config
from server.containers.agent_client import AgentRefused, AgentUnreachable, Listener
from server.containers.docker_sandboxes import DockerSandboxes, Sandbox, oom_report
from server.containers.pool import SandboxPool
from server.egress.policy import Pattern, PatternError, outside, parse_patterns
from server.egress.proxy import SETTLE_SECONDS, EgressProxy, Gate
from server.errors import (
    BadRequest,
    Conflict,
    EngineUnavailable,
    Forbidden,
    Gone,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    PoolExhausted,
    SandboxFailed,
    ServiceUnavailable,
    SessionsExhausted,
)
from server.periodic import Periodic

log = logging.getLogger(__name__)

ENDED_KEPT_SECONDS = 24 * 3600  # an ended session answers 410 with its reason this long (at least an hour)
SWEEP_SECONDS = 5.0
FILE_CALL_SECONDS = 60.0  # a listing or the start of a download
UPLOAD_SECONDS = 600.0
INTERRUPTED_GRACE_SECONDS = 5.0  # for an agent to finish a cell whose exchange was cut, before the next


def owner_of(token: str | None) -> str:
    """Who owns what a request creates: a hash of its bearer token ("" when the center takes no token)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest() if token else ""


def utc(moment: datetime) -> datetime:
    """The moment with its time zone (SQLite gives them back naive, in UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def now() -> datetime:
    """This moment, in UTC."""
    return datetime.now(timezone.utc)


def expires_at(record: SessionRecord) -> datetime:
    """When the session ends unless it is used: idle timeout after its last use, or its lifetime's end."""
    return min(utc(record.last_active_at) + timedelta(seconds=record.idle_timeout), utc(record.lifetime_ends_at))


@dataclass
class LiveSession:
    """A session of this center: its sandbox, its egress gate (None: the center has no egress) and the lock
    one cell at a time holds."""

    sandbox: Sandbox
    gate: Gate | None = None
    access_token: str | None = None  # what requests to its sandbox carry (E2B's), for the edge's size check
    lock: threading.Lock = field(default_factory=threading.Lock)


def stored_network(network: tuple[Pattern, ...]) -> str | None:
    """An allow-list as the record keeps it: the patterns as written, JSON (None for nothing)."""
    return json.dumps([pattern.text for pattern in network]) if network else None


class SessionRegistry:
    """Creates, finds, runs, ends and sweeps the sessions of this center."""

    def __init__(self, config: Config, sandboxes: DockerSandboxes, pool: SandboxPool,
                 database: sessionmaker, egress: EgressProxy | None = None) -> None:
        self.config = config
        self.sandboxes = sandboxes
        self.pool = pool
        self.database = database
        self.egress = egress
        self.node = config.deployment_label
        self.live: dict[str, LiveSession] = {}
        self._lock = threading.Lock()  # guards `live` and the count against max_sessions
        self._creating = 0
        self._sweeper = Periodic("session-sweeper", SWEEP_SECONDS, self.sweep)
        self._orphans: dict[str, Sandbox] = {}  # session sandboxes found at start, until the database says whose
        self._deployment_tokens: list[str] = []  # the access tokens of every live session, read by each sweep

    # --- life cycle of the registry ------------------------------------------------------------

    def start(self, found: dict[str, Sandbox]) -> None:
        """Adopt the session sandboxes found at start (see sandboxes.session_sandboxes), then sweep."""
        self._orphans = dict(found)
        self.adopt()
        self._sweeper.start()

    def close(self, end_sessions: bool = False) -> None:
        """Stop sweeping. Session containers stay (a center that starts again serves them) unless asked to end."""
        self._sweeper.stop()
        if end_sessions:
            with self._lock:
                live, self.live = self.live, {}
            for session in live.values():
                self._let_go(session)

    def kept_sandbox_ids(self) -> set[str]:
        """The sandbox ids the center must not remove as leftovers: its live sessions and the ones not yet adopted."""
        with self._lock:
            return set(self.live) | set(self._orphans)

    def _live_records(self, db: DbSession) -> list[SessionRecord]:
        """This center's sessions that have not ended, the longest idle first."""
        return list(db.scalars(select(SessionRecord).where(
            SessionRecord.node == self.node, SessionRecord.ended_at.is_(None))
            .order_by(SessionRecord.last_active_at)).all())

    def adopt(self) -> None:
        """Match the sandboxes found at start with the registry: live records get them back, the rest end."""
        if not self._orphans:
            return
        try:
            with self.database() as db:
                records = self._live_records(db)
                for record in records:
                    sandbox = self._orphans.pop(record.id, None)
                    if sandbox is None:
                        self._end(db, record, "its sandbox was gone when the center restarted", dead=True)
                        continue
                    sandbox.program_uid = record.program_uid
                    self.sandboxes.claim_uid(record.program_uid)
                    live = LiveSession(sandbox, self._open_gate(sandbox, self.network_of(record)),
                                       record.access_token)
                    with self._lock:
                        self.live[record.id] = live
                db.commit()
        except SQLAlchemyError as e:
            log.warning("cannot adopt the sessions found at start yet (database: %s); retrying", type(e).__name__)
            return
        orphans, self._orphans = self._orphans, {}
        for sandbox in orphans.values():
            log.info("removing session sandbox %s, which the registry does not know", sandbox.sandbox_id[:8])
            self.sandboxes.destroy(sandbox)
        if self.live:
            log.info("adopted %d live sessions", len(self.live))

    # --- the routes' operations --------------------------------------------------------------

    def create(self, db: DbSession, owner: str, idle_timeout: float | None,
               network: tuple[Pattern, ...] = (), lifetime: float | None = None, e2b: str | None = None,
               access_token: str | None = None) -> SessionRecord:
        """A new session of this owner (that may reach `network`), on a warm sandbox when one is ready; 503 past
        max_sessions. `lifetime` (at most session_max_lifetime_seconds) ends it sooner; an E2B sandbox (`e2b`,
        its facts as JSON) has no idle timeout of its own: it lives until its lifetime ends (E2B's timeout)."""
        idle = min(idle_timeout or self.config.session_idle_timeout_seconds, self.config.session_idle_timeout_seconds)
        longest = self.config.session_max_lifetime_seconds
        if e2b is not None:
            idle = longest
        lifetime = min(lifetime, longest) if lifetime is not None else longest
        with self._lock:
            if len(self.live) + self._creating >= self.config.max_sessions:
                raise SessionsExhausted(f"all {self.config.max_sessions} sessions of this center are in use; "
                                        "end one or try again later", retry_after=10)
            self._creating += 1
        try:
            sandbox = self._new_sandbox()
            live = LiveSession(sandbox, access_token=access_token)
            try:
                self.sandboxes.start_session(sandbox)
                live.gate = self._open_gate(sandbox, network)
                started = now()
                record = SessionRecord(
                    id=sandbox.sandbox_id, owner=owner, node=self.node, container_id=sandbox.container_id,
                    socket_dir=sandbox.socket_dir, program_uid=sandbox.program_uid, idle_timeout=idle,
                    execution_count=0, created_at=started, last_active_at=started,
                    lifetime_ends_at=started + timedelta(seconds=lifetime),
                    network=stored_network(network), e2b=e2b, access_token=access_token)
                with self._lock:  # live before it is in the registry: a sweep in between must not end it
                    self.live[record.id] = live
                db.add(record)
                db.commit()
            except BaseException as e:
                db.rollback()
                with self._lock:
                    self.live.pop(sandbox.sandbox_id, None)
                self._let_go(live)
                if isinstance(e, SQLAlchemyError):
                    raise ServiceUnavailable("the session could not be registered: the database does not answer",
                                             retry_after=5) from e
                raise
        finally:
            with self._lock:
                self._creating -= 1
        return record

    def _open_gate(self, sandbox: Sandbox, network: tuple[Pattern, ...]) -> Gate | None:
        """The session's egress gate, open for its whole life (None when the center has no egress): a later
        PUT .../network may open what creation did not."""
        return self.egress.open(sandbox.socket_dir, network) if self.egress is not None else None

    def _let_go(self, live: LiveSession) -> None:
        """Close the session's gate (its connections cut) and remove its sandbox."""
        if live.gate is not None:
            live.gate.close()
        self.sandboxes.destroy(live.sandbox)

    def knows_access_token(self, token: str) -> bool:
        """Whether a live session has this access token: one of this center's, or of another center of the
        deployment as of the last sweep (SWEEP_SECONDS). In memory: the server's edge asks it for each body."""
        with self._lock:
            tokens = [live.access_token for live in self.live.values() if live.access_token]
        tokens += self._deployment_tokens
        known = False
        for candidate in tokens:  # no early exit: the time taken does not tell which matched
            known |= hmac.compare_digest(token.encode("utf-8", "surrogateescape"), candidate.encode())
        return known

    def network_of(self, record: SessionRecord) -> tuple[Pattern, ...]:
        """What the session may reach: its record's allow-list, less what the ceiling no longer holds (the
        operator may have narrowed it since, and restarted)."""
        try:
            patterns = parse_patterns(json.loads(record.network)) if record.network else ()
        except (ValueError, TypeError, PatternError):
            log.warning("session %s has an allow-list this center cannot read; it reaches nothing", record.id[:8])
            return ()
        return tuple(pattern for pattern in patterns if outside((pattern,), self.config.egress.ceiling) is None)

    @staticmethod
    @contextmanager
    def _changing(db: DbSession, record: SessionRecord) -> Iterator[SessionRecord]:
        """`with self._changing(db, record) as current:` change the session's record as read now, committed
        when the block ends; 410 when it has ended meanwhile, 503 when the database does not answer."""
        try:
            current = db.get(SessionRecord, record.id)
            if current is None or current.ended_at is not None:
                raise Gone(f"the session has ended: {current.end_reason if current else 'it ended'}")
            yield current
            db.commit()
        except SQLAlchemyError as e:
            db.rollback()
            raise ServiceUnavailable("the session registry is unavailable: the database does not answer",
                                     retry_after=5) from e

    def set_network(self, db: DbSession, record: SessionRecord, network: tuple[Pattern, ...]) -> SessionRecord:
        """A new allow-list for the session: recorded, and its gate follows at once (for the connections that
        come next; a cell under way keeps its connections, and gets proxy variables from its next cell)."""
        live = self._still_live(record.id)
        with self._changing(db, record) as current:
            current.network = stored_network(network)
        if live.gate is not None:
            live.gate.set_allow(network)
        return current

    def set_lifetime(self, db: DbSession, record: SessionRecord, seconds: float) -> SessionRecord:
        """End the session `seconds` from now (E2B's set_timeout), never past its maximum lifetime."""
        with self._changing(db, record) as current:
            longest = utc(current.created_at) + timedelta(seconds=self.config.session_max_lifetime_seconds)
            current.lifetime_ends_at = min(now() + timedelta(seconds=seconds), longest)
        return current

    def set_e2b(self, db: DbSession, record: SessionRecord, facts: str) -> None:
        """Record an E2B sandbox's changed facts (its code contexts)."""
        with self._changing(db, record) as current:
            current.e2b = facts

    def owned(self, db: DbSession, owner: str) -> list[SessionRecord]:
        """The owner's live sessions on every center, the oldest first."""
        try:
            return list(db.scalars(select(SessionRecord).where(
                SessionRecord.owner == owner, SessionRecord.ended_at.is_(None)).order_by(SessionRecord.created_at)))
        except SQLAlchemyError as e:
            db.rollback()
            raise ServiceUnavailable("the session registry is unavailable: the database does not answer",
                                     retry_after=5) from e

    def _new_sandbox(self) -> Sandbox:
        """A warm sandbox from the pool when one is ready at once, else one started for the session."""
        try:
            return self.pool.detach(0)
        except PoolExhausted:
            pass
        try:
            return self.sandboxes.launch(0)
        except EngineUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - SandboxStartError and the like: say it once, as a 503
            raise ServiceUnavailable(f"no sandbox could be started for the session ({e})", retry_after=5) from e

    def find(self, db: DbSession, session_id: str, owner: str) -> SessionRecord:
        """The owner's session: 404 when unknown or someone else's, 410 (with the reason) when it has ended."""
        try:
            record = db.get(SessionRecord, session_id) if len(session_id) <= 64 else None
        except SQLAlchemyError as e:
            db.rollback()
            raise ServiceUnavailable("the session registry is unavailable: the database does not answer",
                                     retry_after=5) from e
        if record is None or record.owner != owner:
            raise NotFound("no session of that id")
        if record.ended_at is not None:
            raise Gone(f"the session has ended: {record.end_reason}")
        if record.node != self.node:
            raise Gone("the session lives on another center, which this one cannot reach")
        if session_id in self._orphans:  # found at start, adopted once the database answered then
            raise ServiceUnavailable("the session is being taken over after a restart; try again shortly")
        live = self.live.get(session_id)
        if live is None:
            raise Gone("the session's sandbox is not on this center any more")
        # Past its time, it ends now: waiting for the sweeper's next round would let it run on (and a
        # cell would restart its idle clock).
        reason = self._sweep_reason(record, live, check_health=False)
        if reason is not None:
            try:
                reason = self._end_if_due(db, record, live, reason)
            except SQLAlchemyError as e:  # the sweeper ends it when the database answers again
                db.rollback()
                log.warning("could not record the end of session %s: %s", session_id[:8], type(e).__name__)
                raise ServiceUnavailable("the session registry is unavailable: the database does not answer",
                                         retry_after=5) from e
            if reason is not None:
                raise Gone(f"the session has ended: {reason[0]}")
        return record

    def _still_live(self, session_id: str) -> LiveSession:
        """The session found live a moment ago (find()); 410 if it ended since (deleted, swept) while the
        request was on its way, e.g. during a long upload."""
        live = self.live.get(session_id)
        if live is None:
            raise Gone("the session has ended while this request was on its way")
        return live

    def describe(self, record: SessionRecord) -> dict[str, Any]:
        """The session as the API shows it."""
        live = self.live.get(record.id)
        if record.ended_at is not None:
            status = "dead" if record.dead else "ended"
        else:
            status = "busy" if live is not None and live.lock.locked() else "idle"
        return {
            "session_id": record.id, "status": status,
            "created_at": utc(record.created_at).isoformat(), "last_active_at": utc(record.last_active_at).isoformat(),
            "expires_at": expires_at(record).isoformat(), "idle_timeout": record.idle_timeout,
            "execution_count": record.execution_count,
            "network": {"allow": [pattern.text for pattern in self.network_of(record)]},
            "kind": "e2b" if record.e2b else "session",
        }

    def run_cell(self, record: SessionRecord, job: bytes, timeout: float,
                 listener: Listener | None = None, wait: float = 0.0) -> dict[str, Any]:
        """Run one cell; 409 while another runs (after `wait` seconds for it to end). A cell that kills the
        session ends it (dead) with its reason.

        Streamed (`listener`), a hangup interrupts the cell and leaves the session as it is.

        The registry is written in sessions of its own, so that a database that fails while the
        cell runs costs the bookkeeping, never the cell's answer.
        """
        session_id, count = record.id, record.execution_count
        live = self._still_live(session_id)
        # `wait`: for a caller that expects a cell it gave up on (its client timed out) to be ending now.
        if not (live.lock.acquire(timeout=wait) if wait > 0 else live.lock.acquire(blocking=False)):
            raise Conflict("a cell is already running in this session; try again when it has finished")
        try:
            self._record_use(session_id)
            try:
                report = self._run_when_agent_free(live, job, timeout, listener)
            except AgentRefused as e:
                if e.status == 410:
                    self._end_by_id(session_id, e.agent_message, dead=True)
                    raise Gone(f"the session has ended: {e.agent_message}") from e
                # The cell's files refused (a path through a file or a symbolic link, no room...), or
                # a cell that slipped in first: the agent's reason, with the status of its meaning.
                raise self._file_error(e) from e
            except AgentUnreachable as e:
                if listener is not None and listener.hangup.done:  # the agent interrupts the cell itself
                    raise SandboxFailed("the cell was interrupted: its client hung up") from e
                if session_id not in self.live:  # ended while the cell ran (deleted by its owner): say so
                    raise Gone(f"the session has ended: {self._recorded_end(session_id)}") from e
                why = self.sandboxes.why_unreachable(live.sandbox)
                self._end_by_id(session_id, why.reason, dead=True)
                if why.out_of_memory:
                    return {**oom_report(why.reason, None), "alive": False, "dead_reason": why.reason,
                            "execution_count": count + 1, "result": None}
                raise SandboxFailed(f"the session's sandbox failed: {why.reason}") from e
            report.setdefault("execution_count", count + 1)
            if live.gate is not None:
                report["network"] = live.gate.take_log(SETTLE_SECONDS)
            self._record_use(session_id, int(report["execution_count"]))
            if report.get("alive") is False:
                self._end_by_id(session_id, str(report.get("dead_reason") or "the session's interpreter died"),
                                dead=True)
            return report
        finally:
            live.lock.release()

    @staticmethod
    def _run_when_agent_free(live: LiveSession, job: bytes, timeout: float, listener: Listener | None
                             ) -> dict[str, Any]:
        """The cell's report. With the session's lock held, an agent that says a cell is running is still
        ending one whose exchange was cut (its client hung up, or a command was killed): it is asked again
        for up to INTERRUPTED_GRACE_SECONDS."""
        deadline = time.monotonic() + INTERRUPTED_GRACE_SECONDS
        while True:
            try:
                return live.sandbox.run_cell(job, timeout, listener)
            except AgentRefused as e:
                if e.status != 409 or time.monotonic() >= deadline:
                    raise
            time.sleep(0.1)

    def _recorded_end(self, session_id: str) -> str:
        """Why the registry says the session ended ("it ended" when the database cannot say)."""
        try:
            with self.database() as db:
                record = db.get(SessionRecord, session_id)
                if record is not None and record.end_reason:
                    return record.end_reason
        except SQLAlchemyError as e:
            log.warning("could not read the end of session %s: %s", session_id[:8], type(e).__name__)
        return "it ended"

    def _record_use(self, session_id: str, execution_count: int | None = None) -> None:
        """The session was used now (its idle time restarts); a database that is down is logged, not raised."""
        values: dict[str, Any] = {"last_active_at": now()}
        if execution_count is not None:
            values["execution_count"] = execution_count
        try:
            with self.database() as db:
                db.execute(update(SessionRecord).where(SessionRecord.id == session_id).values(**values))
                db.commit()
        except SQLAlchemyError as e:
            log.warning("could not record the use of session %s: %s", session_id[:8], type(e).__name__)

    def _end_by_id(self, session_id: str, reason: str, dead: bool) -> None:
        """End a session in a database session of its own; a database that is down leaves it to the sweeper."""
        try:
            with self.database() as db:
                record = db.get(SessionRecord, session_id)
                if record is not None and record.ended_at is None:
                    self._end(db, record, reason, dead)
                return
        except SQLAlchemyError as e:
            log.warning("could not record the end of session %s: %s", session_id[:8], type(e).__name__)
        with self._lock:  # the sandbox goes now all the same; the registry is told when it answers
            live = self.live.pop(session_id, None)
        if live is not None:
            self._let_go(live)

    def end(self, db: DbSession, record: SessionRecord, reason: str) -> None:
        """End the session at its owner's request: the container is removed at once."""
        try:
            # Read again in this database session: the record may come from a request's earlier one.
            current = db.get(SessionRecord, record.id)
            if current is None or current.ended_at is not None:
                return
            self._end(db, current, reason, dead=False)
        except SQLAlchemyError as e:
            db.rollback()
            raise ServiceUnavailable("the session registry is unavailable: the database does not answer",
                                     retry_after=5) from e

    @contextmanager
    def _file_call(self, record: SessionRecord, doing: str) -> Iterator[Sandbox]:
        """`with self._file_call(record, "list its files") as sandbox:` the agent's refusals in the service's
        words; a call that went through counts as a use of the session."""
        try:
            yield self._still_live(record.id).sandbox
        except AgentRefused as e:
            raise self._file_error(e) from e
        except AgentUnreachable as e:
            if record.id not in self.live:  # ended while the call ran (e.g. deleted by its owner): say so
                raise Gone(f"the session has ended: {self._recorded_end(record.id)}") from e
            raise SandboxFailed(f"the session's sandbox did not {doing} ({e})") from e
        self._record_use(record.id)

    def upload(self, record: SessionRecord, path: str, stream: Any, size: int) -> dict[str, Any]:
        """Write one file into the session's workspace (streamed); 413, 507 and 400 in the agent's words."""
        if size > self.config.max_upload_bytes:
            raise PayloadTooLarge(f"{path} has {size} bytes, over max_upload_bytes ({self.config.max_upload_bytes})")
        with self._file_call(record, "take the file") as sandbox:
            return sandbox.agent.upload(path, stream, size, self.config.max_upload_bytes, UPLOAD_SECONDS)

    def list_files(self, record: SessionRecord, page: dict[str, str] | None = None) -> dict[str, Any]:
        """The workspace's files, recursively, one page (`limit`, `cursor`: the agent checks them)."""
        query = f"?{urlencode(page)}" if page else ""
        with self._file_call(record, "list its files") as sandbox:
            return sandbox.agent.call("GET", "/files" + query, None, FILE_CALL_SECONDS)

    def file_operation(self, record: SessionRecord, operation: dict[str, Any]) -> dict[str, Any]:
        """stat, list, mkdir, move or remove in the workspace (the agent's /fs); 404, 409 and 400 in its words."""
        with self._file_call(record, f"{operation.get('op')} the file") as sandbox:
            return sandbox.agent.call("POST", "/fs", operation, FILE_CALL_SECONDS)

    def download(self, record: SessionRecord, path: str) -> tuple[int, Iterator[bytes]]:
        """One file of the workspace: (size, its bytes in chunks)."""
        with self._file_call(record, "give the file") as sandbox:
            return sandbox.agent.download(path, FILE_CALL_SECONDS)

    @staticmethod
    def _file_error(e: AgentRefused) -> Exception:
        """The agent's refusal (of a file operation, or of a cell) as the service's error of the same meaning."""
        kinds = {400: BadRequest, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
                 507: InsufficientStorage}
        return kinds.get(e.status, SandboxFailed)(e.agent_message)

    # --- ending and sweeping --------------------------------------------------------------------

    def _end(self, db: DbSession, record: SessionRecord, reason: str, dead: bool) -> None:
        """Mark the record ended and commit, then remove its sandbox (in that order: a request that finds
        the session gone from this center also finds the reason in the registry)."""
        record.ended_at = now()
        record.end_reason = reason[:500]
        record.dead = dead
        db.commit()
        with self._lock:
            live = self.live.pop(record.id, None)
        if live is not None:
            self._let_go(live)
        log.info("session %s ended: %s", record.id[:8], reason)

    def _sweep_reason(self, record: SessionRecord, live: LiveSession, check_health: bool = True
                      ) -> tuple[str, bool] | None:
        """Why the sweep ends this session now, and whether it died (None: it goes on)."""
        moment = now()
        if record.ended_at is not None:
            return None  # ended meanwhile (deleted by its owner)
        if moment >= utc(record.lifetime_ends_at):
            return f"it reached its maximum lifetime ({self.config.session_max_lifetime_seconds:g} s)", False
        if moment >= expires_at(record):
            return f"it was idle for {record.idle_timeout:g} s", False
        if check_health and live.sandbox.health() is None:
            return self.sandboxes.why_unreachable(live.sandbox).reason, True
        return None

    def _end_if_due(self, db: DbSession, record: SessionRecord, live: LiveSession, reason: tuple[str, bool]
                    ) -> tuple[str, bool] | None:
        """End the session for `reason` if it still holds with its cell lock taken and its record read again
        (a death always does): the reason it ended for, or None when it goes on.

        The lock is held while ending, so no cell can start on it and lose its container mid-run; none is
        taken when a cell holds it (the session is in use, and its end is that cell's to report). The
        record is read again because the reason came from an earlier read, which only errs towards ending:
        the session may have been used since.
        """
        if not live.lock.acquire(blocking=False):
            return None
        try:
            db.refresh(record)
            if record.ended_at is not None:
                return None  # ended meanwhile (deleted by its owner)
            if not reason[1]:
                reason = self._sweep_reason(record, live, check_health=False)
                if reason is None:
                    return None
            self._end(db, record, *reason)
            return reason
        finally:
            live.lock.release()

    def sweep(self) -> None:
        """End sessions idle or past their lifetime, and those whose sandbox died; forget long-ended ones."""
        if self._orphans:
            self.adopt()
        try:
            with self.database() as db:
                records = self._live_records(db)
                for record in records:
                    live = self.live.get(record.id)
                    if live is None:
                        if record.id not in self._orphans:
                            self._end(db, record, "its sandbox is no longer there", dead=True)
                        continue
                    if live.lock.locked():
                        continue  # a cell is running: it is in use, and its end is the cell's to report
                    reason = self._sweep_reason(record, live)
                    if reason is not None:
                        # Ending the sessions before it took a while (~0.1 s each): it may have been used since.
                        self._end_if_due(db, record, live, reason)
                self._deployment_tokens = [token for token in db.scalars(select(SessionRecord.access_token).where(
                    SessionRecord.ended_at.is_(None), SessionRecord.access_token.is_not(None))) if token]
                cutoff = now() - timedelta(seconds=ENDED_KEPT_SECONDS)
                db.execute(delete(SessionRecord).where(SessionRecord.ended_at < cutoff))
                db.commit()
        except SQLAlchemyError as e:
            log.warning("session sweep failed (database: %s); retrying", type(e).__name__)
