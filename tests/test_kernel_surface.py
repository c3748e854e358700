"""The kernel surface a program reaches: io_uring, socket families, host facts in /proc, shared per-user limits.

Attacks go through the center's API; each test fails if its attack succeeds. The first tests need no
Docker: they check the seccomp profile (seccomp/sandbox.json) and the masked paths themselves. Run under
runc, crun and gVisor (TEST_SANDBOX_RUNTIME=crun / runsc).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import platform
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import RUNTIME
from flask.testing import FlaskClient

import server.containers.security as sandbox_security
from server.config import PROJECT_DIR, Config

PROFILE = PROJECT_DIR / "seccomp" / "sandbox.json"
_spec = importlib.util.spec_from_file_location("seccomp_derive", PROJECT_DIR / "seccomp" / "derive.py")
derive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(derive)
KERNEL_SECCOMP = RUNTIME in sandbox_security.KERNEL_SECCOMP_RUNTIMES
ALLOWED_FAMILIES = {1, 2, 10, 16}  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK


def strings_in(value: Any) -> list[str]:
    """Every string anywhere in a JSON value (keys included), but for the prose of "comment" fields."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() if k != "comment" for s in [k, *strings_in(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def allow_rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The entries that allow this call (each with its own conditions; they OR together)."""
    return [s for s in profile["syscalls"]
            if name in s.get("names", [s.get("name")]) and s["action"] == "SCMP_ACT_ALLOW"]


def family_condition(entry: dict[str, Any]) -> int | None:
    """The value argument 0 must equal under this rule, or None when argument 0 is not pinned."""
    pinned = [a["value"] for a in entry.get("args") or [] if a["index"] == 0 and a["op"] == "SCMP_CMP_EQ"]
    return pinned[0] if len(pinned) == 1 else None


# --- the profile and the masked paths (no Docker) ------------------------------------------------

def test_profile_has_no_io_uring_and_no_unconditional_socket() -> None:
    profile = json.loads(PROFILE.read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["syscalls"]
    assert "read" in profile["syscalls"][0]["names"], "Docker's default allow list is there"
    assert not [s for s in strings_in(profile) if "io_uring" in s.lower()], "io_uring is named nowhere"
    assert profile["comment"], "the profile says what was changed and why"
    socket_rules = allow_rules_for(profile, "socket")
    assert socket_rules, "socket must stay allowed for some families"
    assert {family_condition(rule) for rule in socket_rules} == ALLOWED_FAMILIES, socket_rules
    assert {family_condition(rule) for rule in allow_rules_for(profile, "socketpair")} == {1}
    assert allow_rules_for(profile, "socketcall") == [], "the multiplexer would bypass the family filter"
    # The IP and netlink rules also pin the protocol (argument 2).
    for rule in socket_rules:
        if family_condition(rule) != 1:
            assert [a for a in rule["args"] if a["index"] == 2 and a["op"] == "SCMP_CMP_EQ"], rule
    x86_64 = [a for a in profile["archMap"] if a["architecture"] == "SCMP_ARCH_X86_64"]
    assert x86_64 and "SCMP_ARCH_X86" not in x86_64[0]["subArchitectures"]


def test_derive_applies_its_changes_to_a_default_profile() -> None:
    """derive.py on a small profile shaped like Docker's: io_uring and the socket calls are taken out."""
    default = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
        "syscalls": [
            {"names": ["read", "io_uring_setup", "socket", "socketcall", "socketpair", "io_uring_enter"],
             "action": "SCMP_ACT_ALLOW", "args": [], "comment": "", "includes": {}, "excludes": {}},
            {"names": ["io_uring_register"], "action": "SCMP_ACT_ALLOW", "args": [], "comment": "",
             "includes": {}, "excludes": {}},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "args": [], "comment": "ENOSYS",
             "includes": {}, "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["mips64"]}},
        ],
    }
    before = copy.deepcopy(default)
    profile = derive.derive(default, "0" * 64)
    assert default == before, "the input is not modified"
    assert profile["syscalls"][0]["names"] == ["read"]
    assert [s["names"] for s in profile["syscalls"][:2]] == [["read"], ["clone3"]], "io_uring_register's entry is gone"
    assert not [s for s in strings_in(profile) if "io_uring" in s]
    assert profile["archMap"][0]["subArchitectures"] == ["SCMP_ARCH_X32"]
    assert derive.render(profile) == derive.render(derive.derive(before, "0" * 64)), "deterministic"
    assert json.loads(derive.render(profile))["comment"]
    with pytest.raises(SystemExit):  # a default that no longer allows the calls: derive.py must be revisited
        derive.derive({**before, "syscalls": before["syscalls"][2:]}, "0" * 64)


def test_seccomp_profile_per_runtime_and_masked_paths() -> None:
    for runtime in ("runc", "crun"):
        text = sandbox_security.seccomp_profile(runtime)
        assert text is not None and json.loads(text) == json.loads(PROFILE.read_text())
    assert sandbox_security.seccomp_profile("runsc") is None
    masked = sandbox_security.MASKED_PATHS
    docker_defaults = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                       "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware")
    assert masked[:len(docker_defaults)] == docker_defaults, "setting MaskedPaths replaces Docker's own list"
    assert {"/proc/cmdline", "/proc/config.gz", "/proc/key-users"} <= set(masked)
    assert len(set(masked)) == len(masked)


# --- attacks through the API ----------------------------------------------------------------------

def run(client: FlaskClient, code: str, **fields: Any) -> dict[str, Any]:
    """POST /runcode (Python); the answer's body, after checking the run completed."""
    response = client.post("/runcode", json={"code": code, "languageType": "python", **fields})
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "ok", body
    return body


def run_json(client: FlaskClient, code: str, **fields: Any) -> Any:
    """Run a program whose last output line is JSON; that value."""
    body = run(client, code, **fields)
    return json.loads(body["output"].strip().splitlines()[-1])


IO_URING = """
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)  # struct io_uring_params
results = {}
for name, number, args in (("io_uring_setup", 425, (8, ctypes.addressof(params))),
                           ("io_uring_enter", 426, (0, 1, 0, 0, 0, 0)), ("io_uring_register", 427, (0, 0, 0, 0))):
    fd = libc.syscall(number, *[ctypes.c_long(a) for a in args])
    results[name] = fd if fd >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(results))
"""


def test_io_uring_is_refused(client: FlaskClient) -> None:
    if not KERNEL_SECCOMP:
        pytest.skip("gVisor serves io_uring from its own Sentry (no host io_uring is reached) and ignores "
                    "OCI seccomp profiles")
    if platform.machine() != "x86_64":
        pytest.skip("the io_uring syscall numbers used are x86_64's")
    results = run_json(client, IO_URING)
    assert set(results.values()) <= {"ENOSYS", "EPERM"}, results


SOCKETS = """
import errno, json, socket
results = {}
for name, family, kind, protocol in attempts:
    try:
        socket.socket(family, kind, protocol).close()
        results[name] = "CREATED"
    except OSError as e:
        results[name] = errno.errorcode.get(e.errno, str(e.errno))
for name, family in (("socketpair AF_VSOCK", 40), ("socketpair AF_INET", 2)):
    try:
        [s.close() for s in socket.socketpair(family, socket.SOCK_STREAM)]
        results[name] = "CREATED"
    except OSError as e:
        results[name] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(results))
"""
FORBIDDEN_SOCKETS = [  # name, family, type, protocol
    ("AF_VSOCK stream", 40, 1, 0), ("AF_VSOCK dgram", 40, 2, 0), ("AF_ALG", 38, 5, 0), ("AF_PACKET raw", 17, 3, 0),
    ("AF_PACKET dgram", 17, 2, 0), ("AF_KEY", 15, 3, 2), ("AF_BLUETOOTH", 31, 1, 0), ("AF_XDP", 44, 3, 0),
    ("AF_TIPC", 30, 5, 0), ("AF_RDS", 21, 5, 0), ("AF_CAN", 29, 3, 1), ("AF_NFC", 39, 5, 0), ("AF_QIPCRTR", 42, 2, 0),
    ("AF_INET SCTP", 2, 1, 132), ("AF_INET DCCP", 2, 6, 33), ("AF_INET6 SCTP", 10, 5, 132),
    ("AF_INET UDP-Lite", 2, 2, 136), ("AF_INET SOCK_PACKET", 2, 10, 0),
]
# Netlink families other than NETLINK_ROUTE: the host kernel's (gVisor has its own uevent socket).
FORBIDDEN_NETLINK = [("NETLINK_KOBJECT_UEVENT", 16, 2, 15), ("NETLINK_GENERIC", 16, 3, 16),
                     ("NETLINK_CRYPTO", 16, 3, 21), ("NETLINK_AUDIT", 16, 3, 9), ("NETLINK_NETFILTER", 16, 3, 12)]


def test_sockets_of_other_families_cannot_be_made(client: FlaskClient) -> None:
    attempts = FORBIDDEN_SOCKETS + (FORBIDDEN_NETLINK if KERNEL_SECCOMP else [])
    results = run_json(client, SOCKETS, variables={"attempts": attempts})
    assert "CREATED" not in results.values(), results
    if KERNEL_SECCOMP:
        # Refused by the profile (EPERM), before the kernel looks at the family (this host's has vsock).
        assert set(results.values()) == {"EPERM"}, results
    else:
        assert set(results.values()) <= {"EAFNOSUPPORT", "EPROTONOSUPPORT", "ESOCKTNOSUPPORT", "EOPNOTSUPP",
                                         "EPERM", "EINVAL"}, results


I386_SOCKETCALL = r"""
import ctypes, json, os, subprocess, sys
child = '''
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
memory = libc.mmap(None, 4096, 7, 0x22 | 0x40, -1, 0)  # read/write/exec, private anonymous, below 4 GiB
if sys.argv[1] == "socketcall":  # socketcall(SYS_SOCKET, {AF_VSOCK, SOCK_STREAM, 0}) through int 0x80
    code = [0x53, 0xB8, 102, 0, 0, 0, 0xBB, 1, 0, 0, 0, 0x89, 0xF9, 0xCD, 0x80, 0x5B, 0xC3]
else:  # the i386 ABI's own socket(AF_VSOCK, SOCK_STREAM, 0), number 359
    code = [0x53, 0xB8, 0x67, 0x01, 0, 0, 0x89, 0xFB, 0xB9, 1, 0, 0, 0, 0x31, 0xD2, 0xCD, 0x80, 0x5B, 0xC3]
ctypes.memmove(memory, bytes(code), len(code))
arguments = (ctypes.c_uint32 * 3).from_address(memory + 256)
arguments[0], arguments[1], arguments[2] = 40, 1, 0
call = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(memory)
print("called", flush=True)
fd = call(memory + 256 if sys.argv[1] == "socketcall" else 40)
try:
    print("SOCKET" if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") else "no socket", fd)
except OSError:
    print("no socket", fd)
'''
results = {}
for mode in ("socketcall", "direct"):
    done = subprocess.run([sys.executable, "-c", child, mode], capture_output=True, text=True, timeout=20)
    results[mode] = [done.returncode, done.stdout]
print(json.dumps(results))
"""


def test_32_bit_system_calls_cannot_bypass_the_socket_filter(client: FlaskClient) -> None:
    """`int 0x80` from a 64-bit program reaches the i386 ABI, where socketcall(2) hides its arguments."""
    if platform.machine() != "x86_64":
        pytest.skip("the attack is x86 machine code")
    results = run_json(client, I386_SOCKETCALL)
    for mode, (returncode, output) in results.items():
        assert "SOCKET" not in output, (mode, results)
        # Either the filter killed it (SIGSYS: the i386 ABI is no sub-architecture of the profile),
        # or the call ran and made no socket (gVisor runs `int 0x80` as a 64-bit system call).
        assert returncode == -31 or (returncode == 0 and "no socket" in output), (mode, results)
        if KERNEL_SECCOMP:
            assert returncode == -31, (mode, results)


ORDINARY_SOCKETS = """
import json, os, socket, tempfile
results = {}
a, b = socket.socketpair()
a.sendall(b"pair"); results["socketpair"] = b.recv(4).decode()
path = os.path.join(tempfile.mkdtemp(), "s")
server = socket.socket(socket.AF_UNIX); server.bind(path); server.listen()
client = socket.socket(socket.AF_UNIX); client.connect(path)
peer, _ = server.accept(); client.sendall(b"unix"); results["unix"] = peer.recv(4).decode()
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname(), timeout=2)
peer, _ = server.accept(); client.sendall(b"tcp"); results["tcp"] = peer.recv(3).decode()
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.IPPROTO_UDP)
receiver.bind(("127.0.0.1", 0))
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"udp", receiver.getsockname())
results["udp"] = receiver.recv(3).decode()
socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP).close()
results["inet6"] = "made"
# AI_ADDRCONFIG: glibc asks the kernel over rtnetlink which address families are configured.
results["getaddrinfo"] = sorted({a[4][0] for a in socket.getaddrinfo("127.0.0.1", 80, flags=socket.AI_ADDRCONFIG)})
results["interfaces"] = [name for _, name in socket.if_nameindex()]
print(json.dumps(results))
"""


def test_unix_inet_and_route_netlink_sockets_still_work(client: FlaskClient) -> None:
    results = run_json(client, ORDINARY_SOCKETS)
    assert results == {"socketpair": "pair", "unix": "unix", "tcp": "tcp", "udp": "udp", "inet6": "made",
                       "getaddrinfo": ["127.0.0.1"], "interfaces": ["lo"]}, results


READ_PATHS = """
import json, os
results = {}
for path in paths:
    try:
        if os.path.isdir(path):
            results[path] = "dir:" + ",".join(sorted(os.listdir(path)))
        else:
            with open(path, "rb") as f:
                results[path] = f.read(4096).decode("latin-1")
    except OSError as e:
        results[path] = "error:" + type(e).__name__
print(json.dumps(results))
"""


def host_text(path: str) -> str | None:
    """The host's view of a path (its first 4 KiB, as the program reads it), or None.

    /proc/kcore (the host's memory) is not read.
    """
    if path == "/proc/kcore" or not Path(path).is_file():
        return None
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("latin-1")
    except OSError:
        return None


def test_host_kernel_facts_read_empty(client: FlaskClient) -> None:
    paths = list(sandbox_security.MASKED_PATHS)
    results = run_json(client, READ_PATHS, variables={"paths": paths})
    for path, seen in results.items():
        host = host_text(path)
        if host:  # what the host's file says must not reach the program
            assert seen != host, path
        if KERNEL_SECCOMP:  # runc and crun mask every one: empty, an empty folder, or absent
            assert seen in ("", "dir:", "error:FileNotFoundError", "error:PermissionError"), (path, seen[:200])
    cmdline = results["/proc/cmdline"]
    if KERNEL_SECCOMP:
        assert cmdline == ""
    else:  # gVisor's /proc is its own: its command line is a fixed one of gVisor's
        assert "gvisor" in cmdline and cmdline != host_text("/proc/cmdline"), cmdline
    boot_id = host_text("/proc/sys/kernel/random/boot_id")
    if boot_id:
        assert boot_id.strip() not in json.dumps(results)
    if host_text("/proc/config.gz") is not None:
        assert results["/proc/config.gz"] in ("", "error:FileNotFoundError")
    assert results["/proc/key-users"] in ("", "error:FileNotFoundError")


def test_mount_table_does_not_name_the_deployment(client: FlaskClient, base_config: Config) -> None:
    """/proc/self/mountinfo shows the host side of every bind mount; the agent's folder names nothing."""
    text = run(client, "print(open('/proc/self/mountinfo').read())")["output"]
    assert "/agent/sock" in text or not KERNEL_SECCOMP, text
    for secret in (base_config.deployment_label, "pytest"):
        assert secret not in text, text


@pytest.mark.skipif(not KERNEL_SECCOMP, reason="gVisor shows only its own cgroups and mounts")
def test_cgroup_paths_do_not_name_the_container(client: FlaskClient) -> None:
    """A cgroup namespace of its own: the program sees its cgroup as "/", not /docker/<container id>."""
    text = run(client, "print(open('/proc/self/cgroup').read())")["output"]
    paths = {line.split(":", 2)[2] for line in text.splitlines() if line.count(":") >= 2}
    assert paths == {"/"}, text


# --- per-user kernel resources are not shared between sandboxes ---------------------------------

HOARD_INOTIFY = """
import ctypes, errno, json, os, time
libc = ctypes.CDLL(None, use_errno=True)
held, error = [], None
while len(held) < 4096:
    fd = libc.inotify_init1(0)
    if fd < 0:
        error = errno.errorcode[ctypes.get_errno()]
        break
    held.append(fd)
started = time.time()
print("holding", flush=True)
time.sleep(hold)
print(json.dumps({"held": len(held), "error": error, "from": started, "to": time.time(), "uid": os.getuid()}))
"""
USE_INOTIFY_AND_PIPE = """
import ctypes, errno, json, os, time
libc = ctypes.CDLL(None, use_errno=True)
at = time.time()
fd = libc.inotify_init1(0)
inotify = "ok" if fd >= 0 else errno.errorcode[ctypes.get_errno()]
try:
    os.pipe()
    pipe = "ok"
except OSError as e:
    pipe = errno.errorcode[e.errno]
print(json.dumps({"inotify": inotify, "pipe": pipe, "at": at, "uid": os.getuid()}))
"""


def test_a_sandbox_cannot_starve_another_of_per_user_kernel_resources(live_server) -> None:
    """inotify instances (fs.inotify.max_user_instances) are counted per uid across the host's kernel."""
    url = live_server()
    answers: dict[str, Any] = {}
    holding = threading.Event()

    def post(name: str, code: str, variables: dict[str, Any] | None = None) -> None:
        response = requests.post(f"{url}/runcode", json={"code": code, "languageType": "python", "timeout": 20,
                                                         "variables": variables or {}}, timeout=60)
        answers[name] = (response.status_code, response.json())

    def hoard() -> None:
        # Streamed: A's own line says when it holds its instances (it may have waited for a sandbox first).
        with requests.post(f"{url}/runcode", json={"code": HOARD_INOTIFY, "languageType": "python", "timeout": 20,
                                                   "variables": {"hold": 8}},
                           headers={"Accept": "application/x-ndjson"}, stream=True, timeout=60) as streamed:
            for line in streamed.iter_lines(chunk_size=1):
                event = json.loads(line) if line else {}
                if event.get("type") == "stdout" and "holding" in event["text"]:
                    holding.set()
                elif event.get("type") == "result":
                    answers["a"] = (streamed.status_code, event)

    hoarder = threading.Thread(target=hoard)
    hoarder.start()
    assert holding.wait(60), "A never came to hold its instances"
    tries = 0
    while hoarder.is_alive() and tries < 4:  # B, again and again while A holds its instances
        post(f"b{tries}", USE_INOTIFY_AND_PIPE)
        tries += 1
        time.sleep(1.5)
    hoarder.join()
    assert "a" in answers, "A's streamed run ended without its result"
    for name, (status, body) in answers.items():
        assert status == 200 and body["status"] == "ok", (name, body)
    a = json.loads(answers["a"][1]["output"].strip().splitlines()[-1])
    assert a["error"] in ("EMFILE", "ENFILE", "ENOMEM") and a["held"] > 0, a
    during = [json.loads(body["output"].strip().splitlines()[-1]) for name, (_, body) in answers.items()
              if name != "a"]
    during = [b for b in during if a["from"] <= b["at"] <= a["to"]]
    assert during, ("no B ran while A held its instances", a, answers)
    assert all((b["inotify"], b["pipe"]) == ("ok", "ok") for b in during), (a, during)


NAME_THE_USER = """whoami
python3 -c 'import os, pwd; print(pwd.getpwuid(os.stat("/workspace").st_uid).pw_name)'
getent passwd 0 | cut -d: -f1
python3 -c 'import os, pwd; e = pwd.getpwuid(os.getuid()); print(e.pw_dir, e.pw_uid == os.getuid() != 61000)'
echo 'root2:x:0:0::/root:/bin/bash' >> /var/lib/extrausers/passwd 2>/dev/null || echo denied
getent passwd root2 || echo no-root2
"""


def test_the_sandbox_uid_has_a_name_only_root_can_give(client: FlaskClient) -> None:
    """The program's own uid is `sandbox` at home in /workspace (whoami, file owners, pwd.getpwuid work);
    root stays root, and the program can neither add a name nor change one. (Python's stat, not
    coreutils': gVisor's statx refuses coreutils' flags.)"""
    body = client.post("/runcode", json={"code": NAME_THE_USER, "languageType": "bash"}).get_json()
    assert body["output"].splitlines() == ["sandbox", "sandbox", "root", "/workspace True", "denied", "no-root2"], body


def test_ls_and_stat_work_under_every_runtime(client: FlaskClient) -> None:
    """Under gVisor they are busybox's: Debian's runsc refuses the statx flag coreutils' ls and stat pass."""
    script = ("echo hi > a.txt\n"
              "ls -l a.txt | awk '{print $1, $3, $5, $NF}'\n"
              "stat -c '%s %U' a.txt\n"
              "ls -la | grep -c ' a.txt$'\n")
    body = client.post("/runcode", json={"code": script, "languageType": "bash"}).get_json()
    assert (body["output"].splitlines(), body["stderr"]) == (["-rw-r--r-- sandbox 3 a.txt", "3 sandbox", "1"], ""), body
