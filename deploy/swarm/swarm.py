"""`make swarm-up` / `make swarm-down`: the center as a Docker Swarm stack on the current node.

up:   a one-node swarm when the engine is in none, the four images (deploy/swarm/images.py: the
      sandbox's, the center's, PostgreSQL's, the front door's), the secrets (the token from
      CIA_TOKEN, else the one made by an earlier up, else a new one, printed), the stack deployed,
      then a wait until /readyz answers 200 through the front door's port (CIA_PORT).
down: the stack removed (its centers drain), then every sandbox container its centers started on
      this node (by their deployment label, which starts with the stack's center service name),
      its socket volume and token secrets; with --purge also the database volume and password.
      A swarm that `up` initialised is left again when nothing else runs on it.

Settings (environment): CIA_TOKEN, CIA_PORT (5000), SWARM_STACK (cia), SWARM_CENTER_IMAGE,
SWARM_POSTGRES_IMAGE, SWARM_FRONT_DOOR_IMAGE, CIA_INTERPRETER_IMAGE (the sandbox image), SWARM_POOL_END,
SWARM_SANDBOX_RUNTIME, SWARM_TIMEOUT_SECONDS, SWARM_QUEUE_WAIT_SECONDS, SWARM_MAX_SESSIONS, SWARM_STOP_GRACE,
SWARM_DB_CONSTRAINT, SWARM_PURGE=1 (down --purge); the front door's SWARM_HOLD_SECONDS (60),
SWARM_SERVER_TIMEOUT (from the run's timeout and queue wait), SWARM_CLIENT_CONNECTIONS (100),
SWARM_CLIENT_REQUESTS_PER_10S (1000), SWARM_HEADER_TIMEOUT (5s).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

PROJECT_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_DIR))

from deploy.swarm.images import (  # noqa: E402 - the project's modules, after the path is set
    DEFAULT_CENTER_IMAGE,
    DEFAULT_FRONT_DOOR_IMAGE,
    DEFAULT_POSTGRES_IMAGE,
)
from server.containers.docker_sandboxes import DEPLOYMENT_LABEL  # noqa: E402

STACK_FILE = PROJECT_DIR / "deploy" / "swarm" / "stack.yml"
STATE_DIR = PROJECT_DIR / ".build" / "swarm"
READY_SECONDS = 300.0
GONE_SECONDS = 180.0
# The front door's server timeout beyond a run's own bounds (timeout_seconds and the queue wait): the
# center's grace for answering a run that hit its limit, with room to spare.
SERVER_TIMEOUT_MARGIN_SECONDS = 60


class SwarmError(RuntimeError):
    """A step failed; the message says which."""


def say(message: str) -> None:
    """A progress line, at once."""
    print(f"==> {message}", flush=True)


def docker(*arguments: str, stdin: str | None = None, check: bool = True) -> str:
    """Run the docker command line; its output, or SwarmError with its error text."""
    result = subprocess.run(["docker", *arguments], input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SwarmError(f"docker {' '.join(arguments[:3])}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 1.0) -> bool:
    """Poll until predicate() is truthy or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Stack:
    """One stack of the center on this node's swarm, named by SWARM_STACK."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.name = environ.get("SWARM_STACK", "cia")
        self.port = int(environ.get("CIA_PORT", "5000"))
        self.center_image = environ.get("SWARM_CENTER_IMAGE", DEFAULT_CENTER_IMAGE)
        self.postgres_image = environ.get("SWARM_POSTGRES_IMAGE", DEFAULT_POSTGRES_IMAGE)
        self.front_door_image = environ.get("SWARM_FRONT_DOOR_IMAGE", DEFAULT_FRONT_DOOR_IMAGE)
        self.sandbox_image = environ.get("CIA_INTERPRETER_IMAGE", "")
        self.state = STATE_DIR / self.name
        self.environ = environ

    # --- up ------------------------------------------------------------------------------------

    def ensure_swarm(self) -> None:
        """Make this engine a one-node swarm manager when it is in no swarm."""
        state = docker("info", "--format", "{{.Swarm.LocalNodeState}}")
        if state == "active":
            if docker("info", "--format", "{{.Swarm.ControlAvailable}}") != "true":
                raise SwarmError("this node is a swarm worker: run make swarm-up on a manager")
            return
        say("initialising a one-node swarm")
        result = subprocess.run(["docker", "swarm", "init"], capture_output=True, text=True)
        if result.returncode != 0:  # several addresses: advertise the one of the default route
            docker("swarm", "init", "--advertise-addr", default_route_address())
        self.state.parent.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / "initialised-swarm").write_text(docker("info", "--format", "{{.Swarm.NodeID}}"))

    def build(self) -> None:
        """The sandbox, center, PostgreSQL and front door images (a no-op when current)."""
        command = [sys.executable, str(PROJECT_DIR / "deploy" / "swarm" / "images.py"), "--center-image",
                   self.center_image, "--postgres-image", self.postgres_image, "--front-door-image",
                   self.front_door_image]
        if subprocess.run(command, cwd=PROJECT_DIR).returncode != 0:
            raise SwarmError("building the images failed (see above)")

    def server_timeout(self) -> str:
        """How long the front door lets a center stay silent within an answer: longer than any run's."""
        if self.environ.get("SWARM_SERVER_TIMEOUT"):
            return self.environ["SWARM_SERVER_TIMEOUT"]
        run = float(self.environ.get("SWARM_TIMEOUT_SECONDS") or 30) + float(
            self.environ.get("SWARM_QUEUE_WAIT_SECONDS") or 10)
        return f"{max(120, round(run) + SERVER_TIMEOUT_MARGIN_SECONDS)}s"

    def token(self) -> str:
        """CIA_TOKEN, else the token of an earlier up of this stack, else a new one (kept for the next up)."""
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        saved = self.state / "token"
        token = self.environ.get("CIA_TOKEN", "").strip()
        if not token and saved.exists():
            token = saved.read_text().strip()
        if not token:
            token = secrets.token_urlsafe(32)
            say(f"made a token (kept in {saved.relative_to(PROJECT_DIR)}): {token}")
        saved.write_text(token)
        saved.chmod(0o600)
        return token

    def secrets(self, token: str) -> dict[str, str]:
        """Create the token and database password secrets when missing; their names for the stack file."""
        existing = set(docker("secret", "ls", "--format", "{{.Name}}").split())
        tokens_name = f"{self.name}_tokens_{hashlib.sha256(token.encode()).hexdigest()[:12]}"
        if tokens_name not in existing:
            docker("secret", "create", tokens_name, "-", stdin=token)
        password_name = f"{self.name}_db_password"
        if password_name not in existing:  # made once: the database volume was initialised with it
            docker("secret", "create", password_name, "-", stdin=secrets.token_hex(24))
        return {"SWARM_TOKENS_SECRET": tokens_name, "SWARM_DB_SECRET": password_name}

    def deploy(self, secret_names: dict[str, str]) -> None:
        """docker stack deploy with this stack's settings (no registry: images are used as they are)."""
        environ = {**self.environ, **secret_names, "CIA_PORT": str(self.port),
                   "SWARM_CENTER_IMAGE": self.center_image, "SWARM_POSTGRES_IMAGE": self.postgres_image,
                   "SWARM_FRONT_DOOR_IMAGE": self.front_door_image, "SWARM_SERVER_TIMEOUT": self.server_timeout()}
        if self.sandbox_image:
            environ["SWARM_SANDBOX_IMAGE"] = self.sandbox_image
        say(f"deploying stack {self.name} (port {self.port})")
        result = subprocess.run(["docker", "stack", "deploy", "--resolve-image", "never", "--prune", "-c",
                                 str(STACK_FILE), self.name], env=environ, capture_output=True, text=True)
        if result.returncode != 0:
            raise SwarmError(f"docker stack deploy: {result.stderr.strip()}")
        self.remove_unused_token_secrets(secret_names["SWARM_TOKENS_SECRET"])

    def remove_unused_token_secrets(self, keep: str) -> None:
        """Earlier tokens' secrets, once no service uses them any more (an in-use one refuses removal)."""
        for name in docker("secret", "ls", "--format", "{{.Name}}").split():
            if name.startswith(f"{self.name}_tokens_") and name != keep:
                docker("secret", "rm", name, check=False)

    def wait_ready(self, token: str) -> None:
        """Until /readyz answers 200 through the front door's port (a center is up behind it)."""
        url = f"http://127.0.0.1:{self.port}/readyz"

        def ready() -> bool:
            try:
                return requests.get(url, timeout=5).status_code == 200
            except requests.RequestException:
                return False

        say(f"waiting for {url}")
        if not wait_until(ready, READY_SECONDS, 2):
            tasks = docker("stack", "ps", "--no-trunc", self.name, check=False)
            raise SwarmError(f"the center did not become ready within {READY_SECONDS:.0f} s:\n{tasks}")
        say(f"ready: http://127.0.0.1:{self.port} (Authorization: Bearer {token})")

    def up(self) -> None:
        """Swarm, images, secrets, stack, ready."""
        self.ensure_swarm()
        self.build()
        token = self.token()
        self.deploy(self.secrets(token))
        self.wait_ready(token)

    # --- down ----------------------------------------------------------------------------------

    def stack_containers(self) -> list[str]:
        """This node's containers of the stack's tasks."""
        return docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={self.name}").split()

    def sandbox_containers(self) -> list[str]:
        """This node's sandbox containers started by the stack's centers (their deployment label's prefix)."""
        listing = docker("ps", "-a", "--filter", f"label={DEPLOYMENT_LABEL}", "--format",
                         f'{{{{.ID}}}} {{{{.Label "{DEPLOYMENT_LABEL}"}}}}')
        prefix = f"{self.name}_center-"
        return [line.split()[0] for line in listing.splitlines() if line.split()[1:2]
                and line.split()[1].startswith(prefix)]

    def down(self, purge: bool) -> None:
        """Remove the stack and everything it left on this node."""
        if docker("info", "--format", "{{.Swarm.LocalNodeState}}") == "active":
            say(f"removing stack {self.name}")
            docker("stack", "rm", self.name, check=False)
        if not wait_until(lambda: not self.stack_containers(), GONE_SECONDS):
            docker("rm", "-f", *self.stack_containers(), check=False)
        sandboxes = self.sandbox_containers()
        if sandboxes:
            say(f"removing {len(sandboxes)} sandbox containers")
            docker("rm", "-f", *sandboxes, check=False)
        volumes = [f"{self.name}_sockets"] + ([f"{self.name}_pgdata"] if purge else [])
        wait_until(lambda: not docker("network", "ls", "-q", "--filter",
                                      f"label=com.docker.stack.namespace={self.name}", check=False), 60, 1)
        for volume in volumes:  # the stack's tasks go asynchronously: retry while the volume is in use
            wait_until(lambda v=volume: v not in docker("volume", "ls", "-q").split()
                       or docker("volume", "rm", v, check=False) == v, 60, 2)
        if docker("info", "--format", "{{.Swarm.ControlAvailable}}") == "true":
            self.remove_unused_token_secrets(keep="")
            if purge:
                docker("secret", "rm", f"{self.name}_db_password", check=False)
        marker = STATE_DIR / "initialised-swarm"
        if marker.exists() and not docker("service", "ls", "-q", check=False) \
                and len(docker("node", "ls", "-q", check=False).split()) <= 1:
            say("leaving the one-node swarm that swarm-up made")
            docker("swarm", "leave", "--force", check=False)
            docker("network", "rm", "docker_gwbridge", check=False)  # made for the swarm's tasks
            marker.unlink()
        say(f"stack {self.name} is down")


def default_route_address() -> str:
    """This host's address on its default route (what a swarm with several interfaces must be told)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: connect only picks the route
        return probe.getsockname()[0]


def main(argv: list[str] | None = None) -> int:
    """Command line: swarm.py up | down [--purge]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--purge", action="store_true", help="down: also remove the database volume and password")
    args = parser.parse_args(argv)
    stack = Stack(dict(os.environ))
    try:
        if args.action == "up":
            stack.up()
        else:
            stack.down(args.purge or os.environ.get("SWARM_PURGE") == "1")
    except SwarmError as e:
        print(f"swarm.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
