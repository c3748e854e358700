"""Keep sandboxes away from the host's own services.

An internal Docker network has no route out, but the host itself sits on the bridge: any service
listening on all addresses (a database, the center bound to 0.0.0.0, sshd) would be reachable from
a sandbox at the bridge's gateway address. One iptables rule drops every connection that a sandbox
opens towards the host, while the center's own connections to the agents (and their replies) pass.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

log = logging.getLogger(__name__)


def drop_rule(interface: str) -> list[str]:
    """INPUT rule: from the sandbox bridge, only replies to connections the host opened get in."""
    return ["INPUT", "-i", interface, "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED", "-j", "DROP"]


def protect_host(interface: str) -> bool:
    """Install the rule once (idempotent); False with a warning where it cannot be installed."""
    iptables = shutil.which("iptables")
    if iptables is None or os.geteuid() != 0:
        log.warning("cannot firewall the sandbox bridge %s (needs root and iptables): sandboxes can reach "
                    "host services that listen on all addresses; bind them to 127.0.0.1", interface)
        return False
    rule = drop_rule(interface)
    if subprocess.run([iptables, "-w", "-C", *rule], capture_output=True).returncode == 0:
        return True
    result = subprocess.run([iptables, "-w", "-I", *rule], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("could not firewall the sandbox bridge %s: %s", interface, result.stderr.strip())
        return False
    log.info("sandboxes on %s can no longer open connections to this host", interface)
    return True
