"""The center's entrypoint in a swarm task: read the secrets and this node's facts, then run center.py as `cia`.

Starts as root for three things only: the group of the mounted Docker socket (it differs from node
to node), the secrets under /run/secrets (tokens, database password), and the host path of the
sandbox socket volume (Docker binds sandbox folders by host path: a link at that path inside this
container leads to the same volume). Then it drops to the unprivileged user with the socket's group
and runs the center as its child, staying first in the container to answer the front door's agent
checks and to announce a stop to the front doors before passing it on (front_door_agent.py).
"""

from __future__ import annotations

import os
import pwd
import re
import sys
from pathlib import Path
from urllib.parse import quote

import docker
from front_door_agent import supervise  # deploy/, next to this file

APP_DIR = Path("/opt/cia")
DOCKER_SOCKET = Path("/var/run/docker.sock")
SOCKET_VOLUME = Path("/var/lib/cia-sockets")
CONTAINER_ID = re.compile(r"/containers/([0-9a-f]{64})/")
USER = "cia"


def fail(message: str) -> None:
    """Stop with one clear line (the task restarts, and `docker service ps` shows it)."""
    print(f"center_entrypoint: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def own_container_id() -> str:
    """This container's id, from the files Docker binds into it (/etc/hostname and friends)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        found = CONTAINER_ID.search(line)
        if found:
            return found.group(1)
    fail("cannot tell this container's id from /proc/self/mountinfo")
    raise AssertionError


def socket_volume_host_path() -> str:
    """Where the engine keeps the socket volume on this node; a link there leads to the volume here."""
    try:
        mounts = docker.from_env(timeout=30).api.inspect_container(own_container_id())["Mounts"]
    except docker.errors.DockerException as e:
        fail(f"cannot ask the Docker engine about this container ({e})")
    sources = [mount["Source"] for mount in mounts if mount.get("Destination") == str(SOCKET_VOLUME)]
    if not sources:
        fail(f"no volume is mounted at {SOCKET_VOLUME}")
    host_path = Path(sources[0])
    if host_path != SOCKET_VOLUME:
        host_path.parent.mkdir(parents=True, exist_ok=True)
        if not host_path.is_symlink():
            host_path.symlink_to(SOCKET_VOLUME)
    return str(host_path)


def secret(path_variable: str) -> str | None:
    """The content of the secret file an environment variable names (stripped), None when it names none."""
    path = os.environ.pop(path_variable, "")
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        fail(f"cannot read the secret {path} ({e.strerror})")
    return None


def main() -> None:
    """Prepare the environment, drop privileges, run the center."""
    if not DOCKER_SOCKET.exists():
        fail(f"{DOCKER_SOCKET} is not mounted: the center drives this node's Docker engine through it")
    environment = os.environ
    environment["CIA_SANDBOX_SOCKET_DIR"] = socket_volume_host_path()
    tokens = secret("SWARM_TOKENS_FILE")
    if tokens is not None:
        environment["CIA_AUTH_TOKENS"] = ",".join(line.strip() for line in tokens.splitlines() if line.strip())
    password = secret("SWARM_DB_PASSWORD_FILE")
    database = environment.pop("SWARM_DB", "")  # user@host:port/name
    if password is not None and database:
        user, _, place = database.partition("@")
        environment["CIA_DATABASE_URL"] = f"postgresql+psycopg2://{quote(user)}:{quote(password, safe='')}@{place}"
    account = pwd.getpwnam(USER)
    os.chown(SOCKET_VOLUME, account.pw_uid, account.pw_gid)
    os.chmod(SOCKET_VOLUME, 0o700)
    # The socket's group, whatever its number on this node; no other supplementary group.
    os.setgroups([DOCKER_SOCKET.stat().st_gid])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    environment["HOME"] = str(APP_DIR)
    # The node's id, which the front doors send with their agent checks to find their own node's center.
    node_id = environment.pop("SWARM_NODE_ID", "")
    sys.exit(supervise([sys.executable, str(APP_DIR / "center.py")], node_id))


if __name__ == "__main__":
    main()
