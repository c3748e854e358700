"""Kernel surface of a sandbox beyond Docker's defaults: the seccomp profile and the masked /proc paths.

The profile, seccomp/sandbox.json, is Docker's own default profile (as Debian ships it with the
engine's version) less io_uring and with socket(2) limited to the families a program has use for;
seccomp/derive.py makes it and says what changed and why. See docs/security.md#the-seccomp-profile.
"""

from __future__ import annotations

import functools
import json

from server.config import PROJECT_DIR

PROFILE_PATH = PROJECT_DIR / "seccomp" / "sandbox.json"

# Runtimes that hand the OCI seccomp profile to the host kernel (runc and crun do it the same way).
KERNEL_SECCOMP_RUNTIMES = frozenset({"runc", "crun"})

# Docker 20.10's default masked paths (oci/defaults.go, DefaultLinuxSpec): a HostConfig that sets
# MaskedPaths replaces them, so they are restated first, in Docker's order.
DOCKER_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
)

# Host facts that /proc shows every container (none is namespaced) and no program needs. A masked
# file reads empty (/dev/null is bound over it), a masked folder is an empty read-only tmpfs; a path
# the host lacks (no /proc/config.gz without CONFIG_IKCONFIG_PROC) is skipped by runc and crun.
OUR_MASKED_PATHS: tuple[str, ...] = (
    "/proc/cmdline",                   # the host kernel's command line (boot options, hypervisor ports)
    "/proc/config.gz",                 # the host kernel's whole build configuration
    "/proc/key-users",                 # the host's users with keys, and their key quotas
    "/proc/modules",                   # the host's loaded kernel modules
    "/proc/kallsyms",                  # the host kernel's symbols (addresses hidden, names not)
    "/proc/sys/kernel/random/boot_id",  # the host's boot id: names the host (and this boot of it)
    "/proc/interrupts",                # per-CPU interrupt counts: a timing side channel on the host
    "/proc/softirqs",                  # the same, for soft interrupts
    "/proc/diskstats",                 # the host's disks and their I/O, other sandboxes' included
    "/proc/partitions",                # the host's disks and partitions
)

MASKED_PATHS: tuple[str, ...] = DOCKER_MASKED_PATHS + OUR_MASKED_PATHS


@functools.cache
def _profile_text() -> str:
    """seccomp/sandbox.json as compact JSON text (read and checked once per process)."""
    profile = json.loads(PROFILE_PATH.read_text())
    return json.dumps(profile, separators=(",", ":"))


def seccomp_profile(runtime: str) -> str | None:
    """The seccomp profile (JSON text, for security_opt `seccomp=...`) for sandboxes under this runtime.

    runc and crun: the project's profile (seccomp/sandbox.json), loaded into the host kernel for the
    container's processes.

    runsc (gVisor): None, Docker's default stays in the spec. gVisor's Sentry implements the
    program's system calls itself and reaches the host kernel only through its own fixed seccomp
    filter, so an OCI profile does not guard the host kernel there; and Debian's runsc (2022-12)
    ignores the spec's seccomp section unless it runs with --oci-seccomp (off by default, and not
    among the engine's runtimeArgs for runsc), in which case the Sentry would emulate the filter
    for the program's (emulated) calls. gVisor has no AF_VSOCK, AF_ALG, AF_PACKET or similar
    sockets (EAFNOSUPPORT), and its io_uring is its own emulation in the Sentry, not the host's.

    Any other runtime: None (Docker's default profile).
    """
    if runtime in KERNEL_SECCOMP_RUNTIMES:
        return _profile_text()
    return None
