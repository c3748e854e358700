#!/usr/bin/env python3
"""Derive the sandboxes' seccomp profile (seccomp/sandbox.json) from Docker's default profile.

Docker's default profile is taken from Debian, never copied by hand: Debian bookworm's package
golang-github-docker-docker-dev (20.10.24+dfsg1, the same version as the engine) ships it as
profiles/seccomp/default.json (the JSON form of the profile compiled into dockerd). To regenerate:

    tmp=$(mktemp -d) && cd "$tmp"
    apt-get update && apt-get download golang-github-docker-docker-dev   # downloads; installs nothing
    dpkg-deb -x golang-github-docker-docker-dev_*.deb x
    python3 /path/to/repo/seccomp/derive.py \
        x/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json

The output is deterministic (same input, same bytes); `--check` compares instead of writing.
Standard library only. What is changed, and why, is in CHANGES below and in the output's "comment".
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "sandbox.json"
SOURCE = "Debian bookworm golang-github-docker-docker-dev 20.10.24+dfsg1: profiles/seccomp/default.json"

IO_URING = ("io_uring_setup", "io_uring_enter", "io_uring_register")
# socket(2) is re-allowed below for some families only; socketcall(2) is the 32-bit multiplexer
# (socketcall(SYS_SOCKET, args in memory)) whose arguments seccomp cannot see, so it must go too;
# socketpair(2) creates a socket of any family (and loads its module) before refusing most of them.
SOCKET_CALLS = ("socket", "socketcall", "socketpair")

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCK_STREAM, SOCK_DGRAM, SOCK_TYPE_MASK = 1, 2, 0xF  # the type argument also carries SOCK_CLOEXEC etc.
IPPROTO_TCP, IPPROTO_UDP, NETLINK_ROUTE = 6, 17, 0

# libseccomp turns a socket(2) rule on an ABI that multiplexes socket calls through socketcall(2)
# into socketcall(SYS_SOCKET) with argument 0 replaced, so there the family condition would vanish
# and every family would be allowed. Those 32-bit ABIs are dropped as sub-architectures; a program
# of theirs (an i386 binary, or `int 0x80` from a 64-bit one) then meets the filter's bad-arch action.
MULTIPLEXING_SUBARCHES = ("SCMP_ARCH_X86", "SCMP_ARCH_S390", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_PPC")

CHANGES = [
    f"Derived by seccomp/derive.py from {SOURCE}; do not edit by hand, regenerate (see derive.py).",
    "io_uring_setup, io_uring_enter, io_uring_register: removed from the allow list, so they fail with "
    "EPERM like every call the profile does not name: io_uring is a second system call interface whose "
    "operations (IORING_OP_SOCKET, OPENAT, ...) seccomp never sees, with a long record of kernel "
    "privilege escalations; programs that try it (libuv, liburing) fall back to ordinary calls.",
    "socket: no longer allowed unconditionally; allowed only for AF_UNIX (any type), AF_INET and AF_INET6 "
    "as TCP (SOCK_STREAM, protocol 0 or IPPROTO_TCP) or UDP (SOCK_DGRAM, protocol 0 or IPPROTO_UDP), and "
    "AF_NETLINK with NETLINK_ROUTE (glibc's getaddrinfo with AI_ADDRCONFIG, getifaddrs and if_nameindex "
    "ask the kernel over rtnetlink). Every other family (AF_VSOCK, AF_ALG, AF_PACKET, AF_KEY, "
    "AF_BLUETOOTH, AF_XDP, AF_TIPC, AF_RDS, ...), other IP protocols (SCTP, DCCP, L2TP, UDP-Lite, MPTCP) "
    "and other netlink protocols (audit, uevent, netfilter, xfrm, crypto, generic) fail with EPERM "
    "before the kernel creates the socket or auto-loads its module.",
    "socketpair: allowed for AF_UNIX only (the only family that implements it; the kernel creates a "
    "socket of the given family first).",
    "socketcall: removed: the multiplexer's arguments are in memory, out of seccomp's sight.",
    "archMap: the sub-architectures whose ABI multiplexes socket calls (x86 under x86_64, s390 under "
    "s390x, mips o32 under mips64) are dropped, because libseccomp rewrites a conditional socket rule "
    "into socketcall(SYS_SOCKET) without the family condition there. On a native s390x, mips or ppc "
    "host the same rewrite applies to the native ABI: the family filter holds on x86_64 and aarch64.",
    "Everything else is Docker's default, unchanged; a denied call fails with EPERM (defaultAction).",
]


def rule(names: list[str], args: list[dict[str, Any]], comment: str, action: str = "SCMP_ACT_ALLOW",
         **more: Any) -> dict[str, Any]:
    """One entry of "syscalls", keyed like Docker's own entries."""
    entry: dict[str, Any] = {"names": names, "action": action}
    entry.update(more)
    entry.update({"args": args, "comment": comment, "includes": {}, "excludes": {}})
    return entry


def equal(index: int, value: int) -> dict[str, Any]:
    return {"index": index, "value": value, "op": "SCMP_CMP_EQ"}


def socket_type(value: int) -> dict[str, Any]:
    """(argument 1 & SOCK_TYPE_MASK) == value: the type, whatever SOCK_CLOEXEC/SOCK_NONBLOCK say."""
    return {"index": 1, "value": SOCK_TYPE_MASK, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}


def socket_rules() -> list[dict[str, Any]]:
    """The allow rules for socket(2) and socketpair(2): one per family and kind; rules OR together."""
    rules = [rule(["socket"], [equal(0, AF_UNIX)], "socket: AF_UNIX")]
    for family, name in ((AF_INET, "AF_INET"), (AF_INET6, "AF_INET6")):
        for kind, kind_name, protocols in ((SOCK_STREAM, "TCP", (0, IPPROTO_TCP)),
                                           (SOCK_DGRAM, "UDP", (0, IPPROTO_UDP))):
            for protocol in protocols:
                rules.append(rule(["socket"], [equal(0, family), socket_type(kind), equal(2, protocol)],
                                  f"socket: {name} {kind_name}, protocol {protocol}"))
    rules.append(rule(["socket"], [equal(0, AF_NETLINK), equal(2, NETLINK_ROUTE)],
                      "socket: AF_NETLINK, NETLINK_ROUTE only (getaddrinfo, getifaddrs)"))
    rules.append(rule(["socketpair"], [equal(0, AF_UNIX)], "socketpair: AF_UNIX only"))
    return rules


def derive(default: dict[str, Any], source_sha256: str) -> dict[str, Any]:
    """Docker's default profile with the CHANGES applied."""
    if set(default) != {"defaultAction", "archMap", "syscalls"} or default["defaultAction"] != "SCMP_ACT_ERRNO":
        raise SystemExit(f"unexpected default.json layout: {sorted(default)}, {default.get('defaultAction')}")
    syscalls = []
    found: set[str] = set()
    for entry in copy.deepcopy(default["syscalls"]):
        names = entry.get("names") or [entry["name"]]
        removed = [n for n in names if n in IO_URING or n in SOCKET_CALLS]
        if removed:
            if entry["action"] != "SCMP_ACT_ALLOW" or entry.get("args") or any(entry.get("includes", {}).values()):
                raise SystemExit(f"unexpected rule for {removed}: {entry}")  # derive.py must be revisited
            found.update(removed)
            entry["names"] = [n for n in names if n not in removed]
            entry.pop("name", None)
            if not entry["names"]:
                continue
        syscalls.append(entry)
    if found != set(IO_URING) | set(SOCKET_CALLS):
        raise SystemExit(f"default.json no longer allows {sorted(set(IO_URING) | set(SOCKET_CALLS) - found)}")
    syscalls += socket_rules()
    arch_map = []
    for arch in copy.deepcopy(default["archMap"]):
        arch["subArchitectures"] = [a for a in arch["subArchitectures"] if a not in MULTIPLEXING_SUBARCHES]
        arch_map.append(arch)
    comment = [*CHANGES, f"Source file sha256: {source_sha256}."]
    return {"comment": comment, "defaultAction": default["defaultAction"], "archMap": arch_map,
            "syscalls": syscalls}


def render(profile: dict[str, Any]) -> str:
    """The file's text: stable key order as built, two-space indent, trailing newline."""
    return json.dumps(profile, indent=2, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("default_json", type=Path, help="Docker's profiles/seccomp/default.json (from Debian)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write (default {OUTPUT})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the output file differs; write nothing")
    options = parser.parse_args(argv)
    raw = options.default_json.read_bytes()
    text = render(derive(json.loads(raw), hashlib.sha256(raw).hexdigest()))
    if options.check:
        current = options.output.read_text() if options.output.exists() else ""
        if current != text:
            print(f"{options.output} is not what derive.py makes from {options.default_json}", file=sys.stderr)
            return 1
        print(f"{options.output} is up to date")
        return 0
    options.output.write_text(text)
    print(f"wrote {options.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
