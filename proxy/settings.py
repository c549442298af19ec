"""Settings: a frozen dataclass built from the command line and the environment.

Every problem is reported as one ``SettingsError`` line naming the option or the
variable (DESIGN §2: bad configuration exits at once, no traceback).
"""

from __future__ import annotations

import argparse
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from proxy.catalog import DEFAULT_CATALOG_TOML, Catalog, CatalogError, parse_catalog


class SettingsError(ValueError):
    """A configuration problem, worded for the operator."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential that never prints: repr and str are masked."""

    _value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison (hmac.compare_digest)."""
        return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), self._value.encode("utf-8"))

    def reveal(self) -> str:
        return self._value


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the proxy needs to start; validated, with units in names."""

    upstream_url: str | None
    listen: HostPort = HostPort("0.0.0.0", 8080)
    admin_listen: HostPort = HostPort("127.0.0.1", 9901)
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    config_path: Path | None = None
    catalog: Catalog = field(default_factory=lambda: parse_catalog(DEFAULT_CATALOG_TOML), repr=False)
    state_file: Path | None = None
    ops_token: Secret | None = None
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
    workers: int = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SettingsError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stage-proxy",
        description="Validating sidecar proxy for the deal-stage contract v3.4 (see docs/ and DESIGN).",
        epilog="Every option can also come from the environment variable shown; the option wins.",
    )
    add = parser.add_argument
    add("--upstream", metavar="URL", help="legacy service base URL, e.g. http://127.0.0.1:8000 [STAGE_UPSTREAM_URL]")
    add("--listen", metavar="HOST:PORT", help="main listener (default 0.0.0.0:8080) [STAGE_LISTEN]")
    add("--admin-listen", metavar="HOST:PORT", help="admin/_ops listener (default 127.0.0.1:9901) [STAGE_ADMIN_LISTEN]")
    add("--redis-url", metavar="URL", help="mode store; unset: embedded in-memory store [STAGE_REDIS_URL]")
    add("--config", metavar="PATH", help="stage catalog TOML; default: built-in catalog [STAGE_CONFIG]")
    add("--state-file", metavar="PATH", help="persist last-known modes across restarts [STAGE_STATE_FILE]")
    add("--ops-token-file", metavar="PATH", help="file holding the _ops bearer token [or STAGE_OPS_TOKEN itself]")
    add("--demo", action="store_true", help="start an embedded demo legacy service as the upstream")
    add("--request-id-header", metavar="NAME", help="default X-Request-ID [STAGE_REQUEST_ID_HEADER]")
    add("--max-body-bytes", metavar="N", type=int, help="validated body limit (default 1048576) [STAGE_MAX_BODY_BYTES]")
    add("--upstream-timeout-s", metavar="S", type=float, help="upstream response timeout (default 30)")
    add("--upstream-health-path", metavar="PATH", help="path readyz probes on the upstream (default /)")
    add("--redis-prefix", metavar="PREFIX", help="key prefix in Redis (default 'stagegate:') [STAGE_REDIS_PREFIX]")
    add("--refresh-ms", metavar="MS", type=int, help="background mode refresh interval (default 500)")
    add("--warn-log-per-s", metavar="N", type=int, help="WARN lines per second per endpoint+result (default 20)")
    add("--workers", metavar="N", type=int, help="processes sharing the ports (SO_REUSEPORT); >1 needs --redis-url "
        "[STAGE_WORKERS]")
    add("--log-level", metavar="LEVEL", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO")
    return parser


def parse_host_port(value: str, what: str) -> HostPort:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``."""
    host, sep, port_text = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(f"{what}: expected HOST:PORT, got {value!r}")
    return HostPort(host, int(port_text))


def _check_url(value: str, what: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.hostname or parts.scheme == "unix"):
        raise SettingsError(f"{what}: expected a {'/'.join(schemes)} URL, got {value!r}")
    try:
        _ = parts.port
    except ValueError:
        raise SettingsError(f"{what}: bad port in {value!r}") from None
    return value


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{what}: cannot read {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None


def _load_catalog(path: Path | None) -> Catalog:
    text = DEFAULT_CATALOG_TOML if path is None else _read_text(path, "--config")
    try:
        return parse_catalog(text)
    except CatalogError as exc:
        raise SettingsError(f"--config {str(path) if path else '(built-in)'}: {exc}") from None


def _token(path: str | None, environ: Mapping[str, str]) -> Secret | None:
    if path:
        text = _read_text(Path(path), "--ops-token-file").strip()
        if not text:
            raise SettingsError(f"--ops-token-file: {path!r} is empty")
        return Secret(text)
    value = environ.get("STAGE_OPS_TOKEN", "").strip()
    return Secret(value) if value else None


def _state_file(value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if not path.parent.is_dir():
        raise SettingsError(f"--state-file: directory {str(path.parent)!r} does not exist")
    return path


def _int_env(env: Mapping[str, str], var: str, default: int) -> int:
    value = env.get(var)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{var} must be an integer, got {value[:40]!r}") from None


def _positive(value: float, what: str) -> None:
    if value <= 0:
        raise SettingsError(f"{what} must be positive, got {value}")


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from argv and environ (defaults: sys.argv, os.environ)."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)

    def pick(arg: str | None, var: str) -> str | None:
        return arg if arg is not None else (env.get(var) or None)

    demo = bool(args.demo)
    upstream = pick(args.upstream, "STAGE_UPSTREAM_URL")
    if upstream is None and not demo:
        raise SettingsError("--upstream URL (or STAGE_UPSTREAM_URL) is required unless --demo")
    redis_url = pick(args.redis_url, "STAGE_REDIS_URL")
    config = pick(args.config, "STAGE_CONFIG")
    defaults = Settings(upstream_url=None)
    settings = Settings(
        upstream_url=_check_url(upstream, "--upstream", ("http", "https")).rstrip("/") if upstream else None,
        listen=parse_host_port(pick(args.listen, "STAGE_LISTEN") or "0.0.0.0:8080", "--listen"),
        admin_listen=parse_host_port(pick(args.admin_listen, "STAGE_ADMIN_LISTEN") or "127.0.0.1:9901",
                                     "--admin-listen"),
        redis_url=_check_url(redis_url, "--redis-url", ("redis", "rediss", "unix")) if redis_url else None,
        config_path=Path(config) if config else None,
        catalog=_load_catalog(Path(config) if config else None),
        state_file=_state_file(pick(args.state_file, "STAGE_STATE_FILE")),
        ops_token=_token(args.ops_token_file, env),
        demo=demo,
        request_id_header=pick(args.request_id_header, "STAGE_REQUEST_ID_HEADER") or defaults.request_id_header,
        max_body_bytes=args.max_body_bytes if args.max_body_bytes is not None else _int_env(
            env, "STAGE_MAX_BODY_BYTES", defaults.max_body_bytes),
        upstream_timeout_s=defaults.upstream_timeout_s if args.upstream_timeout_s is None else args.upstream_timeout_s,
        upstream_health_path=args.upstream_health_path or defaults.upstream_health_path,
        redis_prefix=pick(args.redis_prefix, "STAGE_REDIS_PREFIX") or defaults.redis_prefix,
        refresh_ms=defaults.refresh_ms if args.refresh_ms is None else args.refresh_ms,
        warn_log_per_s=args.warn_log_per_s if args.warn_log_per_s is not None else defaults.warn_log_per_s,
        log_level=args.log_level or env.get("STAGE_LOG_LEVEL") or defaults.log_level,
        workers=args.workers if args.workers is not None else _int_env(env, "STAGE_WORKERS", defaults.workers),
    )
    _positive(settings.max_body_bytes, "--max-body-bytes")
    _positive(settings.upstream_timeout_s, "--upstream-timeout-s")
    _positive(settings.refresh_ms, "--refresh-ms")
    if not 1 <= settings.workers <= 64:
        raise SettingsError(f"--workers must be from 1 to 64, got {settings.workers}")
    if settings.workers > 1 and settings.redis_url is None:
        raise SettingsError("--workers > 1 needs --redis-url: the embedded in-memory mode store cannot share modes "
                            "between processes")
    if not settings.upstream_health_path.startswith("/"):
        raise SettingsError("--upstream-health-path must start with '/'")
    return settings
