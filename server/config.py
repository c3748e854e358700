"""Configuration: config.yaml plus CIA_* environment overrides, validated into one frozen Config."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from sandbox.contract import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_JOB_BYTES,
)
from server.egress.policy import Pattern, PatternError, outside, parse_pattern, parse_patterns

PROJECT_DIR = Path(__file__).resolve().parents[1]
MULTIPART_OVERHEAD_BYTES = 1024 * 1024  # headers and boundaries around the files of one upload
DEFAULT_CONFIG_FILE = PROJECT_DIR / "config.yaml"
DEFAULT_DATA_DIR = PROJECT_DIR / "data"
ENV_PREFIX = "CIA_"
# CIA_* variables that are for clients and tools (the MCP server, `make swarm-up`), not config keys.
CLIENT_VARIABLES = frozenset({"CIA_URL", "CIA_TOKEN", "CIA_PORT"})
# The agent refuses jobs over MAX_JOB_BYTES; a request is re-encoded into a job with some growth
# (escapes), so the center takes at most half of that.
MAX_REQUEST_BYTES_LIMIT = MAX_JOB_BYTES // 2
DEPLOYMENT_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
# Visible ASCII without a comma (the list separator of CIA_AUTH_TOKENS): what every client can put
# in an Authorization header unchanged. Other characters arrive differently from client to client.
TOKEN_TEXT = re.compile(r"\A[\x21-\x2b\x2d-\x7e]+\Z")

# The versions LLM-written code expects (docs/configuration.md#libraries-in-the-image): numpy 1.x (np.NaN...),
# pandas 2.2 (fillna(method=...), applymap, resample("M") still run, with a FutureWarning),
# matplotlib before 3.11; tabulate for DataFrame.to_markdown(); requests, which LLM-written code imports
# to fetch data (then it learns the sandbox has no network, not that the module is missing); IPython, whose
# display machinery makes the rich results, and e2b-charts, which reads a figure's data (0.0.x: numpy 1.x).
DEFAULT_DEPENDENCIES = (
    "numpy>=1.26,<2", "pandas>=2.2,<2.3", "scipy", "matplotlib>=3.9,<3.11", "seaborn", "scikit-learn",
    "sympy", "pillow", "statsmodels", "openpyxl", "tabulate", "tqdm", "jinja2",
    "requests", "ipython>=8.20,<10", "e2b-charts>=0.0.4,<0.1",
)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


@dataclass(frozen=True)
class PortRange:
    """Inclusive range of sandbox ports: one warm sandbox slot per port."""

    start: int = 8001
    end: int = 8004

    @property
    def ports(self) -> list[int]:
        """Every port of the range, both ends included."""
        return list(range(self.start, self.end + 1))


@dataclass(frozen=True)
class ResourceLimits:
    """Limits applied to each sandbox container ("" for memory or cpus means no limit, as in the seed)."""

    memory: str = "512m"
    cpus: str = "1"
    pids: int = 128
    disk: str = "100m"
    tmp: str = "64m"
    shm: str = "16m"
    file_size: str = "50m"
    open_files: int = 256


def size_in_bytes(size: str) -> int:
    """'50m' -> 52428800 (Docker's units: b, k, m, g, powers of 1024)."""
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    size = size.strip().lower()
    if size and size[-1] in units:
        return int(float(size[:-1]) * units[size[-1]])
    return int(float(size))


@dataclass(frozen=True)
class EgressSettings:
    """Egress on an allow-list (SPEC "Egress"): the ceiling for everyone (empty: no egress, as by default),
    what a request that names nothing gets, and the limits of each run or session."""

    allow: tuple[str, ...] = ()
    default: tuple[str, ...] = ()
    max_bytes: str = "512m"
    max_connections: int = 16
    package_index: str = ""  # a URL: the sandbox's PIP_INDEX_URL when it may reach the network

    @property
    def byte_allowance(self) -> int:
        """`max_bytes` in bytes."""
        return size_in_bytes(self.max_bytes)

    @property
    def ceiling(self) -> tuple[Pattern, ...]:
        """`allow`, parsed."""
        return parse_patterns(self.allow)

    @property
    def default_patterns(self) -> tuple[Pattern, ...]:
        """`default`, parsed."""
        return parse_patterns(self.default)


@dataclass(frozen=True)
class PostgresSettings:
    """The seed's `postgres` section."""

    user: str = "postgres"
    password: str = ""
    db: str = "code_interpreter_db"
    host: str = "localhost"
    port: int = 5432

    def url(self) -> str:
        """SQLAlchemy URL for these settings."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql+psycopg2://{auth}@{self.host}:{self.port}/{quote(self.db, safe='')}"


@dataclass(frozen=True)
class Config:
    """Every setting of the center; built by load_config(), never read at import time."""

    host: str = "127.0.0.1"
    scheduler_port: int = 5000
    domain: str = ""
    auth_tokens: tuple[str, ...] = ()
    allow_anonymous: bool = False
    database_url: str = ""
    postgres: PostgresSettings | None = None
    interpreter_image: str = "code-interpreter-sandbox:latest"
    interpreter_port_range: PortRange = field(default_factory=PortRange)
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    resource_limits: ResourceLimits = field(default_factory=ResourceLimits)
    dependencies: tuple[str, ...] = DEFAULT_DEPENDENCIES
    max_request_bytes: int = 10 * 1024 * 1024
    queue_wait_seconds: float = 10.0
    sandbox_runtime: str = "runc"
    cors_origins: tuple[str, ...] = ()
    image_retention_days: float = 0.0
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_images: int = DEFAULT_MAX_IMAGES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_files: int = DEFAULT_MAX_FILES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_sessions: int = 8
    session_idle_timeout_seconds: float = 600.0
    session_max_lifetime_seconds: float = 3600.0
    max_upload_bytes: int = 100 * 1024 * 1024
    sandbox_socket_dir: str = ""
    deployment: str = ""
    sandbox_start_timeout: float = 60.0
    server_threads: int = 32
    # A request's line and headers must arrive within this, however slowly they trickle in; a connection
    # that neither sends nor takes anything for connection_idle_seconds is closed (a stalled download too).
    request_head_seconds: float = 30.0
    connection_idle_seconds: float = 60.0
    data_dir: str = str(DEFAULT_DATA_DIR)
    # Where the other centers of a swarm reach this one ("" on a single host: nothing is forwarded).
    # "{ip}" stands for the address this container's hostname resolves to (its overlay address).
    advertise_url: str = ""
    # Keys of the seed's file that this center accepts and ignores (it always runs on Docker).
    mode: str = "docker"
    kubeconfig_path: str = ""
    k8s_interpreter_yaml: str = ""
    egress: EgressSettings = field(default_factory=EgressSettings)
    # E2B's template names and the images they stand for (empty: the SDKs' defaults, both interpreter_image).
    e2b_templates: tuple[tuple[str, str], ...] = ()

    @property
    def templates(self) -> dict[str, str]:
        """E2B's templates by name: the configured ones, else code-interpreter-v1 and base as interpreter_image."""
        return dict(self.e2b_templates) or {"code-interpreter-v1": self.interpreter_image,
                                            "base": self.interpreter_image}

    @property
    def max_upload_body_bytes(self) -> int:
        """The largest upload request: max_upload_bytes of files with their multipart framing around them."""
        return self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES

    @property
    def deployment_label(self) -> str:
        """Label value marking this deployment's containers.

        By default derived from this machine's name, the center's address and port and its data
        folder: stable across restarts of one center (so it finds its leftovers), different for
        two centers on one host (so neither removes the other's sandboxes).
        """
        if self.deployment:
            return self.deployment
        where = f"{socket.gethostname()}|{self.host}|{self.scheduler_port}|{os.path.realpath(self.data_dir)}"
        return f"center-{self.scheduler_port}-{hashlib.sha256(where.encode()).hexdigest()[:10]}"

    def resolved_database_url(self) -> str:
        """database_url, else the seed's postgres section, else the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        if self.postgres is not None:
            return self.postgres.url()
        return f"sqlite:///{Path(self.data_dir) / 'code_interpreter.db'}"


# --- value parsers: each takes (key, raw value) and returns the typed value or raises ConfigError ---

def _fail(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}': expected {expected}, got {value!r}")


def _string(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _fail(key, "a string", value)
    return str(value)


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

    def parse(key: str, value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _fail(key, expected, value)
        if maximum is not None and value > maximum:
            raise _fail(key, expected, value)
        return value
    return parse


def _port(minimum: int) -> Callable[[str, Any], int]:
    return _integer(minimum, 65535)


def _number(minimum: float, exclusive: bool = False) -> Callable[[str, Any], float]:
    def parse(key: str, value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _fail(key, "a number", value) from None
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not numeric or (value <= minimum if exclusive else value < minimum):
                raise _fail(key, f"a finite number {'>' if exclusive else '>='} {minimum}", value)
        return float(value)
    return parse


def _string_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # comma-separated, handy in environment variables
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _fail(key, "a list of non-empty strings", value)
    return tuple(value)


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.strip().lower() in ("true", "yes", "1", "on")
    raise _fail(key, "true or false", value)


def _tokens(key: str, value: Any) -> tuple[str, ...]:
    tokens = _string_list(key, value)
    for token in tokens:
        if not TOKEN_TEXT.match(token):
            raise ConfigError(f"config key '{key}': a token may hold only visible ASCII characters other than "
                              "',' (what every client sends unchanged in an Authorization header)")
    return tokens


def _deployment(key: str, value: Any) -> str:
    text = _string(key, value)
    if text and not DEPLOYMENT_NAME.match(text):
        raise _fail(key, "up to 63 letters, digits, '_', '.' or '-', starting with a letter or digit", value)
    return text


def _database_url(key: str, value: Any) -> str:
    text = _string(key, value).strip()
    if text.startswith("sqlite") and (text.split("://", 1)[-1] in ("", "/", "/:memory:") or "mode=memory" in text):
        raise ConfigError(f"config key '{key}': an in-memory SQLite database would be a different empty database "
                          "on every connection and lose the images; give a file (sqlite:////path/to/file.db) "
                          "or leave it empty for the embedded file")
    return text


def _advertise_url(key: str, value: Any) -> str:
    text = _string(key, value).strip().rstrip("/")
    if text and not re.match(r"\Ahttps?://[^/\s]+\Z", text):
        raise _fail(key, "an http(s)://host:port URL with no path, or empty", value)
    return text


def _choice(*allowed: str) -> Callable[[str, Any], str]:
    def parse(key: str, value: Any) -> str:
        if value not in allowed:
            raise _fail(key, " or ".join(repr(a) for a in allowed), value)
        return value
    return parse


_SIZE = re.compile(r"^\d+(\.\d+)?[bkmg]?$", re.IGNORECASE)


def _size(key: str, value: Any) -> str:
    """A Docker-style size such as '512m' (or '' for the seed's 'no limit', allowed on memory only)."""
    text = _string(key, value).strip().lower()
    if not _SIZE.match(text) and not (text == "" and key == "resource_limits.memory"):
        raise _fail(key, "a size such as '512m' or '1g'", value)
    return text


def _patterns(key: str, value: Any) -> tuple[str, ...]:
    """A list of egress patterns (policy.parse_pattern's), each checked now."""
    patterns = _string_list(key, value)
    for pattern in patterns:
        try:
            parse_pattern(pattern)
        except PatternError as e:
            raise ConfigError(f"config key '{key}': {e}") from None
    return patterns


def _url_or_empty(key: str, value: Any) -> str:
    text = _string(key, value).strip()
    if text and not re.match(r"\Ahttps?://[^\s]+\Z", text):
        raise _fail(key, "an http(s):// URL, or empty", value)
    return text


def _cpus(key: str, value: Any) -> str:
    text = _string(key, value).strip()
    if text == "":
        return text
    _number(0, exclusive=True)(key, text)
    return text


def _section(cls: type, parsers: Mapping[str, Callable[[str, Any], Any]]) -> Callable[[str, Any], Any]:
    """Parse a nested mapping into the dataclass cls, field by field."""
    def parse(key: str, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _fail(key, "a mapping", value)
        values = {}
        for name, raw in value.items():
            if name not in parsers:
                raise ConfigError(f"config key '{key}.{name}' is unknown")
            values[name] = parsers[name](f"{key}.{name}", raw)
        return replace(cls(), **values)
    return parse


def _templates(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    """A mapping of E2B template names to image names, both non-empty strings."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                                 for k, v in value.items()):
        raise _fail(key, "a mapping of template names to image names", value)
    return tuple(value.items())


def _non_empty(parse: Callable[[str, Any], str]) -> Callable[[str, Any], str]:
    def wrapped(key: str, value: Any) -> str:
        text = parse(key, value)
        if not text:
            raise _fail(key, "a non-empty string", value)
        return text
    return wrapped


PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "host": _non_empty(_string),
    "scheduler_port": _port(0),
    "domain": _string,
    "auth_tokens": _tokens,
    "allow_anonymous": _boolean,
    "database_url": _database_url,
    "postgres": _section(PostgresSettings, {
        "user": _string, "password": _string, "db": _string, "host": _string, "port": _port(1),
    }),
    "interpreter_image": _non_empty(_string),
    "interpreter_port_range": _section(PortRange, {"start": _port(1), "end": _port(1)}),
    "timeout_seconds": _number(0, exclusive=True),
    "resource_limits": _section(ResourceLimits, {
        "memory": _size, "cpus": _cpus, "pids": _integer(8), "disk": _size, "tmp": _size,
        "shm": _size, "file_size": _size, "open_files": _integer(16),
    }),
    "dependencies": _string_list,
    "max_request_bytes": _integer(1024, MAX_REQUEST_BYTES_LIMIT),
    "queue_wait_seconds": _number(0),
    "sandbox_runtime": _choice("runc", "crun", "runsc"),
    "cors_origins": _string_list,
    "image_retention_days": _number(0),
    "max_output_bytes": _integer(1024),
    "max_images": _integer(0),
    "max_image_bytes": _integer(1024),
    "max_files": _integer(0),
    "max_file_bytes": _integer(1024),
    "max_sessions": _integer(0),
    "session_idle_timeout_seconds": _number(0, exclusive=True),
    "session_max_lifetime_seconds": _number(0, exclusive=True),
    "max_upload_bytes": _integer(1024),
    "sandbox_socket_dir": _string,
    "deployment": _deployment,
    "sandbox_start_timeout": _number(0, exclusive=True),
    "server_threads": _integer(1),
    "request_head_seconds": _number(0, exclusive=True),
    "connection_idle_seconds": _number(0, exclusive=True),
    "data_dir": _non_empty(_string),
    "advertise_url": _advertise_url,
    "mode": _choice("docker"),
    "kubeconfig_path": _string,
    "k8s_interpreter_yaml": _string,
    "egress": _section(EgressSettings, {
        "allow": _patterns, "default": _patterns, "max_bytes": _size, "max_connections": _integer(1, 1024),
        "package_index": _url_or_empty,
    }),
    "e2b_templates": _templates,
}
assert set(PARSERS) == {f.name for f in fields(Config)}, "every Config field needs a parser"


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Validate a mapping of config keys (as in config.yaml) into a Config."""
    values = {}
    for key, value in raw.items():
        if key not in PARSERS:
            raise ConfigError(f"config key '{key}' is unknown")
        values[key] = None if value is None and key == "postgres" else PARSERS[key](key, value)
    config = Config(**values)
    port_range = config.interpreter_port_range
    if port_range.end < port_range.start:
        raise ConfigError(
            f"config key 'interpreter_port_range': end {port_range.end} is below start {port_range.start}"
        )
    beyond = outside(config.egress.default_patterns, config.egress.ceiling)
    if beyond is not None:
        raise ConfigError(f"config key 'egress.default': {beyond.text!r} is not within egress.allow")
    if not config.auth_tokens and not config.allow_anonymous and not is_loopback(config.host):
        raise ConfigError(f"config key 'auth_tokens' is empty while 'host' {config.host!r} is reachable from other "
                          "machines: set auth_tokens, bind 127.0.0.1, or say allow_anonymous: true")
    return config


def is_loopback(host: str) -> bool:
    """Whether an address (or localhost) is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def yaml_error_summary(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message (with its caret drawing) as one line: the problem and where."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """CIA_<KEY> variables as config values: text as is (lists comma-separated), `{...}`/`[...]` as YAML.

    An empty variable counts as unset: `CIA_AUTH_TOKENS=` left over in a shell must not switch
    authentication off (nor blank out any other key).
    """
    overrides: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or not text.strip() or name in CLIENT_VARIABLES:
            continue
        key = name[len(ENV_PREFIX):].lower()
        overrides[key] = text
        if text.lstrip()[:1] in ("{", "["):  # e.g. CIA_INTERPRETER_PORT_RANGE="{start: 9001, end: 9004}"
            try:
                overrides[key] = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ConfigError(f"config key '{key}' (from {name}) is not valid YAML: {yaml_error_summary(e)}") from e
    return overrides


def load_config(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file (config.yaml by default), apply CIA_* overrides and validate."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_FILE
    raw: Any = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {yaml_error_summary(e)}") from e
    elif path != DEFAULT_CONFIG_FILE:
        raise ConfigError(f"config file {path} does not exist")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of keys")
    merged = dict(raw)
    merged.update(environment_overrides(os.environ if environ is None else environ))
    return parse_config(merged)
