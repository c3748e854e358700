"""The agent's options: its command line, checked, and the environment they give the program."""

from __future__ import annotations

import math
import pwd
from typing import NamedTuple

from contract import (
    AGENT_SOCKET_DIR,
    AGENT_SOCKET_NAME,
    WARM_DELAY_SECONDS,
    WARM_REST_SECONDS,
    WARM_UP_GROUP_NAMES,
    WORKSPACE,
)

SANDBOX_USER = "sandbox"  # the image's unprivileged user: the program's uid and gid unless --uid says otherwise
USAGE = ("usage: agent.py [--socket PATH] [--max-processes N] [--uid N] [--warm-delay SECONDS] "
         "[--warm-first GROUP,...] [--warm-rest SECONDS] [--threads N] [--path-first DIR] "
         "[--session-lifetime SECONDS] [--max-silence SECONDS]")


class AgentOptions(NamedTuple):
    """The agent's command line, checked (parse_arguments)."""

    socket: str
    max_processes: int  # RLIMIT_NPROC; 0: none
    uid: int  # the program's uid and gid
    warm_delay: float  # idle seconds before the warm-up
    warm_first: tuple[str, ...]  # the warm-up's groups taken first (contract.WARM_UP_GROUPS)
    warm_rest: float  # idle seconds after them before the other groups
    threads: int  # the numeric libraries' thread pools (worker_environment); 0: their own choice
    path_first: str = ""  # a folder put first on the program's PATH; "": none
    session_lifetime: float = 0.0  # a session's agent ends this long after the session started; 0: never
    max_silence: float = 0.0  # the agent ends after this long without any request; 0: never


def parse_arguments(argv: list[str]) -> AgentOptions:
    """The options from --socket PATH (default AGENT_SOCKET_DIR/AGENT_SOCKET_NAME), --max-processes N (default 0),
    --uid N (default: the `sandbox` user's), --warm-delay SECONDS (default 0.5), --warm-first GROUPS
    (default: all), --warm-rest SECONDS (default 2), --threads N (default 0), --path-first DIR
    (default: none), --session-lifetime SECONDS and --max-silence SECONDS (default 0: no bound; see
    life_watch.LifeWatch); SystemExit if wrong."""
    options = {"--socket": f"{AGENT_SOCKET_DIR}/{AGENT_SOCKET_NAME}", "--max-processes": "0", "--uid": "",
               "--warm-delay": str(WARM_DELAY_SECONDS), "--warm-first": ",".join(WARM_UP_GROUP_NAMES),
               "--warm-rest": str(WARM_REST_SECONDS), "--threads": "0", "--path-first": "",
               "--session-lifetime": "0", "--max-silence": "0"}
    if len(argv) % 2 or any(name not in options for name in argv[::2]):
        raise SystemExit(f"{USAGE}; got {argv}")
    options.update(zip(argv[::2], argv[1::2], strict=True))
    try:
        max_processes, threads = int(options["--max-processes"]), int(options["--threads"])
        uid = int(options["--uid"]) if options["--uid"] else pwd.getpwnam(SANDBOX_USER).pw_uid
        warm_delay, warm_rest = float(options["--warm-delay"]), float(options["--warm-rest"])
        lifetime, silence = float(options["--session-lifetime"]), float(options["--max-silence"])
    except ValueError:
        raise SystemExit(f"{USAGE}: N is a whole number, SECONDS a number; got {argv}") from None
    for name, seconds in (("--warm-delay", warm_delay), ("--warm-rest", warm_rest)):
        if not 0 <= seconds < 3600:
            raise SystemExit(f"{name} must be between 0 and 3600 seconds; got {seconds}")
    for name, seconds in (("--session-lifetime", lifetime), ("--max-silence", silence)):
        if not 0 <= seconds < math.inf:  # NaN fails too; any finite length works (LifeWatch waits in steps)
            raise SystemExit(f"{name} must be a finite number of seconds, 0 or more (0: none); got {seconds}")
    warm_first = tuple(options["--warm-first"].split(",")) if options["--warm-first"] else ()
    if unknown := [name for name in warm_first if name not in WARM_UP_GROUP_NAMES]:
        raise SystemExit(f"--warm-first takes groups among {','.join(WARM_UP_GROUP_NAMES)}; got {','.join(unknown)}")
    if max_processes < 0 or threads < 0:
        raise SystemExit(f"--max-processes and --threads must be 0 or more; got {max_processes} and {threads}")
    # Never root's, and not (uid_t)-1, which set*id() calls read as "leave unchanged".
    if not 0 < uid < 2**32 - 1:
        raise SystemExit(f"--uid must be between 1 and {2**32 - 2}; got {uid}")
    path_first = options["--path-first"]
    if path_first and (not path_first.startswith("/") or ":" in path_first):
        raise SystemExit(f"--path-first must be an absolute folder without ':'; got {path_first}")
    return AgentOptions(options["--socket"], max_processes, uid, warm_delay, warm_first, warm_rest, threads,
                        path_first, lifetime, silence)


def worker_environment(options: AgentOptions) -> dict[str, str]:
    """The program's whole environment: nothing of the agent's (or the center's) leaks into it.

    `threads` (the container's CPU limit, rounded up; 0: none) sizes the numeric libraries' thread
    pools: OpenBLAS otherwise starts one thread per host core, which on a 1-CPU quota only spin and
    wait (measured: numpy's import and a first figure cost twice the CPU). `path_first` goes before
    the usual PATH (under gVisor: busybox's ls and stat, see the center's docker_sandboxes.py).
    """
    threads = options.threads
    pools = {name: str(threads) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    path = f"/opt/venv/bin:/usr/local/bin:/usr/bin:/bin:{WORKSPACE}/.local/bin"  # the last: what pip installed
    return {
        **(pools if threads else {}),
        "PATH": f"{options.path_first}:{path}" if options.path_first else path,
        "HOME": WORKSPACE,
        "USER": SANDBOX_USER,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp",
        "MPLCONFIGDIR": "/tmp/.matplotlib",
        "MPLBACKEND": "module://capture_backend",
        # For Python the program starts itself (python3 plot.py): the worker has it on sys.path already.
        "PYTHONPATH": "/opt/matplotlib-backend",
        "MATPLOTLIBRC": "/opt/sandbox/matplotlibrc",
        "PYTHONUNBUFFERED": "1",  # output printed before a timeout is not lost in a buffer
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        # pip at run time (when the run may reach the package index): into the user site, in the workspace
        # (contract.USER_SITE); no cache left in the workspace, no question asked, no version check.
        "PIP_USER": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
