"""Egress policy and the proxy's reading of requests (SPEC "Egress"): pure logic, no sockets.

Patterns as an operator and a request write them, what lies within the ceiling, which host, port and
address a connection may reach, and the request heads the proxy takes or refuses."""

from __future__ import annotations

import ipaddress

import pytest

from server.config import ConfigError, parse_config
from server.egress.policy import PatternError, judge, outside, parse_pattern, parse_patterns
from server.egress.proxy import Refusal, parse_request, split_authority

ip = ipaddress.ip_address


@pytest.mark.parametrize("text, kind, name, ports", [
    ("*", "any", "", {80, 443}),
    ("PyPI.org", "host", "pypi.org", {80, 443}),
    ("*.pythonhosted.org", "subdomains", "pythonhosted.org", {80, 443}),
    ("example.com:8080", "host", "example.com", {8080}),
    ("203.0.113.7", "network", "", {80, 443}),
    ("198.51.100.0/24:9000", "network", "", {9000}),
    ("[2001:db8::1]:8443", "network", "", {8443}),
    ("2001:db8::/32", "network", "", {80, 443}),
])
def test_patterns_parse(text: str, kind: str, name: str, ports: set[int]) -> None:
    pattern = parse_pattern(text)
    assert (pattern.kind, pattern.name, set(pattern.ports)) == (kind, name, ports)


@pytest.mark.parametrize("text", ["", "   ", "exa mple.com", "example.com:0", "example.com:70000", "host:port",
                                  "*.*.com", "ex*ample.com", "10.0.0.0/33", "10.0.0.1/8", "[::1", "-bad.com",
                                  "a" * 400, 5, None])
def test_malformed_patterns_are_refused_with_the_entry_named(text: object) -> None:
    with pytest.raises(PatternError) as error:
        parse_pattern(text)
    assert str(text)[:20] in str(error.value) or not str(text).strip()


def test_a_request_must_lie_within_the_ceiling() -> None:
    ceiling = parse_patterns(["pypi.org", "*.pythonhosted.org", "198.51.100.0/24", "10.9.0.2:8000", "*:8080"])
    for inside in ("pypi.org", "files.pythonhosted.org", "*.a.pythonhosted.org", "198.51.100.7", "198.51.100.0/25",
                   "10.9.0.2:8000", "example.org:8080", "pypi.org:443"):
        assert outside(parse_patterns([inside]), ceiling) is None, inside
    for beyond in ("example.org", "pythonhosted.org", "*", "198.51.0.0/16", "10.9.0.2", "pypi.org:8443",
                   "10.0.0.1:8080", "*.org"):
        assert outside(parse_patterns([beyond]), ceiling).text == beyond


def test_any_public_host_does_not_contain_internal_addresses() -> None:
    ceiling = parse_patterns(["*"])
    assert outside(parse_patterns(["8.8.8.8", "example.com", "*.example.com"]), ceiling) is None
    for internal in ("10.0.0.1", "127.0.0.1", "169.254.169.254", "192.168.0.0/16", "100.64.0.1", "[::1]",
                     "fd00::1", "fe80::1", "224.0.0.1", "0.0.0.0"):
        assert outside(parse_patterns([internal]), ceiling) is not None, internal


def test_a_name_never_opens_an_internal_address() -> None:
    allow = parse_patterns(["*", "files.example.com"])
    for address in ("127.0.0.1", "10.1.2.3", "172.17.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254",
                    "::1", "fd12::1", "fe80::1", "::ffff:10.0.0.1", "0.0.0.0", "224.0.0.251", "fd00:ec2::254"):
        verdict = judge("files.example.com", 443, [ip(address)], allow)
        assert not verdict.allowed and "internal" in verdict.reason, address
    public = judge("files.example.com", 443, [ip("10.0.0.1"), ip("93.184.215.14")], allow)
    assert public.allowed and public.address == ip("93.184.215.14"), "the checked public address, not the first"


def test_an_internal_address_opens_only_when_named_literally() -> None:
    allow = parse_patterns(["10.9.0.2:8000", "svc.internal"])
    assert judge("10.9.0.2", 8000, [ip("10.9.0.2")], allow).allowed
    assert not judge("10.9.0.2", 8001, [ip("10.9.0.2")], allow).allowed, "another port"
    assert not judge("10.9.0.3", 8000, [ip("10.9.0.3")], allow).allowed, "another address"
    assert not judge("svc.internal", 443, [ip("10.9.0.2")], allow).allowed, "a name resolving to it on 443"
    named = parse_patterns(["svc.internal:8000", "10.9.0.2:8000"])
    assert judge("svc.internal", 8000, [ip("10.9.0.2")], named).allowed, "a name and its address both listed"


def test_hosts_and_ports_not_listed_are_refused() -> None:
    allow = parse_patterns(["pypi.org", "*.pythonhosted.org"])
    public = [ip("151.101.0.223")]
    assert judge("pypi.org", 443, public, allow).allowed
    assert judge("files.pythonhosted.org", 443, public, allow).allowed
    assert not judge("pythonhosted.org", 443, public, allow).allowed, "*.domain is its subdomains only"
    assert not judge("pypi.org", 22, public, allow).allowed
    assert not judge("evil.org", 443, public, allow).allowed
    assert not judge("151.101.0.223", 443, public, allow).allowed, "an address is not the name that has it"
    assert judge("151.101.0.223", 443, public, parse_patterns(["*"])).allowed
    extra = (ipaddress.ip_network("151.101.0.0/16"),)
    assert not judge("pypi.org", 443, public, allow, extra).allowed, "the host's own networks are internal"


def test_the_config_checks_its_egress_section() -> None:
    config = parse_config({"egress": {"allow": ["pypi.org", "*.pythonhosted.org"], "default": ["pypi.org"],
                                      "max_bytes": "64m", "max_connections": 4,
                                      "package_index": "https://pypi.org/simple"}})
    assert [p.text for p in config.egress.ceiling] == ["pypi.org", "*.pythonhosted.org"]
    assert parse_config({}).egress.ceiling == (), "no egress unless configured"
    for egress, message in (({"allow": ["bad host"]}, "egress.allow"),
                            ({"allow": ["pypi.org"], "default": ["x.org"]}, "egress.default"),
                            ({"max_connections": 0}, "egress.max_connections"),
                            ({"package_index": "ftp://x"}, "egress.package_index"),
                            ({"surprise": 1}, "egress.surprise")):
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            parse_config({"egress": egress})


@pytest.mark.parametrize("head, host, port, sent", [
    (b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443", "pypi.org", 443, None),
    (b"CONNECT [2001:db8::1]:8443 HTTP/1.0", "2001:db8::1", 8443, None),
    (b"GET http://example.com/a?b=1 HTTP/1.1\r\nHost: example.com\r\nProxy-Connection: keep-alive\r\nAccept: */*",
     "example.com", 80, b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: close\r\n\r\n"),
    (b"GET http://user:pw@Example.com:8080 HTTP/1.0", "example.com", 8080,
     b"GET / HTTP/1.0\r\nHost: Example.com:8080\r\nConnection: close\r\n\r\n"),
])
def test_the_proxy_takes_connect_and_absolute_form(head: bytes, host: str, port: int, sent: bytes | None) -> None:
    request = parse_request(head)
    assert (request.host, request.port, request.head) == (host, port, sent)


@pytest.mark.parametrize("head, status", [
    (b"PRI * HTTP/2.0", 400),
    (b"GET /relative HTTP/1.1\r\nHost: example.com", 400),
    (b"GET https://example.com/ HTTP/1.1", 400),
    (b"CONNECT example.com HTTP/1.1", 400),
    (b"CONNECT example.com:99999 HTTP/1.1", 400),
    (b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked", 400),
    (b"GET http://example.com/ HTTP/1.1\r\n folded: header", 400),
    (b"GET http://example.com/ HTTP/1.1\r\nno colon here", 400),
    (b"GET http://ex\xffample.com/ HTTP/1.1", 400),
    (b"SSH-2.0-OpenSSH_9.2", 400),
])
def test_the_proxy_refuses_what_is_not_a_proxy_request(head: bytes, status: int) -> None:
    with pytest.raises(Refusal) as refusal:
        parse_request(head)
    assert refusal.value.status == status and refusal.value.reason


def test_authorities_split_with_their_default_port() -> None:
    assert split_authority("example.com", 80) == ("example.com", 80)
    assert split_authority("EXAMPLE.com.:8080", None) == ("example.com", 8080)
    with pytest.raises(Refusal):
        split_authority(":80", None)


def test_a_sessions_stored_allow_list_is_held_to_todays_ceiling() -> None:
    """The operator narrowed egress.allow and restarted: a session keeps only what the ceiling still holds."""
    from models import SessionRecord
    from server.session_registry import SessionRegistry, stored_network

    config = parse_config({"egress": {"allow": ["pypi.org", "*.pythonhosted.org"]}})
    registry = SessionRegistry(config, None, None, None)  # type: ignore[arg-type]  # network_of reads the config only
    record = SessionRecord(id="s", network=stored_network(parse_patterns(["pypi.org", "10.0.0.1", "api.example.com"])))
    assert [pattern.text for pattern in registry.network_of(record)] == ["pypi.org"]
    assert registry.network_of(SessionRecord(id="s", network=None)) == ()
    assert registry.network_of(SessionRecord(id="s", network="{not json")) == ()


def test_an_http_package_index_is_trusted_by_pip_and_an_https_one_needs_nothing() -> None:
    from sandbox.contract import egress_environment

    plain = egress_environment("http://10.1.2.3:8000/simple/")
    assert plain["PIP_INDEX_URL"] == "http://10.1.2.3:8000/simple/" and plain["PIP_TRUSTED_HOST"] == "10.1.2.3:8000"
    secure = egress_environment("https://pypi.org/simple/")
    assert "PIP_TRUSTED_HOST" not in secure and secure["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert "PIP_INDEX_URL" not in egress_environment()
