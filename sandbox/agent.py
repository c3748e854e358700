"""In-container agent: a small HTTP service that runs exactly one program in this container, then is done.

GET /healthz answers {"ok": true, "warm": bool, "warming": bool, "used": bool, "mode": "fresh"|"oneshot"|"session"}
once the agent listens. POST /run takes {"language", "code", "variables", "timeout", "max_output_bytes",
"max_images", "max_image_bytes", "files"?: [{"path", "content_base64"}], "max_files", "max_file_bytes"}
and answers {"stdout", "stderr", "exit_code", "status", "error"?, "duration_ms", "warm", "result",
"images": [{"name", "mime", "data"}], "files": [{"name", "data"}], "skipped": [{"name", "reason"}],
"output_notice"? (when output was cut: the line the center ends `output` with)};
then the agent exits, and with it the container. A job it refuses gets a 400 {"error"} at once,
and the agent stays ready. The program runs as an unprivileged user (--uid; see worker.py); this
agent runs as root with only the capabilities to start that user's process and to kill it.

POST /session/start instead makes this a session's agent: one interpreter that runs cell after
cell (POST /session/cell) and files to upload, list and download (/files), or stat, make, move and remove
(/fs): see session_routes.py.

Every container starts its own agent, so its start-up is paid by every request: the agent uses
the standard library only (see http_server.py). Flask alone took ~140 ms of CPU to import here,
a third of a request's whole cost under load. This file is the one the image runs as a script,
compiled afresh at each start; what it imports comes precompiled from the image, so it holds
little more than the routes and main().

The agent's modules, each importing only modules on the lines below its own:
  agent.py                        the command line and the routes
  session_routes.py, one_shot.py  a session's routes; a one-shot run
  agent_state.py                  the worker held, the mode taken (and the session, once one starts)
  session.py, life_watch.py       a session's cells; the agent's own end
  run_report.py                   how a run or a cell ended, and what it left
  output_files.py                 the images and files collected from the working folder
  worker_process.py, job_request.py, output_pipes.py, workspace.py
  agent_options.py, workspace_folders.py, http_server.py
  contract.py                     what the center and the agent agree on
The worker's side of the sandbox (worker.py) is forked from worker_process.py; see worker.py.
"""

from __future__ import annotations

import gc

# The agent lives for one run and makes no garbage cycles worth collecting; without the collector,
# its imports alone take ~4 ms less CPU, paid by every container. Only as the agent itself: a program
# that imports a module named `agent` finds this file first on its path, and keeps its collector.
if __name__ == "__main__":
    gc.disable()

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import egress_forwarder  # noqa: E402
import one_shot  # noqa: E402
from agent_options import SANDBOX_USER, parse_arguments  # noqa: E402
from agent_state import Agent  # noqa: E402
from contract import USERS_DIR, WORKSPACE  # noqa: E402
from http_server import HTTPError, RawResponse, Request, allow, serve_unix_socket  # noqa: E402
from job_request import Job  # noqa: E402
from output_pipes import streamed, wants_stream  # noqa: E402

SESSION_PATHS = ("/session/start", "/session/cell", "/files", "/fs")


def route(agent: Agent, request: Request) -> tuple[int, dict[str, Any] | RawResponse, bool]:
    """The agent's HTTP face: (status, answer, exit once answered) for one request.

    After its one program the agent has nothing left to do: it exits once the report is sent, so
    the container stops by itself. A job it refuses is answered at once and changes nothing.
    Session and file routes are session_routes.py's (imported only when one is asked for).
    """
    method, path = request.method, request.path
    if path == "/healthz":
        allow(method, path, "GET")
        return 200, agent.health(), False
    if path == "/run":
        allow(method, path, "POST")
        return run(agent, request)
    if path in SESSION_PATHS or path.startswith("/files/"):
        import session_routes  # a session's code: a one-shot run pays nothing for it

        return session_routes.route(agent, request)
    raise HTTPError(404, f"no such endpoint: {path}")


def run(agent: Agent, request: Request) -> tuple[int, dict[str, Any] | RawResponse, bool]:
    """POST /run: the one program of this sandbox, its report answered at the end or streamed as it runs."""
    try:
        job = Job.from_json(request.json(), agent.options)
    except ValueError as e:
        return 400, {"error": str(e)}, False
    refusal = agent.take("oneshot")
    if refusal is not None:
        return 409, {"error": refusal}, False
    try:
        worker, before = one_shot.prepare(agent, job)  # a refusal is still an ordinary error answer
        if wants_stream(request):
            return 200, streamed(lambda events: one_shot.execute(job, worker, before, events)), True
        return 200, one_shot.execute(job, worker, before), True
    except Exception as e:  # noqa: BLE001 - a used sandbox can do nothing more: say why, then exit
        status = getattr(e, "status", None)  # workspace.WorkspaceError: the input files could not be written
        if isinstance(status, int):
            return status, {"error": f"{e}; the program did not run"}, True
        return 500, {"error": f"agent error: {type(e).__name__}: {e}"}, True


def name_program_user(uid: int) -> None:
    """Name the program's uid `sandbox`, at home in the working folder, in the center's tmpfs at USERS_DIR.

    Root's files, read-only to the program; without that tmpfs (the agent started by hand on a
    read-only root) the uid stays nameless, which is no reason to refuse to serve.
    """
    entries = {"passwd": f"{SANDBOX_USER}:x:{uid}:{uid}:{SANDBOX_USER}:{WORKSPACE}:/bin/bash\n",
               "group": f"{SANDBOX_USER}:x:{uid}:\n"}
    try:
        for name, entry in entries.items():
            fd = os.open(os.path.join(USERS_DIR, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with open(fd, "w") as f:
                os.fchmod(fd, 0o644)  # whatever the umask: every process reads it, only root writes it
                f.write(entry)
    except OSError as e:
        print(f"agent: the program's uid {uid} gets no user name ({e})", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Serve on the Unix socket the center reaches (the container has no network at all)."""
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    name_program_user(options.uid)  # before the worker starts: the program may ask at once
    agent = Agent(options)  # starts the worker: before the server's threads exist
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Python ignores SIGXFSZ already; relied upon: a session's upload over the file size limit (the
    # container's RLIMIT_FSIZE, the agent's too) fails with EFBIG, answered 507, and does not kill the
    # agent. The worker inherits it: a program over the limit gets EFBIG too.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    agent.life.start()
    egress_forwarder.start()
    serve_unix_socket(options.socket, lambda request: route(agent, request), agent.life)


if __name__ == "__main__":
    main()
