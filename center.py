"""The dispatch center: authenticates, takes a warm sandbox from the pool, runs the code, stores images.

`python3 center.py [--config FILE]` serves it with waitress (a threaded production WSGI server:
the pool lives in this one process). Tests build it with `create_app(config)`.

The routes live in server/api/ (one blueprint per resource), what they share in server/services.py; this
module wires them into an app, serves it, and handles the command line and stop signals.
"""

from __future__ import annotations

import _thread
import argparse
import logging
import signal
import socket
import sys
import threading
import time
from typing import Any

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from server.api import http, ops, outputs, pages, runs, sessions
from server.config import Config, ConfigError, load_config
from server.containers.docker_sandboxes import SandboxStartError
from server.containers.pool import SandboxPool
from server.e2b import commands as e2b_commands
from server.e2b import control as e2b_control
from server.e2b import filesystem as e2b_filesystem
from server.e2b import sandbox as e2b_sandbox
from server.services import EXTENSION_KEY, Services, build_services, close_db_session, limit_malloc_arenas
from server.spool import DiskFormRequest
from server.waitress_server import make_server

__all__ = ["EXTENSION_KEY", "create_app", "main", "make_server"]

log = logging.getLogger("center")
SHUTDOWN_GRACE_SECONDS = 5.0  # beyond timeout_seconds, for a draining run to be collected and answered


def create_app(config: Config | None = None, *, pool: SandboxPool | None = None,
               services: Services | None = None) -> Flask:
    """App factory. Without a pool or services it starts its own (and removes its containers on close)."""
    config = config or load_config()
    app = Flask(__name__)
    app.request_class = DiskFormRequest
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    if services is None:
        services = build_services(config, pool)
        try:
            services.start()
        except BaseException:
            services.close()
            raise
    app.extensions[EXTENSION_KEY] = services

    http.install(app)
    app.register_blueprint(runs.blueprint)
    app.register_blueprint(outputs.blueprint)
    app.register_blueprint(sessions.blueprint)
    app.register_blueprint(ops.blueprint)
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(e2b_control.blueprint)
    app.register_blueprint(e2b_sandbox.blueprint)
    app.register_blueprint(e2b_commands.blueprint)
    app.register_blueprint(e2b_filesystem.blueprint)
    app.teardown_appcontext(close_db_session)
    return app


class Shutdown:
    """SIGTERM/SIGINT: stop taking work, let running programs finish, then stop.

    The first signal while serving starts a drain in the background (waitress keeps answering
    the requests in flight); when they are done, or after timeout_seconds plus a grace, the
    main thread is interrupted and the center stops. A second signal stops at once. Before the
    center serves, a signal stops start-up at once; the caller's clean-up still runs.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server: Any = None
        self.services: Services | None = None
        self.draining = threading.Event()

    def install(self) -> None:
        """Take over SIGTERM and SIGINT."""
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum: int, _frame: Any) -> None:
        """The signal handler (runs in the main thread)."""
        if self.server is None or self.services is None or self.draining.is_set():
            log.info("received %s, stopping now", signal.Signals(signum).name)
            raise SystemExit(0)
        log.info("received %s: finishing the running programs, then stopping", signal.Signals(signum).name)
        self.draining.set()
        self.server.accepting = False
        try:
            # The listening socket stops listening: new connections are refused at once (a client or
            # balancer retries elsewhere, knowing nothing was sent) rather than queued and reset later.
            self.server.socket.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        threading.Thread(target=self._drain, name="shutdown-drain", daemon=True).start()

    def _requests_in_flight(self) -> bool:
        """Whether waitress is serving a request or has one queued for a thread."""
        dispatcher = self.server.task_dispatcher
        return bool(dispatcher.active_count or dispatcher.queue)

    def _drain(self) -> None:
        assert self.services is not None
        deadline = time.monotonic() + self.config.timeout_seconds + SHUTDOWN_GRACE_SECONDS
        # The requests already taken in are served to the end, each still getting a sandbox: only new
        # connections are refused (a rolling update loses no accepted request). Then nothing more is
        # handed out, and what still runs may finish.
        while self._requests_in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        finished = self.services.drain(max(0.0, deadline - time.monotonic()))
        if not finished:
            log.warning("programs still running after %.0f s; stopping them", self.config.timeout_seconds)
        # The last answers are still being stored and written by waitress's threads.
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while self.server.task_dispatcher.active_count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # and leave through waitress's loop, in the main thread
        _thread.interrupt_main(signal.SIGTERM)


def serve(app: Flask, config: Config, shutdown: Shutdown | None = None) -> None:
    """Serve with waitress until a stop signal (see Shutdown)."""
    server = make_server(app, config)
    if shutdown is not None:
        shutdown.server = server
    log.info("serving on http://%s:%s", config.host, server.effective_port)
    try:
        server.run()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    """Command line: python3 center.py [--config FILE]."""
    parser = argparse.ArgumentParser(description="Code Interpreter API dispatch center")
    parser.add_argument("--config", help="config file (default: config.yaml beside this script)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"center.py: {e}", file=sys.stderr)
        return 2
    for key in ("kubeconfig_path", "k8s_interpreter_yaml"):
        if getattr(config, key):
            log.warning("config key '%s' is ignored: only the original project's k8s mode read it", key)
    limit_malloc_arenas()  # before any thread starts
    # Installed before anything starts, so that a signal at any point still removes the containers.
    shutdown = Shutdown(config)
    shutdown.install()
    svc = build_services(config)
    try:
        svc.start()
        app = create_app(config, services=svc)
        shutdown.services = svc
        serve(app, config, shutdown)
    except (SandboxStartError, SQLAlchemyError) as e:
        print(f"center.py: cannot start: {e}", file=sys.stderr)
        return 1
    finally:
        # No second signal may cut the clean-up short: it is bounded by the pool's own timeouts.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        started = time.monotonic()
        svc.close()
        log.info("stopped; sandboxes removed in %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
