"""Settings: every option declared once, in :data:`OPTIONS`; a frozen dataclass built from argv + environment.

Each row names the option's flag, environment variable, default, parser and
whether its value is a secret. The argparse parser, the environment lookup,
``--help``, the README's option table (checked by a test) and every error
message are derived from that one table. The environment is read here only:
``load_settings(argv, environ)`` is the one place, and the values are injected.

Precedence: the flag, else the environment variable (when set and not empty),
else the default. Every problem is one ``SettingsError`` line naming the flag
or the variable it came from; secrets are never echoed and URLs are echoed with
their password masked.
"""

from __future__ import annotations

import argparse
import math
import resource
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from proxy.catalog.stages import DEFAULT_CATALOG_TOML, Catalog, parse_catalog
from proxy.shared import catalog_files
from proxy.shared.clients import Network, NetworkError, parse_networks
from proxy.shared.secrets import Secret, mask_url


class SettingsError(ValueError):
    """A configuration problem, worded for the operator."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class EmbeddedUpstream:
    """``--demo`` without ``--upstream``: the bundled legacy service, started with the proxy on a free loopback
    port (its URL is :attr:`proxy.app.server.Running.upstream_url`)."""

    def __str__(self) -> str:
        return "the embedded demo upstream"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the proxy needs to start; validated, with units in names."""

    upstream_url: str | EmbeddedUpstream
    listen: HostPort = HostPort("0.0.0.0", 8080)
    admin_listen: HostPort = HostPort("127.0.0.1", 9901)
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    config_path: Path | None = None
    catalog: Catalog = field(default_factory=lambda: parse_catalog(DEFAULT_CATALOG_TOML), repr=False)
    state_file: Path | None = None
    ops_token: Secret | None = None
    ops_token_shell: str | None = None  # how a shell gets the token: "$STAGE_OPS_TOKEN" or "$(cat PATH)"
    demo: bool = False
    request_id_header: str = "X-Request-ID"
    max_body_bytes: int = 1024 * 1024
    upstream_timeout_s: float = 30.0
    upstream_connect_timeout_s: float = 5.0
    upstream_health_path: str = "/"
    redis_prefix: str = "stagegate:"
    redis_timeout_ms: int = 250
    refresh_ms: int = 500
    warn_log_per_s: int = 20
    log_level: str = "INFO"
    shutdown_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    client_write_timeout_s: float = 30.0
    max_connections: int = field(default_factory=lambda: default_max_connections())
    admin_max_body_bytes: int = 8 * 1024 * 1024
    canary_key_header: str | None = None
    trusted_proxies: tuple[Network, ...] = ()
    consumer_header: str | None = None
    workers: int = 1
    worker: bool = False  # this process is one of --workers N (set by the supervisor)
    metrics_dir: str | None = None  # prometheus multiprocess directory (set by the supervisor)


# File descriptors kept back from --max-connections: the admin listener's connections (ADMIN_MAX_CONNECTIONS),
# Redis, the state file, logs and the listening sockets. Each client connection may hold an upstream one too.
FD_RESERVE: Final = 128


def default_max_connections(soft_limit: int | None = None) -> int:
    """Client connections one process may hold: (RLIMIT_NOFILE soft limit - FD_RESERVE) / 2, at least 16."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY:
        soft_limit = 1 << 20
    return max(16, (soft_limit - FD_RESERVE) // 2)


# -- value parsers: text -> value, or ValueError saying what was expected ----------------------------------


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text)
        if parts.scheme not in schemes or not (parts.hostname or parts.scheme == "unix"):
            raise ValueError(f"expected a {'/'.join(schemes)} URL")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError("bad port in the URL") from None
        return text.rstrip("/") if parts.scheme in ("http", "https") else text
    return parse


def _host_port(text: str) -> HostPort:
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError("expected HOST:PORT")
    return HostPort(host, int(port_text))


def _number(kind: type[int] | type[float], low: float = 0.0, high: float | None = None,
            *, low_inclusive: bool = False) -> Callable[[str], Any]:
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text.strip())
        except ValueError:
            raise ValueError(f"expected {noun}") from None
        too_low = value < low if low_inclusive else value <= low
        if high is not None and (too_low or value > high):
            raise ValueError(f"must be from {low:g} to {high:g}")
        if too_low or not math.isfinite(value):
            raise ValueError("must be positive and finite")
        return value
    return parse


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.upper() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text.upper()
    return parse


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("expected true or false")
    return lowered in ("1", "true", "yes", "on")


def _path(text: str) -> Path:
    return Path(_text(text))


def _state_file(text: str) -> Path:
    path = _path(text)
    if not path.parent.is_dir():
        raise ValueError(f"directory {str(path.parent)!r} does not exist")
    return path


def _networks(text: str) -> tuple[Network, ...]:
    try:
        return parse_networks([text])
    except NetworkError as exc:
        raise ValueError(str(exc)) from None


def _header_name(text: str) -> str:
    name = _text(text)
    if not all(char.isascii() and (char.isalnum() or char in "!#$%&'*+-.^_`|~") for char in name):
        raise ValueError("expected an HTTP header name")
    return name


def _health_path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError("must start with '/'")
    return text


# -- the table ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: where it comes from, how it parses, how it is documented."""

    name: str  # the Settings field (or an intermediate value, see load_settings)
    flag: str | None
    env: str | None
    parse: Callable[[str], Any]
    help: str
    default: str = ""  # how the default reads in --help and the README
    metavar: str | None = None
    secret: bool = False  # never echoed in messages
    url: bool = False  # echoed with its password masked
    switch: bool = False  # a flag without a value (store_true); its variable takes true/false
    internal: bool = False  # set by the --workers supervisor for its workers: not documented


OPTIONS: Final[tuple[Option, ...]] = (
    Option("upstream_url", "--upstream", "STAGE_UPSTREAM_URL", _url("http", "https"),
           "legacy service base URL", "required, unless `--demo`", "URL", url=True),
    Option("listen", "--listen", "STAGE_LISTEN", _host_port, "main listener", "`0.0.0.0:8080`", "HOST:PORT"),
    Option("admin_listen", "--admin-listen", "STAGE_ADMIN_LISTEN", _host_port, "admin listener (`/_ops`, `/metrics`)",
           "`127.0.0.1:9901`", "HOST:PORT"),
    Option("redis_url", "--redis-url", "STAGE_REDIS_URL", _url("redis", "rediss", "unix"), "mode store",
           "unset: embedded in-memory store", "URL", url=True),
    Option("config_path", "--config", "STAGE_CONFIG", _path, "stage catalog TOML ([format](docs/catalog.md))",
           "built-in catalog", "PATH"),
    Option("state_file", "--state-file", "STAGE_STATE_FILE", _state_file,
           "last-known modes survive restarts without Redis", "unset", "PATH"),
    Option("ops_token_file", "--ops-token-file", "STAGE_OPS_TOKEN_FILE", _path,
           "file holding the `_ops` bearer token", "unset", "PATH"),
    Option("ops_token_env", None, "STAGE_OPS_TOKEN", _text, "the `_ops` bearer token itself (the file wins)",
           "unset: mutating `_ops` calls answer 403", secret=True),
    Option("demo", "--demo", "STAGE_DEMO", _boolean, "start an embedded demo legacy service as the upstream",
           "off", switch=True),
    Option("request_id_header", "--request-id-header", "STAGE_REQUEST_ID_HEADER", _text, "request ID header",
           "`X-Request-ID`", "NAME"),
    Option("max_body_bytes", "--max-body-bytes", "STAGE_MAX_BODY_BYTES", _number(int),
           "validated body limit; larger bodies are `unreadable` (413 in enforce, streamed through otherwise)",
           "1048576 (1 MiB)", "N"),
    Option("upstream_timeout_s", "--upstream-timeout-s", "STAGE_UPSTREAM_TIMEOUT_S", _number(float),
           "upstream silence before a 504", "30", "S"),
    Option("upstream_connect_timeout_s", "--upstream-connect-timeout-s", "STAGE_UPSTREAM_CONNECT_TIMEOUT_S",
           _number(float), "connecting to the upstream before a 502", "5", "S"),
    Option("upstream_health_path", "--upstream-health-path", "STAGE_UPSTREAM_HEALTH_PATH", _health_path,
           "path `/_ops/readyz` probes on the upstream", "`/`", "PATH"),
    Option("redis_prefix", "--redis-prefix", "STAGE_REDIS_PREFIX", _text, "key prefix in Redis "
           "([keys](docs/redis-keys.md))", "`stagegate:`", "PREFIX"),
    Option("redis_timeout_ms", "--redis-timeout-ms", "STAGE_REDIS_TIMEOUT_MS", _number(int),
           "one Redis round trip before the store counts as unreachable", "250", "MS"),
    Option("refresh_ms", "--refresh-ms", "STAGE_REFRESH_MS", _number(int),
           "background mode refresh (pub/sub pushes changes at once; this is the backstop)", "500", "MS"),
    Option("warn_log_per_s", "--warn-log-per-s", "STAGE_WARN_LOG_PER_S", _number(int),
           "WARN lines per second per endpoint and result; the rest are counted in a summary line", "20", "N"),
    Option("log_level", "--log-level", "STAGE_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"),
           "log level", "`INFO`", "LEVEL"),
    Option("shutdown_timeout_s", "--shutdown-timeout-s", "STAGE_SHUTDOWN_TIMEOUT_S", _number(float),
           "drain time for in-flight requests after SIGTERM (a second signal forces the exit)", "10", "S"),
    Option("header_timeout_s", "--header-timeout-s", "STAGE_HEADER_TIMEOUT_S", _number(float),
           "a request head must arrive within this, from its first byte (or the connection's start)", "10", "S"),
    Option("body_timeout_s", "--body-timeout-s", "STAGE_BODY_TIMEOUT_S", _number(float),
           "longest pause between reads of a request body; past it 408 and the connection closes", "30", "S"),
    Option("idle_timeout_s", "--idle-timeout-s", "STAGE_IDLE_TIMEOUT_S", _number(float),
           "an idle keep-alive connection closes after this", "60", "S"),
    Option("client_write_timeout_s", "--client-write-timeout-s", "STAGE_CLIENT_WRITE_TIMEOUT_S", _number(float),
           "a client that stops reading a response is dropped after this (its upstream connection too)", "30", "S"),
    Option("max_connections", "--max-connections", "STAGE_MAX_CONNECTIONS", _number(int),
           "open client connections on the main listener; past it new ones are closed at once",
           "(`RLIMIT_NOFILE` − 128) / 2", "N"),
    Option("admin_max_body_bytes", "--admin-max-body-bytes", "STAGE_ADMIN_MAX_BODY_BYTES", _number(int),
           "largest admin request body (the Alertmanager webhook included); past it 413", "8388608 (8 MiB)", "N"),
    Option("canary_key_header", "--canary-key-header", "STAGE_CANARY_KEY_HEADER", _text,
           "header whose value places a request in the canary instead of its request ID (e.g. a consumer ID), "
           "so one consumer sees one behaviour", "unset: the request ID", "NAME"),
    Option("trusted_proxies", "--trusted-proxies", "STAGE_TRUSTED_PROXIES", _networks,
           "peers (load balancers, gateways) whose `X-Forwarded-For` is believed: the client is then the rightmost "
           "hop not itself trusted; logged as `client_ip`, never a metric label", "none: the peer is the client",
           "CIDR,…"),
    Option("consumer_header", "--consumer-header", "STAGE_CONSUMER_HEADER", _header_name,
           "header a gateway sets to name the consumer (e.g. `X-Consumer-ID`; the gateway must overwrite it), "
           "believed from `--trusted-proxies` peers only; logged as `consumer`, matched by exemptions", "unset",
           "NAME"),
    Option("workers", "--workers", "STAGE_WORKERS", _number(int, 1, 64, low_inclusive=True),
           "processes sharing both ports (SO_REUSEPORT), metrics aggregated; more than 1 needs `--redis-url`",
           "1", "N"),
    Option("worker", None, "STAGE_WORKER", _boolean, "set by the supervisor in its workers", internal=True),
    Option("metrics_dir", None, "PROMETHEUS_MULTIPROC_DIR", _text, "set by the supervisor", internal=True),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SettingsError(message)


def _help(option: Option) -> str:
    text = option.help.replace("`", "")
    default = option.default.replace("`", "")
    return f"{text} (default: {default}) [{option.env}]" if default else f"{text} [{option.env}]"


def build_parser() -> argparse.ArgumentParser:
    """The command line, derived from OPTIONS."""
    parser = _Parser(prog="stage-proxy", description="Validating sidecar proxy for the deal-stage contract v3.4.",
                     epilog="Each option can also come from the environment variable in brackets; the option wins. "
                            "STAGE_OPS_TOKEN holds the ops token itself. Reference: docs/reference.md")
    for option in OPTIONS:
        if option.flag is None:
            continue
        if option.switch:
            parser.add_argument(option.flag, dest=option.name, action="store_const", const="true", help=_help(option))
        else:
            parser.add_argument(option.flag, dest=option.name, metavar=option.metavar, help=_help(option))
    return parser


def markdown_table() -> str:
    """The README's option table (tests/test_cli.py checks the README holds exactly this)."""
    rows = ["| option | env | default | what |", "|---|---|---|---|"]
    for option in OPTIONS:
        if option.internal:
            continue
        flag = f"`{option.flag}{' ' + option.metavar if option.metavar else ''}`" if option.flag else ""
        rows.append(f"| {flag} | `{option.env}` | {option.default} | {option.help} |")
    return "\n".join(rows)


def _shown(option: Option, text: str) -> str:
    if option.secret:
        return "'**********'"
    return repr(mask_url(text) if option.url else text[:80])


def _raw_values(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """Each option's parsed value (None where unset): flag, else environment variable."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = getattr(args, option.name, None) if option.flag else None
        source = option.flag
        if given is None and option.env is not None and environ.get(option.env, "").strip():
            given, source = environ[option.env], option.env
        if given is None:
            values[option.name] = None
            continue
        try:
            values[option.name] = option.parse(given)
        except ValueError as exc:
            raise SettingsError(f"{source}: {exc}, got {_shown(option, given)}") from None
    return values


def _read_text(path: Path, what: str) -> str:
    """A small file's text, bounded as a catalog is; SettingsError naming ``what`` when it cannot be read."""
    try:
        return catalog_files.read_text(path, what)
    except catalog_files.CatalogFileError as exc:
        raise SettingsError(str(exc)) from None


def load_catalog(path: Path | None) -> Catalog:
    """The catalog of ``--config`` (or the built-in one); SettingsError naming the file and the problem."""
    try:
        return catalog_files.load(path)[0]
    except catalog_files.CatalogFileError as exc:
        raise SettingsError(str(exc)) from None


def _token(values: dict[str, Any]) -> tuple[Secret | None, str | None]:
    """The ops token (the file wins over STAGE_OPS_TOKEN) and how a shell would get it."""
    path: Path | None = values.pop("ops_token_file")
    from_env: str | None = values.pop("ops_token_env")
    if path is None:
        return (Secret(from_env), "$STAGE_OPS_TOKEN") if from_env else (None, None)
    text = _read_text(path, "--ops-token-file").strip()
    if not text:
        raise SettingsError(f"--ops-token-file: {str(path)!r} is empty")
    return Secret(text), f"$(cat {shlex.quote(str(path))})"


def _check(settings: Settings) -> Settings:
    if settings.consumer_header is not None and not settings.trusted_proxies:
        raise SettingsError("--consumer-header needs --trusted-proxies: the header is believed only from the "
                            "gateways that set it (any client could send it)")
    if settings.workers > 1 and settings.redis_url is None:
        raise SettingsError("--workers > 1 needs --redis-url: the embedded in-memory mode store cannot share modes "
                            "between processes")
    return settings


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from argv and environ (defaults: sys.argv and an empty environment)."""
    args = build_parser().parse_args(argv)
    values = _raw_values(args, environ or {})
    ops_token, token_shell = _token(values)
    catalog = load_catalog(values["config_path"])
    given = {name: value for name, value in values.items() if value is not None}
    upstream = given.pop("upstream_url", None)
    if upstream is None and not given.get("demo"):
        raise SettingsError("--upstream URL (or STAGE_UPSTREAM_URL) is required unless --demo")
    return _check(Settings(upstream_url=upstream or EmbeddedUpstream(), **given, ops_token=ops_token,
                           ops_token_shell=token_shell, catalog=catalog))
