"""Egress policy (SPEC "Egress"): the patterns an operator and a request name, what lies within what, and
which host, port and address a connection may reach. Pure logic: no sockets, no configuration files.

A pattern is `*` (any public host), `example.com`, `*.example.com` (its subdomains, not itself), an IP
address or CIDR, each with an optional `:port` (`[v6]:port` for IPv6); without one it covers ports 80
and 443. A request's patterns must each lie within the operator's ceiling. A host name never opens an
address that is not global (loopback, private, CGNAT, link-local and metadata, multicast, reserved,
the host's Docker networks, the center's own): only an IP or CIDR pattern that names it does.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORTS = frozenset({80, 443})
MAX_PATTERN_CHARS = 300
LABEL = re.compile(r"\A(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


class PatternError(ValueError):
    """A pattern that is not one: the message says which and why."""


@dataclass(frozen=True)
class Pattern:
    """One allow-list entry, parsed."""

    text: str  # as written
    kind: str  # "any", "host", "subdomains" or "network"
    name: str = ""  # the host, or the domain whose subdomains it covers
    network: Network | None = None
    ports: frozenset[int] = DEFAULT_PORTS

    def within(self, ceiling: Pattern) -> bool:
        """Whether everything this pattern allows, the ceiling allows too."""
        if not self.ports <= ceiling.ports:
            return False
        if ceiling.kind == "any":
            return self.kind != "network" or not refused_network(self.network)
        if ceiling.kind == "network":
            return (self.kind == "network" and self.network.version == ceiling.network.version
                    and self.network.subnet_of(ceiling.network))
        if ceiling.kind == "host":
            return self.kind == "host" and self.name == ceiling.name
        # ceiling.kind == "subdomains"
        if self.kind == "host":
            return self.name.endswith("." + ceiling.name)
        return self.kind == "subdomains" and (self.name == ceiling.name or self.name.endswith("." + ceiling.name))

    def names(self, host: str, port: int) -> bool:
        """Whether a request for this host name (not an address) and port is one this pattern allows."""
        if port not in self.ports:
            return False
        if self.kind == "any":
            return True
        if self.kind == "host":
            return host == self.name
        return self.kind == "subdomains" and host.endswith("." + self.name)

    def holds(self, address: Address, port: int) -> bool:
        """Whether this is an IP or CIDR pattern that names the address literally (and the port)."""
        return (port in self.ports and self.kind == "network" and address.version == self.network.version
                and address in self.network)


def parse_pattern(raw: object) -> Pattern:
    """The pattern written as `raw`; PatternError says what is wrong."""
    if not isinstance(raw, str) or not raw.strip():
        raise PatternError(f"{raw!r} is not a pattern: give a host, *.domain, an IP address or CIDR, or *")
    text = raw.strip()
    if len(text) > MAX_PATTERN_CHARS:
        raise PatternError(f"the pattern {text[:40]!r}... is longer than {MAX_PATTERN_CHARS} characters")
    target, ports = split_port(text.lower(), text)
    if target == "*":
        return Pattern(text, "any", ports=ports)
    if "/" in target:
        try:
            return Pattern(text, "network", network=ipaddress.ip_network(target, strict=True), ports=ports)
        except ValueError as e:
            raise PatternError(f"{text!r} is not a CIDR block: {e}") from None
    try:
        address = ipaddress.ip_address(target)
    except ValueError:
        pass
    else:
        return Pattern(text, "network", network=ipaddress.ip_network(address), ports=ports)
    if target.startswith("*."):
        return Pattern(text, "subdomains", name=host_name(target[2:], text), ports=ports)
    return Pattern(text, "host", name=host_name(target, text), ports=ports)


def split_port(target: str, text: str) -> tuple[str, frozenset[int]]:
    """(the host part, its ports) of `target` (lower case), `[v6]:port` and `host:port` understood."""
    if target.startswith("["):
        host, bracket, rest = target[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise PatternError(f"{text!r}: an IPv6 address in brackets is written [address] or [address]:port")
        return host, port_of(rest[1:], text) if rest else DEFAULT_PORTS
    if target.count(":") == 1:
        host, _, port = target.partition(":")
        return host, port_of(port, text)
    return target, DEFAULT_PORTS  # no port, or an IPv6 address without brackets


def port_of(text: str, pattern: str) -> frozenset[int]:
    """The one port a pattern names."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise PatternError(f"{pattern!r}: the port must be a number from 1 to 65535")
    return frozenset({int(text)})


def host_name(name: str, text: str) -> str:
    """A valid DNS name (lower case, no trailing dot), or PatternError."""
    name = name.rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or not all(LABEL.match(label) for label in labels) or "*" in name:
        raise PatternError(f"{text!r} is not a host name, *.domain, IP address or CIDR block")
    return name


def parse_patterns(raw: Iterable[object]) -> tuple[Pattern, ...]:
    """Each entry parsed, in order."""
    return tuple(parse_pattern(entry) for entry in raw)


def outside(requested: Iterable[Pattern], ceiling: Iterable[Pattern]) -> Pattern | None:
    """The first requested pattern that no ceiling pattern contains, or None when all lie within it."""
    ceiling = tuple(ceiling)
    return next((pattern for pattern in requested if not any(pattern.within(top) for top in ceiling)), None)


def refused_address(address: Address, extra: Iterable[Network] = ()) -> bool:
    """Whether only a pattern naming this address may open it: anything not global (loopback, private,
    CGNAT, link-local with the metadata addresses, unspecified, reserved, documentation), multicast,
    and the `extra` networks (the host's Docker networks, the center's own addresses)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        return True
    return any(address.version == network.version and address in network for network in extra)


def refused_network(network: Network) -> bool:
    """Whether any address of the block is one a name may not open (so `*` does not contain it)."""
    return refused_address(network.network_address) or refused_address(network.broadcast_address)


def names_host(host: str, port: int, allow: Iterable[Pattern]) -> bool:
    """Whether the allow-list names this host name and port (before it is resolved)."""
    return any(pattern.names(host, port) for pattern in allow)


@dataclass(frozen=True)
class Verdict:
    """Whether a connection may go ahead, why not, and the address it must go to (the one checked)."""

    allowed: bool
    reason: str
    address: Address | None = None


def judge(host: str, port: int, addresses: Iterable[Address], allow: Iterable[Pattern],
          extra_refused: Iterable[Network] = ()) -> Verdict:
    """The verdict on a connection to host:port, `addresses` being what the host resolved to (or the host
    itself, an address): the first address the allow-list opens, else why none is opened."""
    allow, extra_refused = tuple(allow), tuple(extra_refused)
    try:
        literal: Address | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is None and not names_host(host, port, allow):
        return Verdict(False, f"{host}:{port} is not in this run's allow-list")
    addresses = tuple(addresses)
    if not addresses:
        return Verdict(False, f"{host} has no address")
    reasons = []
    for address in addresses:
        if any(pattern.holds(address, port) for pattern in allow):
            return Verdict(True, "allowed", address)
        if literal is not None and not any(p.kind == "any" and port in p.ports for p in allow):
            reasons.append(f"{address}:{port} is not in this run's allow-list")
        elif refused_address(address, extra_refused):
            reasons.append(f"{address} is a loopback, private, link-local or otherwise internal address, "
                           "which only an allow-list entry naming that address opens")
        else:
            return Verdict(True, "allowed", address)
    return Verdict(False, reasons[0])
