"""Pure-logic tests of config.py: defaults, the seed's file shape, database URL resolution, CIA_* overrides, errors."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from server.config import (
    DEFAULT_DEPENDENCIES,
    PROJECT_DIR,
    Config,
    ConfigError,
    PortRange,
    PostgresSettings,
    ResourceLimits,
    load_config,
    parse_config,
)

# The shape of the seed project's config.yaml, with the quirks its users' files carry.
SEED_CONFIG = """\
domain: "http://localhost:5000"
scheduler_port: 5000
interpreter_image: "leezhuuu/code_interpreter:latest"
interpreter_port_range:
  start: 8001
  end: 8010
postgres:
  user: "user"
  password: "password"
  db: "code_interpreter_db"
  host: "localhost"
  port: "5432"
resource_limits:
  memory: ""
  cpus: "1"
timeout_seconds: 30
mode: docker
kubeconfig_path: "~/.kube/config"
k8s_interpreter_yaml: "k8s/interpreter.yaml"
dependencies:
  - numpy
  - matplotlib
"""


def write_config(tmp_path: Path, content: str | dict[str, Any]) -> Path:
    """Write a config file (YAML text, or a mapping dumped as YAML) and return its path."""
    path = tmp_path / "config.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
    return path


def load_text(tmp_path: Path, content: str | dict[str, Any], environ: dict[str, str] | None = None) -> Config:
    """load_config on a temporary file, with no environment overrides unless given."""
    return load_config(write_config(tmp_path, content), environ=environ or {})


# --- defaults ------------------------------------------------------------------------------------

def test_empty_file_gives_the_spec_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, "")
    assert config.host == "127.0.0.1"
    assert config.scheduler_port == 5000
    assert config.domain == ""
    assert config.auth_tokens == ()
    assert config.database_url == ""
    assert config.postgres is None
    assert config.interpreter_image == "code-interpreter-sandbox:latest"
    assert (config.interpreter_port_range.start, config.interpreter_port_range.end) == (8001, 8004)
    assert config.interpreter_port_range.ports == [8001, 8002, 8003, 8004]
    assert config.timeout_seconds == 30
    assert config.resource_limits.memory == "512m"
    assert config.resource_limits.cpus == "1"
    assert config.dependencies == DEFAULT_DEPENDENCIES
    names = {re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0] for requirement in config.dependencies}
    assert {"numpy", "pandas", "matplotlib", "tabulate"} <= names
    assert config.max_request_bytes == 10485760
    assert config.queue_wait_seconds == 10
    assert config.sandbox_runtime == "runc"
    assert config.cors_origins == ()
    assert config.image_retention_days == 0


def test_empty_file_equals_the_embedded_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, "") == Config()
    assert parse_config({}) == Config()


def test_shipped_config_yaml_holds_the_defaults() -> None:
    # config.yaml says "the values below are the defaults": loading it must change nothing.
    assert load_config(PROJECT_DIR / "config.yaml", environ={}) == Config()


def test_port_range_includes_both_ends() -> None:
    assert PortRange(9000, 9000).ports == [9000]
    assert PortRange(9001, 9003).ports == [9001, 9002, 9003]


def test_values_from_the_file_replace_the_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, {
        "host": "0.0.0.0", "scheduler_port": 6000, "timeout_seconds": 2.5,
        "auth_tokens": ["t1", "t2"], "cors_origins": ["https://app.example"],
        "resource_limits": {"memory": "1g"}, "sandbox_runtime": "runsc", "image_retention_days": 7,
    })
    assert config.host == "0.0.0.0"
    assert config.scheduler_port == 6000
    assert config.timeout_seconds == 2.5
    assert config.auth_tokens == ("t1", "t2")
    assert config.cors_origins == ("https://app.example",)
    assert config.resource_limits.memory == "1g"
    assert config.resource_limits.cpus == "1"  # the keys of a section not given keep their defaults
    assert config.resource_limits.pids == ResourceLimits().pids
    assert config.sandbox_runtime == "runsc"
    assert config.image_retention_days == 7


# --- the seed's file -----------------------------------------------------------------------------

def test_seed_config_is_accepted(tmp_path: Path) -> None:
    config = load_text(tmp_path, SEED_CONFIG)
    assert config.postgres == PostgresSettings(
        user="user", password="password", db="code_interpreter_db", host="localhost", port=5432,
    )
    assert isinstance(config.postgres.port, int)
    assert config.resource_limits.memory == ""  # the seed's "no limit"
    assert config.resource_limits.cpus == "1"
    assert config.interpreter_port_range.ports == list(range(8001, 8011))
    assert config.interpreter_image == "leezhuuu/code_interpreter:latest"
    assert config.domain == "http://localhost:5000"
    assert config.mode == "docker"
    assert config.kubeconfig_path == "~/.kube/config"
    assert config.k8s_interpreter_yaml == "k8s/interpreter.yaml"
    assert config.dependencies == ("numpy", "matplotlib")
    assert config.resolved_database_url().startswith("postgresql")


def test_empty_cpus_means_no_limit(tmp_path: Path) -> None:
    assert load_text(tmp_path, {"resource_limits": {"cpus": ""}}).resource_limits.cpus == ""


def test_numeric_password_in_yaml_is_read_as_text(tmp_path: Path) -> None:
    config = load_text(tmp_path, "postgres:\n  password: 1234\n")
    assert config.postgres is not None
    assert config.postgres.password == "1234"


# --- database URL --------------------------------------------------------------------------------

def test_database_url_wins_over_postgres(tmp_path: Path) -> None:
    config = load_text(tmp_path, {
        "database_url": "postgresql://other:secret@db.example:5433/other_db",
        "postgres": {"user": "user", "password": "password", "db": "code_interpreter_db"},
    })
    assert config.resolved_database_url() == "postgresql://other:secret@db.example:5433/other_db"


def test_postgres_section_builds_a_url_with_quoted_password(tmp_path: Path) -> None:
    password = "p@ss:w/rd%#?"
    config = load_text(tmp_path, {
        "postgres": {"user": "app", "password": password, "db": "images", "host": "db.example", "port": "6543"},
    })
    url = make_url(config.resolved_database_url())
    assert url.drivername.startswith("postgresql")
    assert url.username == "app"
    assert url.password == password
    assert url.host == "db.example"
    assert url.port == 6543
    assert url.database == "images"
    assert "p@ss" not in config.resolved_database_url()


def test_postgres_without_password_has_no_password_in_url(tmp_path: Path) -> None:
    config = load_text(tmp_path, {"postgres": {"user": "app"}})
    url = make_url(config.resolved_database_url())
    assert url.username == "app"
    assert url.password is None
    assert (url.host, url.port, url.database) == ("localhost", 5432, "code_interpreter_db")


@pytest.mark.parametrize("content", ["", "postgres:\n", "database_url: ''\n"],
                         ids=["nothing", "null-postgres", "empty-url"])
def test_neither_gives_a_sqlite_file_under_data_dir(tmp_path: Path, content: str) -> None:
    data_dir = tmp_path / "data"
    config = load_text(tmp_path, content, environ={"CIA_DATA_DIR": str(data_dir)})
    url = make_url(config.resolved_database_url())
    assert url.drivername == "sqlite"
    assert url.database == str(data_dir / "code_interpreter.db")


def test_default_sqlite_file_is_in_the_project_data_folder() -> None:
    url = make_url(Config().resolved_database_url())
    assert url.drivername == "sqlite"
    assert Path(url.database) == PROJECT_DIR / "data" / "code_interpreter.db"


# --- environment overrides -----------------------------------------------------------------------

@pytest.mark.parametrize(("environ", "attribute", "expected"), [
    ({"CIA_TIMEOUT_SECONDS": "5"}, "timeout_seconds", 5.0),
    ({"CIA_SCHEDULER_PORT": "6000"}, "scheduler_port", 6000),
    ({"CIA_AUTH_TOKENS": "a,b"}, "auth_tokens", ("a", "b")),
    ({"CIA_AUTH_TOKENS": " a , b ,"}, "auth_tokens", ("a", "b")),
    ({"CIA_AUTH_TOKENS": "[a, b]"}, "auth_tokens", ("a", "b")),
    ({"CIA_AUTH_TOKENS": "12345"}, "auth_tokens", ("12345",)),
    ({"CIA_AUTH_TOKENS": ""}, "auth_tokens", ()),
    ({"CIA_CORS_ORIGINS": "https://a.example,https://b.example"}, "cors_origins",
     ("https://a.example", "https://b.example")),
    ({"CIA_INTERPRETER_PORT_RANGE": "{start: 9001, end: 9002}"}, "interpreter_port_range", PortRange(9001, 9002)),
    ({"CIA_DATABASE_URL": "postgresql://u:p@h:5432/d"}, "database_url", "postgresql://u:p@h:5432/d"),
    ({"CIA_HOST": "0.0.0.0", "CIA_AUTH_TOKENS": "t"}, "host", "0.0.0.0"),
    ({"CIA_SANDBOX_RUNTIME": "runsc"}, "sandbox_runtime", "runsc"),
    ({"CIA_DOMAIN": ""}, "domain", ""),
])
def test_environment_overrides(tmp_path: Path, environ: dict[str, str], attribute: str, expected: object) -> None:
    assert getattr(load_text(tmp_path, "", environ=environ), attribute) == expected


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    config = load_text(tmp_path, {"timeout_seconds": 20, "scheduler_port": 7000},
                       environ={"CIA_TIMEOUT_SECONDS": "5"})
    assert config.timeout_seconds == 5
    assert config.scheduler_port == 7000


def test_variables_without_the_prefix_are_ignored(tmp_path: Path) -> None:
    config = load_text(tmp_path, "", environ={"TIMEOUT_SECONDS": "5", "PATH": "/bin", "HOST": "x"})
    assert config == Config()


def test_process_environment_is_read_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIA_SCHEDULER_PORT", "6123")
    assert load_config(write_config(tmp_path, "")).scheduler_port == 6123


def test_empty_environ_ignores_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIA_SCHEDULER_PORT", "6123")
    assert load_config(write_config(tmp_path, ""), environ={}).scheduler_port == 5000


@pytest.mark.parametrize(("environ", "key"), [
    ({"CIA_SCHEDULER_PORT": "abc"}, "scheduler_port"),
    ({"CIA_TIMEOUT_SECONDS": "-1"}, "timeout_seconds"),
    ({"CIA_SANDBOX_RUNTIME": "kata"}, "sandbox_runtime"),
    ({"CIA_INTERPRETER_PORT_RANGE": "{start: 9002, end: 9001}"}, "interpreter_port_range"),
    ({"CIA_NO_SUCH_KEY": "1"}, "no_such_key"),
])
def test_bad_environment_values_name_the_key(tmp_path: Path, environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, "", environ=environ)
    assert key in str(excinfo.value)


@pytest.mark.parametrize("token", ["0123", "1:30", "0x1F", "1_000", "yes", "null", "1e3", "tok#en"])
def test_token_from_environment_is_kept_verbatim(tmp_path: Path, token: str) -> None:
    # YAML 1.1 would read these as 83, 90, 31, 1000, True, None...: a token must stay the text the user set.
    assert load_text(tmp_path, "", environ={"CIA_AUTH_TOKENS": token}).auth_tokens == (token,)


@pytest.mark.parametrize("host", ["::", "::1", "0.0.0.0"])
def test_host_from_environment_is_kept_verbatim(tmp_path: Path, host: str) -> None:
    assert load_text(tmp_path, "", environ={"CIA_HOST": host, "CIA_ALLOW_ANONYMOUS": "true"}).host == host


# --- configuration that must not fail open --------------------------------------------------------

def test_an_empty_token_variable_does_not_switch_authentication_off(tmp_path: Path) -> None:
    config = load_text(tmp_path, {"auth_tokens": ["from-file"]}, environ={"CIA_AUTH_TOKENS": ""})
    assert config.auth_tokens == ("from-file",)
    assert load_text(tmp_path, {"auth_tokens": ["t"]}, environ={"CIA_AUTH_TOKENS": "  "}).auth_tokens == ("t",)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "ci.example.com"])
def test_no_token_on_a_public_address_is_refused_unless_anonymous_is_allowed(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, {"host": host})
    message = str(excinfo.value)
    assert "'auth_tokens'" in message and "allow_anonymous" in message and "\n" not in message
    assert load_text(tmp_path, {"host": host, "allow_anonymous": True}).host == host
    assert load_text(tmp_path, {"host": host, "auth_tokens": ["t"]}).auth_tokens == ("t",)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_no_token_on_loopback_is_fine(tmp_path: Path, host: str) -> None:
    assert load_text(tmp_path, {"host": host}).auth_tokens == ()


@pytest.mark.parametrize("token", ["pässwort", "to ken", "a\tb", "秘密"])
def test_tokens_a_client_cannot_send_unchanged_are_refused(tmp_path: Path, token: str) -> None:
    with pytest.raises(ConfigError, match="'auth_tokens'"):
        load_text(tmp_path, {"auth_tokens": [token]})


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite:///file:x?mode=memory&uri=true"])
def test_in_memory_sqlite_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="'database_url'.*in-memory"):
        load_text(tmp_path, {"database_url": url})


def test_max_request_bytes_above_what_the_agent_accepts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'max_request_bytes'"):
        load_text(tmp_path, {"max_request_bytes": 10**9})
    assert load_text(tmp_path, {"max_request_bytes": 20 * 1024 * 1024}).max_request_bytes == 20 * 1024 * 1024


def test_default_deployment_labels_differ_between_two_centers_and_stay_put(tmp_path: Path) -> None:
    first = load_text(tmp_path, {"scheduler_port": 5000, "data_dir": str(tmp_path / "a")})
    second = load_text(tmp_path, {"scheduler_port": 5000, "data_dir": str(tmp_path / "b")})
    other_port = load_text(tmp_path, {"scheduler_port": 5001, "data_dir": str(tmp_path / "a")})
    assert len({first.deployment_label, second.deployment_label, other_port.deployment_label}) == 3
    again = load_text(tmp_path, {"scheduler_port": 5000, "data_dir": str(tmp_path / "a")})
    assert again.deployment_label == first.deployment_label, "a restarted center finds its own leftovers"


@pytest.mark.parametrize("name", ["has space", "-leading-dash", "x" * 64, "semi;colon", "ünï"])
def test_deployment_names_docker_would_not_take_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="'deployment'"):
        load_text(tmp_path, {"deployment": name})


def test_malformed_structured_environment_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, "", environ={"CIA_INTERPRETER_PORT_RANGE": "{start: 9001"})
    assert "interpreter_port_range" in str(excinfo.value)


# --- bad configs ---------------------------------------------------------------------------------

BAD_CONFIGS: list[tuple[dict[str, Any], str]] = [
    ({"colour": "blue"}, "colour"),
    ({"resource_limits": {"foo": 1}}, "resource_limits.foo"),
    ({"postgres": {"pasword": "x"}}, "postgres.pasword"),
    ({"interpreter_port_range": {"begin": 1}}, "interpreter_port_range.begin"),
    ({"scheduler_port": "abc"}, "scheduler_port"),
    ({"scheduler_port": True}, "scheduler_port"),
    ({"scheduler_port": -1}, "scheduler_port"),
    ({"scheduler_port": 5000.5}, "scheduler_port"),
    ({"timeout_seconds": -1}, "timeout_seconds"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"timeout_seconds": "soon"}, "timeout_seconds"),
    ({"queue_wait_seconds": -1}, "queue_wait_seconds"),
    ({"image_retention_days": -1}, "image_retention_days"),
    ({"max_request_bytes": "lots"}, "max_request_bytes"),
    ({"auth_tokens": 5}, "auth_tokens"),
    ({"auth_tokens": [""]}, "auth_tokens"),
    ({"auth_tokens": {"a": "b"}}, "auth_tokens"),
    ({"cors_origins": [1]}, "cors_origins"),
    ({"dependencies": [["numpy"]]}, "dependencies"),
    ({"interpreter_port_range": {"start": 8004, "end": 8001}}, "interpreter_port_range"),
    ({"interpreter_port_range": [8001, 8004]}, "interpreter_port_range"),
    ({"interpreter_port_range": {"start": "x"}}, "interpreter_port_range.start"),
    ({"resource_limits": {"memory": "12q"}}, "resource_limits.memory"),
    ({"resource_limits": {"disk": ""}}, "resource_limits.disk"),
    ({"resource_limits": {"cpus": "many"}}, "resource_limits.cpus"),
    ({"resource_limits": {"cpus": "0"}}, "resource_limits.cpus"),
    ({"resource_limits": "512m"}, "resource_limits"),
    ({"postgres": {"port": "fivefourthreetwo"}}, "postgres.port"),
    ({"postgres": "postgresql://x"}, "postgres"),
    ({"sandbox_runtime": "kata"}, "sandbox_runtime"),
    ({"mode": "k8s"}, "mode"),
    ({"host": ""}, "host"),
    ({"domain": ["a.example"]}, "domain"),
    ({"interpreter_image": ""}, "interpreter_image"),
]


@pytest.mark.parametrize(("content", "key"), BAD_CONFIGS, ids=[f"{key}-{i}" for i, (_, key) in enumerate(BAD_CONFIGS)])
def test_bad_config_raises_one_line_naming_the_key(tmp_path: Path, content: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, content)
    message = str(excinfo.value)
    assert f"'{key}'" in message
    assert "\n" not in message


@pytest.mark.parametrize("content", ["- a\n- b\n", "just a string\n", "42\n"], ids=["list", "string", "number"])
def test_non_mapping_file_is_rejected(tmp_path: Path, content: str) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_text(tmp_path, content)


def test_invalid_yaml_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, "timeout_seconds: [30\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize(("content", "environ"), [
    ("timeout_seconds: [30\n", {}),
    ("", {"CIA_INTERPRETER_PORT_RANGE": "{start: 9001"}),
], ids=["file", "environment"])
def test_invalid_yaml_error_is_one_line(tmp_path: Path, content: str, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, content, environ=environ)
    assert "\n" not in str(excinfo.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(missing, environ={})
    assert str(missing) in str(excinfo.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(("key", "value"), [
    ("timeout_seconds", math.nan),
    ("timeout_seconds", math.inf),
    ("queue_wait_seconds", math.inf),
])
def test_non_finite_numbers_are_rejected(tmp_path: Path, key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key):
        load_text(tmp_path, {key: value})


@pytest.mark.parametrize(("content", "key"), [
    ({"scheduler_port": 70000}, "scheduler_port"),
    ({"interpreter_port_range": {"start": 8001, "end": 70000}}, "interpreter_port_range.end"),
    ({"postgres": {"port": 70000}}, "postgres.port"),
])
def test_ports_above_65535_are_rejected(tmp_path: Path, content: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_text(tmp_path, content)
