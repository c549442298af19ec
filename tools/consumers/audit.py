"""``stagectl audit-consumers LOG…``: who calls the three endpoints, and are they ours?

Reads the proxy's JSON logs and nginx/Apache combined access logs (detected per
line), keeps requests to the catalog's endpoints, and groups them by client IP
and user agent. ``X-Forwarded-For`` is believed only when the peer is a
``--trusted-proxy``; the client is then the rightmost address not itself
trusted. Classes: internal (``--internal-cidr``; default RFC 1918, loopback,
IPv6 ULA), external, and ambiguous (carrier-grade NAT 100.64/10: could be
either). Manual classifications in a TOML file win and mark a consumer known.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.catalog.paths import RouteTable
from proxy.catalog.stages import Catalog
from tools.shared.errors import EXIT_USAGE, CommandError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_INTERNAL = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7")
AMBIGUOUS = (ipaddress.ip_network("100.64.0.0/10"),)
CLASSES = ("internal", "external", "mitigated", "ignored")
COMBINED = re.compile(r'^(?P<peer>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+)[^"]*" '
                      r'(?P<status>\d{3}) \S+ "(?:[^"\\]|\\.)*" "(?P<ua>(?:[^"\\]|\\.)*)"(?: "(?P<xff>[^"]*)")?')


@dataclass
class Hit:
    peer: str
    xff: str | None
    user_agent: str
    endpoint: str
    ts: str
    unknown: bool


@dataclass
class Consumer:
    ip: str
    user_agent: str
    cls: str
    known: bool = False
    note: str = ""
    requests: int = 0
    unknown_stages: int = 0
    endpoints: set[str] = field(default_factory=set)
    first: str = ""
    last: str = ""


def networks(values: Sequence[str], what: str) -> list[Network]:
    try:
        return [ipaddress.ip_network(value, strict=False) for value in values]
    except ValueError as exc:
        raise CommandError(f"{what}: {exc}", EXIT_USAGE) from None


def _proxy_line(event: dict[str, Any]) -> Hit | None:
    if event.get("event") != "stage_validation" or not isinstance(event.get("client_ip"), str):
        return None
    return Hit(event["client_ip"], None, str(event.get("user_agent") or ""), str(event.get("endpoint") or ""),
               str(event.get("ts") or ""), event.get("result") in ("unknown", "invalid"))


def _combined_line(line: str, routes: RouteTable) -> Hit | None:
    match = COMBINED.match(line)
    if match is None:
        return None
    found = routes.match(match["method"], match["path"].split("?", 1)[0])
    if found is None:
        return None
    endpoint = found.endpoint
    try:
        ts = datetime.strptime(match["time"], "%d/%b/%Y:%H:%M:%S %z").isoformat()
    except ValueError:
        ts = match["time"]
    xff = match["xff"] if match["xff"] not in (None, "-") else None
    return Hit(match["peer"], xff, match["ua"], endpoint.name, ts, False)


def parse_line(raw: bytes, routes: RouteTable) -> Hit | None:
    """A request to a validated endpoint, from either log format; None for anything else."""
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        return _proxy_line(event) if isinstance(event, dict) else None
    return _combined_line(text, routes)


def client_of(hit: Hit, trusted: list[Network]) -> str | None:
    """The client address: the peer, or (behind trusted proxies only) the rightmost untrusted XFF hop."""
    try:
        peer = ipaddress.ip_address(hit.peer)
    except ValueError:
        return None
    if hit.xff is None or not any(peer in net for net in trusted):
        return str(peer)
    for hop in reversed([h.strip() for h in hit.xff.split(",")]):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return str(peer)  # a garbled chain is not believed
        if not any(address in net for net in trusted):
            return str(address)
    return str(peer)


def classify(ip: str, internal: list[Network]) -> str:
    address = ipaddress.ip_address(ip)
    if any(address in net for net in AMBIGUOUS):
        return "ambiguous"
    return "internal" if any(address in net for net in internal) else "external"


def load_classifications(path: Path | None) -> dict[tuple[str, str], dict[str, str]]:
    """Manual decisions: ``[[consumer]] ip, user_agent, class, note``."""
    if path is None or not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"--classifications {path}: not valid TOML: {exc}", EXIT_USAGE) from None
    decisions = {}
    for index, entry in enumerate(data.get("consumer", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("ip"), str) or entry.get("class") not in CLASSES:
            raise CommandError(f"--classifications {path}: consumer {index + 1} needs ip and class "
                               f"(one of {', '.join(CLASSES)})", EXIT_USAGE)
        decisions[(entry["ip"], str(entry.get("user_agent", "")))] = {"class": entry["class"],
                                                                     "note": str(entry.get("note", ""))}
    return decisions


def audit(lines: Iterable[bytes], catalog: Catalog, *, internal: list[Network], trusted: list[Network],
          decisions: dict[tuple[str, str], dict[str, str]]) -> tuple[dict[tuple[str, str], Consumer], int]:
    """Consumers by (client IP, user agent), and how many lines were not requests to our endpoints."""
    routes = RouteTable(catalog.endpoints, case_sensitive=catalog.case_sensitive_paths)
    consumers: dict[tuple[str, str], Consumer] = {}
    skipped = 0
    for raw in lines:
        hit = parse_line(raw, routes) if raw.strip() else None
        ip = client_of(hit, trusted) if hit is not None else None
        if hit is None or ip is None:
            skipped += 1
            continue
        key = (ip, hit.user_agent)
        consumer = consumers.get(key)
        if consumer is None:
            decision = decisions.get(key) or decisions.get((ip, ""))
            consumer = consumers[key] = Consumer(ip, hit.user_agent, decision["class"] if decision
                                                 else classify(ip, internal), decision is not None,
                                                 decision["note"] if decision else "")
        consumer.requests += 1
        consumer.unknown_stages += hit.unknown
        consumer.endpoints.add(hit.endpoint)
        consumer.first = min(consumer.first or hit.ts, hit.ts)
        consumer.last = max(consumer.last, hit.ts)
    return consumers, skipped


def verdict(consumers: Iterable[Consumer]) -> int:
    """0 clear; 4 while any consumer is unclassified (ambiguous, no decision); else 3 if any is external."""
    classes = {c.cls for c in consumers}
    if "ambiguous" in classes:
        return 4
    return 3 if "external" in classes else 0


def record(path: Path, consumers: Iterable[Consumer]) -> None:
    """Write consumers and their class into the classifications file (existing decisions kept).

    Ambiguous consumers are left out: someone has to decide them (add them by hand).
    """
    decisions = load_classifications(path)
    lines = ["# stagectl audit-consumers classifications: edit 'class' (internal, external, mitigated, ignored)", ""]
    for c in sorted(consumers, key=lambda c: (c.ip, c.user_agent)):
        decided = decisions.get((c.ip, c.user_agent), {})
        cls = decided.get("class") or c.cls
        if cls not in CLASSES:
            continue
        lines += ["[[consumer]]", f"ip = {orjson.dumps(c.ip).decode()}",
                  f"user_agent = {orjson.dumps(c.user_agent).decode()}", f'class = "{cls}"',
                  f"note = {orjson.dumps(decided.get('note') or c.note).decode()}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
