"""The directory of the centers that share one database: where each is reached, and whether it is still there.

On a swarm every node runs its own center, and a session lives in the sandbox of the center that
created it. Each center with an `advertise_url` writes a heartbeat row (its node name, its address)
every few seconds; another center that receives a request for one of its sessions looks the address
up here and forwards the request (server/api/forwarding.py). A center whose heartbeat is older than
GONE_AFTER_SECONDS has left: its sessions answer 410. A center without `advertise_url` (a single
host) writes nothing and forwards nothing.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from models import CenterRecord
from server.periodic import Periodic

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
# Long enough for a rolling update to replace a node's center (stop, start, first heartbeat) without
# its sessions being declared gone; short enough that a node that left is noticed within a minute.
GONE_AFTER_SECONDS = 30.0


def resolve_advertise_url(template: str) -> str:
    """The advertised URL with "{ip}" replaced by the address this host's name resolves to.

    In a swarm task that is the container's address on the stack's overlay network, the one its
    peers can reach (Docker writes it into the container's /etc/hosts).
    """
    if "{ip}" not in template:
        return template
    return template.replace("{ip}", socket.gethostbyname(socket.gethostname()))


def _aware(moment: datetime) -> datetime:
    """The moment with its time zone (SQLite gives them back naive, in UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Peer:
    """Another center as the directory knows it."""

    node: str
    url: str
    alive: bool  # its heartbeat is recent


class PeerDirectory:
    """This center's heartbeat in the shared database, and the look-up of the others."""

    def __init__(self, advertise_url: str, node: str, database: sessionmaker) -> None:
        self.node = node
        self.database = database
        self.url = resolve_advertise_url(advertise_url) if advertise_url else ""
        self._heartbeats = Periodic("peer-heartbeat", HEARTBEAT_SECONDS, self.beat)

    @property
    def enabled(self) -> bool:
        """Whether this center takes part in a multi-center deployment (it has an address to give)."""
        return bool(self.url)

    def start(self) -> None:
        """Say this center is here now, then keep saying it every HEARTBEAT_SECONDS."""
        if not self.enabled:
            return
        log.info("this center is %s at %s for its peers", self.node, self.url)
        self.beat()
        self._heartbeats.start()

    def close(self) -> None:
        """Stop the heartbeat (the row stays: a center that comes back takes its sessions again)."""
        self._heartbeats.stop()

    def beat(self) -> bool:
        """Write this center's row (address, now); False when the database does not answer."""
        for _attempt in range(2):  # two centers never share a node name, but a retry costs nothing
            try:
                with self.database() as db:
                    record = db.get(CenterRecord, self.node)
                    moment = datetime.now(timezone.utc)
                    if record is None:
                        db.add(CenterRecord(node=self.node, url=self.url, heartbeat_at=moment))
                    else:
                        record.url, record.heartbeat_at = self.url, moment
                    db.commit()
                return True
            except IntegrityError:
                continue
            except SQLAlchemyError as e:
                log.warning("heartbeat not recorded (database: %s)", type(e).__name__)
                return False
        return False

    def find(self, node: str) -> Peer | None:
        """The center called `node`, or None when it never said it was here. Raises SQLAlchemyError."""
        with self.database() as db:
            record = db.get(CenterRecord, node)
            if record is None:
                return None
            age = datetime.now(timezone.utc) - _aware(record.heartbeat_at)
            return Peer(record.node, record.url, age < timedelta(seconds=GONE_AFTER_SECONDS))
